"""Reading one forwarding.yaml rule: its match, conditions and transforms (part of the loader)."""

from __future__ import annotations

import re

from yaml.nodes import MappingNode, Node, SequenceNode

from relay.routing.fields import BAD, FieldReader, is_number
from relay.routing.model import (
    CONDITION_OPS,
    FIELD_PATH_RE,
    TIME_UNITS,
    TRANSFORM_KINDS,
    Condition,
    Match,
    Rule,
    Transform,
)

_ACTION_RE = re.compile(r"^[a-z_]+$")


class RuleReader(FieldReader):
    """Rules of forwarding.yaml; problems are recorded like every other field's."""

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
        m = self.mapping(node, where, frozenset({"modules", "cpos", "actions", "conditions", "subscriptions"}))
        if m is None:
            return Match(None, None, None, ())
        subscriptions = None
        if "subscriptions" in m:
            listed = self.strings(m["subscriptions"], f"{where}.subscriptions", "subscriptions")
            for name, item in listed:
                if name not in self.sources:
                    known = ", ".join(sorted(self.sources)) or "none"
                    self.problem(item, f"{where}.subscriptions: unknown subscription {name!r} (known: {known})")
            subscriptions = frozenset(name for name, _ in listed)
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
            subscriptions=subscriptions,
        )

    def condition(self, node: Node, where: str) -> Condition | None:
        m = self.mapping(node, where, frozenset({"field", *CONDITION_OPS}), ("field",), keep_null=True)
        if m is None:
            return None
        path = self.text(m.get("field"), f"{where}.field")
        if path and not FIELD_PATH_RE.match(path):
            self.problem(m["field"], f"{where}.field: bad field path {path!r}: use dotted names and '*' for every list item")
        ops = [k for k in m if k in CONDITION_OPS]
        if len(ops) != 1:
            self.problem(node, f"{where}: give exactly one operator of {', '.join(CONDITION_OPS)}")
            return None
        op, value_node = ops[0], m[ops[0]]
        value = self.scalar(value_node)
        if op in ("in", "not_in"):
            values = [self.scalar(v) for v in value_node.value] if isinstance(value_node, SequenceNode) else [BAD]
            value = tuple(values)
            ok = all(v is None or isinstance(v, str | bool) or is_number(v) for v in values)
        elif op == "exists":
            ok = isinstance(value, bool)
        elif op in ("gt", "lt"):
            ok = isinstance(value, str) or is_number(value)
        else:
            ok = value is None or isinstance(value, str | bool) or is_number(value)
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
        allowed = {"fields", option, "key_file"} if kind == "pseudonymise" else {"fields", option}
        required = ("fields", *self.needs(value, "key")) if kind == "pseudonymise" else ("fields", option)
        m = self.mapping(value, f"{where}.{kind}", frozenset(allowed), required)
        if m is None:
            return None
        fields = self.path_list(m.get("fields"), f"{where}.{kind}.fields")
        if kind == "pseudonymise":
            # one key: a second would give the same id two pseudonyms
            keys = self.secrets(m, value, "key", f"{where}.{kind}", required=False, single=True)
            return Transform(kind, fields, key=keys[0][1] if keys else None)
        if kind == "round":
            return Transform(kind, fields, decimals=self.integer(m.get("decimals"), f"{where}.round.decimals", 2, 0, 10))
        unit = self.text(m.get("unit"), f"{where}.coarsen_time.unit")
        if unit and unit not in TIME_UNITS:
            self.problem(m["unit"], f"{where}.coarsen_time.unit: {unit!r} is not one of {', '.join(TIME_UNITS)}")
        return Transform(kind, fields, unit=unit)
