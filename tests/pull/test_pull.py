"""Pull passes against a real HTTP fake of GreenFlux's sender interface, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson

from relay import metrics
from relay.pull.client import RetryPolicy
from relay.pull.sync import SAFETY_OVERLAP
from relay.store.base import StateKey
from tests.conftest import RelayHandle
from tests.pull.conftest import (
    PULL_TOKEN,
    SOURCE,
    FakeSender,
    Puller,
    Received,
    at,
    cdr,
    location,
    session,
    tariff,
)


def _fill(sender: FakeSender, locations: int = 60) -> None:
    for i in range(locations):
        sender.put("locations", location(f"LOC-{i:05d}", at(i)))
    sender.put("sessions", session("NLGFX638452100421337012-4c1e9", at(100)))
    sender.put("sessions", session("NLGFX638452100421337012-77aa1", at(101)))
    sender.put("cdrs", cdr("NLGFX-CDR-20240305-000417", at(102)))
    sender.put("tariffs", tariff("GFX-AC-0.45", at(103)))


async def _events(relay: RelayHandle) -> int:
    return len(await relay.store.read_events(0, 100_000, applied_only=False))


async def test_full_pull_stores_every_object_of_every_module(relay: RelayHandle, sender: FakeSender,
                                                            pull: Puller) -> None:
    _fill(sender)
    result = await pull()
    assert {m: (s.fetched, s.new, s.changed, s.unchanged, s.rejected, s.ok) for m, s in result.items()} == {
        "locations": (60, 60, 0, 0, 0, True), "sessions": (2, 2, 0, 0, 0, True),
        "cdrs": (1, 1, 0, 0, 0, True), "tariffs": (1, 1, 0, 0, 0, True),
    }
    assert await _events(relay) == 64
    # pulled 2.1.1 objects carry no party: attributed to the source's default_cpo
    state = await relay.store.get_state(StateKey("locations", "NL", "GFX", "LOC-00042"))
    assert state is not None and state.object["last_updated"] == at(42)
    # a full pull asks without date_from, except sessions where 2.1.1 requires it
    assert "date_from" not in sender.queries("locations")[0]
    assert sender.queries("sessions")[0]["date_from"] == "1970-01-01T00:00:00Z"
    assert all(r.authorization == f"Token {PULL_TOKEN}" for r in sender.requests)


async def test_second_pull_of_unchanged_objects_creates_no_event(relay: RelayHandle, sender: FakeSender,
                                                                 pull: Puller) -> None:
    _fill(sender)
    await pull()
    before = await _events(relay)
    again = await pull(full=True)
    assert await _events(relay) == before
    assert again["locations"].unchanged == 60 and again["locations"].new + again["locations"].changed == 0
    assert sum(s.unchanged for s in again.values()) == 64


async def test_one_changed_object_creates_exactly_one_event(relay: RelayHandle, sender: FakeSender,
                                                           pull: Puller) -> None:
    _fill(sender)
    await pull()
    last = await relay.store.max_seq()
    sender.put("locations", location("LOC-00007", at(500), name="Renamed garage"))
    result = await pull()
    events = await relay.store.read_events(last, 100, applied_only=False)
    assert [(e.object_id, e.origin, e.status) for e in events] == [("LOC-00007", "pull", "applied")]
    assert result["locations"].changed == 1 and result["locations"].new == 0
    state = await relay.store.get_state(StateKey("locations", "NL", "GFX", "LOC-00007"))
    assert state is not None and state.object["name"] == "Renamed garage"


async def test_pagination_picks_up_objects_added_while_crawling(relay: RelayHandle, sender: FakeSender,
                                                               pull: Puller) -> None:
    _fill(sender, locations=100)  # 4 pages of 25
    added: list[str] = []

    def grow(rec: Received) -> None:
        # new objects land on the last page while the crawl is on pages 2 and 3
        if rec.module == "locations" and rec.query.get("offset") in ("25", "50"):
            for _ in range(10):
                oid = f"LOC-NEW-{len(added):03d}"
                added.append(oid)
                sender.put("locations", location(oid, at(1000 + len(added))))

    sender.before_page = grow
    result = await pull()
    assert len(added) == 20
    assert result["locations"].fetched == 120 and result["locations"].new == 120
    assert result["locations"].total == 120  # the sender's count grew while we crawled
    offsets = [q["offset"] for q in sender.queries("locations")]
    assert offsets == ["0", "25", "50", "75", "100"]
    events = await relay.store.read_events(0, 1000, applied_only=False)
    ids = [e.object_id for e in events if e.module == "locations"]
    assert len(ids) == len(set(ids)) == 120
    assert set(added) <= set(ids)


async def test_pagination_continues_by_offset_when_the_sender_sends_no_link(
    relay: RelayHandle, sender: FakeSender, pull: Puller
) -> None:
    _fill(sender, locations=60)
    sender.send_link = False
    result = await pull()
    assert result["locations"].fetched == 60
    assert [q["offset"] for q in sender.queries("locations")] == ["0", "25", "50"]


async def test_503_mid_pull_is_retried_and_the_pass_completes_without_duplicates(
    relay: RelayHandle, sender: FakeSender, pull: Puller
) -> None:
    _fill(sender, locations=60)
    sender.fail(2, 503)  # the second locations page
    sender.fail(3, 503, {"Retry-After": "0"})  # and its first retry
    result = await pull()
    assert result["locations"].ok and result["locations"].fetched == 60 and result["locations"].new == 60
    assert [q["offset"] for q in sender.queries("locations")] == ["0", "25", "25", "25", "50"]
    ids = [e.object_id for e in await relay.store.read_events(0, 1000) if e.module == "locations"]
    assert len(ids) == len(set(ids)) == 60


async def test_failed_pass_does_not_move_the_position(relay: RelayHandle, sender: FakeSender,
                                                      pull: Puller) -> None:
    _fill(sender, locations=60)
    await pull()
    position = await relay.store.get_position(SOURCE, "locations")
    assert position is not None and position.position is not None
    sender.put("locations", location("LOC-00001", at(900), name="changed"))
    for n in range(len(sender.requests) + 1, len(sender.requests) + 10):
        sender.fail(n, 500)
    result = await pull(retry=RetryPolicy(attempts=2, base=0.01, cap=0.01))
    assert not result["locations"].ok and "HTTP 500" in (result["locations"].error or "")
    after = await relay.store.get_position(SOURCE, "locations")
    assert after is not None and after.position == position.position
    assert (after.last_status or "").startswith("failed")


async def test_401_stops_the_pass_with_a_message_naming_the_source_but_not_the_token(
    relay: RelayHandle, sender: FakeSender, pull: Puller
) -> None:
    _fill(sender)
    sender.token = "rotated-on-the-sender-side"
    result = await pull()
    assert len(sender.requests) == 1  # no retries, and the other modules are not tried
    for summary in result.values():
        assert not summary.ok and summary.auth_failed
        assert SOURCE in (summary.error or "") and "401" in (summary.error or "")
        assert PULL_TOKEN not in (summary.error or "")
    assert await _events(relay) == 0
    recorded = await relay.store.get_position(SOURCE, "locations")
    assert recorded is not None and (recorded.last_status or "").startswith("failed")  # the failure is kept,
    assert recorded.position is None  # the position is not set: the next pass is a full one again


async def test_incremental_pull_asks_from_the_stored_position(relay: RelayHandle, sender: FakeSender,
                                                              pull: Puller) -> None:
    _fill(sender)
    await pull()
    stored = await relay.store.get_position(SOURCE, "locations")
    # the newest last_updated seen (older than the pass start minus the overlap)
    assert stored is not None and stored.position == datetime(2024, 6, 1, 10, 0, 59, tzinfo=UTC)
    sender.requests.clear()
    result = await pull()
    assert sender.queries("locations")[0]["date_from"] == "2024-06-01T10:00:59Z"
    assert sender.queries("sessions")[0]["date_from"] == at(101)
    assert result["locations"].fetched == 1 and not result["locations"].full  # date_from is inclusive


async def test_position_never_passes_the_pass_start_minus_the_overlap(relay: RelayHandle, sender: FakeSender,
                                                                     pull: Puller) -> None:
    future = datetime(2100, 1, 1, tzinfo=UTC)
    sender.put("tariffs", tariff("T-FUTURE", future.strftime("%Y-%m-%dT%H:%M:%SZ")))
    started = datetime.now(UTC)
    await pull()
    stored = await relay.store.get_position(SOURCE, "tariffs")
    assert stored is not None and stored.position is not None
    assert started - SAFETY_OVERLAP <= stored.position <= datetime.now(UTC) - SAFETY_OVERLAP


async def test_push_then_older_pull_keeps_the_pushed_state(relay: RelayHandle, sender: FakeSender,
                                                           pull: Puller) -> None:
    pushed = location("LOC-PUSHED", at(50), name="pushed name")
    assert (await relay.put("/locations/NL/GFX/LOC-PUSHED", pushed)).status == 200
    sender.put("locations", location("LOC-PUSHED", at(10), name="older pulled name"))
    last = await relay.store.max_seq()
    result = await pull()
    assert result["locations"].unchanged == 1
    assert await relay.store.read_events(last, 10, applied_only=False) == []
    state = await relay.store.get_state(StateKey("locations", "NL", "GFX", "LOC-PUSHED"))
    assert state is not None and state.object["name"] == "pushed name"


async def test_pull_then_newer_push_wins(relay: RelayHandle, sender: FakeSender, pull: Puller) -> None:
    sender.put("locations", location("LOC-BOTH", at(10), name="pulled name"))
    await pull()
    assert (await relay.put("/locations/NL/GFX/LOC-BOTH", location("LOC-BOTH", at(20), name="pushed"))).status == 200
    result = await pull(full=True)  # the sender still serves its older version
    assert result["locations"].unchanged == 1
    state = await relay.store.get_state(StateKey("locations", "NL", "GFX", "LOC-BOTH"))
    assert state is not None and state.object["name"] == "pushed"
    events = await relay.store.read_events(0, 10)
    assert [(e.origin, e.object_id) for e in events] == [("pull", "LOC-BOTH"), ("push", "LOC-BOTH")]


async def test_pulled_session_keeps_the_charging_periods_only_pushes_carry(
    relay: RelayHandle, sender: FakeSender, pull: Puller
) -> None:
    sid = "NLGFX638452100421337012-4c1e9"
    active = session(sid, at(10), status="ACTIVE", kwh=5.0,
                     charging_periods=[{"start_date_time": at(0), "dimensions": [{"type": "ENERGY", "volume": 5.0}]}])
    active.pop("end_datetime")
    assert (await relay.put(f"/sessions/NL/GFX/{sid}", active)).status == 200
    # GreenFlux serves the completed session aggregated, with no (or an empty list of) periods
    sender.put("sessions", session(sid, at(20), charging_periods=[]))
    result = await pull()
    assert result["sessions"].changed == 1
    state = await relay.store.get_state(StateKey("sessions", "NL", "GFX", sid))
    assert state is not None
    assert state.object["status"] == "COMPLETED" and state.object["kwh"] == 21.384
    assert state.object["charging_periods"][0]["dimensions"] == [{"type": "ENERGY", "volume": 5.0}]


async def test_pulled_changes_are_stream_visible_events_with_origin_pull(
    relay: RelayHandle, sender: FakeSender, pull: Puller
) -> None:
    counter = metrics.PULL_ONLY_CHANGES.labels(SOURCE, "locations")
    before = counter._value.get()
    sender.put("locations", location("LOC-LOST-PUSH", at(5)))
    await pull()
    events = await relay.store.read_events(0, 10)  # what gRPC subscribers and the outbox read
    assert [(e.module, e.action, e.origin, e.subscription, e.object_id) for e in events] == [
        ("locations", "put", "pull", SOURCE, "LOC-LOST-PUSH")
    ]
    assert events[0].object is not None and orjson.loads(events[0].object)["id"] == "LOC-LOST-PUSH"
    assert counter._value.get() == before + 1


async def test_party_fields_in_a_pulled_object_decide_its_cpo(relay: RelayHandle, sender: FakeSender,
                                                              pull: Puller) -> None:
    sender.put("locations", location("LOC-BEC", at(1), country_code="BE", party_id="BEC"))
    await pull()
    assert await relay.store.get_state(StateKey("locations", "BE", "BEC", "LOC-BEC")) is not None


async def test_invalid_pulled_object_is_rejected_and_the_rest_stored(relay: RelayHandle, sender: FakeSender,
                                                                     pull: Puller) -> None:
    _fill(sender, locations=30)
    bad = location("LOC-BAD", at(40))  # the newest: the next incremental pass reads it again
    bad["coordinates"] = {"latitude": "152.000000", "longitude": "5.381967"}
    sender.put("locations", bad)
    sender.put("locations", location("LOC-AFTER-BAD", at(35)))
    result = await pull()
    assert (result["locations"].fetched, result["locations"].new, result["locations"].rejected) == (32, 31, 1)
    assert result["locations"].ok
    rejected = await relay.store.list_rejected()
    assert [(r.origin, r.subscription, r.method, r.path, r.module) for r in rejected] == [
        ("pull", SOURCE, "PUT", "/locations/LOC-BAD", "locations")
    ]
    assert "latitude" in rejected[0].reason
    assert orjson.loads(rejected[0].body)["id"] == "LOC-BAD"
    assert await relay.store.get_state(StateKey("locations", "NL", "GFX", "LOC-AFTER-BAD")) is not None
    # the next incremental pass reads the bad object again (overlap) but does not refuse it twice
    again = await pull()
    assert again["locations"].rejected == 1
    assert len(await relay.store.list_rejected()) == 1
