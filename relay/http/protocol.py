"""uvicorn's httptools protocol, with each answer's header block and body sent in one write.

uvicorn writes the status line and headers as soon as the app sends ``http.response.start`` and the
body on ``http.response.body``: two ``send`` system calls and, with TCP_NODELAY, two segments per
answer, each waking the client. Every receiver answer is one small envelope, so the relay holds the
header block until the body follows (or until the loop's next turn, whichever comes first) and
writes both at once.

On top of that, ``EdgeLimitedHttpToolsProtocol`` (the one `relay serve` runs) adds the edge limits:
header and body read timeouts, a header size limit and a connection cap.
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from relay import metrics
from relay.errors import CLIENT_ERROR
from relay.http.envelope import envelope_bytes


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


# Request phases of one connection, as the parser reports them.
_HEADERS = 1  # a request line and headers are expected or arriving
_BODY = 2  # headers complete, the body is arriving
_IDLE = 3  # the request is complete: the app's turn, then uvicorn's keep-alive timer
_DRAIN = 4  # refused: what still arrives is read and dropped until the connection closes
LINGER = 2.0  # seconds a refused connection keeps reading after its answer, so the answer is not lost to a reset


def _refusal(status: int, reason: bytes, message: str) -> bytes:
    body = envelope_bytes(CLIENT_ERROR, message)
    return b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s" % (
        status, reason, len(body), body)


class EdgeLimitedHttpToolsProtocol(CoalescingHttpToolsProtocol):
    """The receiver's protocol with the edge limits uvicorn and httptools lack.

    One timer per connection covers the phase the client controls: from the connection (or the first
    byte of a request on a kept-alive one) until its headers are complete, and from then until its
    body is complete. Header bytes are counted per read, so a header block larger than the limit is
    answered 431 after at most the limit has been parsed. Past the connection cap a new connection is
    closed at once, before anything is read. The class attributes are set by ``with_limits``.
    """

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_header_bytes: int = 16 * 1024
    max_connections: int = 1000

    _phase = _HEADERS
    _timer: asyncio.TimerHandle | None = None
    _timer_phase = 0
    _header_bytes = 0
    _refused = False

    @classmethod
    def with_limits(cls, *, header_timeout: float, body_timeout: float, max_header_bytes: int,
                    max_connections: int) -> type[EdgeLimitedHttpToolsProtocol]:
        return type(cls.__name__, (cls,), {"header_timeout": header_timeout, "body_timeout": body_timeout,
                                           "max_header_bytes": max_header_bytes, "max_connections": max_connections})

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self._refused = True
            self._phase = _DRAIN
            metrics.labelled(metrics.HTTP_CONNECTIONS_REFUSED, "connection_limit").inc()
            transport.close()
            return
        super().connection_made(transport)
        self._timer = self.loop.call_later(self.header_timeout, self._expired)
        self._timer_phase = _HEADERS

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == _DRAIN:
            return
        if self._phase != _BODY:  # these bytes may be headers (of this request or the next)
            n = self._header_bytes + len(data)
            if n > self.max_header_bytes:
                self._past_header_limit(data)
                return
            self._header_bytes = n
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        super().data_received(data)
        phase = self._phase
        if phase == _IDLE:
            # Bytes after a complete request that start no new one (e.g. CRLF) also cancelled uvicorn's
            # keep-alive timer: the header timer takes over once the answer is out.
            if self._timer is None and (self.cycle is None or self.cycle.response_complete):
                self._start(_HEADERS)
        elif phase != self._timer_phase:
            self._start(phase)

    def _past_header_limit(self, data: bytes) -> None:
        """Parse only what still fits in the header limit; refuse if the headers did not end in it."""
        room = self.max_header_bytes - self._header_bytes
        self._header_bytes = self.max_header_bytes
        if room > 0:
            self._feed(data[:room])
            if self.transport.is_closing():
                return
        if self._phase != _BODY and self._header_bytes >= self.max_header_bytes:
            self._refuse("header_too_large", 431, b"Request Header Fields Too Large",
                         f"request header fields larger than {self.max_header_bytes} bytes")
            return
        self.data_received(data[room:])  # the headers ended within the limit: the rest is body or more requests

    def on_message_begin(self) -> None:
        self._phase = _HEADERS
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._phase = _BODY
        self._header_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_phase = 0
        super().on_message_complete()

    def _start(self, phase: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(self.body_timeout if phase == _BODY else self.header_timeout, self._expired)
        self._timer_phase = phase

    def _expired(self) -> None:
        self._timer = None
        self._timer_phase = 0
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if self._phase == _BODY:
            answer = cycle is not None and not cycle.response_started
            self._refuse("body_timeout", 408 if answer else 0, b"Request Timeout",
                         f"request body not complete within {self.body_timeout:g} s")
        else:
            # a request begun but not complete within the time, and no answer in progress: 408
            answer = self._phase == _HEADERS and self._header_bytes > 0 and (cycle is None or cycle.response_complete)
            self._refuse("header_timeout", 408 if answer else 0, b"Request Timeout",
                         f"request headers not complete within {self.header_timeout:g} s")

    def _refuse(self, reason: str, status: int, phrase: bytes, message: str) -> None:
        """Count, answer ``status`` (0: no answer) with an OCPI envelope, close the connection.

        An answer is followed by the end of our side of the stream; what the client still sends is
        read and dropped for ``LINGER`` seconds. Closing a socket with unread input sends a reset,
        which can destroy the answer before the client reads it.
        """
        metrics.labelled(metrics.HTTP_CONNECTIONS_REFUSED, reason).inc()
        self._phase = _DRAIN
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not status:
            self.transport.close()
            return
        self.transport.write(_refusal(status, phrase, message))
        try:
            self.transport.write_eof()
        except (NotImplementedError, OSError):
            self.transport.close()
            return
        self._timer = self.loop.call_later(LINGER, self.transport.close)
