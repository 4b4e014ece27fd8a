"""forwarding.yaml as frozen, typed objects: subscriptions, stream clients, targets, rules, pull sources.

Built by relay.routing.loader; a reload builds a new RoutingConfig and swaps it whole.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass, field

from relay.ocpi.paths import MODULES
from relay.routing.tokens import TokenTable
from relay.settings import Secret

TARGET_TYPES = ("webhook", "ocpi")
TRANSFORM_KINDS = ("keep", "drop", "pseudonymise", "round", "coarsen_time")
CONDITION_OPS = ("eq", "ne", "in", "not_in", "exists", "gt", "lt")
TIME_UNITS = ("minute", "hour", "day")

_CPO_RE = re.compile(r"^(?:\*|(?P<cc>[A-Za-z]{2}|\*)\*(?P<party>[A-Za-z0-9]{3}|\*))$")
FIELD_PATH_RE = re.compile(r"^(?:[A-Za-z0-9_]+|\*)(?:\.(?:[A-Za-z0-9_]+|\*))*$")


@dataclass(frozen=True)
class CpoPattern:
    """One CPO scope entry; ``"*"`` in either part matches any value."""

    country_code: str
    party_id: str

    def __str__(self) -> str:
        if self.country_code == "*" and self.party_id == "*":
            return "*"
        return format_cpo(self.country_code, self.party_id)


def parse_cpo(text: str) -> CpoPattern:
    """Parse ``"NL*GFX"``, ``"NL**"``, ``"**GFX"`` or ``"*"``; raise ValueError otherwise."""
    m = _CPO_RE.match(text.strip())
    if m is None:
        raise ValueError(f"malformed CPO pattern {text!r}: expected CC*PARTY such as 'NL*GFX' ('*' for any part, or '*' alone)")
    if m.group("cc") is None:
        return CpoPattern("*", "*")
    return CpoPattern(m.group("cc").upper(), m.group("party").upper())


def cpo_matches(patterns: tuple[CpoPattern, ...], country_code: str | None, party_id: str | None) -> bool:
    """True when any pattern covers the CPO (case-insensitive); an unknown part matches only ``*``."""
    cc = country_code.upper() if country_code else None
    party = party_id.upper() if party_id else None
    for p in patterns:
        if (p.country_code == "*" or p.country_code == cc) and (p.party_id == "*" or p.party_id == party):
            return True
    return False


def format_cpo(country_code: str, party_id: str) -> str:
    """The CPO in the ``NL*GFX`` form used in forwarding.yaml, gRPC requests and events."""
    return f"{country_code.upper()}*{party_id.upper()}"



Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(text: str) -> Network:
    """``"198.51.100.0/24"``, ``"2001:db8::/32"`` or one address; ValueError for anything else
    (host bits set, such as ``10.0.0.1/8``, count as a mistake)."""
    return ipaddress.ip_network(text.strip(), strict=True)


@functools.lru_cache(maxsize=4096)
def parse_address(text: str) -> IpAddress | None:
    """An IP address as a socket or ``X-Forwarded-For`` gives it; None when it is not one. IPv4-mapped
    IPv6 (``::ffff:198.51.100.7``, a dual-stack socket) is the IPv4 address. Cached: a sender pushes
    from the same few addresses."""
    text = text.strip()
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        # some proxies write a port: "198.51.100.7:5678", "[2001:db8::1]:5678"
        host = text[1:text.find("]")] if text.startswith("[") else text.rpartition(":")[0] if text.count(":") == 1 else ""
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def address_allowed(networks: tuple[Network, ...], address: IpAddress | None) -> bool:
    """Whether ``address`` lies in one of ``networks`` (an unknown address lies in none)."""
    if address is None:
        return False
    return any(address in net for net in networks)


@functools.lru_cache(maxsize=1024)
def split_path(path: str) -> tuple[str, ...]:
    """``"evses.*.uid"`` to ``("evses", "*", "uid")``; raise ValueError for a malformed path."""
    if not FIELD_PATH_RE.match(path):
        raise ValueError(f"bad field path {path!r}: use dotted names of [A-Za-z0-9_] and '*' for every list item")
    return tuple(path.split("."))


@dataclass(frozen=True)
class Subscription:
    """A sender allowed to push: its token and the CPOs and modules it may push for."""

    name: str
    token: Secret
    cpos: tuple[CpoPattern, ...]
    modules: frozenset[str]
    default_cpo: tuple[str, str] | None
    accept_base64: bool = False
    strict: bool = False
    # further valid tokens (a token_env / token_file list: old and new during a rotation)
    more_tokens: tuple[Secret, ...] = field(default=(), repr=False)
    # source networks a push may come from; empty: any (checked only when non-empty)
    allow_ips: tuple[Network, ...] = ()

    @property
    def tokens(self) -> tuple[Secret, ...]:
        return (self.token, *self.more_tokens)


@dataclass(frozen=True)
class StreamClient:
    """A gRPC subscriber: bearer token and the modules and CPOs it may read."""

    name: str
    token: Secret
    modules: frozenset[str]
    cpos: tuple[CpoPattern, ...]
    more_tokens: tuple[Secret, ...] = field(default=(), repr=False)
    allow_ips: tuple[Network, ...] = ()
    # ``cert_subject``: (attribute, value) pairs the client's TLS certificate subject must contain
    cert_subject: tuple[tuple[str, str], ...] = ()

    @property
    def tokens(self) -> tuple[Secret, ...]:
        return (self.token, *self.more_tokens)


def parse_subject(text: str) -> tuple[tuple[str, str], ...]:
    """A distinguished name such as ``"CN=billing,O=Acme"`` (RFC 4514, ``\\,`` escapes a comma) as
    (ATTRIBUTE, value) pairs; ValueError for a part that is not ``attribute=value``."""
    pairs = []
    for part in re.split(r"(?<!\\),", text):
        attr, eq, value = part.partition("=")
        if not eq or not attr.strip() or not value.strip():
            raise ValueError(f"{part.strip()!r} is not attribute=value (e.g. CN=billing)")
        pairs.append((attr.strip().upper(), re.sub(r"\\(.)", r"\1", value.strip())))
    return tuple(pairs)


@dataclass(frozen=True)
class Target:
    """Where copies go. ``url`` has no trailing slash; ``rate_limit`` is requests per second."""

    name: str
    type: str
    url: str
    secret: Secret | None
    token: Secret | None
    timeout: float = 10.0
    concurrency: int = 4
    rate_limit: float | None = None
    max_attempts: int = 12
    retry_base: float = 1.0
    retry_max: float = 600.0
    # extra request headers (``headers`` and ``headers_env`` merged): values may be credentials, so
    # they are never shown (masked in `describe`, left out of repr, scrubbed from logs)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    # further webhook secrets (a secret_env / secret_file list): every copy is signed with each
    more_secrets: tuple[Secret, ...] = field(default=(), repr=False)

    @property
    def secrets(self) -> tuple[Secret, ...]:
        return () if self.secret is None else (self.secret, *self.more_secrets)


@dataclass(frozen=True)
class Condition:
    """``path`` ``op`` ``value``; ``value`` of ``in``/``not_in`` is a tuple."""

    path: str
    op: str
    value: object


@dataclass(frozen=True)
class Match:
    """What a rule matches; None means "any" for modules, cpos, actions and subscriptions."""

    modules: frozenset[str] | None
    cpos: tuple[CpoPattern, ...] | None
    actions: frozenset[str] | None
    conditions: tuple[Condition, ...]
    # names of the subscriptions (or pull sources) whose events the rule takes
    subscriptions: frozenset[str] | None = None


@dataclass(frozen=True)
class Transform:
    """One step of a rule's transform list (see relay.routing.transforms)."""

    kind: str
    fields: tuple[str, ...]
    key: Secret | None = None
    decimals: int | None = None
    unit: str | None = None


@dataclass(frozen=True)
class Rule:
    """Events matching ``match`` go to every target in ``to``, transformed in order."""

    name: str
    match: Match
    to: tuple[str, ...]
    transform: tuple[Transform, ...]


@dataclass(frozen=True)
class PullSource:
    """A GreenFlux sender interface to poll; ``interval`` in seconds."""

    name: str
    url: str
    token: Secret
    modules: tuple[str, ...]
    interval: float
    default_cpo: tuple[str, str] | None
    page_limit: int = 100
    timeout: float = 30.0


_RouteEntry = tuple[Rule, tuple[Target, ...]]


@dataclass(frozen=True)
class RoutingConfig:
    """The whole forwarding.yaml; a reload builds a new one and swaps it whole."""

    subscriptions: tuple[Subscription, ...] = ()
    stream_clients: tuple[StreamClient, ...] = ()
    targets: tuple[Target, ...] = ()
    rules: tuple[Rule, ...] = ()
    pull: tuple[PullSource, ...] = ()
    path: str = ""
    # secret files the config was read from (``*_file`` keys): a reload is due when one changes
    secret_files: tuple[str, ...] = ()
    # Derived once here because route() and token lookups run on every request.
    _targets: dict[str, Target] = field(init=False, repr=False, compare=False)
    _by_module: dict[str, tuple[_RouteEntry, ...]] = field(init=False, repr=False, compare=False)
    _sub_tokens: TokenTable[Subscription] = field(init=False, repr=False, compare=False)
    _stream_tokens: TokenTable[StreamClient] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        targets = {t.name: t for t in self.targets}
        entries: list[_RouteEntry] = []
        for rule in self.rules:
            missing = [n for n in rule.to if n not in targets]
            if missing:
                raise ValueError(f"rule {rule.name!r} routes to unknown target(s) {missing}")
            entries.append((rule, tuple(targets[n] for n in rule.to)))
        by_module = {
            m: tuple(e for e in entries if e[0].match.modules is None or m in e[0].match.modules) for m in MODULES
        }
        sub_tokens = TokenTable((s, t.reveal(), s.accept_base64) for s in self.subscriptions for t in s.tokens)
        stream_tokens = TokenTable((c, t.reveal(), False) for c in self.stream_clients for t in c.tokens)
        object.__setattr__(self, "_targets", targets)
        object.__setattr__(self, "_by_module", by_module)
        object.__setattr__(self, "_sub_tokens", sub_tokens)
        object.__setattr__(self, "_stream_tokens", stream_tokens)

    def target(self, name: str) -> Target | None:
        """The target called ``name``, or None."""
        return self._targets.get(name)

    def pull_source(self, name: str) -> PullSource | None:
        """The pull source called ``name``, or None."""
        return next((p for p in self.pull if p.name == name), None)

    def rules_for(self, module: str) -> tuple[tuple[Rule, tuple[Target, ...]], ...]:
        """Rules that may match ``module`` (in file order) with their resolved targets."""
        return self._by_module.get(module, ())

    def subscription_for_token(self, presented: str) -> Subscription | None:
        """The subscription whose token equals ``presented`` (raw, or base64 where allowed); constant-time."""
        return self._sub_tokens.find(presented)

    def stream_client_for_token(self, presented: str) -> StreamClient | None:
        """The stream client whose token equals ``presented``; constant-time like subscriptions."""
        return self._stream_tokens.find(presented)
