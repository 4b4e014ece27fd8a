"""``Authorization: Token <token>`` to a subscription, and the subscription's source allow-list;
the token itself is never logged."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from starlette.requests import Request

from relay import metrics
from relay.errors import OcpiError
from relay.routing.model import (
    IpAddress,
    Network,
    RoutingConfig,
    Subscription,
    address_allowed,
    parse_address,
)

logger = logging.getLogger(__name__)


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


def client_address(peer: str | None, forwarded: Sequence[bytes], trusted: tuple[Network, ...]) -> tuple[IpAddress | None, str]:
    """The client's address and its text as seen: the socket peer, unless the peer is a trusted proxy;
    then ``X-Forwarded-For`` is walked from the right, skipping trusted hops, and the first untrusted
    hop is the client. A header from an untrusted peer changes nothing (anyone can write one)."""
    client = parse_address(peer) if peer else None
    text = peer or ""
    if client is None or not forwarded or not trusted or not address_allowed(trusted, client):
        return client, text
    for hop in reversed(b",".join(forwarded).decode("latin-1").split(",")):
        hop = hop.strip()
        if not hop:
            continue
        client, text = parse_address(hop), hop[:64]
        if client is None or not address_allowed(trusted, client):
            break  # an unreadable hop is not trusted either: the client is unknown
    return client, text


def check_source(sub: Subscription, peer: str | None, forwarded: Sequence[bytes], trusted: tuple[Network, ...]) -> None:
    """Refuse (403 / 2000) a request whose client address lies outside ``sub.allow_ips``; call only
    when that list is non-empty. A valid token from a wrong address means the token leaked: logged
    at WARNING with the subscription and address (never the token) and counted."""
    address, text = client_address(peer, forwarded, trusted)
    if address_allowed(sub.allow_ips, address):
        return
    metrics.labelled(metrics.IP_REFUSED, sub.name).inc()
    shown = str(address) if address is not None else "unknown"
    logger.warning("valid token from an address outside allow_ips (has the token leaked?)",
                   extra={"subscription": sub.name, "address": shown if address is not None else text.encode(
                       "ascii", "backslashreplace").decode()})
    raise OcpiError.forbidden(f"source address {shown} is not allowed for subscription {sub.name}")
