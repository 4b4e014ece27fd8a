"""Receiver paths: which module, level and ids a (method, path) addresses.

The HTTP app routes with Starlette; `relay rejected replay` has only the stored method and path,
so both go through ``resolve`` to reach the same ``Address``. An ``Address`` holds its country code
and party id in upper case however it was built (push, pull, replay): ``nl/gfx`` is ``NL/GFX``.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.errors import OcpiError

# The OCPI modules the relay receives, by their forwarding.yaml names (this order wherever they are listed).
MODULES = ("locations", "sessions", "cdrs", "tariffs", "chargestationnotifications", "notifications")

# path prefix -> module name of forwarding.yaml
PREFIXES = {
    "locations": "locations",
    "sessions": "sessions",
    "tariffs": "tariffs",
    "cdrs": "cdrs",
    "ChargeStationNotifications": "chargestationnotifications",
    "notifications": "notifications",
}

METHODS = {
    "locations": frozenset({"GET", "PUT", "PATCH"}),
    "sessions": frozenset({"GET", "PUT", "PATCH"}),
    "tariffs": frozenset({"GET", "PUT", "PATCH", "DELETE"}),
    "cdrs": frozenset({"GET", "POST"}),
    "chargestationnotifications": frozenset({"POST", "PUT"}),
    "notifications": frozenset({"POST", "PUT"}),
}


@dataclass(frozen=True, slots=True)
class Address:
    module: str
    level: str  # location | evse | connector | session | tariff | cdr | notification
    country_code: str | None = None
    party_id: str | None = None
    object_id: str | None = None
    evse_uid: str | None = None
    connector_id: str | None = None

    def __post_init__(self) -> None:
        # One spelling of a CPO everywhere (state, stream, forwarded paths): OCPI codes are upper case.
        cc, party = self.country_code, self.party_id
        if cc is not None and not cc.isupper():
            object.__setattr__(self, "country_code", cc.upper())
        if party is not None and not party.isupper():
            object.__setattr__(self, "party_id", party.upper())

    def id_names(self) -> list[tuple[str, str]]:
        """(segment name, value) of the ids in the path, for error messages and checks."""
        out: list[tuple[str, str]] = []
        if self.object_id is not None:
            name = {"locations": "location_id", "sessions": "session_id", "tariffs": "tariff_id", "cdrs": "cdr_id"}
            out.append((name.get(self.module, "id"), self.object_id))
        if self.evse_uid is not None:
            out.append(("evse_uid", self.evse_uid))
        if self.connector_id is not None:
            out.append(("connector_id", self.connector_id))
        return out


def resolve(method: str, path: str) -> Address:
    """Address of ``path`` (relative to the base path); OcpiError 404/405 when there is none.

    Empty segments are kept (``/locations/NL/GFX/`` has an empty ``location_id``, which the id checks
    refuse by name). Control characters are left to those checks too (``check_path_ids``, after the
    token is known): an authenticated push with one is refused 400 / 2001 naming its segment and kept
    in ``rejected`` with the characters escaped as ``%XX``.
    """
    parts = path[1:].split("/") if path.startswith("/") else path.split("/")
    if not parts or parts[0] not in PREFIXES:
        raise OcpiError.not_found(f"no OCPI endpoint at {path[:200]}")
    module = PREFIXES[parts[0]]
    rest = parts[1:]
    if rest == [""] and module in ("cdrs", "chargestationnotifications", "notifications"):
        rest = []  # /cdrs/ is /cdrs
    addr: Address | None = None
    if module == "locations" and 3 <= len(rest) <= 5:
        level = ("location", "evse", "connector")[len(rest) - 3]
        addr = Address(module, level, rest[0], rest[1], rest[2],
                       rest[3] if len(rest) > 3 else None, rest[4] if len(rest) > 4 else None)
    elif module in ("sessions", "tariffs") and len(rest) == 3:
        addr = Address(module, module[:-1], rest[0], rest[1], rest[2])
    elif module == "cdrs" and len(rest) <= 1:
        addr = Address(module, "cdr", object_id=rest[0] if rest else None)
    elif module in ("chargestationnotifications", "notifications") and len(rest) <= 1:
        addr = Address(module, "notification", object_id=rest[0] if rest else None)
    if addr is None:
        raise OcpiError.not_found(f"no OCPI endpoint at {path[:200]}")
    allowed = METHODS[module]
    if module == "cdrs":
        allowed = frozenset({"GET"}) if addr.object_id is not None else frozenset({"POST"})
    if method not in allowed:
        raise OcpiError.method_not_allowed(f"{method} is not allowed on {parts[0]} (allowed: {', '.join(sorted(allowed))})")
    return addr
