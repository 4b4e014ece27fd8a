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

from relay.errors import CLIENT_ERROR, OcpiError, StoreError
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


def answer_error(exc: BaseException) -> OcpiError:
    """What the wire gets for ``exc`` (``OcpiError.of``), logged once here: store failures and crashes
    with their cause (the server still logs a crash's traceback: Starlette's ServerErrorMiddleware
    re-raises it), refusals of bad input not at all (the ingest layer logs those)."""
    err = OcpiError.of(exc)
    if isinstance(exc, StoreError):
        logger.error("storage failure, answered 3000", extra={"error": str(exc)[:300]})
    elif not isinstance(exc, OcpiError):
        logger.error("unhandled error", exc_info=exc)
    return err


async def error_response(_request: Request, exc: Exception) -> Response:
    """The Starlette exception handler: every error the routes raise, as an OCPI envelope."""
    if isinstance(exc, HTTPException):  # the router's own 404 / 405
        messages = {404: "no OCPI endpoint at this path", 405: "method not allowed on this path"}
        return envelope(exc.status_code, CLIENT_ERROR, messages.get(exc.status_code, str(exc.detail)),
                        headers=dict(exc.headers) if exc.headers else None)
    err = answer_error(exc)
    return envelope(err.http_status, err.status_code, err.message)


EXCEPTION_HANDLERS = {
    OcpiError: error_response,
    HTTPException: error_response,
    StoreError: error_response,
    Exception: error_response,
}
