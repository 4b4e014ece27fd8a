"""Which targets an event goes to: the rules of forwarding.yaml matched against one event."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relay.routing.model import Condition, Match, RoutingConfig, Rule, Target, cpo_matches
from relay.routing.transforms import values_at


def route(
    config: RoutingConfig,
    module: str,
    action: str,
    country_code: str | None,
    party_id: str | None,
    obj: Mapping[str, Any],
    subscription: str | None = None,
) -> tuple[tuple[Rule, Target], ...]:
    """Every (rule, target) pair whose rule matches the event, in file order.

    A target reached by two rules appears once per rule, since each rule carries its own
    transforms: the partner gets two differently filtered copies, and the outbox keeps one row
    per (event, target, rule). ``obj`` is what conditions look at; ``subscription`` is the name of
    the subscription (or pull source) the event came in by. Pure: no I/O, no state.
    """
    act = action.lower()
    pairs: list[tuple[Rule, Target]] = []
    # rules_for is precomputed per module inside RoutingConfig: route() runs for every event.
    for rule, targets in config.rules_for(module):
        if rule.match.subscriptions is not None and subscription not in rule.match.subscriptions:
            continue
        if matches(rule.match, act, country_code, party_id, obj):
            pairs.extend((rule, t) for t in targets)
    return tuple(pairs)


def matches(match: Match, action: str, country_code: str | None, party_id: str | None, obj: Mapping[str, Any]) -> bool:
    """Whether an event (module already known to match) satisfies actions, CPOs and all conditions."""
    if match.actions is not None and action.lower() not in match.actions:
        return False
    if match.cpos is not None and not cpo_matches(match.cpos, country_code, party_id):
        return False
    return all(condition_holds(c, obj) for c in match.conditions)


def condition_holds(condition: Condition, obj: Mapping[str, Any]) -> bool:
    """Evaluate one condition against ``obj``.

    A path with ``*`` can reach several values: ``eq``, ``in``, ``gt``, ``lt`` hold when any value
    does, ``ne`` and ``not_in`` when none is equal / listed (so a missing field is ``ne`` anything),
    ``exists: true`` when at least one value is there (null counts as present).
    """
    found = values_at(obj, condition.path)
    op, want = condition.op, condition.value
    if op == "exists":
        return bool(found) == bool(want)
    if op in ("eq", "ne"):
        hit = any(_equal(v, want) for v in found)
        return hit if op == "eq" else not hit
    if op in ("in", "not_in"):
        options = want if isinstance(want, tuple) else (want,)
        hit = any(_equal(v, o) for v in found for o in options)
        return hit if op == "in" else not hit
    if op in ("gt", "lt"):
        return any(_compare(v, want, op) for v in found)
    raise ValueError(f"unknown condition operator {op!r}")


def _equal(a: object, b: object) -> bool:
    # True == 1 in Python; in JSON a boolean and a number are different values.
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _compare(value: object, bound: object, op: str) -> bool:
    """Numbers compare as numbers (a numeric string too, as OCPI writes coordinates); strings as strings
    (ISO UTC DateTimes then order by time); anything else does not compare."""
    if isinstance(bound, bool) or isinstance(value, bool):
        return False
    if isinstance(bound, int | float):
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            return False
        if not isinstance(number, int | float):
            return False
        return number > bound if op == "gt" else number < bound
    if isinstance(bound, str) and isinstance(value, str):
        return value > bound if op == "gt" else value < bound
    return False
