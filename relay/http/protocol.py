"""uvicorn's httptools protocol, with each answer's header block and body sent in one write.

uvicorn writes the status line and headers as soon as the app sends ``http.response.start`` and the
body on ``http.response.body``: two ``send`` system calls and, with TCP_NODELAY, two segments per
answer, each waking the client. Every receiver answer is one small envelope, so the relay holds the
header block until the body follows (or until the loop's next turn, whichever comes first) and
writes both at once. Nothing else about the protocol changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _CoalescingTransport:
    """The connection's transport; a header block (ends with CRLF CRLF) waits for the next write."""

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: bytes | None = None

    def write(self, data: bytes) -> None:
        pending = self._pending
        if pending is not None:
            self._pending = None
            self._transport.write(pending + data)
        elif data.endswith(b"\r\n\r\n") and data.startswith(b"HTTP/"):
            self._pending = data
            self._loop.call_soon(self.flush)  # a body that never comes must not hold the headers back
        else:
            self._transport.write(data)

    def flush(self) -> None:
        if self._pending is not None:
            data, self._pending = self._pending, None
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def write_eof(self) -> None:
        self.flush()
        self._transport.write_eof()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class CoalescingHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_CoalescingTransport(transport, self.loop))  # type: ignore[arg-type]
