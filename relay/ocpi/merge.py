"""How a push changes the stored state: PATCH merge, EVSE/connector into the parent, stale and
identical decisions. Pure functions over plain dicts; no I/O.

Versioning follows DESIGN "Idempotency and order": ``last_updated`` is the version when the push has
one (older than stored -> stale, kept but not applied); a PATCH without it (legal in 2.1.1, what
GreenFlux sends for EVSE status) is ordered by receive time, which then becomes its ``last_updated``.

A stored ``last_updated`` beyond the ``horizon`` (receive time plus the allowed clock skew) is no
version at all: ingest refuses such dates now, but a state written before it did must not make every
later push "stale" for good, so it loses to any push, and never wins as a parent's ``last_updated``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

APPLIED = "applied"
STALE = "stale"
IDENTICAL = "identical"
UNMATCHED = "unmatched"


@dataclass(frozen=True, slots=True)
class Decision:
    status: str  # applied | stale | identical | unmatched
    object: dict[str, Any] | None = None  # the whole new state object (applied only)
    last_updated: datetime | None = None  # of the whole object after applying
    evse_uid: str | None = None  # the stored EVSE uid the push was applied to (alias-resolved)
    note: str = ""


def _fmt(dt: datetime) -> str:
    s = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if dt.microsecond:
        s += f".{dt.microsecond:06d}".rstrip("0")
    return s + "Z"


def parse_stored_time(value: Any) -> datetime | None:
    """``last_updated`` of a stored (already normalised) object."""
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _without_lu(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k != "last_updated"}


def _trusted(dt: datetime | None, horizon: datetime | None) -> datetime | None:
    return None if dt is None or (horizon is not None and dt > horizon) else dt


def _later(a: datetime | None, b: datetime | None, horizon: datetime | None = None) -> datetime | None:
    a, b = _trusted(a, horizon), _trusted(b, horizon)
    if a is None:
        return b
    if b is None:
        return a
    return a if a >= b else b


def _versioned(
    stored: dict[str, Any] | None, new: dict[str, Any], lu: datetime | None, received_at: datetime,
    horizon: datetime | None,
) -> tuple[str, dict[str, Any]]:
    """Decide stale/identical/applied for one object level; returns (status, object with last_updated)."""
    if stored is not None and lu is not None:
        stored_lu = _trusted(parse_stored_time(stored.get("last_updated")), horizon)
        if stored_lu is not None and lu < stored_lu:
            return STALE, stored
    if lu is None:
        if stored is not None and _without_lu(new) == _without_lu(stored):
            return IDENTICAL, stored
        new = dict(new)
        new["last_updated"] = _fmt(received_at)
        return APPLIED, new
    if stored is not None and new == stored:
        return IDENTICAL, stored
    return APPLIED, new


def decide_object(
    stored: dict[str, Any] | None, method: str, incoming: dict[str, Any], lu: datetime | None, received_at: datetime,
    horizon: datetime | None = None,
) -> Decision:
    """Top-level object (Location, Session, Tariff, notification): PUT replaces, PATCH merges shallowly."""
    new = {**stored, **incoming} if (method == "PATCH" and stored is not None) else dict(incoming)
    status, obj = _versioned(stored, new, lu, received_at, horizon)
    if status != APPLIED:
        return Decision(status)
    return Decision(APPLIED, obj, parse_stored_time(obj.get("last_updated")))


_SUFFIX = re.compile(r"[-*_](\d{1,3})$")
_NON_ALNUM = re.compile(r"[^0-9A-Za-z]")


def _norm(value: Any) -> str:
    return _NON_ALNUM.sub("", value).upper() if isinstance(value, str) else ""


def match_evse(evses: list[Any], uid: str) -> int | None:
    """Index of the EVSE a path uid addresses: exact ``uid`` first, then an unambiguous alias.

    GreenFlux PATCHes ``BE-BEC-E041503001-1`` into a location whose EVSE uid is
    ``BE-BEC-E041503001`` (DESIGN, Inbound HTTP): compare with separators removed, against ``uid``
    and ``evse_id``, with and without a short numeric suffix. Two candidates = no match.
    """
    for i, e in enumerate(evses):
        if isinstance(e, dict) and e.get("uid") == uid:
            return i
    wanted = {_norm(uid)}
    m = _SUFFIX.search(uid)
    if m:
        wanted.add(_norm(uid[: m.start()]))
    wanted.discard("")
    hits = [
        i for i, e in enumerate(evses)
        if isinstance(e, dict) and (_norm(e.get("uid")) in wanted or _norm(e.get("evse_id")) in wanted)
    ]
    return hits[0] if len(hits) == 1 else None


def _with_evse(location: dict[str, Any], idx: int | None, evse: dict[str, Any],
               horizon: datetime | None) -> dict[str, Any]:
    evses = list(location.get("evses") or [])
    if idx is None:
        evses.append(evse)
    else:
        evses[idx] = evse
    new = dict(location)
    new["evses"] = evses
    lu = _later(parse_stored_time(location.get("last_updated")), parse_stored_time(evse.get("last_updated")), horizon)
    if lu is not None:
        new["last_updated"] = _fmt(lu)
    return new


def decide_evse(
    location: dict[str, Any] | None, method: str, evse_uid: str, incoming: dict[str, Any],
    lu: datetime | None, received_at: datetime, horizon: datetime | None = None,
) -> Decision:
    """EVSE-level PUT/PATCH into the stored parent Location; its ``last_updated`` moves with it."""
    if location is None:
        return Decision(UNMATCHED, note=f"location unknown for EVSE {evse_uid}")
    evses = location.get("evses") or []
    idx = match_evse(evses, evse_uid)
    stored = evses[idx] if idx is not None else None
    if stored is None and method == "PATCH":
        return Decision(UNMATCHED, note=f"EVSE {evse_uid} not found in location")
    d = decide_object(stored, method, incoming, lu, received_at, horizon)
    if d.status != APPLIED:
        return Decision(d.status, evse_uid=stored.get("uid") if stored else evse_uid)
    assert d.object is not None
    new_loc = _with_evse(location, idx, d.object, horizon)
    return Decision(APPLIED, new_loc, parse_stored_time(new_loc.get("last_updated")), d.object.get("uid", evse_uid))


def decide_connector(
    location: dict[str, Any] | None, method: str, evse_uid: str, connector_id: str, incoming: dict[str, Any],
    lu: datetime | None, received_at: datetime, horizon: datetime | None = None,
) -> Decision:
    """Connector-level PUT/PATCH into its EVSE and Location; both ancestors' ``last_updated`` move."""
    if location is None:
        return Decision(UNMATCHED, note=f"location unknown for connector {evse_uid}/{connector_id}")
    evses = location.get("evses") or []
    idx = match_evse(evses, evse_uid)
    if idx is None:
        return Decision(UNMATCHED, note=f"EVSE {evse_uid} not found in location")
    evse = evses[idx]
    connectors = list(evse.get("connectors") or [])
    cidx = next((i for i, c in enumerate(connectors) if isinstance(c, dict) and c.get("id") == connector_id), None)
    stored = connectors[cidx] if cidx is not None else None
    if stored is None and method == "PATCH":
        return Decision(UNMATCHED, evse_uid=evse.get("uid"), note=f"connector {connector_id} not found")
    d = decide_object(stored, method, incoming, lu, received_at, horizon)
    if d.status != APPLIED:
        return Decision(d.status, evse_uid=evse.get("uid"))
    assert d.object is not None
    if cidx is None:
        connectors.append(d.object)
    else:
        connectors[cidx] = d.object
    new_evse = dict(evse)
    new_evse["connectors"] = connectors
    evse_lu = _later(parse_stored_time(evse.get("last_updated")), parse_stored_time(d.object.get("last_updated")),
                     horizon)
    if evse_lu is not None:
        new_evse["last_updated"] = _fmt(evse_lu)
    new_loc = _with_evse(location, idx, new_evse, horizon)
    return Decision(APPLIED, new_loc, parse_stored_time(new_loc.get("last_updated")), evse.get("uid"))
