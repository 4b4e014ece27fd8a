"""Typed values out of a composed YAML node tree, each problem recorded as ``file:line: message``.

Nodes rather than ``yaml.safe_load``: nodes keep ``start_mark.line``, so every problem can name its
line. Getters return a harmless default after recording a problem; the loader discards the result
whenever any problem was found, so defaults never reach a caller.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from relay.ocpi.paths import MODULES
from relay.routing.model import CpoPattern, parse_cpo, split_path
from relay.settings import Secret

BAD = object()  # what ``scalar`` returns for a node that is not a readable scalar

_SECRET_KEYS = {"token": "token_env", "secret": "secret_env", "key": "key_env"}
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_CONCRETE_CPO_RE = re.compile(r"^([A-Za-z]{2})\*([A-Za-z0-9]{3})$")
_INTERVAL_RE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_NULL_TAG = "tag:yaml.org,2002:null"


def is_null(node: Node) -> bool:
    """Whether ``node`` is YAML null (``~``, ``null`` or nothing)."""
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


def is_number(value: object) -> bool:
    """An int or float, but not a bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def name_of(node: Node) -> tuple[str, Node] | None:
    """The ``name:`` value of a mapping node and its node, when there is one."""
    if isinstance(node, MappingNode):
        for k, v in node.value:
            if isinstance(k, ScalarNode) and k.value == "name" and isinstance(v, ScalarNode) and v.value:
                return v.value, v
    return None


class FieldReader:
    """Reads shapes (mappings, lists, scalars) and domain values (names, modules, CPOs, URLs, secrets)."""

    def __init__(self, path: str, env: Mapping[str, str]) -> None:
        self.path = path
        self.env = env
        self.problems: list[str] = []
        self.secret_files: list[str] = []  # every ``*_file`` read, for the reload watcher
        self.sources: set[str] = set()  # subscription and pull source names (what rules may match)
        self._constructor = yaml.constructor.SafeConstructor()

    def problem(self, node: Node, message: str) -> None:
        self.problems.append(f"{self.path}:{node.start_mark.line + 1}: {message}")

    # shapes

    def scalar(self, node: Node) -> Any:
        if not isinstance(node, ScalarNode):
            return BAD
        try:
            return self._constructor.construct_object(node)
        except yaml.YAMLError:
            return BAD

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
            elif is_null(value_node) and not keep_null:
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
        if env_key is not None and env_key in allowed:
            return (f"{where}: {key!r} is not allowed: secrets must come from an env var ({env_key}: VAR_NAME) "
                    f"or a file ({env_key[:-4]}_file: /run/secrets/NAME)")
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
            named = name_of(item)
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
        if not is_number(value) or not value > 0 or value == float("inf"):
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

    def secrets(self, m: dict[str, Node], node: Node, base: str, where: str, *, required: bool = True,
                single: bool = False) -> list[tuple[str, Secret, Node]]:
        """The secrets of ``<base>_env`` and ``<base>_file`` (each one name or a list: old and new during
        a rotation), as (where it came from, value, node); a value never enters a message."""
        env_key, file_key = f"{base}_env", f"{base}_file"
        out: list[tuple[str, Secret, Node]] = []
        for var, item in self.one_or_many(m.get(env_key), f"{where}.{env_key}", "env var names"):
            secret = self.env_secret(item, f"{where}.{env_key}")[1]
            if secret is not None:
                out.append((f"env var {var}", secret, item))
        for name, item in self.one_or_many(m.get(file_key), f"{where}.{file_key}", "file paths"):
            secret = self.file_secret(name, item, f"{where}.{file_key}")
            if secret is not None:
                out.append((f"file {name}", secret, item))
        if required and env_key not in m and file_key not in m:
            self.problem(node, f"{where}: missing required key {env_key!r} (or {file_key!r})")
        if single and len(out) > 1:
            self.problem(m.get(env_key) or m[file_key], f"{where}: {env_key} / {file_key} name {len(out)} secrets; "
                         "this one takes exactly one")
        return out

    @staticmethod
    def needs(node: Node, base: str) -> tuple[str, ...]:
        """``(<base>_env,)`` for ``mapping``'s required keys unless the entry gives ``<base>_file``."""
        if isinstance(node, MappingNode) and any(
                isinstance(k, ScalarNode) and k.value == f"{base}_file" for k, _ in node.value):
            return ()
        return (f"{base}_env",)

    def one_or_many(self, node: Node | None, where: str, what: str) -> list[tuple[str, Node]]:
        """One string or a non-empty list of strings, each with its node."""
        if node is None:
            return []
        if isinstance(node, SequenceNode):
            return self.strings(node, where, what)
        value = self.text(node, where)
        return [(value, node)] if value else []

    def file_secret(self, name: str, node: Node, where: str) -> Secret | None:
        """The content of a secret file as Docker and Kubernetes mount them (one trailing newline
        stripped); a relative path is relative to forwarding.yaml's directory."""
        path = name if os.path.isabs(name) else os.path.join(os.path.dirname(self.path), name)
        self.secret_files.append(path)
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read()
        except OSError as exc:
            self.problem(node, f"{where}: cannot read secret file {name}: {exc.strerror or type(exc).__name__}")
            return None
        except UnicodeDecodeError:
            self.problem(node, f"{where}: secret file {name} is not UTF-8 text")
            return None
        value = value[:-1] if value.endswith("\n") else value
        value = value[:-1] if value.endswith("\r") else value
        if not value.strip():
            self.problem(node, f"{where}: secret file {name} is empty")
            return None
        if "\n" in value or "\r" in value:
            self.problem(node, f"{where}: secret file {name} must hold one line")
            return None
        return Secret(value)

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
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)] if m else float(value) if is_number(value) else -1.0
        if not seconds > 0:
            shown = f" {value!r}" if value is not BAD else ""
            self.problem(node, f"{where}: bad interval{shown}: use seconds above 0 or a string like '30s', '15m', '1h', '1d'")
            return default
        return seconds
