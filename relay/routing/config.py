"""forwarding.yaml as frozen, typed objects: subscriptions, stream clients, targets, rules, pull sources.

`load_config` reports every problem at once as ``file:line: message``; secrets come only from the
env vars the file names and never appear in a message or in `describe`.
"""

from __future__ import annotations

import base64
import binascii
import difflib
import functools
import hmac
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from relay.errors import ConfigError
from relay.settings import Secret

MODULES = ("locations", "sessions", "cdrs", "tariffs", "chargestationnotifications", "notifications")
TARGET_TYPES = ("webhook", "ocpi")
TRANSFORM_KINDS = ("keep", "drop", "pseudonymise", "round", "coarsen_time")
CONDITION_OPS = ("eq", "ne", "in", "not_in", "exists", "gt", "lt")
TIME_UNITS = ("minute", "hour", "day")
MASK = "**********"

_CPO_RE = re.compile(r"^(?:\*|(?P<cc>[A-Za-z]{2}|\*)\*(?P<party>[A-Za-z0-9]{3}|\*))$")
_PATH_RE = re.compile(r"^(?:[A-Za-z0-9_]+|\*)(?:\.(?:[A-Za-z0-9_]+|\*))*$")


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


@functools.lru_cache(maxsize=1024)
def split_path(path: str) -> tuple[str, ...]:
    """``"evses.*.uid"`` to ``("evses", "*", "uid")``; raise ValueError for a malformed path."""
    if not _PATH_RE.match(path):
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


@dataclass(frozen=True)
class StreamClient:
    """A gRPC subscriber: bearer token and the modules and CPOs it may read."""

    name: str
    token: Secret
    modules: frozenset[str]
    cpos: tuple[CpoPattern, ...]


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


@dataclass(frozen=True)
class Condition:
    """``path`` ``op`` ``value``; ``value`` of ``in``/``not_in`` is a tuple."""

    path: str
    op: str
    value: object


@dataclass(frozen=True)
class Match:
    """What a rule matches; None means "any" for modules, cpos and actions."""

    modules: frozenset[str] | None
    cpos: tuple[CpoPattern, ...] | None
    actions: frozenset[str] | None
    conditions: tuple[Condition, ...]


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
    # Derived once here because route() and token lookups run on every request.
    _targets: dict[str, Target] = field(init=False, repr=False, compare=False)
    _by_module: dict[str, tuple[_RouteEntry, ...]] = field(init=False, repr=False, compare=False)
    _sub_tokens: tuple[tuple[Subscription, bytes, bytes | None], ...] = field(init=False, repr=False, compare=False)
    _stream_tokens: tuple[tuple[StreamClient, bytes], ...] = field(init=False, repr=False, compare=False)

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
        sub_tokens = tuple(
            (s, s.token.reveal().encode(), _b64(s.token.reveal()) if s.accept_base64 else None)
            for s in self.subscriptions
        )
        stream_tokens = tuple((c, c.token.reveal().encode()) for c in self.stream_clients)
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
        """The subscription whose token equals ``presented`` (raw, or base64 where allowed).

        Every token is compared with hmac.compare_digest, with no early exit, so the time taken
        does not tell which token (or how much of one) matched.
        """
        given = presented.encode()
        found: Subscription | None = None
        for sub, raw, b64 in self._sub_tokens:
            ok = hmac.compare_digest(given, raw)
            if b64 is not None:
                ok = hmac.compare_digest(given, b64) | ok
            if ok and found is None:
                found = sub
        return found

    def stream_client_for_token(self, presented: str) -> StreamClient | None:
        """The stream client whose token equals ``presented``; constant-time like subscriptions."""
        given = presented.encode()
        found: StreamClient | None = None
        for client, raw in self._stream_tokens:
            if hmac.compare_digest(given, raw) and found is None:
                found = client
        return found


def _b64(token: str) -> bytes:
    return base64.b64encode(token.encode())


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> RoutingConfig:
    """Read and check forwarding.yaml; raise ConfigError listing every ``file:line: message``.

    Secrets are read from ``env`` (default: os.environ) under the names the file gives.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError([f"{name}:1: cannot read the file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{name}:1: the file is not UTF-8 text"]) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError([f"{name}:{line}: YAML syntax: {exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{name}:1: YAML syntax: {exc}"]) from None
    reader = _Reader(name, os.environ if env is None else env)
    config = reader.read(root)
    if reader.problems:
        raise ConfigError(reader.problems)
    return config


def check_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> list[str]:
    """The problems `load_config` would raise, or [] when the file is fine."""
    try:
        load_config(path, env)
    except ConfigError as exc:
        return list(exc.problems)
    return []


def redact_url(url: str) -> str:
    """``url`` safe to show: a password and every query value masked (they are often credentials)."""
    parts = urlsplit(url)
    if not parts.query and parts.password is None:
        return url
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(f"{k}={MASK}" for k, _ in parse_qsl(parts.query, keep_blank_values=True)) or MASK
    return urlunsplit((parts.scheme, netloc, parts.path, query if parts.query else "", parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The query values of ``url`` long enough to be credentials (for the log redaction filter)."""
    return [v for _, v in parse_qsl(urlsplit(url).query) if len(v) >= 8]


def describe(config: RoutingConfig) -> dict[str, Any]:
    """The effective configuration as plain data, every secret shown as ``**********``."""

    def modules(ms: frozenset[str] | None) -> list[str] | None:
        return None if ms is None else [m for m in MODULES if m in ms]

    def cpos(ps: tuple[CpoPattern, ...] | None) -> list[str] | None:
        return None if ps is None else [str(p) for p in ps]

    def cpo(c: tuple[str, str] | None) -> str | None:
        return None if c is None else format_cpo(*c)

    def mask(s: Secret | None) -> str | None:
        return None if s is None else MASK

    def transform(t: Transform) -> dict[str, Any]:
        if t.kind in ("keep", "drop"):
            return {t.kind: list(t.fields)}
        options: dict[str, dict[str, Any]] = {"pseudonymise": {"key": mask(t.key)}, "round": {"decimals": t.decimals}}
        extra = options.get(t.kind)
        return {t.kind: {"fields": list(t.fields), **(extra or {"unit": t.unit})}}

    def condition(c: Condition) -> dict[str, Any]:
        return {"field": c.path, c.op: list(c.value) if isinstance(c.value, tuple) else c.value}

    return {
        "path": config.path,
        "subscriptions": [
            {"name": s.name, "token": MASK, "cpos": cpos(s.cpos), "modules": modules(s.modules),
             "default_cpo": cpo(s.default_cpo), "accept_base64": s.accept_base64, "strict": s.strict}
            for s in config.subscriptions
        ],
        "stream_clients": [
            {"name": c.name, "token": MASK, "modules": modules(c.modules), "cpos": cpos(c.cpos)}
            for c in config.stream_clients
        ],
        "targets": [
            {"name": t.name, "type": t.type, "url": redact_url(t.url), "secret": mask(t.secret), "token": mask(t.token),
             "timeout": t.timeout, "concurrency": t.concurrency, "rate_limit": t.rate_limit,
             "max_attempts": t.max_attempts, "retry_base": t.retry_base, "retry_max": t.retry_max,
             "headers": {name: MASK for name, _ in t.headers}}
            for t in config.targets
        ],
        "rules": [
            {"name": r.name,
             "match": {"modules": modules(r.match.modules), "cpos": cpos(r.match.cpos),
                       "actions": None if r.match.actions is None else sorted(r.match.actions),
                       "conditions": [condition(c) for c in r.match.conditions]},
             "to": list(r.to), "transform": [transform(t) for t in r.transform]}
            for r in config.rules
        ],
        "pull": [
            {"name": p.name, "url": redact_url(p.url), "token": MASK, "modules": list(p.modules), "interval": p.interval,
             "default_cpo": cpo(p.default_cpo), "page_limit": p.page_limit, "timeout": p.timeout}
            for p in config.pull
        ],
    }


# --- reading the YAML node tree ------------------------------------------------------------------
# Nodes rather than yaml.safe_load: nodes keep start_mark.line, so every problem can name its line.

_SECTIONS = ("subscriptions", "stream_clients", "targets", "rules", "pull")
_SECRET_KEYS = {"token": "token_env", "secret": "secret_env", "key": "key_env"}
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_ACTION_RE = re.compile(r"^[a-z_]+$")
_CONCRETE_CPO_RE = re.compile(r"^([A-Za-z]{2})\*([A-Za-z0-9]{3})$")
_INTERVAL_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_HEADER_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Set by the relay itself; an Authorization header here would also be a secret written inline.
_RESERVED_HEADERS = frozenset(
    {"authorization", "content-type", "content-length", "host", "webhook-id", "webhook-timestamp", "webhook-signature"}
)
_PULL_MODULES = ("locations", "sessions", "cdrs", "tariffs")
_TARGET_KEYS = frozenset(
    {"name", "type", "url", "secret_env", "token_env", "timeout", "concurrency", "rate_limit",
     "max_attempts", "retry_base", "retry_max", "headers", "headers_env"}
)
_NULL_TAG = "tag:yaml.org,2002:null"
_BAD = object()


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_whsec(value: str) -> bool:
    if not value.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(value[len("whsec_"):], validate=True)) > 0
    except (binascii.Error, ValueError):
        return False


def _name_of(node: Node) -> tuple[str, Node] | None:
    if isinstance(node, MappingNode):
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.value == "name" and isinstance(v, ScalarNode) and v.value:
                return v.value, v
    return None


class _Reader:
    """Walks the composed YAML, building typed objects and collecting ``file:line: message`` problems.

    Getters return a harmless default after recording a problem; `load_config` discards the result
    whenever any problem was found, so defaults never reach a caller.
    """

    def __init__(self, path: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env
        self.problems: list[str] = []
        self._constructor = yaml.constructor.SafeConstructor()

    def problem(self, node: Node, message: str) -> None:
        self.problems.append(f"{self.path}:{node.start_mark.line + 1}: {message}")

    # shapes

    def scalar(self, node: Node) -> Any:
        if not isinstance(node, ScalarNode):
            return _BAD
        try:
            return self._constructor.construct_object(node)
        except yaml.YAMLError:
            return _BAD

    def mapping(
        self, node: Node, where: str, allowed: frozenset[str] | set[str], required: tuple[str, ...] = (),
        keep_null: bool = False,
    ) -> dict[str, Node] | None:
        """Keys to value nodes; null values count as absent unless ``keep_null``."""
        if not isinstance(node, MappingNode):
            self.problem(node, f"{where}: expected a mapping")
            return None
        found: dict[str, Node] = {}
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node)
            if not isinstance(key, str):
                self.problem(key_node, f"{where}: keys must be strings")
                continue
            if key in seen:
                self.problem(key_node, f"{where}: duplicate key {key!r} (first at line {seen[key]})")
                continue
            seen[key] = key_node.start_mark.line + 1
            if key not in allowed:
                self.problem(key_node, self._unknown_key(where, key, allowed))
            elif _is_null(value_node) and not keep_null:
                if key in required:
                    self.problem(key_node, f"{where}: {key!r} has no value")
            else:
                found[key] = value_node
        for key in required:
            if key not in seen:
                self.problem(node, f"{where}: missing required key {key!r}")
        return found

    @staticmethod
    def _unknown_key(where: str, key: str, allowed: frozenset[str] | set[str]) -> str:
        env_key = _SECRET_KEYS.get(key)
        if env_key in allowed:
            return f"{where}: {key!r} is not allowed: secrets must come from an env var ({env_key}: VAR_NAME)"
        close = difflib.get_close_matches(key, sorted(allowed), n=1)
        hint = f"did you mean {close[0]!r}?" if close else "allowed: " + ", ".join(sorted(allowed))
        return f"{where}: unknown key {key!r} ({hint})"

    def items(self, node: Node | None, where: str) -> list[tuple[str, Node]]:
        """Sequence items with a label naming their index and, when readable, their name."""
        if node is None:
            return []
        if not isinstance(node, SequenceNode):
            self.problem(node, f"{where}: expected a list")
            return []
        out = []
        for i, item in enumerate(node.value):
            named = _name_of(item)
            out.append((f"{where}[{i}]" + (f" ({named[0]})" if named else ""), item))
        return out

    def text(self, node: Node | None, where: str) -> str:
        if node is None:
            return ""
        value = self.scalar(node)
        if not isinstance(value, str) or not value.strip():
            self.problem(node, f"{where}: expected a non-empty string")
            return ""
        return value.strip()

    def strings(self, node: Node | None, where: str, what: str) -> list[tuple[str, Node]]:
        """A non-empty list of strings, each with its node."""
        if node is None:
            return []
        if not isinstance(node, SequenceNode):
            self.problem(node, f"{where}: expected a list of {what}")
            return []
        if not node.value:
            self.problem(node, f"{where}: the list is empty; name at least one of {what}")
        out = []
        for i, item in enumerate(node.value):
            value = self.text(item, f"{where}[{i}]")
            if value:
                out.append((value, item))
        return out

    def flag(self, node: Node | None, where: str, default: bool) -> bool:
        if node is None:
            return default
        value = self.scalar(node)
        if not isinstance(value, bool):
            self.problem(node, f"{where}: expected true or false")
            return default
        return value

    def integer(self, node: Node | None, where: str, default: int, minimum: int, maximum: int = 2**31) -> int:
        if node is None:
            return default
        value = self.scalar(node)
        if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
            self.problem(node, f"{where}: expected a whole number from {minimum} to {maximum}")
            return default
        return value

    def number(self, node: Node | None, where: str, default: float) -> float:
        """A number above zero."""
        if node is None:
            return default
        value = self.scalar(node)
        if not _is_number(value) or not value > 0 or value == float("inf"):
            self.problem(node, f"{where}: expected a number above 0")
            return default
        return float(value)

    # domain values

    def name(self, m: dict[str, Node], where: str) -> str:
        value = self.text(m.get("name"), f"{where}.name")
        if value and not _NAME_RE.match(value):
            self.problem(m["name"], f"{where}.name: {value!r} may only use letters, digits, '_', '.' and '-'")
        return value

    def modules(self, node: Node | None, where: str, default: tuple[str, ...]) -> tuple[str, ...]:
        if node is None:
            return default
        out: list[str] = []
        for value, item in self.strings(node, where, "modules"):
            if value not in MODULES:
                self.problem(item, f"{where}: unknown module {value!r} (known: {', '.join(MODULES)})")
            elif value in out:
                self.problem(item, f"{where}: module {value!r} is listed twice")
            else:
                out.append(value)
        return tuple(out)

    def cpos(self, node: Node | None, where: str) -> tuple[CpoPattern, ...]:
        out = []
        for value, item in self.strings(node, where, "CPO patterns"):
            try:
                out.append(parse_cpo(value))
            except ValueError as exc:
                self.problem(item, f"{where}: {exc}")
        return tuple(out)

    def default_cpo(self, node: Node | None, where: str) -> tuple[str, str] | None:
        if node is None:
            return None
        value = self.text(node, where)
        m = _CONCRETE_CPO_RE.match(value)
        if value and m is None:
            self.problem(node, f"{where}: expected one CPO such as 'NL*GFX' (no wildcard), got {value!r}")
        return (m.group(1).upper(), m.group(2).upper()) if m else None

    def url(self, node: Node | None, where: str) -> str:
        value = self.text(node, where)
        if not value or node is None:
            return ""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problem(node, f"{where}: {value!r} is not an http:// or https:// URL")
        elif parts.username or parts.password:
            # Never echo this URL: it carries a credential.
            self.problem(node, f"{where}: credentials in the URL are not allowed: secrets must come from an env var")
        return value.rstrip("/")

    def env_secret(self, node: Node | None, where: str) -> tuple[str, Secret | None]:
        """The env var named by ``node`` and its value; the value never enters a message."""
        var = self.text(node, where)
        if not var or node is None:
            return var, None
        if not _ENV_NAME_RE.match(var):
            self.problem(node, f"{where}: {var!r} is not an env var name")
            return var, None
        value = self.env.get(var)
        if value is None or not value.strip():
            self.problem(node, f"{where}: env var {var} is {'not set' if value is None else 'empty'}")
            return var, None
        return var, Secret(value.strip())

    def path_list(self, node: Node | None, where: str) -> tuple[str, ...]:
        out = []
        for value, item in self.strings(node, where, "field paths"):
            try:
                split_path(value)
            except ValueError as exc:
                self.problem(item, f"{where}: {exc}")
            else:
                out.append(value)
        return tuple(out)

    def interval(self, node: Node | None, where: str, default: float) -> float:
        if node is None:
            return default
        value = self.scalar(node)
        m = _INTERVAL_RE.match(value.strip()) if isinstance(value, str) else None
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)] if m else float(value) if _is_number(value) else -1.0
        if not seconds > 0:
            shown = f" {value!r}" if value is not _BAD else ""
            self.problem(node, f"{where}: bad interval{shown}: use seconds above 0 or a string like '30s', '15m', '1h', '1d'")
            return default
        return seconds

    # sections

    def read(self, root: Node | None) -> RoutingConfig:
        if root is None or _is_null(root):
            return RoutingConfig(path=self.path)  # an empty file routes nothing, which is valid
        top = self.mapping(root, "top level", frozenset(_SECTIONS))
        if top is None:
            return RoutingConfig(path=self.path)
        sections = {s: self.items(top.get(s), s) for s in _SECTIONS}
        for section, entries in sections.items():
            self.check_unique(section, [item for _, item in entries])
        target_names = {n[0] for _, item in sections["targets"] if (n := _name_of(item))}
        subs = [self.subscription(item, label) for label, item in sections["subscriptions"]]
        clients = [self.stream_client(item, label) for label, item in sections["stream_clients"]]
        targets = [self.target(item, label) for label, item in sections["targets"]]
        rules = [self.rule(item, label, target_names) for label, item in sections["rules"]]
        pull = [self.pull_source(item, label) for label, item in sections["pull"]]
        self.check_tokens_unique(sections["subscriptions"], [s.token if s else None for s in subs])
        self.check_tokens_unique(sections["stream_clients"], [c.token if c else None for c in clients])
        if self.problems:
            return RoutingConfig(path=self.path)
        return RoutingConfig(
            subscriptions=tuple(s for s in subs if s), stream_clients=tuple(c for c in clients if c),
            targets=tuple(t for t in targets if t), rules=tuple(r for r in rules if r),
            pull=tuple(p for p in pull if p), path=self.path,
        )

    def check_unique(self, section: str, items: list[Node]) -> None:
        first: dict[str, int] = {}
        for item in items:
            named = _name_of(item)
            if named is None:
                continue
            name, node = named
            if name in first:
                self.problem(node, f"{section}: duplicate name {name!r} (first at line {first[name]})")
            else:
                first[name] = node.start_mark.line + 1

    def check_tokens_unique(self, entries: list[tuple[str, Node]], tokens: list[Secret | None]) -> None:
        # Two entries sharing a token would make the lookup ambiguous; say so without the value.
        seen: dict[str, str] = {}
        for (label, item), token in zip(entries, tokens, strict=True):
            if token is None or not token.reveal():
                continue  # unset: already reported
            if token.reveal() in seen:
                self.problem(item, f"{label}: uses the same token as {seen[token.reveal()]}; tokens must differ")
            else:
                seen[token.reveal()] = label

    def subscription(self, node: Node, where: str) -> Subscription | None:
        keys = frozenset({"name", "token_env", "cpos", "modules", "default_cpo", "accept_base64", "strict"})
        m = self.mapping(node, where, keys, ("name", "token_env", "cpos"))
        if m is None:
            return None
        return Subscription(
            name=self.name(m, where),
            token=self.env_secret(m.get("token_env"), f"{where}.token_env")[1] or Secret(""),
            cpos=self.cpos(m.get("cpos"), f"{where}.cpos"),
            modules=frozenset(self.modules(m.get("modules"), f"{where}.modules", MODULES)),
            default_cpo=self.default_cpo(m.get("default_cpo"), f"{where}.default_cpo"),
            accept_base64=self.flag(m.get("accept_base64"), f"{where}.accept_base64", False),
            strict=self.flag(m.get("strict"), f"{where}.strict", False),
        )

    def stream_client(self, node: Node, where: str) -> StreamClient | None:
        m = self.mapping(node, where, frozenset({"name", "token_env", "modules", "cpos"}), ("name", "token_env", "cpos"))
        if m is None:
            return None
        return StreamClient(
            name=self.name(m, where),
            token=self.env_secret(m.get("token_env"), f"{where}.token_env")[1] or Secret(""),
            modules=frozenset(self.modules(m.get("modules"), f"{where}.modules", MODULES)),
            cpos=self.cpos(m.get("cpos"), f"{where}.cpos"),
        )

    def target(self, node: Node, where: str) -> Target | None:
        m = self.mapping(node, where, _TARGET_KEYS, ("name", "type", "url"))
        if m is None:
            return None
        kind = self.text(m.get("type"), f"{where}.type")
        if kind and kind not in TARGET_TYPES:
            self.problem(m["type"], f"{where}.type: unknown target type {kind!r} (expected webhook or ocpi)")
        # A webhook signs with a whsec_ secret; an ocpi target sends the partner's Token header.
        own, other = ("secret_env", "token_env") if kind == "webhook" else ("token_env", "secret_env")
        secret: Secret | None = None
        if kind in TARGET_TYPES:
            if other in m:
                self.problem(m[other], f"{where}.{other}: not used by a {kind} target (it takes {own})")
            if own not in m:
                self.problem(node, f"{where}: a {kind} target needs {own!r}")
            var, secret = self.env_secret(m.get(own), f"{where}.{own}")
            if kind == "webhook" and secret is not None and not _is_whsec(secret.reveal()):
                self.problem(m[own], f"{where}.{own}: env var {var} must hold a secret of the form whsec_<base64>")
        retry_base = self.number(m.get("retry_base"), f"{where}.retry_base", 1.0)
        retry_max = self.number(m.get("retry_max"), f"{where}.retry_max", 600.0)
        if retry_max < retry_base:
            self.problem(m.get("retry_max", node), f"{where}.retry_max: must not be below retry_base")
        return Target(
            name=self.name(m, where),
            type=kind,
            url=self.url(m.get("url"), f"{where}.url"),
            secret=secret if kind == "webhook" else None,
            token=secret if kind == "ocpi" else None,
            timeout=self.number(m.get("timeout"), f"{where}.timeout", 10.0),
            concurrency=self.integer(m.get("concurrency"), f"{where}.concurrency", 4, 1, 1000),
            rate_limit=self.number(m["rate_limit"], f"{where}.rate_limit", 1.0) if "rate_limit" in m else None,
            max_attempts=self.integer(m.get("max_attempts"), f"{where}.max_attempts", 12, 1, 1000),
            retry_base=retry_base,
            retry_max=retry_max,
            headers=self.headers(m.get("headers"), m.get("headers_env"), where),
        )

    def headers(self, inline: Node | None, from_env: Node | None, where: str) -> tuple[tuple[str, str], ...]:
        """``headers`` (name: value) and ``headers_env`` (name: ENV_VAR, the value read from the env)."""
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        for section, node in (("headers", inline), ("headers_env", from_env)):
            if node is None:
                continue
            at = f"{where}.{section}"
            if not isinstance(node, MappingNode):
                self.problem(node, f"{at}: expected a mapping of header names to {'values' if section == 'headers' else 'env var names'}")
                continue
            for key_node, value_node in node.value:
                key = self.scalar(key_node)
                if not isinstance(key, str) or not _HEADER_RE.match(key):
                    self.problem(key_node, f"{at}: {key!r} is not a valid header name")
                    continue
                if key.lower() in _RESERVED_HEADERS:
                    self.problem(key_node, f"{at}: {key!r} is set by the relay and cannot be configured")
                    continue
                if key.lower() in seen:
                    self.problem(key_node, f"{at}: header {key!r} is given twice (headers and headers_env)")
                    continue
                seen.add(key.lower())
                if section == "headers_env":
                    _, secret = self.env_secret(value_node, f"{at}.{key}")
                    if secret is not None:
                        if "\n" in secret.reveal() or "\r" in secret.reveal():
                            self.problem(value_node, f"{at}.{key}: the env var's value must be one line")
                        else:
                            out.append((key, secret.reveal()))
                    continue
                value = self.scalar(value_node)
                if not isinstance(value, str) or "\n" in value or "\r" in value:
                    self.problem(value_node, f"{at}.{key}: expected a one-line string")
                else:
                    out.append((key, value))
        return tuple(out)

    def rule(self, node: Node, where: str, target_names: set[str]) -> Rule | None:
        m = self.mapping(node, where, frozenset({"name", "match", "to", "transform"}), ("name", "to"))
        if m is None:
            return None
        to: list[str] = []
        for value, item in self.strings(m.get("to"), f"{where}.to", "targets"):
            if value not in target_names:
                self.problem(item, f"{where}.to: unknown target {value!r}")
            elif value in to:
                self.problem(item, f"{where}.to: target {value!r} is listed twice")
            else:
                to.append(value)
        transforms = []
        for label, item in self.items(m.get("transform"), f"{where}.transform"):
            transforms.append(self.transform(item, label))
        return Rule(
            name=self.name(m, where),
            match=self.match(m.get("match"), f"{where}.match"),
            to=tuple(to),
            transform=tuple(t for t in transforms if t),
        )

    def match(self, node: Node | None, where: str) -> Match:
        if node is None:
            return Match(None, None, None, ())  # no match block: every event
        m = self.mapping(node, where, frozenset({"modules", "cpos", "actions", "conditions"}))
        if m is None:
            return Match(None, None, None, ())
        actions = None
        if "actions" in m:
            listed = self.strings(m["actions"], f"{where}.actions", "actions")
            for a, item in listed:
                if not _ACTION_RE.match(a.lower()):
                    self.problem(item, f"{where}.actions: {a!r} is not an action name")
            actions = frozenset(a.lower() for a, _ in listed)
        conditions = [self.condition(item, label) for label, item in self.items(m.get("conditions"), f"{where}.conditions")]
        return Match(
            modules=frozenset(self.modules(m["modules"], f"{where}.modules", ())) if "modules" in m else None,
            cpos=self.cpos(m["cpos"], f"{where}.cpos") if "cpos" in m else None,
            actions=actions,
            conditions=tuple(c for c in conditions if c),
        )

    def condition(self, node: Node, where: str) -> Condition | None:
        m = self.mapping(node, where, frozenset({"field", *CONDITION_OPS}), ("field",), keep_null=True)
        if m is None:
            return None
        path = self.text(m.get("field"), f"{where}.field")
        if path and not _PATH_RE.match(path):
            self.problem(m["field"], f"{where}.field: bad field path {path!r}: use dotted names and '*' for every list item")
        ops = [k for k in m if k in CONDITION_OPS]
        if len(ops) != 1:
            self.problem(node, f"{where}: give exactly one operator of {', '.join(CONDITION_OPS)}")
            return None
        op, value_node = ops[0], m[ops[0]]
        value = self.scalar(value_node)
        if op in ("in", "not_in"):
            values = [self.scalar(v) for v in value_node.value] if isinstance(value_node, SequenceNode) else [_BAD]
            value = tuple(values)
            ok = all(v is None or isinstance(v, str | bool) or _is_number(v) for v in values)
        elif op == "exists":
            ok = isinstance(value, bool)
        elif op in ("gt", "lt"):
            ok = isinstance(value, str) or _is_number(value)
        else:
            ok = value is None or isinstance(value, str | bool) or _is_number(value)
        if not ok:
            expected = {"in": "a list of scalars", "not_in": "a list of scalars", "exists": "true or false",
                        "gt": "a number or a string", "lt": "a number or a string"}.get(op, "a string, number, boolean or null")
            self.problem(value_node, f"{where}.{op}: expected {expected} (quote dates and times)")
        return Condition(path, op, value)

    def transform(self, node: Node, where: str) -> Transform | None:
        if not isinstance(node, MappingNode) or len(node.value) != 1:
            self.problem(node, f"{where}: expected one transform such as '- drop: [auth_id]'")
            return None
        key_node, value = node.value[0]
        kind = self.scalar(key_node)
        if kind not in TRANSFORM_KINDS:
            shown = repr(kind) if isinstance(kind, str) else "entry"
            self.problem(key_node, f"{where}: unknown transform {shown} (known: {', '.join(TRANSFORM_KINDS)})")
            return None
        if kind in ("keep", "drop"):
            return Transform(kind, self.path_list(value, f"{where}.{kind}"))
        option = {"pseudonymise": "key_env", "round": "decimals", "coarsen_time": "unit"}[kind]
        m = self.mapping(value, f"{where}.{kind}", frozenset({"fields", option}), ("fields", option))
        if m is None:
            return None
        fields = self.path_list(m.get("fields"), f"{where}.{kind}.fields")
        if kind == "pseudonymise":
            return Transform(kind, fields, key=self.env_secret(m.get("key_env"), f"{where}.{kind}.key_env")[1])
        if kind == "round":
            return Transform(kind, fields, decimals=self.integer(m.get("decimals"), f"{where}.round.decimals", 2, 0, 10))
        unit = self.text(m.get("unit"), f"{where}.coarsen_time.unit")
        if unit and unit not in TIME_UNITS:
            self.problem(m["unit"], f"{where}.coarsen_time.unit: {unit!r} is not one of {', '.join(TIME_UNITS)}")
        return Transform(kind, fields, unit=unit)

    def pull_source(self, node: Node, where: str) -> PullSource | None:
        keys = frozenset({"name", "url", "token_env", "modules", "interval", "default_cpo", "page_limit", "timeout"})
        m = self.mapping(node, where, keys, ("name", "url", "token_env"))
        if m is None:
            return None
        return PullSource(
            name=self.name(m, where),
            url=self.url(m.get("url"), f"{where}.url"),
            token=self.env_secret(m.get("token_env"), f"{where}.token_env")[1] or Secret(""),
            modules=self.modules(m.get("modules"), f"{where}.modules", _PULL_MODULES),
            interval=self.interval(m.get("interval"), f"{where}.interval", 900.0),
            default_cpo=self.default_cpo(m.get("default_cpo"), f"{where}.default_cpo"),
            page_limit=self.integer(m.get("page_limit"), f"{where}.page_limit", 100, 1, 10000),
            timeout=self.number(m.get("timeout"), f"{where}.timeout", 30.0),
        )
