"""Request id, and every error (ours, the router's, a crash) turned into an OCPI envelope."""

from __future__ import annotations

import itertools
import logging
import os
import re

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relay.errors import CLIENT_ERROR, SERVER_ERROR, OcpiError, StoreError
from relay.http.envelope import envelope
from relay.log import request_id_var

logger = logging.getLogger(__name__)
_RID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
# Generated ids: a per-process random prefix and a counter. Unique without a syscall per request
# (os.urandom per request showed up in profiles: each syscall hands the GIL to the writer thread).
_PREFIX = os.urandom(4).hex()
_COUNTER = itertools.count(1)


def request_id_of(scope: Scope) -> bytes:
    """A well-formed ``X-Request-ID`` of the request, else a new id."""
    for k, v in scope["headers"]:
        if k == b"x-request-id" and _RID.match(v):
            return bytes(v)
    return f"{_PREFIX}{next(_COUNTER):08x}".encode()


class RequestIdMiddleware:
    """Takes a well-formed ``X-Request-ID`` or makes one; sets the log context and echoes it back."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = rid.decode()
        token = request_id_var.set(rid.decode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", rid)]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_id_var.reset(token)


async def ocpi_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OcpiError)
    return envelope(exc.http_status, exc.status_code, exc.message)


async def http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    messages = {404: "no OCPI endpoint at this path", 405: "method not allowed on this path"}
    return envelope(exc.status_code, CLIENT_ERROR, messages.get(exc.status_code, str(exc.detail)),
                    headers=dict(exc.headers) if exc.headers else None)


async def store_error(_request: Request, exc: Exception) -> Response:
    logger.error("storage failure, answered 3000", extra={"error": str(exc)[:300]})
    return envelope(503, SERVER_ERROR, "storage unavailable, nothing was stored; please retry")


async def server_error(_request: Request, exc: Exception) -> Response:
    logger.error("unhandled error", exc_info=exc)
    return envelope(500, SERVER_ERROR, "internal server error")


EXCEPTION_HANDLERS = {
    OcpiError: ocpi_error,
    HTTPException: http_error,
    StoreError: store_error,
    Exception: server_error,
}
