"""The push hot path as a plain ASGI app in front of the Starlette app.

GreenFlux never retries a push, so the receiver must keep up with bursts. Profiles under the
benchmark's load put Starlette's routing, request object, middleware and exception layers at about
a third of the event loop's time per push. This layer answers the pushes the router would send to
``Receiver.endpoint`` itself: it resolves the path with the same ``resolve`` the endpoint uses, runs
the same ``Receiver.push`` and answers the same OCPI envelope, request id, metrics and errors.
Everything else (GETs, /healthz, /readyz, /metrics, unknown paths and methods, paths the router
would redirect) goes to the Starlette app unchanged, so there is one routing table for behaviour and
this layer only short-cuts the common case.
"""

from __future__ import annotations

import time
from urllib.parse import quote

from starlette.datastructures import URL
from starlette.types import ASGIApp, Receive, Scope, Send

from relay import metrics
from relay.errors import SERVER_ERROR, SUCCESS, OcpiError
from relay.http.auth import authenticate_header, check_source
from relay.http.endpoints import Receiver
from relay.http.envelope import envelope_bytes
from relay.http.middleware import answer_error, request_id_of
from relay.log import request_id_var
from relay.ocpi.paths import Address, resolve

PUSH_METHODS = frozenset({"PUT", "PATCH", "POST", "DELETE"})


class _Disconnected(Exception):
    """The client went away before its body arrived: nothing to store, nobody to answer."""


def push_address(method: str, path: str) -> Address | None:
    """The address of a push to the receiver; None for anything else. A path with an empty segment
    (``/locations/NL/GFX/``) is a push here, so its empty id is refused by name (400/2001) rather
    than redirected or answered 404 by the router."""
    if method not in PUSH_METHODS or not path.startswith("/"):
        return None
    try:
        return resolve(method, path)
    except OcpiError:
        return None


class FastPushes:
    """ASGI app: receiver pushes handled here, every other request passed to ``app``."""

    def __init__(self, app: ASGIApp, receiver: Receiver) -> None:
        self.app = app
        self.rx = receiver
        self.base = receiver.base_path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in PUSH_METHODS:
            path: str = scope["path"]
            root = scope.get("root_path") or ""
            if root and path.startswith(root):
                path = path[len(root):]
            if path.startswith(self.base):
                rel = path[len(self.base):]
                addr = push_address(scope["method"], rel)
                if addr is not None:
                    await self._push(scope, receive, send, rel, addr)
                    return
        await self.app(scope, receive, send)

    async def _push(self, scope: Scope, receive: Receive, send: Send, rel: str, addr: Address) -> None:
        started = time.perf_counter()
        status, code = 500, SERVER_ERROR
        auth = length = None
        forwarded: list[bytes] = []
        for k, v in scope["headers"]:
            if k == b"authorization":
                auth = v
            elif k == b"content-length":
                length = v
            elif k == b"x-forwarded-for":
                forwarded.append(v)
        rid = request_id_of(scope)
        rid_text = rid.decode()
        token = request_id_var.set(rid_text)
        extra: list[tuple[bytes, bytes]] = []
        try:
            try:
                sub = authenticate_header(auth.decode("latin-1") if auth is not None else None, self.rx.config())
                if sub.allow_ips:  # before the body is read: a refused push is never stored
                    client = scope.get("client")
                    check_source(sub, client[0] if client else None, forwarded, self.rx.trusted_proxies)
                body = await _read_body(receive, length, self.rx.max_body)
                outcome = await self.rx.push(scope["method"], rel, addr, body, sub, rid_text)
                status, code, message = outcome.http_status, outcome.status_code, outcome.message
                if outcome.ok and outcome.cdr_id is not None:
                    extra.append((b"location", self._cdr_url(scope, outcome.cdr_id).encode("latin-1")))
            except _Disconnected:
                status = 499  # counted as nginx does: the client closed the request
                return
            except Exception as exc:  # noqa: BLE001 - one mapping to the wire, as the Starlette routes use
                err = answer_error(exc)
                status, code, message = err.http_status, err.status_code, err.message
            payload = envelope_bytes(code, message)
            await send({"type": "http.response.start", "status": status, "headers": [
                (b"content-length", str(len(payload)).encode()), (b"content-type", b"application/json"),
                *extra, (b"x-request-id", rid),
            ]})
            await send({"type": "http.response.body", "body": payload})
        finally:
            request_id_var.reset(token)
            self._observe(addr.module, status, SUCCESS if status == 200 else code, started)

    @staticmethod
    def _observe(module: str, status: int, code: int, started: float) -> None:
        metrics.labelled(metrics.INGEST_REQUESTS, module, str(status), str(code)).inc()
        metrics.labelled(metrics.INGEST_LATENCY, module).observe(time.perf_counter() - started)

    def _cdr_url(self, scope: Scope, cdr_id: str) -> str:
        """Absolute URL of ``GET <base>/cdrs/{id}``, as the router's ``url_for("cdr")`` builds it."""
        root = scope.get("root_path") or ""
        return str(URL(scope=scope).replace(path=f"{root}{self.base}/cdrs/{quote(cdr_id, safe='')}", query=""))


async def _read_body(receive: Receive, declared: bytes | None, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise OcpiError.too_large(limit)
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise OcpiError.too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
