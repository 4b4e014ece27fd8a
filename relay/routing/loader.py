"""Reading forwarding.yaml: every problem at once as ``file:line: message``, secrets from env or files.

Secrets come only from the env vars (``*_env``) and files (``*_file``) the file names and never
appear in a message.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping

import yaml
from yaml.nodes import MappingNode, Node

from relay.errors import ConfigError
from relay.ocpi.paths import MODULES
from relay.routing.fields import is_null, name_of
from relay.routing.model import (
    TARGET_TYPES,
    Network,
    PullSource,
    RoutingConfig,
    StreamClient,
    Subscription,
    Target,
    parse_network,
    parse_subject,
)
from relay.routing.rule_reader import RuleReader
from relay.settings import Secret, environ

_SECTIONS = ("subscriptions", "stream_clients", "targets", "rules", "pull")
_HEADER_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Set by the relay itself; an Authorization header here would also be a secret written inline.
_RESERVED_HEADERS = frozenset(
    {"authorization", "content-type", "content-length", "host", "webhook-id", "webhook-timestamp", "webhook-signature"}
)
_PULL_MODULES = ("locations", "sessions", "cdrs", "tariffs")
_TARGET_KEYS = frozenset(
    {"name", "type", "url", "secret_env", "token_env", "timeout", "concurrency", "rate_limit",
     "max_attempts", "retry_base", "retry_max", "headers", "headers_env",
     "secret_file", "token_file", "headers_file"}
)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> RoutingConfig:
    """Read and check forwarding.yaml; raise ConfigError listing every ``file:line: message``.

    Secrets are read from ``env`` (default: the process environment) under the names the file gives.
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
    reader = _ConfigReader(name, environ() if env is None else env)
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


def _is_whsec(value: str) -> bool:
    if not value.startswith("whsec_"):
        return False
    try:
        return len(base64.b64decode(value[len("whsec_"):], validate=True)) > 0
    except (binascii.Error, ValueError):
        return False



class _ConfigReader(RuleReader):
    """Builds the typed sections; `load_config` discards the result when any problem was found."""

    def read(self, root: Node | None) -> RoutingConfig:
        if root is None or is_null(root):
            return RoutingConfig(path=self.path)  # an empty file routes nothing, which is valid
        top = self.mapping(root, "top level", frozenset(_SECTIONS))
        if top is None:
            return RoutingConfig(path=self.path)
        sections = {s: self.items(top.get(s), s) for s in _SECTIONS}
        for section, entries in sections.items():
            self.check_unique(section, [item for _, item in entries])
        target_names = {n[0] for _, item in sections["targets"] if (n := name_of(item))}
        subs = [self.subscription(item, label) for label, item in sections["subscriptions"]]
        clients = [self.stream_client(item, label) for label, item in sections["stream_clients"]]
        targets = [self.target(item, label) for label, item in sections["targets"]]
        pull = [self.pull_source(item, label) for label, item in sections["pull"]]
        # events carry the name of the subscription (or pull source) they came in by
        self.sources = {s.name for s in subs if s} | {p.name for p in pull if p}
        rules = [self.rule(item, label, target_names) for label, item in sections["rules"]]
        self.check_tokens_unique(sections["subscriptions"], [s.tokens if s else () for s in subs])
        self.check_tokens_unique(sections["stream_clients"], [c.tokens if c else () for c in clients])
        if self.problems:
            return RoutingConfig(path=self.path)
        return RoutingConfig(
            subscriptions=tuple(s for s in subs if s), stream_clients=tuple(c for c in clients if c),
            targets=tuple(t for t in targets if t), rules=tuple(r for r in rules if r),
            pull=tuple(p for p in pull if p), path=self.path, secret_files=tuple(dict.fromkeys(self.secret_files)),
        )

    def check_unique(self, section: str, items: list[Node]) -> None:
        first: dict[str, int] = {}
        for item in items:
            named = name_of(item)
            if named is None:
                continue
            name, node = named
            if name in first:
                self.problem(node, f"{section}: duplicate name {name!r} (first at line {first[name]})")
            else:
                first[name] = node.start_mark.line + 1

    def check_tokens_unique(self, entries: list[tuple[str, Node]], tokens: list[tuple[Secret, ...]]) -> None:
        # Two entries sharing a token would make the lookup ambiguous; say so without the value.
        seen: dict[str, str] = {}
        for (label, item), own in zip(entries, tokens, strict=True):
            for value in dict.fromkeys(t.reveal() for t in own):
                if not value:
                    continue  # unset: already reported
                if value in seen:
                    self.problem(item, f"{label}: uses the same token as {seen[value]}; tokens must differ")
                else:
                    seen[value] = label

    def subscription(self, node: Node, where: str) -> Subscription | None:
        keys = frozenset({"name", "token_env", "token_file", "cpos", "modules", "default_cpo", "accept_base64",
                          "strict", "allow_ips"})
        m = self.mapping(node, where, keys, ("name", *self.needs(node, "token"), "cpos"))
        if m is None:
            return None
        tokens = [s for _, s, _ in self.secrets(m, node, "token", where, required=False)] or [Secret("")]
        return Subscription(
            name=self.name(m, where),
            token=tokens[0],
            cpos=self.cpos(m.get("cpos"), f"{where}.cpos"),
            modules=frozenset(self.modules(m.get("modules"), f"{where}.modules", MODULES)),
            default_cpo=self.default_cpo(m.get("default_cpo"), f"{where}.default_cpo"),
            accept_base64=self.flag(m.get("accept_base64"), f"{where}.accept_base64", False),
            strict=self.flag(m.get("strict"), f"{where}.strict", False),
            more_tokens=tuple(tokens[1:]),
            allow_ips=self.networks(m.get("allow_ips"), f"{where}.allow_ips"),
        )

    def stream_client(self, node: Node, where: str) -> StreamClient | None:
        keys = frozenset({"name", "token_env", "token_file", "modules", "cpos", "allow_ips", "cert_subject"})
        m = self.mapping(node, where, keys, ("name", *self.needs(node, "token"), "cpos"))
        if m is None:
            return None
        tokens = [s for _, s, _ in self.secrets(m, node, "token", where, required=False)] or [Secret("")]
        return StreamClient(
            name=self.name(m, where),
            token=tokens[0],
            modules=frozenset(self.modules(m.get("modules"), f"{where}.modules", MODULES)),
            cpos=self.cpos(m.get("cpos"), f"{where}.cpos"),
            more_tokens=tuple(tokens[1:]),
            allow_ips=self.networks(m.get("allow_ips"), f"{where}.allow_ips"),
            cert_subject=self.subject(m.get("cert_subject"), f"{where}.cert_subject"),
        )

    def networks(self, node: Node | None, where: str) -> tuple[Network, ...]:
        """``allow_ips``: CIDRs (or single addresses) of IPv4 and IPv6."""
        out: list[Network] = []
        for value, item in self.strings(node, where, "networks (CIDR such as 198.51.100.0/24)"):
            try:
                out.append(parse_network(value))
            except ValueError as exc:
                self.problem(item, f"{where}: {value!r} is not a network: {exc} (use CIDRs such as "
                             "'198.51.100.0/24' or '2001:db8::/32')")
        return tuple(dict.fromkeys(out))

    def subject(self, node: Node | None, where: str) -> tuple[tuple[str, str], ...]:
        """``cert_subject``: the TLS client certificate subject a stream client must present."""
        if node is None:
            return ()
        text = self.text(node, where)
        try:
            return parse_subject(text) if text else ()
        except ValueError as exc:
            self.problem(node, f"{where}: {exc}")
            return ()

    def target(self, node: Node, where: str) -> Target | None:
        m = self.mapping(node, where, _TARGET_KEYS, ("name", "type", "url"))
        if m is None:
            return None
        kind = self.text(m.get("type"), f"{where}.type")
        if kind and kind not in TARGET_TYPES:
            self.problem(m["type"], f"{where}.type: unknown target type {kind!r} (expected webhook or ocpi)")
        # A webhook signs with a whsec_ secret; an ocpi target sends the partner's Token header.
        own, other = ("secret_env", "token_env") if kind == "webhook" else ("token_env", "secret_env")
        secrets: list[Secret] = []
        if kind in TARGET_TYPES:
            for key in (other, other[:-4] + "_file"):
                if key in m:
                    self.problem(m[key], f"{where}.{key}: not used by a {kind} target (it takes {own})")
            if own not in m and own[:-4] + "_file" not in m:
                self.problem(node, f"{where}: a {kind} target needs {own!r} (or {own[:-4] + '_file'!r})")
            # a webhook signs with every listed secret (the partner's old and new during a rotation);
            # an ocpi target sends one token
            found = self.secrets(m, node, own[:-4], where, required=False, single=kind == "ocpi")
            for origin, value, item in found:
                if kind == "webhook" and not _is_whsec(value.reveal()):
                    key = own if origin.startswith("env var") else own[:-4] + "_file"
                    self.problem(item, f"{where}.{key}: {origin} must hold a secret of the form whsec_<base64>")
            secrets = [value for _, value, _ in found]
        secret = secrets[0] if secrets else None
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
            headers=self.headers(m.get("headers"), m.get("headers_env"), where, m.get("headers_file")),
            more_secrets=tuple(secrets[1:]) if kind == "webhook" else (),
        )

    def headers(self, inline: Node | None, from_env: Node | None, where: str,
                from_file: Node | None = None) -> tuple[tuple[str, str], ...]:
        """``headers`` (name: value), ``headers_env`` (name: ENV_VAR, the value read from the env) and
        ``headers_file`` (name: path of a secret file)."""
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        for section, node in (("headers", inline), ("headers_env", from_env), ("headers_file", from_file)):
            if node is None:
                continue
            at = f"{where}.{section}"
            if not isinstance(node, MappingNode):
                what = {"headers": "values", "headers_env": "env var names", "headers_file": "file paths"}[section]
                self.problem(node, f"{at}: expected a mapping of header names to {what}")
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
                    self.problem(key_node, f"{at}: header {key!r} is given twice (headers, headers_env, headers_file)")
                    continue
                seen.add(key.lower())
                if section == "headers_file":
                    name = self.text(value_node, f"{at}.{key}")
                    file_value = self.file_secret(name, value_node, f"{at}.{key}") if name else None
                    if file_value is not None:
                        out.append((key, file_value.reveal()))
                    continue
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

    def pull_source(self, node: Node, where: str) -> PullSource | None:
        keys = frozenset({"name", "url", "token_env", "token_file", "modules", "interval", "default_cpo", "page_limit",
                          "timeout"})
        m = self.mapping(node, where, keys, ("name", "url", *self.needs(node, "token")))
        if m is None:
            return None
        tokens = self.secrets(m, node, "token", where, required=False, single=True)
        return PullSource(
            name=self.name(m, where),
            url=self.url(m.get("url"), f"{where}.url"),
            token=tokens[0][1] if tokens else Secret(""),
            modules=self.modules(m.get("modules"), f"{where}.modules", _PULL_MODULES),
            interval=self.interval(m.get("interval"), f"{where}.interval", 900.0),
            default_cpo=self.default_cpo(m.get("default_cpo"), f"{where}.default_cpo"),
            page_limit=self.integer(m.get("page_limit"), f"{where}.page_limit", 100, 1, 10000),
            timeout=self.number(m.get("timeout"), f"{where}.timeout", 30.0),
        )
