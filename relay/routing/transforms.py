"""Per-rule transforms of a forwarded object: keep-only, drop, keyed pseudonymisation, rounding, coarsening.

Field paths are dotted (``cdr_token.uid``) with ``*`` for every list item or mapping value
(``evses.*.coordinates.latitude``); paths that are missing in an object are skipped.
Where a value cannot be rounded or coarsened it becomes None: a precise value never leaves by accident.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from relay.ocpi.times import format_datetime
from relay.routing.model import TIME_UNITS, Transform, split_path

_NOTHING = object()  # _keep's answer when no kept path reaches a value


def apply_transforms(transforms: tuple[Transform, ...], obj: Mapping[str, Any], target_name: str) -> dict[str, Any]:
    """A transformed deep copy of ``obj``; the steps run in order and ``obj`` is never changed.

    ``target_name`` salts the pseudonyms, so two targets cannot join their copies on them.
    """
    result: dict[str, Any] = _copy(obj)
    for t in transforms:
        paths = [split_path(f) for f in t.fields]
        if t.kind == "keep":
            kept = _keep(result, paths)
            result = kept if isinstance(kept, dict) else {}
        elif t.kind == "drop":
            for parts in paths:
                _drop(result, parts)
        else:
            fn = _leaf_function(t, target_name)
            for parts in paths:
                _update(result, parts, fn)
    return result


def transform_value(transforms: tuple[Transform, ...], field_paths: tuple[str, ...], value: Any,
                    target_name: str) -> Any:
    """``value`` as the rule leaves it where it sits at each of ``field_paths`` (``evses.*.uid``);
    None when any of them removes it or two of them disagree.

    Used for values that travel outside the object, such as the ids in a mirrored path: each is put
    alone at its field path, the whole rule runs over that, and what comes out is read back. A value
    that a path changes (pseudonymises) is taken in its changed form, so the most private reading wins.
    """
    changed: list[Any] = []
    for path in field_paths:
        holder: Any = value
        for part in reversed(split_path(path)):
            holder = [holder] if part == "*" else {part: holder}
        found = values_at(apply_transforms(transforms, holder, target_name), path)
        if len(found) != 1 or found[0] is None:
            return None
        if found[0] != value:
            changed.append(found[0])
    if not changed:
        return value
    return changed[0] if all(c == changed[0] for c in changed) else None


def time_unit(transforms: tuple[Transform, ...]) -> str | None:
    """The coarsest unit the rule coarsens times to (``minute`` < ``hour`` < ``day``), None if it does not."""
    units = [t.unit or "hour" for t in transforms if t.kind == "coarsen_time"]
    return max(units, key=TIME_UNITS.index) if units else None


def values_at(obj: Any, path: str) -> list[Any]:
    """Every value found at ``path`` in ``obj`` (several when the path has ``*``); [] when missing."""
    found = [obj]
    for part in split_path(path):
        found = [c[k] for node in found for c, k in _children(node, part)]
    return found


def pseudonym(key: str, target_name: str, value: Any) -> str | None:
    """``ps_`` + 32 hex of HMAC-SHA256(key, target + NUL + str(value)); None stays None.

    Lists and mappings are stringified as canonical JSON (sorted keys) so equal content gives equal output.
    """
    if value is None:
        return None
    if isinstance(value, dict | list):
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    else:
        text = str(value)
    message = target_name.encode() + b"\x00" + text.encode()
    return "ps_" + hmac.new(key.encode(), message, hashlib.sha256).hexdigest()[:32]


def round_value(value: Any, decimals: int) -> Any:
    """Round a number or numeric string half-up to ``decimals``, keeping its type; else None.

    A string stays a string with exactly ``decimals`` digits (``"52.160418"`` → ``"52.16"``), as OCPI
    writes coordinates; ints are already whole and stay as they are.
    """
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value
    quantum = Decimal(1).scaleb(-decimals)
    try:
        number = Decimal(repr(value) if isinstance(value, float) else str(value).strip())
        if not number.is_finite():
            return None
        rounded = number.quantize(quantum, rounding=ROUND_HALF_UP)
    except (InvalidOperation, ValueError):
        return None
    return float(rounded) if isinstance(value, float) else str(rounded) if isinstance(value, str) else None


def coarsen_time(value: Any, unit: str) -> str | None:
    """Truncate an ISO 8601 DateTime to the minute, hour or day, in UTC with ``Z``; else None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    # OCPI DateTimes are UTC; a value without offset is read as UTC, one with an offset converted.
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    moment = moment.replace(second=0, microsecond=0)
    if unit in ("hour", "day"):
        moment = moment.replace(minute=0)
    if unit == "day":
        moment = moment.replace(hour=0)
    return format_datetime(moment)


def _leaf_function(t: Transform, target_name: str) -> Callable[[Any], Any]:
    if t.kind == "pseudonymise":
        if t.key is None:
            raise ValueError("a pseudonymise transform needs a key")
        key = t.key.reveal()
        return lambda v: pseudonym(key, target_name, v)
    if t.kind == "round":
        decimals = 2 if t.decimals is None else t.decimals
        return lambda v: round_value(v, decimals)
    if t.kind == "coarsen_time":
        unit = t.unit or "hour"
        return lambda v: coarsen_time(v, unit)
    raise ValueError(f"unknown transform kind {t.kind!r}")


def _copy(value: Any) -> Any:
    # JSON-shaped data only: cheaper than copy.deepcopy and turns any Mapping into a plain dict.
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value


def _children(node: Any, part: str) -> Iterator[tuple[Any, Any]]:
    """(container, key) pairs that ``part`` names inside ``node``."""
    if isinstance(node, dict):
        if part == "*":
            yield from ((node, k) for k in list(node))
        elif part in node:
            yield node, part
    elif isinstance(node, list) and part == "*":
        yield from ((node, i) for i in range(len(node)))


def _update(node: Any, parts: tuple[str, ...], fn: Callable[[Any], Any]) -> None:
    head, rest = parts[0], parts[1:]
    for container, key in list(_children(node, head)):
        if rest:
            _update(container[key], rest, fn)
        else:
            container[key] = fn(container[key])


def _drop(node: Any, parts: tuple[str, ...]) -> None:
    head, rest = parts[0], parts[1:]
    if rest:
        for container, key in list(_children(node, head)):
            _drop(container[key], rest)
    elif head == "*" and isinstance(node, dict | list):
        node.clear()
    elif isinstance(node, dict):
        node.pop(head, None)


def _keep(node: Any, paths: list[tuple[str, ...]]) -> Any:
    """The parts of ``node`` the paths reach, with only the parents needed to hold them."""
    if any(not p for p in paths):
        return node  # a path ends here: the whole value is kept
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            tails = [p[1:] for p in paths if p[0] in ("*", key)]
            if tails and (kept := _keep(value, tails)) is not _NOTHING:
                out[key] = kept
        return out or _NOTHING
    if isinstance(node, list):
        tails = [p[1:] for p in paths if p[0] == "*"]
        items = [k for k in (_keep(v, tails) for v in node) if k is not _NOTHING] if tails else []
        return items or _NOTHING
    return _NOTHING
