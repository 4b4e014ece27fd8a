"""``Authorization: Token <token>`` to a subscription; the token itself is never logged."""

from __future__ import annotations

from starlette.requests import Request

from relay import metrics
from relay.errors import OcpiError
from relay.routing.model import RoutingConfig, Subscription


def authenticate(request: Request, config: RoutingConfig) -> Subscription:
    """The subscription whose token the request carries; OcpiError 401 otherwise."""
    return authenticate_header(request.headers.get("authorization"), config)


def authenticate_header(header: str | None, config: RoutingConfig) -> Subscription:
    """The subscription of an ``Authorization`` header's value; OcpiError 401 otherwise."""
    if header is None:
        metrics.AUTH_FAILURES.labels("missing").inc()
        raise OcpiError.unauthorized("missing Authorization header")
    scheme, _, token = header.partition(" ")
    if scheme != "Token" or not token or " " in token:
        metrics.AUTH_FAILURES.labels("scheme").inc()
        raise OcpiError.unauthorized("Authorization must be 'Token <token>'")
    sub = config.subscription_for_token(token)
    if sub is None:
        metrics.AUTH_FAILURES.labels("unknown").inc()
        raise OcpiError.unauthorized("unknown token")
    return sub
