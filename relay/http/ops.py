"""/healthz, /readyz, /metrics: always at the root, whatever RELAY_BASE_PATH is."""

from __future__ import annotations

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from relay.metrics import REGISTRY
from relay.store import migrate
from relay.store.base import Store


def _json(status: int, data: dict[str, object]) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


class Ops:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.head = migrate.head_revision()

    async def healthz(self, _request: Request) -> Response:
        return _json(200, {"status": "ok"})

    async def readyz(self, _request: Request) -> Response:
        if not await self.store.ping():
            return _json(503, {"status": "unready", "reason": "database unreachable"})
        revision = await self.store.schema_revision()
        if revision != self.head:
            return _json(503, {"status": "unready", "reason": f"schema at {revision}, head is {self.head}"})
        return _json(200, {"status": "ready", "schema": revision})

    async def metrics(self, _request: Request) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
