"""The receiver over real HTTP, on a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from relay.store.base import StateKey
from tests.conftest import (
    GFX_TOKEN,
    LIMITED_TOKEN,
    LOC_ID,
    SESSION_ID,
    RelayHandle,
    example,
    example_bytes,
)

LOC = f"/locations/NL/GFX/{LOC_ID}"
SESS = f"/sessions/NL/GFX/{SESSION_ID}"

INVALID = [
    ("PUT", LOC, "invalid_location_missing_address.json", "address"),
    ("PUT", LOC, "invalid_location_id_mismatch.json", "id"),
    ("PUT", LOC, "invalid_location_latitude_out_of_range.json", "coordinates.latitude"),
    ("PATCH", LOC + "/NL-GFX-E0873422-1", "invalid_evse_patch_status_enum.json", "status"),
    ("PUT", LOC + "/NL-GFX-E0873422-1", "invalid_evse_put_connectors_not_list.json", "connectors"),
    ("PUT", LOC + "/NL-GFX-E0873421-1/2", "invalid_connector_put_unknown_standard.json", "standard"),
    ("PUT", "/sessions/NL/GFX/NLGFX638452100421337012-4c1e9-retry02", "invalid_session_id_too_long.json", "session_id"),
    ("PUT", SESS, "invalid_session_bad_datetime.json", "start_datetime"),
    ("PUT", SESS, "invalid_session_negative_kwh.json", "kwh"),
    ("PUT", SESS, "invalid_session_kwh_wrong_type.json", "kwh"),
    ("PUT", SESS, "invalid_session_null_required_currency.json", "currency"),
    ("POST", "/cdrs", "invalid_cdr_empty_charging_periods.json", "charging_periods"),
]


async def _counts(relay: RelayHandle) -> tuple[int, int]:
    stats = await relay.store.stats()
    return stats["events"], stats["rejected"]


async def test_location_put_is_stored_and_read_back(relay: RelayHandle) -> None:
    body = example("location_full.json")
    ans = await relay.request("PUT", LOC, raw=example_bytes("location_full.json"))
    assert ans.status == 200
    assert ans.body["status_code"] == 1000
    assert ans.body["timestamp"].endswith("Z")
    got = await relay.get(LOC)
    assert got.status == 200 and got.body["status_code"] == 1000
    assert got.body["data"]["id"] == LOC_ID
    assert got.body["data"]["address"] == body["address"]
    evse = await relay.get(LOC + "/NL-GFX-E0873421-1")
    assert evse.body["data"]["uid"] == "NL-GFX-E0873421-1"
    conn = await relay.get(LOC + "/NL-GFX-E0873421-1/2")
    assert conn.body["data"]["id"] == "2"
    events = await relay.store.read_events(0, 10)
    assert [(e.module, e.action, e.object_id, e.origin, e.subscription) for e in events] == [
        ("locations", "put", LOC_ID, "push", "greenflux")
    ]
    assert events[0].body == example_bytes("location_full.json").decode()


@pytest.mark.parametrize(("method", "path", "file", "field"), INVALID, ids=[i[2] for i in INVALID])
async def test_invalid_example_is_refused_naming_the_field_and_kept_in_rejected(
    relay: RelayHandle, method: str, path: str, file: str, field: str
) -> None:
    if "E0873421" in path or "E0873422" in path:
        assert (await relay.put(LOC, example("location_full.json"))).status == 200
    before_state = await relay.get(LOC)
    events_before, rejected_before = await _counts(relay)
    ans = await relay.request(method, path, raw=example_bytes(file))
    assert ans.status == 400, ans.body
    assert ans.body["status_code"] == 2001
    assert field in ans.body["status_message"], ans.body["status_message"]
    events_after, rejected_after = await _counts(relay)
    assert events_after == events_before
    assert rejected_after == rejected_before + 1
    rec = (await relay.store.list_rejected())[-1]
    assert rec.body == example_bytes(file) and rec.http_status == 400 and rec.status_code == 2001
    assert rec.path == path and rec.method == method and rec.subscription == "greenflux"
    after_state = await relay.get(LOC)
    assert after_state.body.get("data") == before_state.body.get("data")


@pytest.mark.parametrize("file", ["location_put_gfx_quirks.json", "policy_location_numeric_coordinates.json"])
async def test_greenflux_quirks_and_liberal_values_are_accepted_and_unknown_fields_kept(
    relay: RelayHandle, file: str
) -> None:
    ans = await relay.request("PUT", LOC, raw=example_bytes(file))
    assert ans.status == 200 and ans.body["status_code"] == 1000
    got = (await relay.get(LOC)).body["data"]
    assert isinstance(got["coordinates"]["latitude"], str)
    if file == "location_put_gfx_quirks.json":
        assert got["publish"] == "true"
    else:
        assert got["coordinates"]["latitude"] == "52.160418"
    events = await relay.store.read_events(0, 10)
    assert events[0].body == example_bytes(file).decode()


async def test_non_utc_offset_is_stored_in_utc_with_the_raw_body_kept(relay: RelayHandle) -> None:
    ans = await relay.put(SESS, example("policy_session_nonutc_offset.json"))
    assert ans.body["status_code"] == 1000
    got = (await relay.get(SESS)).body["data"]
    assert got["start_datetime"] == "2024-03-05T08:14:02Z"
    assert "+01:00" in (await relay.store.read_events(0, 1))[0].body


async def test_identical_repush_is_acknowledged_without_a_new_event(relay: RelayHandle) -> None:
    body = example("location_full.json")
    assert (await relay.put(LOC, body)).body["status_code"] == 1000
    again = await relay.put(LOC, body)
    assert again.status == 200 and again.body["status_code"] == 1000
    assert (await relay.store.stats())["events"] == 1


async def test_put_older_than_state_is_acknowledged_recorded_stale_and_not_applied(relay: RelayHandle) -> None:
    newer = example("location_full.json")
    older = copy.deepcopy(newer)
    older["last_updated"] = "2020-01-01T00:00:00Z"
    older["name"] = "Old name"
    assert (await relay.put(LOC, newer)).body["status_code"] == 1000
    ans = await relay.put(LOC, older)
    assert ans.status == 200 and ans.body["status_code"] == 1000
    assert (await relay.get(LOC)).body["data"]["name"] == newer["name"]
    stats = await relay.store.stats()
    assert stats["events_by_status"] == {"applied": 1, "stale": 1}
    assert len(await relay.store.read_events(0, 10)) == 1  # stale events are not streamed


async def test_evse_patch_merges_into_location_and_moves_parent_last_updated(relay: RelayHandle) -> None:
    await relay.put(LOC, example("location_full.json"))
    ans = await relay.patch(LOC + "/NL-GFX-E0873422-1", example("location_patch_evse_status.json"))
    assert ans.body["status_code"] == 1000
    loc = (await relay.get(LOC)).body["data"]
    evse = next(e for e in loc["evses"] if e["uid"] == "NL-GFX-E0873422-1")
    assert evse["status"] == "CHARGING"
    assert evse["last_updated"] == "2024-03-05T08:14:05Z"
    assert loc["last_updated"] >= "2024-03-05T08:14:05Z"
    other = next(e for e in loc["evses"] if e["uid"] == "NL-GFX-E0873421-1")
    assert other == next(e for e in example("location_full.json")["evses"] if e["uid"] == "NL-GFX-E0873421-1")


async def test_patch_without_last_updated_is_ordered_by_receive_time(relay: RelayHandle) -> None:
    await relay.put(LOC, example("location_full.json"))
    ans = await relay.patch(LOC + "/NL-GFX-E0873422-1", example("location_patch_evse_status_gfx_minimal.json"))
    assert ans.body["status_code"] == 1000
    loc = (await relay.get(LOC)).body["data"]
    evse = next(e for e in loc["evses"] if e["uid"] == "NL-GFX-E0873422-1")
    assert evse["status"] == "AVAILABLE"
    assert evse["last_updated"] > "2025-01-01" and loc["last_updated"] == evse["last_updated"]
    # the same status again is an identical re-push: no new event
    n = (await relay.store.stats())["events"]
    await relay.patch(LOC + "/NL-GFX-E0873422-1", example("location_patch_evse_status_gfx_minimal.json"))
    assert (await relay.store.stats())["events"] == n


async def test_connector_put_raises_evse_and_location_last_updated(relay: RelayHandle) -> None:
    await relay.put(LOC, example("location_full.json"))
    ans = await relay.put(LOC + "/NL-GFX-E0873421-1/2", example("connector_put.json"))
    assert ans.body["status_code"] == 1000
    loc = (await relay.get(LOC)).body["data"]
    evse = next(e for e in loc["evses"] if e["uid"] == "NL-GFX-E0873421-1")
    conn = next(c for c in evse["connectors"] if c["id"] == "2")
    assert conn == example("connector_put.json")
    assert evse["last_updated"] == "2024-03-06T00:00:03Z"
    assert loc["last_updated"] == "2024-03-06T00:00:03Z"


async def test_greenflux_evse_alias_patch_is_matched_unambiguously(relay: RelayHandle) -> None:
    await relay.put(LOC, example("location_put_gfx_quirks.json"))
    ans = await relay.patch(LOC + "/NL-GFX-E0873422-1", {"status": "CHARGING"})
    assert ans.body["status_code"] == 1000
    loc = (await relay.get(LOC)).body["data"]
    assert loc["evses"][0]["uid"] == "NL-GFX-E0873422"
    assert loc["evses"][0]["status"] == "CHARGING"


async def test_evse_patch_for_unknown_location_is_acknowledged_and_kept_unmatched(relay: RelayHandle) -> None:
    ans = await relay.patch("/locations/NL/GFX/unknown-loc/EVSE-1", {"status": "CHARGING"})
    assert ans.status == 200 and ans.body["status_code"] == 1000
    stats = await relay.store.stats()
    assert stats["unmatched"] == 1
    assert (await relay.get("/locations/NL/GFX/unknown-loc")).status == 404


async def test_session_lifecycle_put_patch_complete(relay: RelayHandle) -> None:
    await relay.put(SESS, example("session_active.json"))
    await relay.patch(SESS, example("session_patch_kwh.json"))
    await relay.patch(SESS, example("session_patch_full_15min.json"))
    got = (await relay.get(SESS)).body["data"]
    assert got["kwh"] == example("session_patch_full_15min.json")["kwh"]
    assert got["auth_id"] == example("session_active.json")["auth_id"]
    assert got["charging_periods"] == example("session_patch_full_15min.json")["charging_periods"]
    await relay.put(SESS, example("session_completed.json"))
    assert (await relay.get(SESS)).body["data"]["status"] == "COMPLETED"
    assert (await relay.store.stats())["events"] == 4


async def test_cdr_post_answers_location_header_and_is_immutable(relay: RelayHandle) -> None:
    cdr = example("cdr_full.json")
    ans = await relay.post("/cdrs", cdr)
    assert ans.status == 200 and ans.body["status_code"] == 1000
    assert ans.headers["Location"] == f"{relay.url}/cdrs/{cdr['id']}"
    again = await relay.post("/cdrs", cdr)
    assert again.body["status_code"] == 1000 and again.headers["Location"] == ans.headers["Location"]
    changed = dict(cdr, total_cost=99.0)
    refused = await relay.post("/cdrs", changed)
    assert refused.status == 400 and refused.body["status_code"] == 2001 and "immutable" in refused.body["status_message"]
    got = await relay.get(f"/cdrs/{cdr['id']}")
    assert got.body["data"]["total_cost"] == cdr["total_cost"]
    stats = await relay.store.stats()
    assert stats["events"] == 1 and stats["rejected"] == 1


async def test_cdr_is_attributed_to_the_cpo_of_its_stored_location(relay: RelayHandle, tokens: dict[str, str]) -> None:
    # the "limited" subscription may only push BE*BEC locations; store the location under BE/BEC ...
    await relay.put(f"/locations/BE/BEC/{LOC_ID}", example("location_full.json"), token=LIMITED_TOKEN)
    # ... then a 2.1.1 CDR (no party fields) referencing it is attributed to BE*BEC, outside greenflux's scope
    ans = await relay.post("/cdrs", example("cdr_full.json"))
    assert ans.status == 403 and ans.body["status_code"] == 2000


async def test_cdr_without_party_or_known_location_goes_to_default_cpo(relay: RelayHandle) -> None:
    await relay.post("/cdrs", example("cdr_full.json"))
    st = await relay.store.get_state(StateKey("cdrs", "NL", "GFX", example("cdr_full.json")["id"]))
    assert st is not None


async def test_cdr_with_22_party_fields_is_attributed_from_the_body(relay: RelayHandle) -> None:
    cdr = dict(example("cdr_full.json"), country_code="BE", party_id="BEC")
    ans = await relay.post("/cdrs", cdr)
    assert ans.status == 403  # BE*BEC is outside the greenflux subscription


@pytest.mark.parametrize("path", ["/ChargeStationNotifications/918273", "/notifications", "/notifications/918273"])
@pytest.mark.parametrize("method", ["POST", "PUT"])
async def test_notifications_are_stored_as_received(relay: RelayHandle, path: str, method: str) -> None:
    raw = example_bytes("chargestationnotification_authorize_idtag.json")
    ans = await relay.request(method, path, raw=raw)
    assert ans.status == 200 and ans.body["status_code"] == 1000
    events = await relay.store.read_events(0, 10)
    assert len(events) == 1 and events[0].body == raw.decode()


async def test_notification_of_unknown_shape_is_still_stored(relay: RelayHandle) -> None:
    ans = await relay.post("/notifications", {"whatever": [1, 2, {"x": None}]})
    assert ans.body["status_code"] == 1000
    assert len(await relay.store.read_events(0, 10)) == 1


async def test_tariff_put_patch_delete_and_get_404_after_delete(relay: RelayHandle) -> None:
    tariff = example("cdr_full.json")["tariffs"][0]
    path = f"/tariffs/NL/GFX/{tariff['id']}"
    assert (await relay.put(path, tariff)).body["status_code"] == 1000
    assert (await relay.patch(path, {"currency": "EUR", "last_updated": "2025-01-01T00:00:00Z"})).body["status_code"] == 1000
    deleted = await relay.request("DELETE", path)
    assert deleted.status == 200 and deleted.body["status_code"] == 1000
    got = await relay.get(path)
    assert got.status == 404 and got.body["status_code"] == 2003
    assert [e.action for e in await relay.store.read_events(0, 10)] == ["put", "patch", "delete"]


@pytest.mark.parametrize(
    ("headers", "token"),
    [({}, None), ({"Authorization": "Bearer " + GFX_TOKEN}, None), ({}, "wrong-token"), ({"Authorization": "Token"}, None)],
    ids=["missing", "wrong-scheme", "unknown", "empty"],
)
async def test_missing_or_wrong_token_is_401_and_never_stored(
    relay: RelayHandle, headers: dict[str, str], token: str | None
) -> None:
    ans = await relay.put(LOC, example("location_full.json"), token=token, headers=headers)
    assert ans.status == 401 and ans.body["status_code"] == 2000
    assert await _counts(relay) == (0, 0)


async def test_token_of_other_subscription_outside_its_cpo_or_module_is_403_and_kept(relay: RelayHandle) -> None:
    ans = await relay.put(LOC, example("location_full.json"), token=LIMITED_TOKEN)  # NL*GFX not in its cpos
    assert ans.status == 403 and ans.body["status_code"] == 2000 and "NL*GFX" in ans.body["status_message"]
    ans = await relay.put(f"/sessions/BE/BEC/{SESSION_ID}", example("session_active.json"), token=LIMITED_TOKEN)
    assert ans.status == 403 and "sessions" in ans.body["status_message"]
    assert await _counts(relay) == (0, 2)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [(b'{"id": "x",', "not valid JSON"), (b"[1, 2]", "JSON object"), (b'"text"', "JSON object"),
     (b"\xff\xfe{}", "not valid JSON"), (b"[" * 100 + b"]" * 100, "JSON object"),
     (b'{"a":' * 60 + b"1" + b"}" * 60, "nested deeper")],
    ids=["truncated", "array", "string", "invalid-utf8", "deep-array", "deep-object"],
)
async def test_bad_bodies_are_400_2001_and_kept(relay: RelayHandle, raw: bytes, fragment: str) -> None:
    ans = await relay.request("PUT", LOC, raw=raw)
    assert ans.status == 400 and ans.body["status_code"] == 2001
    assert fragment in ans.body["status_message"]
    assert await _counts(relay) == (0, 1)


async def test_body_over_the_limit_is_413(relay: RelayHandle) -> None:
    body = example("location_full.json")
    body["padding"] = "x" * (relay.settings.max_body_bytes + 10)
    ans = await relay.put(LOC, body)
    assert ans.status == 413 and ans.body["status_code"] == 2001
    assert await _counts(relay) == (0, 0)


@pytest.mark.parametrize(
    "path",
    ["/locations/NLD/GFX/abc", "/locations/NL/GFXX/abc", "/locations/NL/GFX/" + "a" * 40,
     "/sessions/NL/GFX/" + "s" * 37, "/locations/NL/GFX/a%20b"],
    ids=["cc-too-long", "party-too-long", "location-id-too-long", "session-id-too-long", "space-in-id"],
)
@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_path_ids_breaking_ocpi_rules_are_400_2001(relay: RelayHandle, path: str, method: str) -> None:
    ans = await relay.request(method, path, {"id": "x"})
    assert ans.status == 400 and ans.body["status_code"] == 2001


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("PATCH", "/cdrs/abc", 405), ("DELETE", LOC, 405), ("POST", LOC, 405), ("GET", "/nothing/here", 404),
     ("PUT", "/locations/NL/GFX/a/b/c/d", 404), ("GET", "/locations/NL/GFX/never-pushed", 404)],
)
async def test_framework_errors_are_ocpi_envelopes(relay: RelayHandle, method: str, path: str, status: int) -> None:
    ans = await relay.request(method, path)
    assert ans.status == status
    assert ans.body["status_code"] in (2000, 2003) and "timestamp" in ans.body


async def test_request_id_is_echoed(relay: RelayHandle) -> None:
    ans = await relay.put(LOC, example("location_full.json"), headers={"X-Request-ID": "abc-123"})
    assert ans.headers["X-Request-ID"] == "abc-123"
    assert (await relay.store.read_events(0, 1))[0].request_id == "abc-123"


async def test_rejected_push_replays_after_the_subscription_is_fixed(relay: RelayHandle, config_path: Any) -> None:
    from relay.cli.operate import rejected_replay

    ans = await relay.put(f"/locations/DE/XYZ/{LOC_ID}", example("location_full.json"))
    assert ans.status == 403
    rec = (await relay.store.list_rejected())[0]
    config_path.write_text(config_path.read_text().replace('cpos: ["NL*GFX"]', 'cpos: ["NL*GFX", "DE*XYZ"]'))
    code = await rejected_replay(relay.settings, [rec.id], replay_all=False, as_json=True)
    assert code == 0
    events = await relay.store.read_events(0, 10)
    assert [(e.origin, e.country_code, e.party_id) for e in events] == [("replay", "DE", "XYZ")]
    again = await relay.store.get_rejected(rec.id)
    assert again is not None and again.replayed_at is not None


async def test_ops_endpoints(relay: RelayHandle) -> None:
    async with relay.http.get(relay.url + "/healthz") as r:
        assert r.status == 200
    async with relay.http.get(relay.url + "/readyz") as r:
        assert r.status == 200 and (await r.json())["status"] == "ready"
    await relay.put(LOC, example("location_full.json"))
    async with relay.http.get(relay.url + "/metrics") as r:
        text = await r.text()
    assert 'relay_ingest_requests_total{http_status="200",module="locations",status_code="1000"}' in text




async def test_body_party_fields_must_match_the_url(relay: RelayHandle) -> None:
    body = dict(example("location_full.json"), country_code="BE", party_id="BEC")
    ans = await relay.put(LOC, body)
    assert ans.status == 400 and ans.body["status_code"] == 2001 and "country_code" in ans.body["status_message"]
    same = dict(example("location_full.json"), country_code="nl", party_id="gfx")
    assert (await relay.put(LOC, same)).body["status_code"] == 1000
