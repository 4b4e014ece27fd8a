"""One use case: a push (or a pulled object, or a replayed refusal) becomes stored data.

authorise scope -> parse -> validate -> attribute -> decide against the stored state -> route ->
append event + state + outbox in one group-committed transaction -> outcome for the answer.
Refusals (scope, validation, immutability) are stored in ``rejected`` through the same writer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from relay import metrics
from relay.errors import INVALID_PARAMS, SUCCESS, OcpiError, RowRefused
from relay.ocpi import merge
from relay.ocpi.paths import Address
from relay.ocpi.times import format_datetime
from relay.ocpi.validate import check_id, check_path_ids, parse_datetime, validate_object
from relay.routing.model import RoutingConfig, Subscription, cpo_matches, format_cpo
from relay.routing.rules import route
from relay.settings import Settings
from relay.store.base import (
    NewDelivery,
    NewEvent,
    NewRejected,
    Plan,
    StateKey,
    StateWrite,
    Store,
    StoredState,
)

logger = logging.getLogger(__name__)

ACTIONS = {"PUT": "put", "PATCH": "patch", "POST": "post", "DELETE": "delete"}
VALIDATED = frozenset({"locations", "sessions", "cdrs", "tariffs"})
_SCRUB = str.maketrans("", "", "{}[]")
DEFAULT_MAX_CLOCK_SKEW = 300  # seconds; Settings.max_clock_skew
DEFAULT_MAX_OBJECT_BYTES = 2 * 1024 * 1024  # Settings.max_object_bytes
DEFAULT_REJECTED_MAX = 10_000  # Settings.rejected_max_per_subscription


@dataclass(frozen=True, slots=True)
class Source:
    """Who sent it: a push subscription, a pull source, or an operator replay of a push."""

    name: str | None
    modules: frozenset[str]
    cpos: tuple[Any, ...]
    default_cpo: tuple[str, str] | None
    strict: bool = False

    @classmethod
    def of(cls, sub: Subscription) -> Source:
        return cls(sub.name, sub.modules, sub.cpos, sub.default_cpo, sub.strict)


@dataclass(frozen=True, slots=True)
class Push:
    method: str
    path: str
    address: Address
    body: bytes
    source: Source
    origin: str = "push"  # push | pull | replay
    request_id: str | None = None
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    replay_of: int | None = None  # rejected.id being replayed
    merge_method: str | None = None  # merge as this method (pull merges sessions as PATCH)


@dataclass(frozen=True, slots=True)
class Outcome:
    http_status: int
    status_code: int
    message: str
    status: str  # applied | stale | identical | unmatched | rejected
    seq: int | None = None
    key: StateKey | None = None
    cdr_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code == SUCCESS


def _depth_ok(body: bytes, limit: int) -> bool:
    """Cheap JSON nesting check: brackets outside strings, counted in C where possible."""
    brackets = body.count(b"{") + body.count(b"[")
    if brackets <= limit:
        return True
    depth = 0
    in_str = esc = False
    for ch in body:
        if in_str:
            if esc:
                esc = False
            elif ch == 0x5C:
                esc = True
            elif ch == 0x22:
                in_str = False
        elif ch == 0x22:
            in_str = True
        elif ch in (0x7B, 0x5B):
            depth += 1
            if depth > limit:
                return False
        elif ch in (0x7D, 0x5D):
            depth -= 1
    return True


def _cpo_of_body(body: Mapping[str, Any]) -> tuple[str, str] | None:
    cc, party = body.get("country_code"), body.get("party_id")
    if isinstance(cc, str) and isinstance(party, str) and len(cc) == 2 and len(party) == 3:
        return cc.upper(), party.upper()
    return None


def _location_ref(module: str, body: Mapping[str, Any]) -> str | None:
    if module == "cdrs":
        for k in ("location", "cdr_location"):
            loc = body.get(k)
            if isinstance(loc, dict) and isinstance(loc.get("id"), str):
                return str(loc["id"])
        return None
    for k in ("location_id", "charge_location_id"):
        if isinstance(body.get(k), str):
            return str(body[k])
    loc = body.get("location")
    if isinstance(loc, dict) and isinstance(loc.get("id"), str):
        return str(loc["id"])
    return None


class Ingestor:
    """Runs pushes through scope, validation and the store; never raises for bad input."""

    def __init__(self, store: Store, config: Callable[[], RoutingConfig], *, max_depth: int = 32,
                 max_clock_skew: float = DEFAULT_MAX_CLOCK_SKEW,
                 max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
                 rejected_max: int = DEFAULT_REJECTED_MAX) -> None:
        self.store = store
        self.config = config
        self.max_depth = max_depth
        self.clock_skew = timedelta(seconds=max_clock_skew)
        self.max_object_bytes = max_object_bytes
        self.rejected_bound = RejectedBound(store, rejected_max)

    @classmethod
    def from_settings(cls, store: Store, config: Callable[[], RoutingConfig], settings: Settings) -> Ingestor:
        """An Ingestor with the bounds of ``settings`` (JSON depth, clock skew, object size)."""
        return cls(store, config, max_depth=settings.max_json_depth, max_clock_skew=settings.max_clock_skew,
                   max_object_bytes=settings.max_object_bytes,
                   rejected_max=settings.rejected_max_per_subscription)

    async def handle(self, push: Push) -> Outcome:
        try:
            return await self._handle(push)
        except OcpiError as err:
            return await self._reject(push, err)
        except RowRefused as exc:
            # Validation should have caught it; the group commit isolated it from its batch.
            return await self._reject(push, OcpiError.bad_request(f"a value of this push cannot be stored: {exc}"))

    async def _handle(self, push: Push) -> Outcome:
        op = await self.prepare(push)
        plan = await self.store.submit(op)
        outcome: Outcome = plan.result
        if plan.seq is not None:  # (dataclasses.replace costs several times this)
            outcome = Outcome(outcome.http_status, outcome.status_code, outcome.message, outcome.status, plan.seq,
                              outcome.key, outcome.cdr_id)
        module = push.address.module
        if outcome.status == "rejected":
            metrics.REJECTED.labels(module, str(outcome.http_status)).inc()
        else:
            metrics.labelled(metrics.EVENTS, module, outcome.status, push.origin).inc()
            if push.origin == "push" and push.source.name is not None:  # silence: time() - this
                metrics.labelled(metrics.LAST_PUSH, push.source.name, module).set(time.time())
            if outcome.status == merge.UNMATCHED:
                metrics.UNMATCHED.labels(module).inc()
                logger.warning("unmatched push kept", extra={"ocpi_module": module, "object_id": op.key.object_id,
                                                              "evse_uid": push.address.evse_uid, "seq": plan.seq})
        return outcome

    async def prepare(self, push: Push) -> PushOperation:
        """Everything a push needs before its commit: scope, path ids, parsing, validation, the CPO
        of a 2.1.1 object, the state key (a CDR's is looked up). Raises ``OcpiError`` for bad input;
        the operation it returns is what ``Store.submit`` commits (``handle`` does both)."""
        addr, src = push.address, push.source
        if addr.module not in src.modules:
            raise OcpiError.forbidden(f"module {addr.module} is not allowed for subscription {src.name}")
        if addr.country_code is not None:
            check_path_ids(addr.module, addr.country_code, addr.party_id, [v for _, v in addr.id_names()])
            self._check_cpo(src, addr.country_code, addr.party_id)
        elif addr.object_id is not None and addr.module in ("cdrs", "notifications", "chargestationnotifications"):
            check_path_ids(addr.module, None, None, [addr.object_id])
        body = self._parse(push) if push.method != "DELETE" else {}
        normalised = body
        if addr.module in VALIDATED and push.method != "DELETE":
            normalised = validate_object(addr.module, addr.level, push.method, body, self._id_fields(addr), strict=src.strict)
        cc, party, object_id = addr.country_code, addr.party_id, addr.object_id
        if cc is None or party is None:
            cc, party = await self._attribute(addr, body, src)
            self._check_cpo(src, cc, party)
        if object_id is None:
            object_id = self._object_id(addr, body, push.body)
        if addr.country_code is None and addr.module not in ("cdrs", "notifications", "chargestationnotifications"):
            # a pulled 2.1.1 object: its ids are checked once its CPO and id are known
            check_path_ids(addr.module, cc, party, [object_id])
        key = StateKey(addr.module, cc, party, object_id)
        if addr.module == "cdrs":
            existing = await self.store.find_states("cdrs", object_id, case_insensitive=True)
            if existing:
                key = existing[0].key
        lu = None
        if addr.module != "notifications" and addr.module != "chargestationnotifications":
            raw_lu = body.get("last_updated")
            if raw_lu is not None:
                lu = parse_datetime(raw_lu, "last_updated")
        horizon = push.received_at + self.clock_skew
        if lu is not None and lu > horizon:
            raise OcpiError.invalid("last_updated", _future(raw_lu, self.clock_skew))
        if addr.module == "locations" and push.method != "DELETE":
            _check_nested_times(normalised, addr.level, horizon, self.clock_skew)
        return PushOperation(self, push, key, normalised, lu, self.config())

    @staticmethod
    def _check_cpo(src: Source, cc: str | None, party: str | None) -> None:
        if not cpo_matches(src.cpos, cc, party):
            raise OcpiError.forbidden(f"CPO {format_cpo(cc or '', party or '')} is not allowed for subscription {src.name}")

    def _parse(self, push: Push) -> dict[str, Any]:
        try:
            body = orjson.loads(push.body)
        except orjson.JSONDecodeError as exc:
            raise OcpiError.bad_request(f"body is not valid JSON: {str(exc).translate(_SCRUB)[:120]}") from None
        if not isinstance(body, dict):
            raise OcpiError.bad_request(f"body must be a JSON object, got {type(body).__name__}")
        if not _depth_ok(push.body, self.max_depth):
            raise OcpiError.bad_request(f"body is nested deeper than {self.max_depth} levels")
        return body

    @staticmethod
    def _id_fields(addr: Address) -> dict[str, str]:
        if addr.level == "evse" and addr.evse_uid is not None:
            return {"uid": addr.evse_uid}
        if addr.level == "connector" and addr.connector_id is not None:
            return {"id": addr.connector_id}
        ids = {"id": addr.object_id} if addr.object_id is not None else {}
        if addr.country_code is not None and addr.party_id is not None and addr.level != "cdr":
            # a 2.2-style body carrying its party must carry the URL's (compared case-insensitively)
            ids.update(country_code=addr.country_code, party_id=addr.party_id)
        return ids

    @staticmethod
    def _object_id(addr: Address, body: Mapping[str, Any], raw: bytes) -> str:
        for k in ("id", "charge_station_notification_id") if addr.module == "cdrs" else (
            "charge_station_notification_id", "id"
        ):
            v = body.get(k)
            if isinstance(v, str | int) and not isinstance(v, bool) and str(v):
                value = str(v)
                check_id(k, value, 64)  # it becomes the stored object id and a forwarded path segment
                return value
        if addr.module == "cdrs":
            raise OcpiError.invalid("id", "missing required field")
        # a notification without any id: its content hash identifies it (identical re-push = no-op)
        return "sha256-" + hashlib.sha256(raw).hexdigest()[:40]

    async def _attribute(self, addr: Address, body: Mapping[str, Any], src: Source) -> tuple[str, str]:
        """CPO of an object without one in the path: 2.2 body fields, the referenced stored location,
        else the source's ``default_cpo`` (DESIGN, "Attribution of objects that carry no party")."""
        cpo = _cpo_of_body(body)
        if cpo is not None:
            return cpo
        loc_id = _location_ref(addr.module, body) if addr.module != "locations" else addr.object_id or body.get("id")
        if isinstance(loc_id, str):
            found = await self.store.find_states("locations", loc_id)
            if found:
                return found[0].key.country_code, found[0].key.party_id
        if src.default_cpo is not None:
            return src.default_cpo
        raise OcpiError.invalid("country_code", "cannot attribute the object to a CPO: no party fields, "
                                "no known location, and no default_cpo configured")

    async def _reject(self, push: Push, err: OcpiError) -> Outcome:
        outcome = Outcome(err.http_status, err.status_code, err.message, "rejected")
        metrics.REJECTED.labels(push.address.module, str(err.http_status)).inc()
        logger.info("push refused", extra={"ocpi_module": push.address.module, "http_status": err.http_status,
                                            "status_code": err.status_code, "reason": err.message[:300]})
        if push.replay_of is not None:
            await self.store.update_rejected_reason(push.replay_of, err.http_status, err.status_code, err.message)
            return outcome
        if not await self.rejected_bound.admit(push.source.name):
            return outcome  # answered as ever, counted, not kept (RELAY_REJECTED_MAX_PER_SUBSCRIPTION)
        try:
            await self.store.submit(_RejectOp(_rejected_row(push, err.http_status, err.status_code, err.message),
                                              outcome))
        except RowRefused:
            logger.error("refused push could not be kept in rejected", extra={"ocpi_module": push.address.module})
        return outcome


class RejectedBound:
    """At most ``limit`` stored refusals per subscription (or pull source): a buggy but authenticated
    sender cannot fill the disk with them. Past the bound a refusal is still answered, but only
    counted (``relay_rejected_dropped_total``) and logged once a minute per subscription.

    The counts live in memory: read from the store at the first refusal, then kept up to date here,
    so a refusal costs a dict lookup. A full subscription's count is read again at most once a
    minute, so room made by `relay prune` or retention (or the counts of other replicas) is seen."""

    RECHECK_EVERY = 60.0  # seconds between re-reads of a full subscription's count; also the log interval

    def __init__(self, store: Store, limit: int) -> None:
        self.store, self.limit = store, limit
        self._counts: dict[str | None, int] | None = None
        self._seed_lock = asyncio.Lock()
        self._rechecked: dict[str | None, float] = {}
        self._logged: dict[str | None, float] = {}
        self._dropped: dict[str | None, int] = {}

    async def admit(self, subscription: str | None) -> bool:
        """True when one more refusal of ``subscription`` may be stored (and counts it)."""
        counts = self._counts
        if counts is None:
            async with self._seed_lock:
                if self._counts is None:
                    self._counts = await self.store.rejected_counts()
                counts = self._counts
        n = counts.get(subscription, 0)
        if n >= self.limit:
            now = time.monotonic()
            if now - self._rechecked.get(subscription, -self.RECHECK_EVERY) >= self.RECHECK_EVERY:
                self._rechecked[subscription] = now
                counts = self._counts = await self.store.rejected_counts()
                n = counts.get(subscription, 0)
            if n >= self.limit:
                self._drop(subscription, now)
                return False
        counts[subscription] = n + 1
        return True

    def _drop(self, subscription: str | None, now: float) -> None:
        name = subscription or ""
        metrics.labelled(metrics.REJECTED_DROPPED, name).inc()
        self._dropped[subscription] = self._dropped.get(subscription, 0) + 1
        if now - self._logged.get(subscription, -self.RECHECK_EVERY) >= self.RECHECK_EVERY:
            self._logged[subscription] = now
            logger.warning("rejected store full for this subscription: refusals are answered but not kept",
                           extra={"subscription": name, "limit": self.limit,
                                  "dropped": self._dropped.pop(subscription)})


# Control characters (C0, DEL, C1) as %XX: a path or reason that carries them (a NUL the database
# cannot store in text, an escape sequence for the operator's terminal) is kept visibly and safely. A
# replayed record meets the same refusal: '%' is not allowed in an id.
_CONTROL = {c: f"%{c:02X}" for c in (*range(0x20), *range(0x7F, 0xA0))}
def _future(value: Any, skew: timedelta) -> str:
    return (f"{str(value)[:40]!r} is more than {int(skew.total_seconds())} s in the future "
            "(sender clock wrong? RELAY_MAX_CLOCK_SKEW)")


def _check_nested_times(obj: Mapping[str, Any], level: str, horizon: datetime, skew: timedelta) -> None:
    """EVSE and connector ``last_updated`` of a Location or EVSE body: the merge versions those levels
    by them, so a future one would freeze that EVSE or connector as a top-level one would the object.

    Validated bodies carry canonical UTC DateTimes, whose text order is their time order (to the second):
    one string comparison per level, no parsing on the happy path.
    """
    evses = (obj,) if level == "evse" else obj.get("evses") if level == "location" else None
    if not evses or not isinstance(evses, list | tuple):
        return
    limit = format_datetime(horizon)
    for i, evse in enumerate(evses):
        if not isinstance(evse, dict):
            continue
        where = "" if level == "evse" else f"evses[{i}]."
        value = evse.get("last_updated")
        if level == "location" and isinstance(value, str) and value > limit:
            raise OcpiError.invalid(f"{where}last_updated", _future(value, skew))
        conns = evse.get("connectors")
        for j, conn in enumerate(conns if isinstance(conns, list) else ()):
            value = conn.get("last_updated") if isinstance(conn, dict) else None
            if isinstance(value, str) and value > limit:
                raise OcpiError.invalid(f"{where}connectors[{j}].last_updated", _future(value, skew))


def _rejected_row(push: Push, http_status: int, status_code: int, reason: str) -> NewRejected:
    return NewRejected(
        received_at=push.received_at, subscription=push.source.name, origin=push.origin, method=push.method,
        path=push.path.translate(_CONTROL), module=push.address.module, http_status=http_status,
        status_code=status_code, reason=reason.translate(_CONTROL), body=push.body, request_id=push.request_id,
    )


class _RejectOp:
    reads: tuple[StateKey, ...] = ()

    def __init__(self, row: NewRejected, outcome: Outcome) -> None:
        self.row, self.outcome = row, outcome
        self.size = len(row.body)  # bytes held in the group-commit queue

    def plan(self, states: Mapping[StateKey, StoredState | None]) -> Plan:
        return Plan(rejected=self.row, result=self.outcome)


class PushOperation:
    """Decides one push against the current state inside the group commit (under the append lock)."""

    def __init__(self, ing: Ingestor, push: Push, key: StateKey, obj: dict[str, Any], lu: datetime | None,
                 config: RoutingConfig) -> None:
        self.push, self.key, self.obj, self.lu, self.config = push, key, obj, lu, config
        self.horizon = push.received_at + ing.clock_skew
        self.max_object_bytes = ing.max_object_bytes
        self.reads = (key,)
        self.size = len(push.body)  # bytes held in the group-commit queue

    def plan(self, states: Mapping[StateKey, StoredState | None]) -> Plan:
        push, key, addr = self.push, self.key, self.push.address
        st = states.get(key)
        stored = st.object if st is not None and not st.deleted else None
        method = push.merge_method or push.method
        if addr.module == "cdrs" and stored is not None:
            if stored == self.obj:
                return self._identical()
            reason = f"id: CDR {key.object_id} is already stored with different content (CDRs are immutable)"
            out = Outcome(400, INVALID_PARAMS, reason, "rejected", key=key)
            if push.replay_of is not None:
                return Plan(result=out)
            return Plan(rejected=_rejected_row(push, 400, INVALID_PARAMS, reason), result=out)
        if push.method == "DELETE":
            if stored is None:
                return self._identical()
            decision = merge.Decision(merge.APPLIED, stored, st.last_updated if st else None)
        elif addr.level == "evse":
            decision = merge.decide_evse(stored, method, addr.evse_uid or "", self.obj, self.lu, push.received_at,
                                         self.horizon)
        elif addr.level == "connector":
            decision = merge.decide_connector(stored, method, addr.evse_uid or "", addr.connector_id or "", self.obj,
                                              self.lu, push.received_at, self.horizon)
        else:
            lu = self.lu
            decision = merge.decide_object(stored, method, self.obj, lu, push.received_at, self.horizon)
            if addr.module in ("notifications", "chargestationnotifications") and decision.object is not None:
                # notifications carry no version: store them exactly as received
                decision = merge.Decision(decision.status, self.obj, None)
        if decision.status == merge.IDENTICAL or (decision.status == merge.STALE and push.origin == "pull"):
            return self._identical(decision.status)
        applied = decision.status == merge.APPLIED
        # a pulled session merges as PATCH and is recorded (and mirrored to partners) as one
        action = ACTIONS[method]
        obj_text = None
        if applied and decision.object is not None:
            obj_raw = orjson.dumps(decision.object)
            if len(obj_raw) > self.max_object_bytes and push.method != "DELETE":
                return self._too_large(len(obj_raw))
            obj_text = obj_raw.decode()
        event = NewEvent(
            module=key.module, action=action, country_code=key.country_code, party_id=key.party_id,
            object_id=key.object_id, evse_uid=decision.evse_uid or addr.evse_uid, connector_id=addr.connector_id,
            last_updated=self.lu if not applied else (self.lu or decision.last_updated),
            received_at=push.received_at, origin=push.origin, subscription=push.source.name,
            request_id=push.request_id, status=decision.status, body=push.body.decode("utf-8", "replace"),
            body_hash=hashlib.sha256(push.body).hexdigest(), object=obj_text,
        )
        plan = Plan(event=event)
        if applied and decision.object is not None:
            plan.states.append(StateWrite(key, decision.object, hashlib.sha256(obj_text.encode()).hexdigest()
                                          if obj_text else "", decision.last_updated, push.method == "DELETE",
                                          obj_text))
            object_key = key.as_str()
            for rule, target in route(self.config, key.module, action, key.country_code, key.party_id, decision.object,
                                      push.source.name):
                plan.deliveries.append(NewDelivery(target.name, rule.name, object_key))
        if push.replay_of is not None:
            plan.rejected_replay = (push.replay_of, datetime.now(UTC))
        msg = {"applied": "Success", "stale": "Success (stale: older than the stored state, kept, not applied)",
               "unmatched": f"Success (kept as unmatched: {decision.note})"}[decision.status]
        plan.result = Outcome(200, SUCCESS, msg, decision.status, key=key,
                              cdr_id=key.object_id if key.module == "cdrs" else None)
        return plan

    def _too_large(self, size: int) -> Plan:
        """Refuse a push whose merged object would pass the cap: PATCHes adding keys could otherwise grow
        one object without bound, and every event carrying it past what stream clients can receive."""
        key, push = self.key, self.push
        reason = (f"object: the merged {key.module} object {format_cpo(key.country_code, key.party_id)} "
                  f"{key.object_id} would be {size} bytes, more than RELAY_MAX_OBJECT_BYTES ({self.max_object_bytes})")
        out = Outcome(400, INVALID_PARAMS, reason, "rejected", key=key)
        if push.replay_of is not None:
            return Plan(result=out)
        return Plan(rejected=_rejected_row(push, 400, INVALID_PARAMS, reason), result=out)

    def _identical(self, status: str = merge.IDENTICAL) -> Plan:
        msg = "Success (identical to the stored state, nothing changed)" if status == merge.IDENTICAL else \
            "Success (not newer than the stored state)"
        plan = Plan(result=Outcome(200, SUCCESS, msg, merge.IDENTICAL, key=self.key,
                                   cdr_id=self.key.object_id if self.key.module == "cdrs" else None))
        if self.push.replay_of is not None:
            plan.rejected_replay = (self.push.replay_of, datetime.now(UTC))
        return plan
