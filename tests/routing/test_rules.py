"""route(): which (rule, target) pairs an event reaches, by module, CPO, action and field conditions."""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest

from relay.routing.loader import load_config
from relay.routing.model import RoutingConfig
from relay.routing.rules import route

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "ocpi"
ENV = {"RELAY_A": "token-a", "RELAY_B": "token-b"}
TARGETS = """\
targets:
  - {name: a, type: ocpi, url: "http://a.example", token_env: RELAY_A}
  - {name: b, type: ocpi, url: "http://b.example", token_env: RELAY_B}
"""


def config(tmp_path: Path, rules: str) -> RoutingConfig:
    path = tmp_path / "forwarding.yaml"
    path.write_text(TARGETS + "rules:\n" + textwrap.indent(textwrap.dedent(rules), "  "))
    return load_config(path, ENV)


def names(pairs: tuple[Any, ...]) -> list[tuple[str, str]]:
    return [(rule.name, target.name) for rule, target in pairs]


@pytest.fixture
def session() -> dict[str, Any]:
    return json.loads((EXAMPLES / "session_completed.json").read_text())


def test_rule_matches_only_its_modules(tmp_path: Path, session: dict[str, Any]) -> None:
    cfg = config(tmp_path, """\
        - {name: s, match: {modules: [sessions]}, to: [a]}
    """)
    assert names(route(cfg, "sessions", "put", "NL", "GFX", session)) == [("s", "a")]
    assert route(cfg, "cdrs", "post", "NL", "GFX", session) == ()
    assert route(cfg, "no-such-module", "put", "NL", "GFX", session) == ()


def test_rule_without_match_takes_every_event(tmp_path: Path) -> None:
    cfg = config(tmp_path, "- {name: all, to: [a, b]}\n")
    for module in ("locations", "tariffs", "notifications"):
        assert names(route(cfg, module, "put", None, None, {})) == [("all", "a"), ("all", "b")]


def test_rule_matches_cpo_case_insensitively_and_with_wildcards(tmp_path: Path) -> None:
    cfg = config(tmp_path, """\
        - {name: gfx, match: {cpos: ["NL*GFX"]}, to: [a]}
        - {name: any-nl, match: {cpos: ["NL**"]}, to: [a]}
        - {name: any-gfx, match: {cpos: ["**GFX"]}, to: [a]}
        - {name: any, match: {cpos: ["*"]}, to: [a]}
    """)
    assert [n for n, _ in names(route(cfg, "cdrs", "post", "nl", "gfx", {}))] == ["gfx", "any-nl", "any-gfx", "any"]
    assert [n for n, _ in names(route(cfg, "cdrs", "post", "NL", "ABC", {}))] == ["any-nl", "any"]
    assert [n for n, _ in names(route(cfg, "cdrs", "post", "BE", "GFX", {}))] == ["any-gfx", "any"]
    # an unattributed event only reaches rules that accept any CPO
    assert [n for n, _ in names(route(cfg, "cdrs", "post", None, None, {}))] == ["any"]


def test_rule_matches_listed_actions_case_insensitively(tmp_path: Path) -> None:
    cfg = config(tmp_path, "- {name: puts, match: {actions: [PUT, post]}, to: [a]}\n")
    assert names(route(cfg, "sessions", "put", "NL", "GFX", {})) == [("puts", "a")]
    assert names(route(cfg, "cdrs", "POST", "NL", "GFX", {})) == [("puts", "a")]
    assert route(cfg, "sessions", "patch", "NL", "GFX", {}) == ()


def test_target_reached_by_two_rules_appears_once_per_rule_in_file_order(tmp_path: Path, session: dict[str, Any]) -> None:
    cfg = config(tmp_path, """\
        - {name: first, match: {modules: [sessions]}, to: [b, a]}
        - {name: second, match: {cpos: ["NL*GFX"]}, to: [a]}
    """)
    pairs = route(cfg, "sessions", "put", "NL", "GFX", session)
    assert names(pairs) == [("first", "b"), ("first", "a"), ("second", "a")]
    assert pairs[0][0] is cfg.rules[0] and pairs[0][1] is cfg.target("b")


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("{field: status, eq: COMPLETED}", True),
        ("{field: status, eq: ACTIVE}", False),
        ("{field: status, ne: ACTIVE}", True),
        ("{field: status, ne: COMPLETED}", False),
        ("{field: missing_field, ne: X}", True),
        ("{field: status, in: [ACTIVE, COMPLETED]}", True),
        ("{field: status, not_in: [ACTIVE, INVALID]}", True),
        ("{field: status, not_in: [COMPLETED]}", False),
        ("{field: end_datetime, exists: true}", True),
        ("{field: missing_field, exists: true}", False),
        ("{field: missing_field, exists: false}", True),
        ("{field: kwh, gt: 20}", True),
        ("{field: kwh, lt: 20}", False),
        ("{field: location.coordinates.latitude, gt: 52.1}", True),  # numeric string vs number
        ("{field: start_datetime, lt: '2024-03-06T00:00:00Z'}", True),  # ISO strings order by time
        ("{field: status, gt: 3}", False),  # a non-numeric string never compares with a number
        ("{field: location.evses.*.uid, eq: NL-GFX-E0873422-1}", True),  # any list item
        ("{field: location.evses.*.connectors.*.power_type, in: [DC]}", False),
        ("{field: charging_periods.*.dimensions.*.type, eq: PARKING_TIME}", True),
    ],
)
def test_conditions_decide_whether_the_rule_matches(
    tmp_path: Path, session: dict[str, Any], condition: str, expected: bool
) -> None:
    cfg = config(tmp_path, f"- {{name: c, match: {{conditions: [{condition}]}}, to: [a]}}\n")
    assert bool(route(cfg, "sessions", "put", "NL", "GFX", session)) is expected


def test_all_conditions_must_hold(tmp_path: Path, session: dict[str, Any]) -> None:
    cfg = config(tmp_path, """\
        - name: both
          match:
            conditions:
              - {field: status, eq: COMPLETED}
              - {field: total_cost, gt: 100}
          to: [a]
    """)
    assert route(cfg, "sessions", "put", "NL", "GFX", session) == ()


def test_boolean_condition_does_not_equal_a_number(tmp_path: Path) -> None:
    cfg = config(tmp_path, "- {name: c, match: {conditions: [{field: publish, eq: true}]}, to: [a]}\n")
    assert route(cfg, "locations", "put", "NL", "GFX", {"publish": 1}) == ()
    assert route(cfg, "locations", "put", "NL", "GFX", {"publish": "true"}) == ()
    assert len(route(cfg, "locations", "put", "NL", "GFX", {"publish": True})) == 1


def test_route_does_not_change_the_object(tmp_path: Path, session: dict[str, Any]) -> None:
    cfg = config(tmp_path, "- {name: c, match: {conditions: [{field: location.evses.*.uid, exists: true}]}, to: [a]}\n")
    before = copy.deepcopy(session)
    route(cfg, "sessions", "put", "NL", "GFX", session)
    assert session == before
