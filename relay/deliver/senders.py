"""What goes over the wire to a partner: the request for one delivery, sending it, what came back.

``webhook`` targets get a JSON event signed in the Standard Webhooks form; ``ocpi`` targets get the
push mirrored (same method, OCPI path below the target url, the partner's Token). Every byte of
partner-bound content comes out of the rule's transforms: the envelope fields that could carry what
a transform removed (ids, EVSE and connector, last_updated) are taken from the transformed object or
left null. Rendering is pure; ``send`` is the only I/O and maps aiohttp's errors to DeliveryError;
``attempt`` puts render, send and classify together.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from relay import __version__
from relay.deliver.backoff import Outcome, Permanent, classify, from_error
from relay.errors import DeliveryError
from relay.routing.config import Rule, Target
from relay.routing.transforms import apply_transforms
from relay.settings import Secret
from relay.store.base import EventRecord

USER_AGENT = f"ocpi-relay/{__version__}"
# A partner's answer is only looked at for its status and envelope; never read more than this.
MAX_RESPONSE_BYTES = 64 * 1024
# Notifications without an id of their own get a content-hash id at ingest (see relay.ingest).
_SYNTHETIC_ID = "sha256-"


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request to a partner."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


@dataclass(frozen=True, slots=True)
class Response:
    """What came back: status, lower-cased headers, at most MAX_RESPONSE_BYTES of body."""

    status: int
    headers: dict[str, str]
    body: bytes


class RenderError(ValueError):
    """The delivery cannot be rendered (e.g. a stored body that is not JSON but must be transformed)."""


def message_id(delivery_id: int) -> str:
    """``webhook-id``: fixed per outbox row, so retries of one delivery carry the same id."""
    return f"msg_{delivery_id}"


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _loads(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise RenderError(f"the stored {what} is not JSON ({exc})") from None


def webhook_body(event: EventRecord, rule: Rule, target: Target) -> bytes:
    """The Standard Webhooks event body; deterministic, so every retry sends the same bytes.

    Without transforms the stored object (the relay's own orjson text) is spliced in as it is, like
    an untransformed ``ocpi`` body: parsing and re-serialising it gave the same bytes at about a
    sixth of a delivery's CPU."""
    transformed = bool(rule.transform)
    obj: Any
    if transformed:
        obj = _loads(event.object, "object")
        if isinstance(obj, Mapping):
            obj = apply_transforms(rule.transform, obj, target.name)
    else:
        obj = orjson.Fragment(event.object) if event.object is not None else None
    if transformed:
        # What a transform removed must not come back through the envelope.
        view = obj if isinstance(obj, Mapping) else {}
        object_id = view.get("id") if isinstance(view.get("id"), str | int) else None
        last_updated = view.get("last_updated") if isinstance(view.get("last_updated"), str) else None
        evse_uid = connector_id = None
    else:
        object_id, last_updated = event.object_id, _iso(event.last_updated)
        evse_uid, connector_id = event.evse_uid, event.connector_id
    envelope = {
        "type": f"{event.module}.{event.action}",
        "timestamp": _iso(event.received_at),
        "data": {
            "seq": event.seq,
            "module": event.module,
            "action": event.action,
            "country_code": event.country_code,
            "party_id": event.party_id,
            "id": object_id,
            "evse_uid": evse_uid,
            "connector_id": connector_id,
            "last_updated": last_updated,
            "object": obj,
        },
    }
    return orjson.dumps(envelope)


@functools.lru_cache(maxsize=64)
def _keyed_mac(raw: str) -> Any:
    """An HMAC-SHA256 keyed with the decoded ``whsec_`` secret, to be ``copy()``-ed per message:
    decoding the key and keying the hash were a third of signing. Keyed by the secret's value, so a
    reloaded secret gets its own entry (a bounded few per process, as targets are)."""
    key_text = raw[len("whsec_"):] if raw.startswith("whsec_") else raw
    key = base64.b64decode(key_text + "=" * (-len(key_text) % 4))
    return hmac.new(key, digestmod=hashlib.sha256)


def signature(secret: Secret, msg_id: str, timestamp: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` over ``{id}.{timestamp}.{body}`` with the decoded ``whsec_`` key."""
    mac = _keyed_mac(secret.reveal()).copy()
    mac.update(f"{msg_id}.{timestamp}.".encode())
    mac.update(body)
    return "v1," + base64.b64encode(mac.digest()).decode()


def webhook_request(delivery_id: int, event: EventRecord, rule: Rule, target: Target,
                    now: float | None = None) -> Request:
    """POST of the signed event to ``target.url``; the timestamp is the send time (receivers check it)."""
    if target.secret is None:
        raise RenderError(f"webhook target {target.name} has no secret")
    body = webhook_body(event, rule, target)
    msg_id = message_id(delivery_id)
    stamp = int(time.time() if now is None else now)
    headers = _base_headers(target)
    headers.update({
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": signature(target.secret, msg_id, stamp, body),
    })
    return Request("POST", target.url, headers, body)


def ocpi_body(event: EventRecord, rule: Rule, target: Target) -> bytes | None:
    """The body as received; transformed (parsed, transformed, re-serialised) when the rule says so."""
    if event.action == "delete" or not event.body:
        return None
    if not rule.transform:
        return event.body.encode()
    obj = _loads(event.body, "body")
    if not isinstance(obj, Mapping):
        raise RenderError("the stored body is not a JSON object, so the rule's transforms cannot apply")
    return orjson.dumps(apply_transforms(rule.transform, obj, target.name))


def ocpi_path(event: EventRecord, body: bytes | None, transformed: bool) -> str:
    """The receiver path the push came in on, rebuilt from the event (relative to the target url)."""
    seg = [quote(s, safe="") for s in (event.country_code, event.party_id)]
    if event.module in ("locations", "sessions", "tariffs"):
        object_id = event.object_id
        if transformed and body is not None and event.evse_uid is None:
            # a transform that rewrote the id (pseudonymised it) also rewrites it in the path
            sent = orjson.loads(body).get("id")
            object_id = sent if isinstance(sent, str) and sent else object_id
        parts = [event.module, *seg, quote(object_id, safe="")]
        if event.module == "locations":
            parts += [quote(p, safe="") for p in (event.evse_uid, event.connector_id) if p is not None]
        return "/" + "/".join(parts)
    if event.module == "cdrs":
        return "/cdrs"
    if event.module == "chargestationnotifications" and not event.object_id.startswith(_SYNTHETIC_ID):
        return "/ChargeStationNotifications/" + quote(event.object_id, safe="")
    return "/notifications"


def ocpi_request(event: EventRecord, rule: Rule, target: Target) -> Request:
    """The mirrored push with the partner's ``Authorization: Token``."""
    if target.token is None:
        raise RenderError(f"ocpi target {target.name} has no token")
    body = ocpi_body(event, rule, target)
    headers = _base_headers(target)
    headers["Authorization"] = f"Token {target.token.reveal()}"
    url = target.url + ocpi_path(event, body, bool(rule.transform))
    return Request(event.action.upper(), url, headers, body)


def render(delivery_id: int, event: EventRecord, rule: Rule, target: Target) -> Request:
    """The request for one outbox row; RenderError when it cannot be built."""
    if target.type == "webhook":
        return webhook_request(delivery_id, event, rule, target)
    if target.type == "ocpi":
        return ocpi_request(event, rule, target)
    raise RenderError(f"unknown target type {target.type!r}")


def _base_headers(target: Target) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    headers.update(dict(target.headers))
    return headers


async def send(session: aiohttp.ClientSession, request: Request, timeout: float) -> Response:
    """One attempt; redirects are not followed. Raises DeliveryError when there is no answer."""
    try:
        async with session.request(
            request.method, request.url, data=request.body, headers=request.headers,
            allow_redirects=False, timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            body = await resp.content.read(MAX_RESPONSE_BYTES)
            headers = {k.lower(): v for k, v in resp.headers.items()}
            return Response(resp.status, headers, body)
    except TimeoutError:
        raise DeliveryError(f"timed out after {timeout:g}s", retryable=True) from None
    except aiohttp.InvalidURL as exc:
        raise DeliveryError(f"invalid url: {exc}", retryable=False) from None
    except aiohttp.ClientError as exc:
        # connection refused/reset, DNS, TLS, a malformed answer: the network's fault, try again later
        detail = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise DeliveryError(f"{type(exc).__name__}: {detail}".rstrip(": "), retryable=True) from None


async def attempt(session: aiohttp.ClientSession, target: Target, rule: Rule, delivery_id: int,
                  event: EventRecord) -> tuple[Outcome, bool]:
    """Render, send and classify one delivery: (outcome, whether a request went out)."""
    try:
        request = render(delivery_id, event, rule, target)
    except ValueError as exc:  # RenderError, or a transform that cannot apply to this object
        return Permanent(f"cannot build the request: {exc}"), False
    try:
        response = await send(session, request, target.timeout)
    except DeliveryError as err:
        return from_error(err), True
    return classify(target.type, response.status, response.headers, response.body), True


__all__ = [
    "MAX_RESPONSE_BYTES", "attempt", "RenderError", "Request", "Response", "message_id", "ocpi_body", "ocpi_path",
    "ocpi_request", "render", "send", "signature", "webhook_body", "webhook_request",
]
