"""One async function per kind of OCPI route: read, call ingest, answer the envelope."""

from __future__ import annotations

import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from relay import metrics
from relay.errors import SUCCESS, OcpiError
from relay.http.auth import authenticate, check_source
from relay.http.envelope import envelope
from relay.ingest import Ingestor, Outcome, Push, Source
from relay.ocpi.merge import match_evse
from relay.ocpi.paths import Address, resolve
from relay.ocpi.validate import check_path_ids
from relay.routing.model import Network, RoutingConfig, Subscription, cpo_matches
from relay.store.base import StateKey, Store


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it exceeds ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise OcpiError.too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise OcpiError.too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class Receiver:
    """The OCPI endpoints; ``endpoint`` serves every receiver route of the app's routes list."""

    def __init__(self, store: Store, ingestor: Ingestor, config: Any, *, base_path: str, max_body: int,
                 trusted_proxies: tuple[Network, ...] = ()) -> None:
        self.store = store
        self.ingestor = ingestor
        self.config = config  # callable returning the current RoutingConfig
        self.base_path = base_path
        self.max_body = max_body
        self.trusted_proxies = trusted_proxies  # whose X-Forwarded-For is believed (RELAY_TRUSTED_PROXIES)

    async def endpoint(self, request: Request) -> Response:
        started = time.perf_counter()
        module = "unknown"
        status = 500
        code = 3000
        try:
            cfg: RoutingConfig = self.config()
            sub = authenticate(request, cfg)
            if sub.allow_ips:
                check_source(sub, request.client.host if request.client else None,
                             [v.encode("latin-1") for v in request.headers.getlist("x-forwarded-for")],
                             self.trusted_proxies)
            path = request.url.path[len(self.base_path):]
            addr = resolve(request.method, path)
            module = addr.module
            if request.method == "GET":
                response = await self._get(addr, Source.of(sub))
            else:
                body = await read_body(request, self.max_body)
                outcome = await self.push(request.method, path, addr, body, sub,
                                          request.scope.get("state", {}).get("request_id"))
                headers = None
                if outcome.ok and outcome.cdr_id is not None:
                    headers = {"Location": str(request.url_for("cdr", cdr_id=outcome.cdr_id))}
                response = envelope(outcome.http_status, outcome.status_code, outcome.message, headers=headers)
            status, code = response.status_code, SUCCESS if response.status_code == 200 else 2000
            return response
        except OcpiError as err:
            status, code = err.http_status, err.status_code
            raise
        finally:
            metrics.INGEST_REQUESTS.labels(module, str(status), str(code)).inc()
            metrics.INGEST_LATENCY.labels(module).observe(time.perf_counter() - started)

    async def push(self, method: str, path: str, addr: Address, body: bytes, sub: Subscription,
                   request_id: str | None) -> Outcome:
        """A push to ``path`` (below the base path) by ``sub``: stored, refused or found identical."""
        return await self.ingestor.handle(Push(method=method, path=path, address=addr, body=body,
                                               source=Source.of(sub), request_id=request_id))

    async def _get(self, addr: Address, src: Source) -> Response:
        if addr.module not in src.modules:
            raise OcpiError.forbidden(f"module {addr.module} is not allowed for subscription {src.name}")
        # the same id rules as a push (400 / 2001 naming the segment), before any id reaches a query
        check_path_ids(addr.module, addr.country_code, addr.party_id, [v for _, v in addr.id_names()])
        if addr.module == "cdrs":
            found = [s for s in await self.store.find_states("cdrs", addr.object_id or "", case_insensitive=True)
                     if cpo_matches(src.cpos, s.key.country_code, s.key.party_id)]
            if not found:
                raise OcpiError.not_found(f"unknown CDR {addr.object_id}")
            return envelope(200, SUCCESS, "Success", found[0].object)
        if not cpo_matches(src.cpos, addr.country_code, addr.party_id):
            raise OcpiError.forbidden(f"CPO {addr.country_code}*{addr.party_id} is not allowed for subscription {src.name}")
        st = await self.store.get_state(StateKey(addr.module, addr.country_code or "", addr.party_id or "",
                                                 addr.object_id or ""))
        if st is None or st.deleted:
            raise OcpiError.not_found(f"unknown {addr.level} {addr.object_id}")
        data: Any = st.object
        if addr.evse_uid is not None:
            idx = match_evse(data.get("evses") or [], addr.evse_uid)
            if idx is None:
                raise OcpiError.not_found(f"unknown EVSE {addr.evse_uid}")
            data = data["evses"][idx]
            if addr.connector_id is not None:
                data = next((c for c in data.get("connectors") or [] if c.get("id") == addr.connector_id), None)
                if data is None:
                    raise OcpiError.not_found(f"unknown connector {addr.connector_id}")
        return envelope(200, SUCCESS, "Success", data)
