"""Servers on 127.0.0.1:0 for tests, in the test's own event loop.

``serve(app)`` runs an ASGI app under uvicorn and yields the port the kernel picked (uvicorn's
``run_server``, grpc's ``start_test_server(port=0)``). ``PartnerSink`` is the one partner every
delivery test points a target at, webhook or OCPI (svix's ``TestReceiver``): it records every request
(method, path, query, headers, body) and answers whatever the test scripts through ``sink.answer``:
a status, a body and headers, after as long a delay as an async answer cares to take.
The relay itself starts on port 0 with ``start_relay`` / ``spawn_relay`` in tests/conftest.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp


class _Server(uvicorn.Server):
    """uvicorn that says when it is up and leaves signals alone (the test process keeps its own)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.up = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        self.up.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.asynccontextmanager
async def serve(app: ASGIApp) -> AsyncIterator[int]:
    """Run ``app`` on 127.0.0.1:0 until the block ends; yields the bound port once it accepts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=1)
    server = _Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        up = asyncio.create_task(server.up.wait())
        await asyncio.wait({task, up}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        up.cancel()
        if task.done():
            task.result()  # raises the start-up error
        assert server.up.is_set(), "test server did not start in 10 s"
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


# -- the partner sink --------------------------------------------------------------------------------


@dataclass
class Received:
    """One request as the sink saw it; ``status`` is what the sink answered (None while it is held)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]  # names lower-cased
    body: bytes
    at: float  # time.monotonic() on arrival
    raw_target: bytes = b""
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    status: int | None = None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def wire(self) -> bytes:
        """The request as it came over the socket: request line, header lines, body."""
        lines = [self.method.encode() + b" " + self.raw_target + b" HTTP/1.1"]
        lines += [name + b": " + value for name, value in self.raw_headers]
        return b"\r\n".join(lines) + b"\r\n\r\n" + self.body


Reply = tuple[int, Any, dict[str, str]]
"""(status, body, headers); a body that is not bytes is sent as JSON, None as an empty body."""
Answer = Callable[[Received, int], "Reply | Awaitable[Reply]"]


def ocpi_envelope(status_code: int = 1000, message: str = "Success") -> dict[str, Any]:
    return {"status_code": status_code, "status_message": message, "timestamp": "2024-03-05T12:00:00Z"}


def answer_ok(_rec: Received, _n: int) -> Reply:
    return 200, ocpi_envelope(), {}


@dataclass
class PartnerSink:
    """Records every request; ``answer(received, n)`` (n counts from 1, sync or async) decides the reply.

    An async answer can take its time (a slow partner) or wait for an event (a held request)."""

    answer: Answer = answer_ok
    received: list[Received] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accepted(self, path_prefix: str = "") -> list[Received]:
        """Requests answered 2xx, in arrival order."""
        return [r for r in self.received if r.ok and r.path.startswith(path_prefix)]

    def app(self) -> Starlette:
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        return Starlette(routes=[Route("/{path:path}", self._handle, methods=methods)])

    async def _handle(self, request: Request) -> Response:
        scope = request.scope
        target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
        rec = Received(request.method, request.url.path, request.url.query,
                       {k.lower(): v for k, v in request.headers.items()}, await request.body(), time.monotonic(),
                       target, list(scope["headers"]))
        self.received.append(rec)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            reply = self.answer(rec, len(self.received))
            if inspect.isawaitable(reply):
                reply = await reply
        finally:
            self.in_flight -= 1
        status, body, headers = reply
        rec.status = status
        content = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
        return Response(content, status, headers=headers, media_type="application/json")

    @classmethod
    @contextlib.asynccontextmanager
    async def running(cls) -> AsyncIterator[PartnerSink]:
        """A sink listening on 127.0.0.1:0 until the block ends."""
        sink = cls()
        async with serve(sink.app()) as port:
            sink.port = port
            yield sink
