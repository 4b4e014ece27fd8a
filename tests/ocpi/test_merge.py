"""The pure merge decisions of relay/ocpi/merge.py: applied, stale, identical and unmatched; a PATCH
merged into what is stored; GreenFlux's EVSE alias; an EVSE or connector change raising its ancestors'
``last_updated``; a stored date beyond the horizon that never wins. Plain dicts in, a Decision out."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from relay.ocpi.merge import (
    APPLIED,
    IDENTICAL,
    STALE,
    UNMATCHED,
    decide_connector,
    decide_evse,
    decide_object,
)

RECEIVED = datetime(2024, 3, 5, 9, 0, 0, tzinfo=UTC)
HORIZON = datetime(2024, 3, 5, 9, 5, 0, tzinfo=UTC)  # received plus the allowed clock skew


def t(hh_mm_ss: str) -> datetime:
    return datetime.fromisoformat(f"2024-03-05T{hh_mm_ss}+00:00")


def lu(hh_mm_ss: str) -> str:
    return f"2024-03-05T{hh_mm_ss}Z"


def session(kwh: float, at: str) -> dict[str, Any]:
    return {"id": "S1", "kwh": kwh, "status": "ACTIVE", "currency": "EUR", "last_updated": lu(at)}


def location() -> dict[str, Any]:
    """A stored location whose EVSE uid is what GreenFlux PUTs (no ``-1``), with one connector."""
    return {
        "id": "L1", "name": "Depot", "last_updated": lu("08:00:00"),
        "evses": [
            {"uid": "BE-BEC-E041503001", "evse_id": "BE*BEC*E041503001", "status": "AVAILABLE",
             "last_updated": lu("07:00:00"),
             "connectors": [{"id": "1", "standard": "IEC_62196_T2", "last_updated": lu("06:00:00")}]},
            {"uid": "BE-BEC-E041503002", "evse_id": "BE*BEC*E041503002", "status": "AVAILABLE",
             "last_updated": lu("07:00:00"), "connectors": []},
        ],
    }


# -- decide_object -------------------------------------------------------------------------------------


def test_a_put_of_a_new_object_is_applied_as_sent() -> None:
    body = session(1.0, "08:00:00")
    d = decide_object(None, "PUT", body, t("08:00:00"), RECEIVED)
    assert (d.status, d.object, d.last_updated) == (APPLIED, body, t("08:00:00"))


def test_an_older_last_updated_is_stale_and_changes_nothing() -> None:
    stored = session(5.0, "08:30:00")
    d = decide_object(stored, "PUT", session(1.0, "08:00:00"), t("08:00:00"), RECEIVED)
    assert (d.status, d.object) == (STALE, None)
    assert stored == session(5.0, "08:30:00")


def test_the_same_object_again_is_identical() -> None:
    d = decide_object(session(5.0, "08:30:00"), "PUT", session(5.0, "08:30:00"), t("08:30:00"), RECEIVED)
    assert (d.status, d.object) == (IDENTICAL, None)


def test_an_equal_last_updated_with_other_content_is_applied() -> None:
    d = decide_object(session(5.0, "08:30:00"), "PUT", session(6.0, "08:30:00"), t("08:30:00"), RECEIVED)
    assert d.status == APPLIED and d.object is not None and d.object["kwh"] == 6.0


def test_a_patch_merges_into_the_stored_object_and_leaves_the_stored_dict_alone() -> None:
    stored = session(5.0, "08:30:00")
    before = copy.deepcopy(stored)
    d = decide_object(stored, "PATCH", {"kwh": 7.5, "last_updated": lu("08:45:00")}, t("08:45:00"), RECEIVED)
    assert d.status == APPLIED
    assert d.object == {**before, "kwh": 7.5, "last_updated": lu("08:45:00")}
    assert d.last_updated == t("08:45:00")
    assert stored == before


def test_a_put_replaces_fields_a_patch_would_keep() -> None:
    d = decide_object(session(5.0, "08:30:00"), "PUT", {"id": "S1", "kwh": 6.0, "last_updated": lu("08:45:00")},
                      t("08:45:00"), RECEIVED)
    assert d.object == {"id": "S1", "kwh": 6.0, "last_updated": lu("08:45:00")}


def test_a_patch_without_last_updated_is_versioned_by_its_receive_time() -> None:
    d = decide_object(session(5.0, "08:30:00"), "PATCH", {"status": "COMPLETED"}, None, RECEIVED)
    assert d.status == APPLIED and d.object is not None
    assert (d.object["status"], d.object["last_updated"], d.last_updated) == ("COMPLETED", lu("09:00:00"), RECEIVED)


def test_a_patch_without_last_updated_that_changes_nothing_is_identical() -> None:
    d = decide_object(session(5.0, "08:30:00"), "PATCH", {"status": "ACTIVE"}, None, RECEIVED)
    assert d.status == IDENTICAL


def test_a_stored_last_updated_beyond_the_horizon_never_makes_a_push_stale() -> None:
    frozen = {**session(5.0, "08:30:00"), "last_updated": "2099-01-01T00:00:00Z"}
    d = decide_object(frozen, "PUT", session(6.0, "08:45:00"), t("08:45:00"), RECEIVED, HORIZON)
    assert d.status == APPLIED and d.object == session(6.0, "08:45:00")
    # without a horizon the same stored date wins: the horizon is what repairs it
    assert decide_object(frozen, "PUT", session(6.0, "08:45:00"), t("08:45:00"), RECEIVED).status == STALE


# -- decide_evse ---------------------------------------------------------------------------------------


def test_an_evse_push_for_an_unknown_location_or_an_unknown_evse_patch_is_unmatched() -> None:
    d = decide_evse(None, "PATCH", "BE-BEC-E041503001", {"status": "CHARGING"}, None, RECEIVED)
    assert (d.status, d.object) == (UNMATCHED, None) and "location unknown" in d.note
    d = decide_evse(location(), "PATCH", "BE-BEC-E999", {"status": "CHARGING"}, None, RECEIVED)
    assert (d.status, d.object) == (UNMATCHED, None) and "BE-BEC-E999 not found" in d.note


def test_greenflux_evse_alias_patches_the_stored_evse_and_raises_the_locations_last_updated() -> None:
    stored = location()
    before = copy.deepcopy(stored)
    d = decide_evse(stored, "PATCH", "BE-BEC-E041503001-1", {"status": "CHARGING"}, None, RECEIVED)
    assert d.status == APPLIED and d.object is not None
    assert d.evse_uid == "BE-BEC-E041503001"  # the stored uid, not the alias
    evses = d.object["evses"]
    assert [e["uid"] for e in evses] == ["BE-BEC-E041503001", "BE-BEC-E041503002"]  # patched in place
    assert (evses[0]["status"], evses[0]["last_updated"]) == ("CHARGING", lu("09:00:00"))
    assert evses[0]["connectors"] == before["evses"][0]["connectors"]
    assert evses[1] == before["evses"][1]
    assert (d.object["last_updated"], d.last_updated) == (lu("09:00:00"), RECEIVED)
    assert stored == before


def test_an_alias_that_matches_two_evses_is_unmatched() -> None:
    loc = location()
    loc["evses"][1]["uid"] = "BE-BEC-E041503001-1"  # "...001_1" now aliases both "...001" and "...001-1"
    loc["evses"][1]["evse_id"] = "BE*BEC*E041503001*2"
    d = decide_evse(loc, "PATCH", "BE-BEC-E041503001_1", {"status": "CHARGING"}, None, RECEIVED)
    assert d.status == UNMATCHED


def test_an_older_evse_push_is_stale_and_names_the_stored_evse() -> None:
    d = decide_evse(location(), "PATCH", "BE-BEC-E041503001-1", {"status": "CHARGING", "last_updated": lu("06:30:00")},
                    t("06:30:00"), RECEIVED)
    assert (d.status, d.object, d.evse_uid) == (STALE, None, "BE-BEC-E041503001")


def test_an_evse_put_for_a_new_evse_is_appended_without_lowering_the_locations_last_updated() -> None:
    evse = {"uid": "BE-BEC-E041503003", "status": "AVAILABLE", "connectors": [], "last_updated": lu("07:30:00")}
    d = decide_evse(location(), "PUT", "BE-BEC-E041503003", evse, t("07:30:00"), RECEIVED)
    assert d.status == APPLIED and d.object is not None
    assert [e["uid"] for e in d.object["evses"]][-1] == "BE-BEC-E041503003"
    assert d.object["last_updated"] == lu("08:00:00")  # the location's own, later date stays


def test_a_location_frozen_beyond_the_horizon_takes_the_evses_last_updated() -> None:
    loc = {**location(), "last_updated": "2099-01-01T00:00:00Z"}
    d = decide_evse(loc, "PATCH", "BE-BEC-E041503002", {"status": "BLOCKED"}, None, RECEIVED, HORIZON)
    assert d.status == APPLIED and d.object is not None
    assert d.object["last_updated"] == lu("09:00:00")


# -- decide_connector ----------------------------------------------------------------------------------


def test_a_connector_patch_raises_both_ancestors_last_updated() -> None:
    stored = location()
    before = copy.deepcopy(stored)
    d = decide_connector(stored, "PATCH", "BE-BEC-E041503001-1", "1",
                         {"max_amperage": 32, "last_updated": lu("08:30:00")}, t("08:30:00"), RECEIVED)
    assert d.status == APPLIED and d.object is not None and d.evse_uid == "BE-BEC-E041503001"
    evse = d.object["evses"][0]
    assert evse["connectors"] == [{**before["evses"][0]["connectors"][0], "max_amperage": 32,
                                   "last_updated": lu("08:30:00")}]
    assert evse["last_updated"] == lu("08:30:00")
    assert (d.object["last_updated"], d.last_updated) == (lu("08:30:00"), t("08:30:00"))
    assert stored == before


def test_a_connector_change_older_than_its_ancestors_leaves_their_last_updated() -> None:
    d = decide_connector(location(), "PATCH", "BE-BEC-E041503001", "1",
                         {"max_amperage": 16, "last_updated": lu("06:30:00")}, t("06:30:00"), RECEIVED)
    assert d.status == APPLIED and d.object is not None
    assert d.object["evses"][0]["connectors"][0]["max_amperage"] == 16
    assert d.object["evses"][0]["last_updated"] == lu("07:00:00")
    assert d.object["last_updated"] == lu("08:00:00")


def test_a_connector_put_adds_a_connector_and_a_patch_of_an_unknown_one_is_unmatched() -> None:
    new = {"id": "2", "standard": "CHADEMO", "last_updated": lu("08:10:00")}
    d = decide_connector(location(), "PUT", "BE-BEC-E041503002", "2", new, t("08:10:00"), RECEIVED)
    assert d.status == APPLIED and d.object is not None
    assert d.object["evses"][1]["connectors"] == [new]
    d = decide_connector(location(), "PATCH", "BE-BEC-E041503002", "9", {"max_amperage": 16}, None, RECEIVED)
    assert (d.status, d.evse_uid) == (UNMATCHED, "BE-BEC-E041503002") and "connector 9 not found" in d.note


def test_a_connector_under_an_unknown_evse_or_location_is_unmatched() -> None:
    assert decide_connector(None, "PATCH", "BE-BEC-E041503001", "1", {}, None, RECEIVED).status == UNMATCHED
    d = decide_connector(location(), "PUT", "BE-BEC-E999", "1", {"id": "1"}, None, RECEIVED)
    assert d.status == UNMATCHED and "BE-BEC-E999 not found" in d.note


def test_stale_and_identical_connector_pushes_change_nothing() -> None:
    connector = location()["evses"][0]["connectors"][0]
    stale = decide_connector(location(), "PUT", "BE-BEC-E041503001", "1", {**connector, "last_updated": lu("05:00:00")},
                             t("05:00:00"), RECEIVED)
    same = decide_connector(location(), "PUT", "BE-BEC-E041503001", "1", connector, t("06:00:00"), RECEIVED)
    assert (stale.status, stale.object) == (STALE, None)
    assert (same.status, same.object, same.evse_uid) == (IDENTICAL, None, "BE-BEC-E041503001")
