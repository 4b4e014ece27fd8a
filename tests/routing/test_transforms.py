"""apply_transforms: keep, drop, pseudonymise, round, coarsen_time; and the shipped research copy."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import re
from pathlib import Path
from typing import Any

import pytest

from relay.routing.loader import load_config
from relay.routing.model import Transform
from relay.routing.rules import route
from relay.routing.transforms import apply_transforms, values_at
from relay.settings import Secret

EXAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "ocpi"
SHIPPED = Path(__file__).resolve().parents[2] / "forwarding.yaml"
KEY = Secret("pseudo-key-a9f0c6")


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text())


def t(kind: str, *fields: str, **options: Any) -> Transform:
    return Transform(kind, fields, **options)


# keep


def test_keep_with_nested_paths_keeps_only_the_parents_needed() -> None:
    session = example("session_completed.json")
    out = apply_transforms((t("keep", "id", "location.id"),), session, "x")
    assert out == {"id": session["id"], "location": {"id": session["location"]["id"]}}


def test_keep_through_lists_keeps_each_item_s_fields() -> None:
    session = example("session_completed.json")
    out = apply_transforms((t("keep", "location.evses.*.uid", "location.evses.*.status", "kwh"),), session, "x")
    assert out == {"kwh": 21.384, "location": {"evses": [{"uid": "NL-GFX-E0873422-1", "status": "AVAILABLE"}]}}


def test_keep_of_a_whole_subtree_and_missing_paths() -> None:
    obj = {"a": {"b": 1, "c": 2}, "d": 3}
    assert apply_transforms((t("keep", "a", "a.b", "nope.x"),), obj, "x") == {"a": {"b": 1, "c": 2}}
    assert apply_transforms((t("keep", "nope"),), obj, "x") == {}
    assert apply_transforms((t("keep", "d.deeper"),), obj, "x") == {}


# drop


def test_drop_removes_top_level_nested_and_list_item_fields() -> None:
    session = example("session_completed.json")
    out = apply_transforms((t("drop", "auth_id", "location.address", "location.evses.*.evse_id", "not.there"),), session, "x")
    assert "auth_id" not in out and "address" not in out["location"]
    assert all("evse_id" not in e for e in out["location"]["evses"])
    assert out["location"]["evses"][0]["uid"] == "NL-GFX-E0873422-1"
    assert out["meter_id"] == session["meter_id"]


def test_drop_with_a_trailing_star_empties_the_container() -> None:
    out = apply_transforms((t("drop", "coordinates.*", "evses.*"),), {"coordinates": {"latitude": "1"}, "evses": [1, 2]}, "x")
    assert out == {"coordinates": {}, "evses": []}


# pseudonymise


def expected_pseudonym(key: str, target: str, value: str) -> str:
    digest = hmac.new(key.encode(), target.encode() + b"\x00" + value.encode(), hashlib.sha256).hexdigest()
    return "ps_" + digest[:32]


def test_pseudonym_is_keyed_hmac_of_target_and_value() -> None:
    out = apply_transforms((t("pseudonymise", "id", key=KEY),), {"id": "NLGFX-CDR-1"}, "research")
    assert out["id"] == expected_pseudonym(KEY.reveal(), "research", "NLGFX-CDR-1")
    assert re.fullmatch(r"ps_[0-9a-f]{32}", out["id"])


def test_pseudonyms_are_stable_per_target_and_differ_across_targets_and_keys() -> None:
    obj = {"id": "NLGFX-CDR-1"}
    step = (t("pseudonymise", "id", key=KEY),)
    first = apply_transforms(step, obj, "research")["id"]
    assert apply_transforms(step, obj, "research")["id"] == first
    assert apply_transforms(step, obj, "other-target")["id"] != first
    assert apply_transforms((t("pseudonymise", "id", key=Secret("another-key")),), obj, "research")["id"] != first
    assert apply_transforms(step, {"id": "NLGFX-CDR-2"}, "research")["id"] != first


def test_pseudonymise_stringifies_non_strings_keeps_none_and_follows_list_paths() -> None:
    obj = {"n": 5, "s": "5", "none": None, "evses": [{"uid": "E1"}, {"uid": "E2"}, {}]}
    out = apply_transforms((t("pseudonymise", "n", "s", "none", "evses.*.uid", key=KEY),), obj, "r")
    assert out["n"] == out["s"] == expected_pseudonym(KEY.reveal(), "r", "5")
    assert out["none"] is None
    assert [e.get("uid") for e in out["evses"]] == [
        expected_pseudonym(KEY.reveal(), "r", "E1"), expected_pseudonym(KEY.reveal(), "r", "E2"), None
    ]


def test_the_same_value_gets_the_same_pseudonym_wherever_it_sits() -> None:
    session, location = example("session_completed.json"), example("location_full.json")
    step = (t("pseudonymise", "id", "location.id", key=KEY),)
    assert apply_transforms(step, session, "r")["location"]["id"] == apply_transforms(step, location, "r")["id"]


# round


@pytest.mark.parametrize(
    ("value", "decimals", "expected"),
    [
        ("52.160418", 2, "52.16"),
        ("5.381967", 2, "5.38"),
        ("52.165", 2, "52.17"),  # half up, as people round
        ("52.1", 3, "52.100"),  # a string keeps exactly N decimals
        (" -4.99951 ", 3, "-5.000"),
        (21.384, 1, 21.4),
        (21.35, 1, 21.4),
        (230, 2, 230),  # an int is already whole
        ("1e3", 1, "1000.0"),
        ("north", 2, None),  # what cannot be rounded does not leave precise
        (True, 2, None),
        ("NaN", 2, None),
        (None, 2, None),
    ],
)
def test_round_keeps_type_and_rounds_half_up(value: Any, decimals: int, expected: Any) -> None:
    out = apply_transforms((t("round", "v", decimals=decimals),), {"v": value}, "x")
    assert out["v"] == expected and type(out["v"]) is type(expected)


def test_round_follows_mapping_and_list_wildcards() -> None:
    location = example("location_full.json")
    out = apply_transforms((t("round", "coordinates.*", "evses.*.coordinates.*", decimals=2),), location, "x")
    assert out["coordinates"] == {"latitude": "52.16", "longitude": "5.38"}
    rounded = [c for e in out["evses"] for c in e.get("coordinates", {}).values()]
    assert rounded and all(len(c.split(".")[1]) == 2 for c in rounded)


# coarsen_time


@pytest.mark.parametrize(
    ("value", "unit", "expected"),
    [
        ("2024-03-05T08:14:02Z", "hour", "2024-03-05T08:00:00Z"),
        ("2024-03-05T08:14:02Z", "day", "2024-03-05T00:00:00Z"),
        ("2024-03-05T08:14:02Z", "minute", "2024-03-05T08:14:00Z"),
        ("2024-03-05T08:14:02.1234Z", "hour", "2024-03-05T08:00:00Z"),
        ("2024-03-05T09:14:02+01:00", "hour", "2024-03-05T08:00:00Z"),  # converted to UTC first
        ("2024-03-05T08:14:02", "hour", "2024-03-05T08:00:00Z"),  # no offset: OCPI means UTC
        ("yesterday", "hour", None),
        (1709626442, "hour", None),
        (None, "hour", None),
    ],
)
def test_coarsen_time_truncates_to_the_unit_in_utc(value: Any, unit: str, expected: Any) -> None:
    assert apply_transforms((t("coarsen_time", "v", unit=unit),), {"v": value}, "x")["v"] == expected


def test_coarsen_time_follows_list_paths() -> None:
    session = example("session_completed.json")
    out = apply_transforms((t("coarsen_time", "charging_periods.*.start_date_time", unit="hour"),), session, "x")
    assert values_at(out, "charging_periods.*.start_date_time") == ["2024-03-05T08:00:00Z", "2024-03-05T10:00:00Z"]


# copies and order


def test_apply_transforms_never_changes_its_input_and_returns_an_independent_copy() -> None:
    cdr = example("cdr_full.json")
    before = copy.deepcopy(cdr)
    steps = (
        t("drop", "auth_id", "location.evses.*.evse_id"),
        t("pseudonymise", "id", "location.evses.*.uid", key=KEY),
        t("round", "location.coordinates.*", decimals=2),
        t("coarsen_time", "start_date_time", unit="hour"),
    )
    out = apply_transforms(steps, cdr, "x")
    assert cdr == before
    out["charging_periods"][0]["dimensions"].clear()
    assert apply_transforms((), cdr, "x") == before


def test_transforms_run_in_order() -> None:
    obj = {"id": "a", "other": "b"}
    keep_then_hash = (t("keep", "id"), t("pseudonymise", "id", key=KEY))
    drop_then_hash = (t("drop", "id"), t("pseudonymise", "id", key=KEY))
    assert set(apply_transforms(keep_then_hash, obj, "x")) == {"id"}
    assert apply_transforms(drop_then_hash, obj, "x") == {"other": "b"}


def test_values_at_collects_every_match() -> None:
    assert values_at({"a": [{"b": 1}, {"b": 2}, {"c": 3}]}, "a.*.b") == [1, 2]
    assert values_at({"a": {"x": 1, "y": 2}}, "a.*") == [1, 2]
    assert values_at({"a": 1}, "a.b") == []


# the shipped research rule


RESEARCH_ENV = {
    "RELAY_TOKEN_GREENFLUX": "gfx-token",
    "RELAY_TOKEN_GREENFLUX_ACCEPTANCE": "gfx-acceptance-token",
    "RELAY_STREAM_TOKEN_BILLING": "billing-token",
    "RELAY_RESEARCH_SECRET": "whsec_" + base64.b64encode(b"research-secret-32-bytes-long!!").decode(),
    "RELAY_PARTNER_TOKEN": "partner-token",
    "RELAY_PSEUDO_KEY": "pseudo-key-for-research",
    "RELAY_TOKEN_GREENFLUX_PULL": "pull-token",
    "RELAY_RESEARCH_API_KEY": "research-api-key-5c1d",
}


@pytest.fixture(scope="module")
def research_config(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # The shipped file with its disabled examples switched on, exactly as an operator would.
    text = "\n".join(line[2:] if line.startswith("# ") else line for line in SHIPPED.read_text().splitlines())
    path = tmp_path_factory.mktemp("research") / "forwarding.yaml"
    path.write_text(text + "\n")
    return load_config(path, RESEARCH_ENV)


def research_copy(config: Any, module: str, action: str, obj: dict[str, Any]) -> str:
    pairs = [(rule, target) for rule, target in route(config, module, action, "NL", "GFX", obj, "greenflux")
             if target.name == "research"]
    assert len(pairs) == 1, "exactly one research rule per module"
    rule, target = pairs[0]
    return json.dumps(apply_transforms(rule.transform, obj, target.name), ensure_ascii=False)


def personal_values(obj: dict[str, Any]) -> set[str]:
    """The personal values of an example, taken from the README's table of personal fields."""
    paths = [
        "auth_id", "meter_id", "remark", "id", "location.id",
        "location.name", "location.address", "location.postal_code",
        "location.coordinates.*", "location.evses.*.evse_id", "location.evses.*.uid",
        "location.evses.*.physical_reference", "location.evses.*.coordinates.*",
        "name", "address", "postal_code", "coordinates.*", "related_locations.*.latitude",
        "related_locations.*.longitude", "related_locations.*.name.text", "directions.*.text",
        "evses.*.evse_id", "evses.*.uid", "evses.*.physical_reference", "evses.*.coordinates.*",
        "start_datetime", "end_datetime", "start_date_time", "stop_date_time", "charging_periods.*.start_date_time",
    ]
    return {str(v) for p in paths for v in values_at(obj, p) if v is not None}


@pytest.mark.parametrize(
    ("file", "module", "action"),
    [("session_completed.json", "sessions", "put"), ("cdr_full.json", "cdrs", "post"), ("location_full.json", "locations", "put")],
)
def test_research_copy_leaves_no_personal_value(research_config: Any, file: str, module: str, action: str) -> None:
    obj = example(file)
    out = research_copy(research_config, module, action, obj)
    for value in ("NL-EMP-C04817263-K", "EMH-eHZ-1ESY1160928417", "NL*GFX*E0873422*1", "Eemplein 74", "3812 EA"):
        assert value not in out
    personal = personal_values(obj)
    assert len(personal) >= 10  # the check below has something to find
    leaked = {v for v in personal if v in out}
    assert not leaked


def test_research_copy_keeps_what_research_needs(research_config: Any) -> None:
    out = json.loads(research_copy(research_config, "sessions", "put", example("session_completed.json")))
    assert (out["kwh"], out["status"], out["total_cost"], out["currency"]) == (21.384, "COMPLETED", 10.6728, "EUR")
    assert out["start_datetime"] == "2024-03-05T08:00:00Z" and out["end_datetime"] == "2024-03-05T11:00:00Z"
    assert out["location"]["coordinates"] == {"latitude": "52.16", "longitude": "5.38"}
    assert out["location"]["city"] == "Amersfoort"
    assert out["id"].startswith("ps_") and out["location"]["evses"][0]["uid"].startswith("ps_")
    cdr = json.loads(research_copy(research_config, "cdrs", "post", example("cdr_full.json")))
    assert cdr["location"]["id"] == out["location"]["id"]  # joinable inside the research copy


def test_research_copy_of_a_notification_hides_the_rfid_idtag(research_config: Any) -> None:
    for module in ("chargestationnotifications", "notifications"):
        out = research_copy(research_config, module, "put", example("chargestationnotification_authorize_idtag.json"))
        assert "04A7C2E9B15D80" not in out and "idTag" not in out
        assert "GFX0873422" not in out
        assert json.loads(out)["message_action"] == "Authorize"
