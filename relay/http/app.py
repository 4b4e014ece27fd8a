"""create_app: the receiver's routes, read top to bottom."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from relay.http.endpoints import Receiver
from relay.http.fastpath import FastPushes
from relay.http.middleware import EXCEPTION_HANDLERS, RequestIdMiddleware
from relay.http.ops import Ops
from relay.ingest import Ingestor
from relay.routing.model import RoutingConfig
from relay.settings import Settings
from relay.store.base import Store

RW = ["GET", "PUT", "PATCH"]
NOTIFY = ["POST", "PUT"]


def create_app(settings: Settings, store: Store, config: Callable[[], RoutingConfig]) -> FastPushes:
    """The receiver's ASGI app: pushes short-cut by ``FastPushes``, the rest routed by Starlette.
    The store must be started (and is closed) by the caller."""
    base = settings.base_path
    ingestor = Ingestor.from_settings(store, config, settings)
    rx = Receiver(store, ingestor, config, base_path=base, max_body=settings.max_body_bytes,
                  trusted_proxies=settings.trusted_networks())
    ep = rx.endpoint
    # With RELAY_OPS_HOST/_PORT the ops endpoints live on their own listener (create_ops_app), not here.
    routes = [] if settings.ops_listener else Ops(store).routes()
    routes += [
        Route(base + "/locations/{country_code}/{party_id}/{location_id}", ep, methods=RW),
        Route(base + "/locations/{country_code}/{party_id}/{location_id}/{evse_uid}", ep, methods=RW),
        Route(base + "/locations/{country_code}/{party_id}/{location_id}/{evse_uid}/{connector_id}", ep, methods=RW),
        Route(base + "/sessions/{country_code}/{party_id}/{session_id}", ep, methods=RW),
        Route(base + "/tariffs/{country_code}/{party_id}/{tariff_id}", ep, methods=[*RW, "DELETE"]),
        Route(base + "/cdrs", ep, methods=["POST"]),
        Route(base + "/cdrs/{cdr_id}", ep, methods=["GET"], name="cdr"),
        Route(base + "/ChargeStationNotifications/{notification_id}", ep, methods=NOTIFY),
        Route(base + "/notifications", ep, methods=NOTIFY),
        Route(base + "/notifications/{notification_id}", ep, methods=NOTIFY),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(RequestIdMiddleware)],
        exception_handlers=EXCEPTION_HANDLERS,
    )
    app.state.ingestor = ingestor
    return FastPushes(app, rx)
