"""OCPI 2.1.1 request validation: path ids, DateTimes and object bodies, as pure functions.

Every refusal is ``OcpiError.invalid(field_path, reason)`` naming the dotted field path with list
indexes (``evses[1].connectors[0].standard``). Bodies are checked against the compiled tables of
``relay.ocpi.schema`` by one recursive walker; this runs on every push, so the happy path avoids
building paths, regexes and copies it does not need.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

from relay.errors import OcpiError
from relay.ocpi import schema
from relay.ocpi.times import format_datetime

__all__ = [
    "check_id", "check_path_ids", "parse_datetime", "segment_problem", "validate_object",
]


# Modules whose bodies have no published schema: stored as received (DESIGN "Inbound HTTP").
_UNTYPED_MODULES = frozenset({"chargestationnotifications", "notifications"})

# Path segments per module: (name, max length), and how many of them are required.
_PATH_IDS: dict[str, tuple[tuple[tuple[str, int], ...], int, bool]] = {
    # module: (segments, minimum count, country_code/party_id required)
    "locations": ((("location_id", 39), ("evse_uid", 39), ("connector_id", 36)), 1, True),
    "sessions": ((("session_id", 36),), 1, True),
    "tariffs": ((("tariff_id", 36),), 1, True),
    "cdrs": ((("cdr_id", 36),), 0, False),
    # GreenFlux notification ids are digits or GUIDs; no OCPI length exists: the store's id column (64).
    "chargestationnotifications": ((("notification_id", 64),), 0, False),
    "notifications": ((("notification_id", 64),), 0, False),
}

# Refused in path-like ids besides whitespace and control characters: they change a URL's meaning.
_ID_FORBIDDEN = frozenset(" /?#%")
_ID_CHARSET = "must be printable ASCII without whitespace, '/', '?', '#' or '%'"
_DOT_SEGMENTS = frozenset({".", ".."})
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_DIGITS = "0123456789"
# Every valid HH:MM: a set lookup is the cheapest exact check on the hot path.
_HHMM = frozenset(f"{h:02d}:{m:02d}" for h in range(24) for m in range(60))

_DT_RE = re.compile(
    r"(\d{4}-\d{2}-\d{2})([Tt ])(\d{2}:\d{2}:\d{2})(?:[.,](\d{1,12}))?([Zz]|[+-]\d{2}(?::?\d{2})?)?",
    re.ASCII,
)
_COORD_RE = re.compile(r"-?\d{1,3}(?:\.\d{1,12})?", re.ASCII)
_LAT_STRICT_RE = re.compile(r"-?\d{1,2}\.\d{6}", re.ASCII)
_LON_STRICT_RE = re.compile(r"-?\d{1,3}\.\d{6}", re.ASCII)
_fromiso = datetime.fromisoformat


class _Invalid(Exception):
    """Internal refusal; the path is built while unwinding, so the happy path never builds one."""

    def __init__(self, reason: str, path: str = "") -> None:
        self.reason = reason
        self.path = path

    def prefix(self, part: str) -> None:
        path = self.path
        if not path:
            self.path = part
        elif path[0] == "[":
            self.path = part + path
        else:
            self.path = f"{part}.{path}"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _show(value: object) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:40] + "...") if len(text) > 40 else repr(text)


# ---------------------------------------------------------------------------------------------
# DateTime


def _parse_dt(s: str, strict: bool) -> tuple[datetime, bool]:
    """Parse an OCPI DateTime to aware UTC; the flag says ``s`` is already the canonical form."""
    if (
        len(s) == 20
        and s[19] == "Z"
        and s[10] == "T"
        and s[4] == "-"
        and s[7] == "-"
        and s[13] == ":"
        and s[16] == ":"
    ):
        try:
            return _fromiso(s), True
        except ValueError:
            raise _Invalid(f"{_show(s)} is not a valid DateTime") from None
    m = _DT_RE.fullmatch(s)
    if m is None:
        raise _Invalid(f"{_show(s)} is not a valid DateTime (expected YYYY-MM-DDTHH:MM:SS[.fff]Z)")
    day, sep, clock, frac, tz = m.groups()
    if strict and sep != "T":
        raise _Invalid(f"{_show(s)} is not a valid DateTime (date and time must be separated by 'T')")
    try:
        dt = _fromiso(f"{day}T{clock}.{frac[:6]}" if frac else f"{day}T{clock}")
    except ValueError:
        raise _Invalid(f"{_show(s)} is not a valid DateTime") from None
    if tz is not None and tz not in ("Z", "z"):
        hours, minutes = int(tz[1:3]), int(tz[-2:]) if len(tz) > 3 else 0
        if hours > 23 or minutes > 59:
            raise _Invalid(f"{_show(s)} is not a valid DateTime (bad UTC offset)")
        offset = (hours * 60 + minutes) * (1 if tz[0] == "+" else -1)
        if offset:
            if strict:
                raise _Invalid(f"{_show(s)} is not in UTC (strict mode refuses UTC offsets)")
            try:
                dt -= timedelta(minutes=offset)
            except OverflowError:
                raise _Invalid(f"{_show(s)} is not a valid DateTime") from None
    return dt.replace(tzinfo=UTC), False


def parse_datetime(value: object, field: str, *, strict: bool = False) -> datetime:
    """Parse an OCPI DateTime into an aware UTC datetime, or raise ``OcpiError.invalid(field, ...)``.

    Liberal (default): fractions, no designator (UTC implied), ``+00:00`` and other offsets (converted).
    Strict: a non-zero UTC offset and a space instead of ``T`` are refused.
    """
    if not isinstance(value, str):
        raise OcpiError.invalid(field, f"must be a DateTime string, not {_json_type(value)}")
    try:
        return _parse_dt(value, strict)[0]
    except _Invalid as e:
        raise OcpiError.invalid(field, e.reason) from None


# ---------------------------------------------------------------------------------------------
# Checkers: (value, arg, strict) -> normalised value, raising _Invalid with an empty path.

Checker = Callable[[Any, Any, bool], Any]


def _c_str(v: Any, maxlen: int, strict: bool) -> Any:
    if not isinstance(v, str):
        raise _Invalid(f"must be a string, not {_json_type(v)}")
    if len(v) > maxlen:
        raise _Invalid(f"is {len(v)} characters long, at most {maxlen} allowed")
    return v


def _id_problem(v: str, maxlen: int) -> str | None:
    n = len(v)
    if n == 0:
        return "must not be empty"
    if n > maxlen:
        return f"is {n} characters long, at most {maxlen} allowed"
    if not (v.isascii() and v.isprintable()) or not _ID_FORBIDDEN.isdisjoint(v):
        bad = next((c for c in v if c < " " or "\x7f" <= c <= "\x9f"), None)
        if bad is not None:
            return f"must not contain control characters (U+{ord(bad):04X})"
        return _ID_CHARSET
    if n <= 2 and v in _DOT_SEGMENTS:
        return f"must not be {v!r} (a dot segment changes the meaning of a URL)"
    return None


def segment_problem(value: object) -> str | None:
    """Why ``value`` cannot be one percent-encoded URL path segment (None when it can): not a
    string, empty, ``.`` or ``..``, or holding a control character. Checked before anything is sent
    to a partner, so a stored or transformed value can never point a request elsewhere."""
    if not isinstance(value, str):
        return f"must be a string, not {_json_type(value)}"
    if not value:
        return "must not be empty"
    if value in _DOT_SEGMENTS:
        return f"must not be {value!r} (a dot segment changes the meaning of a URL)"
    if not value.isprintable():
        return "must not contain control characters"
    return None


def check_id(field: str, value: str, maxlen: int) -> None:
    """``OcpiError.invalid(field, ...)`` unless ``value`` is a safe id of at most ``maxlen``
    characters (body ids that become stored object ids, such as a notification's)."""
    problem = _id_problem(value, maxlen)
    if problem is not None:
        raise OcpiError.invalid(field, problem)


def _c_id(v: Any, maxlen: int, strict: bool) -> Any:
    if not isinstance(v, str):
        raise _Invalid(f"must be a string, not {_json_type(v)}")
    problem = _id_problem(v, maxlen)
    if problem is not None:
        raise _Invalid(problem)
    return v


def _c_label(v: Any, maxlen: int, strict: bool) -> Any:
    # The spec's own examples send floor_level / physical_reference as numbers (brief §11.8).
    t = type(v)
    if not strict and (t is int or t is float):
        v = str(v)
    return _c_str(v, maxlen, strict)


def _c_enum(v: Any, arg: tuple[frozenset[str], str], strict: bool) -> Any:
    if isinstance(v, str) and v in arg[0]:
        return v
    if not isinstance(v, str):
        raise _Invalid(f"must be a string ({arg[1]}), not {_json_type(v)}")
    raise _Invalid(f"{_show(v)} is not a valid {arg[1]}")


def _c_enums(v: Any, arg: tuple[frozenset[str], str, bool], strict: bool) -> Any:
    if not isinstance(v, list):
        raise _Invalid(f"must be a list, not {_json_type(v)}")
    values, name, keep_unknown = arg
    for i, x in enumerate(v):
        if not isinstance(x, str):
            raise _Invalid(f"must be a string ({name}), not {_json_type(x)}", f"[{i}]")
        # An unknown value in an optional list is kept, never a reason to lose the object (brief §3.6).
        if not keep_unknown and x not in values:
            raise _Invalid(f"{_show(x)} is not a valid {name}", f"[{i}]")
    return v[:]


def _c_strs(v: Any, maxlen: int, strict: bool) -> Any:
    if not isinstance(v, list):
        raise _Invalid(f"must be a list, not {_json_type(v)}")
    for i, x in enumerate(v):
        try:
            _c_str(x, maxlen, strict)
        except _Invalid as e:
            e.prefix(f"[{i}]")
            raise
    return v[:]


def _c_dt(v: Any, arg: None, strict: bool) -> Any:
    if not isinstance(v, str):
        raise _Invalid(f"must be a DateTime string, not {_json_type(v)}")
    dt, canonical = _parse_dt(v, strict)
    return v if canonical else format_datetime(dt)


def _check_number(v: Any, rng: tuple[float, float | None] | None) -> None:
    t = type(v)
    if t is float:
        if not math.isfinite(v):
            raise _Invalid(f"{v} is not a finite number")
    elif t is not int:
        raise _Invalid(f"must be a number, not {_json_type(v)}")
    if rng is not None:
        lo, hi = rng
        if v < lo:
            raise _Invalid(f"{v} is negative" if lo == 0 else f"{v} is out of range ({lo}..{hi})")
        if hi is not None and v > hi:
            raise _Invalid(f"{v} is out of range ({lo}..{hi})")


def _c_number(v: Any, rng: tuple[float, float | None] | None, strict: bool) -> Any:
    _check_number(v, rng)
    return v


def _c_int(v: Any, rng: tuple[int, int | None] | None, strict: bool) -> Any:
    t = type(v)
    if t is float:
        if not v.is_integer():
            raise _Invalid(f"{v} is not an integer")
        v = int(v)
    elif t is not int:
        raise _Invalid(f"must be an integer, not {_json_type(v)}")
    _check_number(v, rng)
    return v


def _c_bool(v: Any, arg: None, strict: bool) -> Any:
    # GreenFlux sends booleans as "true"/"false" strings (brief §14 #10); liberal keeps them as sent.
    if type(v) is bool or (not strict and v in ("true", "false")):
        return v
    raise _Invalid(f"must be a boolean, not {_json_type(v)}")


def _c_code(v: Any, lengths: tuple[int, ...], what: str) -> Any:
    if not isinstance(v, str) or len(v) not in lengths or not (v.isascii() and v.isalpha()):
        raise _Invalid(f"{_show(v)} is not a valid {what}")
    return v


def _c_country(v: Any, arg: None, strict: bool) -> Any:
    # The 2.1.1 examples themselves use alpha-2 ("BE") where alpha-3 is required (brief §11.9).
    return _c_code(v, (3,) if strict else (2, 3), "ISO 3166-1 alpha-3 country code")


def _c_currency(v: Any, arg: None, strict: bool) -> Any:
    return _c_code(v, (3,), "ISO 4217 currency code")


def _c_language(v: Any, arg: None, strict: bool) -> Any:
    return _c_code(v, (2,), "ISO 639-1 language code")


def _c_hhmm(v: Any, arg: None, strict: bool) -> Any:
    # ([0-1][0-9]|2[0-3]):[0-5][0-9], the bugfix-branch regex (brief §12), without a regex.
    if (
        isinstance(v, str)
        and len(v) == 5
        and v[2] == ":"
        and ((v[0] in "01" and v[1] in _DIGITS) or (v[0] == "2" and v[1] in "0123"))
        and v[3] in "012345"
        and v[4] in _DIGITS
    ):
        return v
    raise _Invalid(f"{_show(v)} is not a valid time (expected HH:MM, 00:00..23:59)")


def _c_date(v: Any, arg: None, strict: bool) -> Any:
    if isinstance(v, str) and len(v) == 10 and v.isascii() and v[4] == "-" and v[7] == "-":
        try:
            date.fromisoformat(v)
            return v
        except ValueError:
            pass
    raise _Invalid(f"{_show(v)} is not a valid date (expected YYYY-MM-DD)")


def _coordinate(v: Any, limit: int, strict: bool, strict_re: re.Pattern[str], what: str) -> Any:
    t = type(v)
    if t is str:
        exact = strict_re.fullmatch(v) is not None
        if not exact and _COORD_RE.fullmatch(v) is None:
            raise _Invalid(f"{_show(v)} is not a valid {what} (expected a decimal string like '52.160418')")
        x = float(v)
        if not -limit <= x <= limit:
            raise _Invalid(f"{v} is out of range (-{limit}..{limit})")
        if exact:
            return v
        if strict:
            raise _Invalid(f"{_show(v)} must have exactly 6 decimals (strict mode)")
        return f"{x:.6f}"
    if t is int or t is float:
        if strict:
            raise _Invalid("must be a string with 6 decimals, not a JSON number (strict mode)")
        if not (math.isfinite(v) and -limit <= v <= limit):
            raise _Invalid(f"{v} is out of range (-{limit}..{limit})")
        return f"{v:.6f}"
    raise _Invalid(f"must be a string, not {_json_type(v)}")


def _c_lat(v: Any, arg: None, strict: bool) -> Any:
    return _coordinate(v, 90, strict, _LAT_STRICT_RE, "latitude")


def _c_lon(v: Any, arg: None, strict: bool) -> Any:
    return _coordinate(v, 180, strict, _LON_STRICT_RE, "longitude")


def _c_obj(v: Any, spec: _Spec, strict: bool) -> Any:
    return _walk(spec, v, True, strict)


def _c_list(v: Any, arg: tuple[_Spec, bool], strict: bool) -> Any:
    if not isinstance(v, list):
        raise _Invalid(f"must be a list, not {_json_type(v)}")
    spec, nonempty = arg
    if nonempty and not v:
        raise _Invalid("must contain at least one element")
    try:
        return [_walk(spec, x, True, strict) for x in v]
    except _Invalid:
        pass
    # Error path only: walk again to learn which element failed.
    for i, x in enumerate(v):
        try:
            _walk(spec, x, True, strict)
        except _Invalid as e:
            e.prefix(f"[{i}]")
            raise
    raise AssertionError("unreachable")  # pragma: no cover


def _c_cost(v: Any, price: _Spec, strict: bool) -> Any:
    # 2.1.1 number, or the 2.2 Price object {excl_vat, incl_vat}.
    if isinstance(v, dict):
        return _walk(price, v, True, strict)
    _check_number(v, (0, None))
    return v


def _copy(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_copy(x) for x in v]
    return v


# ---------------------------------------------------------------------------------------------
# Compiled tables and the walker


# Inline accept paths in _walk (0: always call the checker).
_FAST_STR, _FAST_ENUM, _FAST_INT, _FAST_NUMBER = 1, 2, 3, 4
_NO_LIMIT = sys.float_info.max  # finite, so inf still fails the inline range comparison

Field = tuple[Checker, Any, int, int, Any]


class _Spec:
    """One compiled object table plus its required fields and cross-field rule."""

    __slots__ = ("alternatives", "fields", "name", "order", "required", "required_keys")

    def __init__(self, name: str) -> None:
        self.name = name
        # field -> (checker, arg, card, fast, fast_arg); card 0 optional, 1 required,
        # 2 one spelling of a required pair (2.1.1 / 2.2)
        self.fields: dict[str, Field] = {}
        self.required: tuple[str, ...] = ()
        self.required_keys: frozenset[str] = frozenset()
        self.alternatives: tuple[tuple[str, ...], ...] = ()
        self.order: tuple[tuple[str, ...], tuple[str, ...]] | None = None


_KINDS: dict[str, Checker] = {
    "str": _c_str,
    "id": _c_id,
    "label": _c_label,
    "enum": _c_enum,
    "enums": _c_enums,
    "strs": _c_strs,
    "datetime": _c_dt,
    "number": _c_number,
    "int": _c_int,
    "bool": _c_bool,
    "country": _c_country,
    "currency": _c_currency,
    "language": _c_language,
    "hhmm": _c_hhmm,
    "date": _c_date,
    "lat": _c_lat,
    "lon": _c_lon,
    "obj": _c_obj,
    "list": _c_list,
    "list+": _c_list,
    "cost": _c_cost,
}


def _fast_path(kind: str, arg: Any) -> tuple[int, Any]:
    if kind == "str":
        return _FAST_STR, arg
    if kind == "enum":
        return _FAST_ENUM, arg[0]
    if kind == "hhmm":
        return _FAST_ENUM, _HHMM
    if kind in ("int", "number"):
        lo, hi = arg if arg is not None else (-_NO_LIMIT, None)
        return (_FAST_INT if kind == "int" else _FAST_NUMBER), (lo, _NO_LIMIT if hi is None else hi)
    return 0, None


def _compile() -> dict[str, _Spec]:
    specs = {name: _Spec(name) for name in schema.OBJECTS}
    for name, table in schema.OBJECTS.items():
        spec = specs[name]
        # 2.1.1 field -> all its spellings; such a group is required as a whole.
        alternatives: dict[str, list[str]] = {}
        for field, (_, _, card) in table.items():
            if isinstance(card, str):
                alternatives.setdefault(card, [card]).append(field)
        in_groups = {f for group in alternatives.values() for f in group}
        for field, (kind, arg, card) in table.items():
            if kind == "enum":
                arg = (schema.ENUMS[arg], arg)
            elif kind == "enums":
                arg = (schema.ENUMS[arg[0]], arg[0], arg[1])
            elif kind == "obj":
                arg = specs[arg]
            elif kind in ("list", "list+"):
                arg = (specs[arg], kind == "list+")
            elif kind == "cost":
                arg = specs["Price"]
            spec.fields[field] = (
                _KINDS[kind],
                arg,
                2 if field in in_groups else card,
                *_fast_path(kind, arg),
            )
        spec.required = tuple(
            f for f, (_, _, card) in table.items() if card == schema.REQ and f not in in_groups
        )
        spec.required_keys = frozenset(spec.required)
        spec.alternatives = tuple(tuple(group) for group in alternatives.values())
        spec.order = schema.ORDER.get(name)
    return specs


def _walk(spec: _Spec, obj: dict[str, Any], full: bool, strict: bool) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise _Invalid(f"must be an object, not {_json_type(obj)}")
    fields = spec.fields
    out: dict[str, Any] = {}
    for k, v in obj.items():
        f = fields.get(k)
        if f is None:
            # Unknown and 2.2-only fields are kept verbatim (copied, so the body stays untouched).
            t = type(v)
            out[k] = _copy(v) if t is dict or t is list else v
            continue
        check, arg, card, fast, farg = f
        if v is None:
            if card == 1:
                raise _Invalid("must not be null", k)
            out[k] = None
            continue
        # Inline accept paths for the common scalar kinds; anything they do not accept goes to the
        # checker, which either normalises it or says what is wrong.
        if fast:
            t = type(v)
            if fast == _FAST_STR:
                if t is str and len(v) <= farg:
                    out[k] = v
                    continue
            elif fast == _FAST_ENUM:
                if t is str and v in farg:
                    out[k] = v
                    continue
            elif fast == _FAST_INT:
                if t is int and farg[0] <= v <= farg[1]:
                    out[k] = v
                    continue
            elif t is int or t is float:  # _FAST_NUMBER; NaN and inf fail the comparison
                if farg[0] <= v <= farg[1]:
                    out[k] = v
                    continue
        try:
            out[k] = check(v, arg, strict)
        except _Invalid as e:
            e.prefix(k)
            raise
    if full and not out.keys() >= spec.required_keys:
        for name in spec.required:
            if name not in out:
                raise _Invalid("is required", name)
    for group in spec.alternatives:
        present = False
        for name in group:
            if out.get(name) is not None:
                present = True
                break
        if not present:
            for name in group:
                if name in out:  # present, but null, with no other spelling to stand in
                    raise _Invalid("must not be null", name)
            if full:
                raise _Invalid("is required", group[0])
    if spec.order is not None:
        _check_order(spec.order, out)
    return out


def _first(out: dict[str, Any], names: tuple[str, ...]) -> tuple[str, Any]:
    for name in names:
        value = out.get(name)
        if value is not None:
            return name, value
    return "", None


def _check_order(order: tuple[tuple[str, ...], tuple[str, ...]], out: dict[str, Any]) -> None:
    start_name, start = _first(out, order[0])
    end_name, end = _first(out, order[1])
    # Both are canonical UTC strings by now, which fromisoformat reads directly.
    if start is not None and end is not None and _fromiso(end) < _fromiso(start):
        raise _Invalid(f"{end} is before {start_name} {start}", end_name)


_SPECS = _compile()


# ---------------------------------------------------------------------------------------------
# Public API


def check_path_ids(module: str, country_code: str | None, party_id: str | None, ids: list[str]) -> None:
    """Check the URL segments of a push: ``country_code`` two ASCII letters and ``party_id`` three
    ASCII letters or digits (OCPI 2.1.1), ids within their OCPI lengths, non-empty, not ``.`` or
    ``..``, printable ASCII without control characters, whitespace, ``/ ? # %``.

    Raises ``OcpiError.invalid`` naming the segment, or ``OcpiError.not_found`` for extra segments.
    """
    try:
        segments, minimum, needs_party = _PATH_IDS[module]
    except KeyError:
        raise ValueError(f"unknown OCPI module {module!r}") from None
    for field, value, size in (("country_code", country_code, 2), ("party_id", party_id, 3)):
        if value is None:
            if needs_party:
                raise OcpiError.invalid(field, "is required in the path")
            continue
        if len(value) == size and (value.isalpha() if size == 2 else _ALNUM.issuperset(value)) and value.isascii():
            continue
        problem: str = _id_problem(value, size) or (
            f"must be exactly {size} characters" if len(value) != size
            else "must be two ASCII letters (ISO 3166-1 alpha-2)" if size == 2
            else "must be three ASCII letters or digits"
        )
        raise OcpiError.invalid(field, problem)
    if len(ids) > len(segments):
        raise OcpiError.not_found(f"unknown path: too many segments for {module}")
    if len(ids) < minimum:
        raise OcpiError.invalid(segments[len(ids)][0], "is required in the path")
    for (field, size), value in zip(segments, ids, strict=False):
        found = _id_problem(value, size)
        if found is not None:
            raise OcpiError.invalid(field, found)


def validate_object(
    module: str,
    level: str,
    method: str,
    body: object,
    ids: dict[str, str],
    *,
    strict: bool = False,
) -> dict[str, Any]:
    """Validate a pushed body and return a new, normalised dict for the current-state table.

    ``level`` is ``location``/``evse``/``connector`` for locations, else ``session``/``cdr``/``tariff``.
    ``method`` PUT/POST checks a full object, PATCH only the fields present (nested objects in full).
    ``ids`` maps a body field to its path value (``{"uid": evse_uid}``); a body value must equal it
    (case-insensitively for CDR ``id`` and the 2.2 party fields). DateTimes become canonical UTC,
    numeric coordinates 6-decimal strings; unknown fields are kept. The body is not modified.
    Raises ``OcpiError.invalid(field_path, reason)``.
    """
    name = schema.LEVELS.get((module, level))
    if method == "PATCH":
        full = False
    elif method in ("PUT", "POST"):
        full = True
    else:
        raise ValueError(f"no OCPI body validation for method {method!r}")
    if not isinstance(body, dict):
        raise OcpiError.invalid("body", "must be a JSON object")
    if name is None:
        if module in _UNTYPED_MODULES:
            copied: dict[str, Any] = _copy(body)
            return copied
        raise ValueError(f"no OCPI object for module {module!r} at level {level!r}")
    try:
        out = _walk(_SPECS[name], body, full, strict)
        for field, expected in ids.items():
            got = out.get(field)
            if got is None:
                continue
            if not isinstance(got, str):
                raise _Invalid(f"must be a string, not {_json_type(got)}", field)
            if field in ("country_code", "party_id") or (module == "cdrs" and field == "id"):
                same = got.casefold() == expected.casefold()
            else:
                same = got == expected
            if not same:
                raise _Invalid(f"body has {_show(got)}, path has {_show(expected)}", field)
    except _Invalid as e:
        raise OcpiError.invalid(e.path, e.reason) from None
    return out
