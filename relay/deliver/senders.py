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
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from yarl import URL

from relay import __version__
from relay.deliver.backoff import Outcome, Permanent, classify, from_error
from relay.errors import DeliveryError
from relay.ocpi.times import format_datetime
from relay.ocpi.validate import segment_problem
from relay.routing.model import Rule, Target
from relay.routing.transforms import apply_transforms, coarsen_time, time_unit, transform_value
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
    timestamp: str | None = format_datetime(event.received_at)
    cc: Any = event.country_code
    party: Any = event.party_id
    if transformed:
        raw = _loads(event.object, "object")
        obj = apply_transforms(rule.transform, raw, target.name) if isinstance(raw, Mapping) else raw
        # What a transform removed must not come back through the envelope: the ids come from the
        # transformed object, EVSE and connector are left out, 2.2 party fields follow the object,
        # and the receive time is coarsened as far as the rule coarsens times.
        view = obj if isinstance(obj, Mapping) else {}
        object_id = view.get("id") if isinstance(view.get("id"), str | int) else None
        last_updated = view.get("last_updated") if isinstance(view.get("last_updated"), str) else None
        evse_uid = connector_id = None
        if isinstance(raw, Mapping):
            cc = view.get("country_code") if "country_code" in raw else cc
            party = view.get("party_id") if "party_id" in raw else party
        unit = time_unit(rule.transform)
        if unit is not None:
            timestamp = coarsen_time(timestamp, unit)
    else:
        obj = orjson.Fragment(event.object) if event.object is not None else None
        object_id, last_updated = event.object_id, (
            format_datetime(event.last_updated) if event.last_updated is not None else None)
        evse_uid, connector_id = event.evse_uid, event.connector_id
    envelope = {
        "type": f"{event.module}.{event.action}",
        "timestamp": timestamp,
        "data": {
            "seq": event.seq,
            "module": event.module,
            "action": event.action,
            "country_code": cc,
            "party_id": party,
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
    """POST of the signed event to ``target.url``; the timestamp is the send time (receivers check it).
    A target with several secrets (a rotation) is signed with each: ``v1,<sig1> v1,<sig2>``, which
    Standard Webhooks receivers accept when any one verifies."""
    if target.secret is None:
        raise RenderError(f"webhook target {target.name} has no secret")
    body = webhook_body(event, rule, target)
    msg_id = message_id(delivery_id)
    stamp = int(time.time() if now is None else now)
    headers = _base_headers(target)
    headers.update({
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": " ".join(signature(s, msg_id, stamp, body) for s in target.secrets),
    })
    return Request("POST", target.url, headers, body)


def ocpi_body(event: EventRecord, rule: Rule, target: Target) -> bytes | None:
    """The body as received; transformed (parsed, transformed, re-serialised) when the rule says so."""
    sent = _ocpi_object(event, rule, target)
    if sent is None:
        return None
    return event.body.encode() if not rule.transform else orjson.dumps(sent)


def _ocpi_object(event: EventRecord, rule: Rule, target: Target) -> Mapping[str, Any] | None:
    if event.action == "delete" or not event.body:
        return None
    obj = _loads(event.body, "body")
    if not isinstance(obj, Mapping):
        if rule.transform:
            raise RenderError("the stored body is not a JSON object, so the rule's transforms cannot apply")
        return {}
    return apply_transforms(rule.transform, obj, target.name) if rule.transform else obj


# Where each id of a mirrored path sits in the object of its own level and in the location (the
# rule's field paths name it there): the path segment is the id as the rule leaves it there.
_ID_FIELDS = {
    "object": ("id",),
    "evse": ("uid", "evses.*.uid"),
    "connector": ("id", "evses.*.connectors.*.id"),
}


def _segment(rule: Rule, target: Target, name: str, value: str, fields: tuple[str, ...]) -> str:
    if rule.transform:
        value = transform_value(rule.transform, fields, value, target.name)
    problem = segment_problem(value)
    if problem is not None:
        removed = " (the rule removes or rewrites it)" if rule.transform else ""
        raise RenderError(f"no safe path for {name}: it {problem}{removed}; nothing was sent")
    return quote(value, safe="")


def ocpi_path(event: EventRecord, rule: Rule, target: Target) -> str:
    """The receiver path the push came in on, rebuilt from the event (relative to the target url).

    Every id segment is the id as the rule leaves it (pseudonymised where the rule pseudonymises
    its field); one the rule removes, or that is not a safe path segment, is a RenderError.
    """
    cpo = [_segment(rule, target, n, v, ()) for n, v in (("country_code", event.country_code),
                                                           ("party_id", event.party_id))]
    if event.module in ("locations", "sessions", "tariffs"):
        parts = [event.module, *cpo, _segment(rule, target, f"{event.module[:-1]} id", event.object_id,
                                              _ID_FIELDS["object"])]
        if event.module == "locations" and event.evse_uid is not None:
            parts.append(_segment(rule, target, "evse_uid", event.evse_uid, _ID_FIELDS["evse"]))
            if event.connector_id is not None:
                parts.append(_segment(rule, target, "connector_id", event.connector_id, _ID_FIELDS["connector"]))
        return "/" + "/".join(parts)
    if event.module == "cdrs":
        return "/cdrs"
    if event.module == "chargestationnotifications" and not event.object_id.startswith(_SYNTHETIC_ID):
        raw = _loads(event.body, "body") if event.body else None
        field = "charge_station_notification_id"
        if not (isinstance(raw, Mapping) and str(raw.get(field)) == event.object_id) and isinstance(raw, Mapping) \
                and str(raw.get("id")) == event.object_id:
            field = "id"
        return "/ChargeStationNotifications/" + _segment(rule, target, "notification id", event.object_id, (field,))
    return "/notifications"


def below(url: str, base: str) -> bool:
    """Whether ``url``, as the HTTP client will send it (dot segments resolved), lies below ``base``."""
    sent, root = URL(url), URL(base)
    prefix = root.path.rstrip("/") + "/"
    return (sent.scheme, sent.host, sent.port) == (root.scheme, root.host, root.port) and \
        sent.path.startswith(prefix) and sent.path != prefix and not sent.query_string and not sent.fragment


def ocpi_request(event: EventRecord, rule: Rule, target: Target) -> Request:
    """The mirrored push with the partner's ``Authorization: Token``."""
    if target.token is None:
        raise RenderError(f"ocpi target {target.name} has no token")
    sent = _ocpi_object(event, rule, target)
    body = None if sent is None else event.body.encode() if not rule.transform else orjson.dumps(sent)
    url = target.url + ocpi_path(event, rule, target)
    if not below(url, target.url):
        raise RenderError(f"the mirrored url would leave the target's base url ({target.url}); nothing was sent")
    headers = _base_headers(target)
    headers["Authorization"] = f"Token {target.token.reveal()}"
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
