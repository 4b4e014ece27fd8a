"""Partner sink of the delivery benchmark: a minimal aiohttp.web server in its own process.

``POST /hook`` answers 200 with an OCPI envelope and checks per-object order: the webhook body
carries ``data.id`` and ``data.seq``, and for each id the seqs must arrive increasing (an equal seq is
a redelivery, counted apart). ``POST /fail`` answers 503 (a failing partner). ``GET /_stats`` gives
counts, first/last arrival (``time.monotonic``), order violations and duplicates; ``POST /_reset``
clears them; ``GET /_arrivals`` lists ``[time, id, seq]`` of every /hook request since the reset.

    python bench/sink.py [--port 0]

Prints ``{"event": "sink_listening", "port": N}`` on stdout once bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from typing import Any

import orjson
from aiohttp import web

_OK = orjson.dumps({"status_code": 1000, "status_message": "Success", "timestamp": "2024-03-05T08:00:00Z"})
_FAIL = orjson.dumps({"status_code": 3000, "status_message": "unavailable", "timestamp": "2024-03-05T08:00:00Z"})


class Sink:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.hook = 0
        self.fail = 0
        self.first = 0.0
        self.last = 0.0
        self.violations = 0
        self.duplicates = 0
        self.unparsed = 0
        self.last_seq: dict[Any, int] = {}
        self.arrivals: list[tuple[float, Any, int]] = []

    async def on_hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.monotonic()
        if not self.first:
            self.first = now
        self.last = now
        self.hook += 1
        try:
            data = orjson.loads(body)["data"]
            oid, seq = data["id"], int(data["seq"])
        except (ValueError, KeyError, TypeError):
            self.unparsed += 1
            return web.Response(body=_OK, content_type="application/json")
        before = self.last_seq.get(oid)
        if before is not None and seq < before:
            self.violations += 1
        elif before is not None and seq == before:
            self.duplicates += 1
        else:
            self.last_seq[oid] = seq
        self.arrivals.append((now, oid, seq))
        return web.Response(body=_OK, content_type="application/json")

    async def on_fail(self, request: web.Request) -> web.Response:
        await request.read()
        self.fail += 1
        return web.Response(status=503, body=_FAIL, content_type="application/json")

    async def on_stats(self, _request: web.Request) -> web.Response:
        return web.json_response({
            "hook": self.hook, "fail": self.fail, "first": self.first, "last": self.last,
            "violations": self.violations, "duplicates": self.duplicates, "unparsed": self.unparsed,
            "objects": len(self.last_seq),
        })

    async def on_reset(self, _request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})

    async def on_arrivals(self, _request: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.arrivals), content_type="application/json")


async def serve(host: str, port: int) -> None:
    sink = Sink()
    app = web.Application(client_max_size=16 * 1024 * 1024)
    app.add_routes([
        web.post("/hook", sink.on_hook), web.post("/fail", sink.on_fail), web.get("/_stats", sink.on_stats),
        web.post("/_reset", sink.on_reset), web.get("/_arrivals", sink.on_arrivals),
    ])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=2048)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    sys.stdout.write(json.dumps({"event": "sink_listening", "port": bound}) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover
        pass
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
