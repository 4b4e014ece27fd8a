"""Ingest ceiling: a bare Starlette handler that reads the body, parses it with orjson and answers
the OCPI envelope. Nothing is stored, authorised or validated.

Served exactly the way ``relay.runtime`` serves the receiver: ``uvicorn.Server.serve(sockets=[sock])``
inside ``asyncio.run`` with the same ``uvicorn.Config`` arguments, on a socket bound the same way
(``IPPROTO_TCP``, so asyncio sets TCP_NODELAY on accepted connections). ``--loop uvloop`` installs
uvloop's policy before ``asyncio.run``; the default is the stdlib asyncio loop, which is what
``relay serve`` runs on.

    python bench/bare_app.py [--loop asyncio|uvloop] [--host 127.0.0.1] [--port 0]

Prints ``{"event": "http_listening", "port": N, "loop": ..., "http": ...}`` on stdout once bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.runtime import bind

_stamp: list[Any] = [0, ""]


def _timestamp() -> str:
    now = int(time.time())
    if _stamp[0] != now:
        _stamp[0], _stamp[1] = now, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    return str(_stamp[1])


async def put_location(request: Request) -> Response:
    body = await request.body()
    orjson.loads(body)
    answer = {"status_code": 1000, "status_message": "Success", "timestamp": _timestamp()}
    return Response(orjson.dumps(answer), media_type="application/json")


def create_app() -> Starlette:
    return Starlette(routes=[
        Route("/locations/{country_code}/{party_id}/{location_id}", put_location, methods=["PUT"]),
    ])


async def serve(host: str, port: int) -> None:
    config = uvicorn.Config(create_app(), log_config=None, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=10, server_header=False)
    server = uvicorn.Server(config)
    sock = bind(host, port)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    loop = type(asyncio.get_running_loop())
    sys.stdout.write(json.dumps({
        "event": "http_listening", "port": sock.getsockname()[1], "loop": f"{loop.__module__}.{loop.__name__}",
        "http": config.http_protocol_class.__name__,
    }) + "\n")
    sys.stdout.flush()
    await task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
