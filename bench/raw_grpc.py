"""Stream ceiling: a raw grpc.aio server-streaming servicer that yields prebuilt messages forever.

It serves the relay's own service and message types (``ocpi_relay.v1.Relay/Subscribe`` returning
``Event``), so the benchmark's subscriber reads it exactly as it reads the relay, and the messages
are built like the relay's: the location body as received plus the merged object (``--object``) or
the body alone (about 1.5 KB, the issue's reference message). There is no store, no auth, no filter:
an async generator yields from a page of 500 ready messages, as grpc's route_guide example does.
The server runs on the default asyncio loop with the options the relay uses.

    python bench/raw_grpc.py [--port 0] [--object]

Prints ``{"event": "grpc_listening", "port": N, "message_bytes": B}`` on stdout once serving.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import location_body  # noqa: E402

from relay.stream._pb import relay_pb2 as pb  # noqa: E402
from relay.stream._pb import relay_pb2_grpc as pb_grpc  # noqa: E402

PAGE = 500
_OPTIONS = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
]


def build_page(with_object: bool) -> list[pb.Event]:
    now = int(time.time())
    page = []
    for i in range(PAGE):
        oid = f"raw-{i:06d}"
        body = location_body(oid)
        obj = orjson.dumps(orjson.loads(body)) if with_object else None
        page.append(pb.Event(
            seq=i + 1, module="locations", action="put", country_code="NL", party_id="GFX", object_id=oid,
            last_updated={"seconds": now, "nanos": 0}, received_at={"seconds": now, "nanos": 123_000},
            body=body, object=obj, origin="push", request_id="0123456789abcdef",
        ))
    return page


class RawRelay(pb_grpc.RelayServicer):
    def __init__(self, page: list[pb.Event]) -> None:
        self.page = page

    async def Subscribe(self, request: Any, context: Any) -> AsyncIterator[pb.Event]:  # noqa: N802
        await context.send_initial_metadata((("relay-after-seq", "0"),))
        page = self.page
        while True:
            for event in page:
                yield event


async def serve(host: str, port: int, with_object: bool) -> None:
    page = build_page(with_object)
    server = grpc.aio.server(options=_OPTIONS)
    pb_grpc.add_RelayServicer_to_server(RawRelay(page), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    sys.stdout.write(json.dumps({"event": "grpc_listening", "port": bound,
                                 "message_bytes": page[0].ByteSize()}) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--object", action="store_true", help="carry the merged object too, as relay events do")
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.object))


if __name__ == "__main__":
    main()
