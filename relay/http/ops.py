"""/healthz, /readyz, /metrics: always at the root, whatever RELAY_BASE_PATH is; on the receiver's
port, or on a listener of their own (``create_ops_app``) when RELAY_OPS_HOST / RELAY_OPS_PORT is set."""

from __future__ import annotations

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

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

    def routes(self) -> list[Route]:
        return [
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/metrics", self.metrics, methods=["GET"]),
        ]


def create_ops_app(store: Store) -> Starlette:
    """The ops listener's app: the three ops endpoints and nothing else (404 for any other path)."""
    return Starlette(routes=Ops(store).routes())
