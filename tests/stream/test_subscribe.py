"""Subscribe over a real gRPC channel: start positions, filters, scope, durable consumers, ordering.

Every test runs on a real SQLite file and on a real PostgreSQL database (``database_url``).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import random
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc

from relay.settings import Settings
from relay.stream._pb import relay_pb2 as pb
from relay.stream._pb import relay_pb2_grpc as pb_grpc
from tests.conftest import SESSION_ID, RelayHandle, eventually, example, start_relay, stop_relay
from tests.stream.conftest import (
    BELGIUM_TOKEN,
    BILLING_TOKEN,
    Collector,
    bearer,
    grpc_target,
    location,
    object_of,
    put_location,
    read_n,
    start_seq,
    subscribe,
)


async def _put_locations(relay: RelayHandle, n: int, *, cpo: str = "NL*GFX") -> list[str]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    for object_id in ids:
        await put_location(relay, location(object_id), cpo=cpo)
    return ids


async def _put_session(relay: RelayHandle, session_id: str) -> None:
    body = copy.deepcopy(example("session_active.json"))
    body["id"] = session_id
    ans = await relay.put(f"/sessions/NL/GFX/{session_id}", body)
    assert ans.body["status_code"] == 1000, ans.body


# -- start positions --------------------------------------------------------------------------------


async def test_earliest_streams_the_history_then_live_events(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    history = await _put_locations(relay, 3)
    call = await subscribe(stub, earliest=True)
    assert start_seq(await call.initial_metadata()) == 0
    first = await read_n(call, 3)
    assert [e.object_id for e in first] == history
    assert [e.seq for e in first] == [1, 2, 3]
    live = await _put_locations(relay, 2)
    second = await read_n(call, 2)
    assert [e.object_id for e in second] == live
    assert [e.seq for e in second] == [4, 5]
    call.cancel()


async def test_event_carries_the_body_as_received_and_the_merged_object(
    relay: RelayHandle, stub: pb_grpc.RelayStub
) -> None:
    body = location(name="Before")
    await put_location(relay, body)
    ans = await relay.patch(f"/locations/NL/GFX/{body['id']}/NL-GFX-E0873421-1",
                            {"status": "CHARGING", "last_updated": "2025-01-01T00:00:00Z"})
    assert ans.body["status_code"] == 1000, ans.body
    call = await subscribe(stub, earliest=True)
    put, patch = await read_n(call, 2)
    call.cancel()
    assert (put.module, put.action, put.country_code, put.party_id, put.object_id) == (
        "locations", "put", "NL", "GFX", body["id"])
    assert put.origin == "push" and put.received_at.seconds > 0
    assert object_of(put)["name"] == "Before"
    assert (patch.action, patch.evse_uid, patch.connector_id) == ("patch", "NL-GFX-E0873421-1", "")
    assert patch.body == b'{"status": "CHARGING", "last_updated": "2025-01-01T00:00:00Z"}'
    merged = object_of(patch)
    assert merged["id"] == body["id"]
    assert {e["uid"]: e["status"] for e in merged["evses"]}["NL-GFX-E0873421-1"] == "CHARGING"
    assert patch.last_updated.ToJsonString() == "2025-01-01T00:00:00Z"


async def test_after_seq_starts_right_after_that_seq(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    ids = await _put_locations(relay, 4)
    call = await subscribe(stub, after_seq=2)
    events = await read_n(call, 2)
    call.cancel()
    assert [(e.seq, e.object_id) for e in events] == [(3, ids[2]), (4, ids[3])]


async def test_latest_skips_the_history_and_streams_only_newer_events(
    relay: RelayHandle, stub: pb_grpc.RelayStub
) -> None:
    await _put_locations(relay, 3)
    call = await subscribe(stub, latest=True)
    assert start_seq(await call.initial_metadata()) == 3
    new = await _put_locations(relay, 1)
    (event,) = await read_n(call, 1)
    call.cancel()
    assert (event.seq, event.object_id) == (4, new[0])


async def test_since_is_inclusive_on_received_at(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    ids = await _put_locations(relay, 3)
    call = await subscribe(stub, earliest=True)
    events = await read_n(call, 3)
    call.cancel()
    since = events[1].received_at
    call = await subscribe(stub, since=since)
    assert start_seq(await call.initial_metadata()) == 1
    got = await read_n(call, 2)
    call.cancel()
    assert [e.object_id for e in got] == ids[1:]


async def test_since_after_every_event_starts_live(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    await _put_locations(relay, 2)
    call = await subscribe(stub, since={"seconds": 4_102_444_800})  # 2100-01-01
    assert start_seq(await call.initial_metadata()) == 2
    new = await _put_locations(relay, 1)
    (event,) = await read_n(call, 1)
    call.cancel()
    assert event.object_id == new[0]


# -- durable consumers ------------------------------------------------------------------------------


async def test_consumer_that_never_committed_starts_at_the_earliest_event(
    relay: RelayHandle, stub: pb_grpc.RelayStub
) -> None:
    ids = await _put_locations(relay, 2)
    call = await subscribe(stub, consumer="invoicer")
    assert start_seq(await call.initial_metadata()) == 0
    assert [e.object_id for e in await read_n(call, 2)] == ids
    call.cancel()


async def test_consumer_resumes_after_its_committed_seq_on_reconnect(
    relay: RelayHandle, stub: pb_grpc.RelayStub
) -> None:
    ids = await _put_locations(relay, 5)
    call = await subscribe(stub, consumer="invoicer")
    first = await read_n(call, 3)
    committed = await stub.Commit(pb.CommitRequest(consumer="invoicer", seq=first[-1].seq), metadata=bearer())
    assert committed.seq == 3
    call.cancel()
    call = await subscribe(stub, consumer="invoicer")
    assert start_seq(await call.initial_metadata()) == 3
    rest = await read_n(call, 2)
    call.cancel()
    assert [e.object_id for e in rest] == ids[3:]
    assert (await relay.store.stats())["consumers"]["billing/invoicer"]["seq"] == 3


async def test_consumer_resumes_after_its_committed_seq_after_a_server_restart(relay_settings: Settings) -> None:
    relay = await start_relay(relay_settings)
    try:
        ids = await _put_locations(relay, 4)
        async with grpc.aio.insecure_channel(grpc_target(relay)) as channel:
            stub = pb_grpc.RelayStub(channel)
            call = await subscribe(stub, consumer="loader")
            got = await read_n(call, 2)
            await stub.Commit(pb.CommitRequest(consumer="loader", seq=got[-1].seq), metadata=bearer())
            call.cancel()
    finally:
        await stop_relay(relay)
    relay = await start_relay(relay_settings)
    try:
        more = await _put_locations(relay, 1)
        async with grpc.aio.insecure_channel(grpc_target(relay)) as channel:
            stub = pb_grpc.RelayStub(channel)
            call = await subscribe(stub, consumer="loader")
            assert start_seq(await call.initial_metadata()) == 2
            rest = await read_n(call, 3)
            call.cancel()
    finally:
        await stop_relay(relay)
    assert [e.object_id for e in rest] == ids[2:] + more
    assert [e.seq for e in rest] == [3, 4, 5]


async def test_commit_never_moves_a_cursor_backwards(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    await _put_locations(relay, 3)
    assert (await stub.Commit(pb.CommitRequest(consumer="c1", seq=3), metadata=bearer())).seq == 3
    assert (await stub.Commit(pb.CommitRequest(consumer="c1", seq=1), metadata=bearer())).seq == 3
    call = await subscribe(stub, consumer="c1")
    assert start_seq(await call.initial_metadata()) == 3
    call.cancel()


async def test_consumer_names_are_separate_per_stream_client(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    await _put_locations(relay, 2, cpo="BE*BEC")
    await stub.Commit(pb.CommitRequest(consumer="shared-name", seq=2), metadata=bearer(BILLING_TOKEN))
    call = await subscribe(stub, BELGIUM_TOKEN, consumer="shared-name")
    assert start_seq(await call.initial_metadata()) == 0
    assert len(await read_n(call, 2)) == 2
    call.cancel()
    assert set((await relay.store.stats())["consumers"]) == {"billing/shared-name"}


# -- filters and scope ------------------------------------------------------------------------------


async def test_modules_filter_streams_only_those_modules(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    await _put_locations(relay, 1)
    await _put_session(relay, SESSION_ID)
    await _put_locations(relay, 1)
    await _put_session(relay, SESSION_ID + "-2")
    call = await subscribe(stub, earliest=True, modules=["sessions"])
    events = await read_n(call, 2)
    call.cancel()
    assert [(e.module, e.object_id, e.seq) for e in events] == [
        ("sessions", SESSION_ID, 2), ("sessions", SESSION_ID + "-2", 4)]


async def test_cpos_filter_streams_only_those_cpos(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    nl = await _put_locations(relay, 2)
    be = await _put_locations(relay, 2, cpo="BE*BEC")
    call = await subscribe(stub, earliest=True, cpos=["BE*BEC"])
    events = await read_n(call, 2)
    more_be = await _put_locations(relay, 1, cpo="BE*BEC")
    await _put_locations(relay, 1)
    events += await read_n(call, 1)
    call.cancel()
    assert [e.object_id for e in events] == be + more_be
    assert {(e.country_code, e.party_id) for e in events} == {("BE", "BEC")}
    call = await subscribe(stub, earliest=True, cpos=["NL**"])
    assert [e.object_id for e in await read_n(call, 2)] == nl
    call.cancel()


async def test_object_ids_filter_streams_only_those_objects(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    ids = await _put_locations(relay, 5)
    call = await subscribe(stub, earliest=True, object_ids=[ids[1], ids[3]])
    events = await read_n(call, 2)
    await put_location(relay, location(ids[3], name="renamed"))
    events += await read_n(call, 1)
    call.cancel()
    assert [(e.seq, e.object_id) for e in events] == [(2, ids[1]), (4, ids[3]), (6, ids[3])]
    assert object_of(events[-1])["name"] == "renamed"


async def test_a_subscription_without_filters_sees_only_the_client_scope(
    relay: RelayHandle, stub: pb_grpc.RelayStub
) -> None:
    await _put_locations(relay, 2)
    be = await _put_locations(relay, 1, cpo="BE*BEC")
    await _put_session(relay, SESSION_ID)
    be += await _put_locations(relay, 1, cpo="BE*BEC")
    call = await subscribe(stub, BELGIUM_TOKEN, earliest=True)
    events = await read_n(call, 2)
    call.cancel()
    assert [(e.object_id, e.country_code, e.module) for e in events] == [(i, "BE", "locations") for i in be]


async def test_stale_and_identical_pushes_are_not_streamed_and_seqs_may_skip(
    relay: RelayHandle, stub: pb_grpc.RelayStub
) -> None:
    newer = location(name="newer")
    newer["last_updated"] = "2025-01-02T00:00:00Z"
    older = copy.deepcopy(newer) | {"name": "older", "last_updated": "2025-01-01T00:00:00Z"}
    newest = copy.deepcopy(newer) | {"name": "newest", "last_updated": "2025-01-03T00:00:00Z"}
    await put_location(relay, newer)  # seq 1, applied
    await put_location(relay, newer)  # identical: no event at all
    await put_location(relay, older)  # seq 2, stale: stored, never streamed
    await put_location(relay, newest)  # seq 3, applied
    call = await subscribe(stub, earliest=True)
    events = await read_n(call, 2)
    call.cancel()
    assert [(e.seq, object_of(e)["name"]) for e in events] == [(1, "newer"), (3, "newest")]
    assert (await relay.store.stats())["events_by_status"] == {"applied": 2, "stale": 1}


async def test_a_config_reload_that_drops_the_client_ends_its_open_stream(
    relay: RelayHandle, stub: pb_grpc.RelayStub
) -> None:
    assert relay.info.holder is not None
    call = await subscribe(stub, BELGIUM_TOKEN, latest=True)
    collector = Collector(call)
    path = Path(relay.info.holder.path)
    text = await asyncio.to_thread(path.read_text)
    await asyncio.to_thread(path.write_text, text.split("  - name: belgium")[0])
    assert relay.info.holder.reload()
    await eventually(lambda: _done(collector.task))
    assert collector.error is not None and collector.error.code() == grpc.StatusCode.UNAUTHENTICATED


async def _done(task: asyncio.Task[None]) -> bool:
    return task.done()


# -- no gap, no duplicate -----------------------------------------------------------------------------


async def test_catch_up_to_live_under_concurrent_pushes_has_no_gap_and_no_duplicate(
    relay: RelayHandle, stub: pb_grpc.RelayStub
) -> None:
    history = [str(uuid.uuid4()) for _ in range(300)]
    live = [str(uuid.uuid4()) for _ in range(700)]
    acknowledged: list[str] = []

    async def push_all(ids: list[str]) -> None:
        todo = iter(ids)

        async def client() -> None:  # 24 concurrent clients
            for object_id in todo:
                await put_location(relay, location(object_id))
                acknowledged.append(object_id)

        await asyncio.gather(*(client() for _ in range(24)))

    await push_all(history)
    # Subscribers join at different moments while the live pushes run, so each crosses the seam
    # between reading history and waiting for commits while new events keep arriving.
    pushes = asyncio.ensure_future(push_all(live))
    collectors = [Collector(await subscribe(stub, earliest=True))]
    for _ in range(3):
        await eventually(_more_than(acknowledged, len(acknowledged) + 100))
        collectors.append(Collector(await subscribe(stub, earliest=True)))
    await pushes
    assert sorted(acknowledged) == sorted(history + live)
    try:
        for c in collectors:
            await eventually(lambda c=c: c.has(len(acknowledged)), timeout=30)
    finally:
        for c in collectors:
            await c.stop()
    stored = [e.seq for e in await relay.store.read_events(0, 10_000)]
    for c in collectors:
        assert c.error is None
        assert c.seqs == stored, "every collector gets exactly the stored seqs, in order"
        assert len(set(c.seqs)) == len(c.seqs) == len(acknowledged)
        assert sorted(e.object_id for e in c.events) == sorted(acknowledged)


def _more_than(items: list[str], n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(items) > n

    return check


async def test_a_filtered_subscriber_keeps_up_while_other_cpos_flood_the_log(
    relay: RelayHandle, stub: pb_grpc.RelayStub
) -> None:
    # Few matching events between many others: the stream skips the others without losing one.
    call = await subscribe(stub, earliest=True, cpos=["BE*BEC"])
    collector = Collector(call)
    expected: list[str] = []
    rng = random.Random(4)
    for _ in range(200):
        if rng.random() < 0.1:
            expected += await _put_locations(relay, 1, cpo="BE*BEC")
        else:
            await _put_locations(relay, 1)
    await eventually(lambda: collector.has(len(expected)))
    await collector.stop()
    assert [e.object_id for e in collector.events] == expected
    assert collector.seqs == sorted(set(collector.seqs))


async def test_a_subscriber_on_another_replica_receives_what_the_first_one_commits(
    relay: RelayHandle, relay_settings: Settings
) -> None:
    # Two relays on one database (PostgreSQL wakes the other through LISTEN/NOTIFY, SQLite through
    # the store's poll): the second one serves gRPC only.
    other = await start_relay(dataclasses.replace(relay_settings, http=False))
    try:
        async with grpc.aio.insecure_channel(grpc_target(other)) as channel:
            call = await subscribe(pb_grpc.RelayStub(channel), earliest=True)
            ids = await _put_locations(relay, 3)
            events = await read_n(call, 3)
            call.cancel()
    finally:
        await stop_relay(other)
    assert [(e.seq, e.object_id) for e in events] == [(1, ids[0]), (2, ids[1]), (3, ids[2])]
