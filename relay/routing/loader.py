"""Reading forwarding.yaml: every problem at once as ``file:line: message``, secrets from the env.

Secrets come only from the env vars the file names and never appear in a message.
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
    PullSource,
    RoutingConfig,
    StreamClient,
    Subscription,
    Target,
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
     "max_attempts", "retry_base", "retry_max", "headers", "headers_env"}
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
            named = name_of(item)
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
        keys = frozenset({"name", "token_env", "modules", "cpos", "cert_subject"})
        m = self.mapping(node, where, keys, ("name", "token_env", "cpos"))
        if m is None:
            return None
        return StreamClient(
            name=self.name(m, where),
            token=self.env_secret(m.get("token_env"), f"{where}.token_env")[1] or Secret(""),
            modules=frozenset(self.modules(m.get("modules"), f"{where}.modules", MODULES)),
            cpos=self.cpos(m.get("cpos"), f"{where}.cpos"),
            cert_subject=self.subject(m.get("cert_subject"), f"{where}.cert_subject"),
        )

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
