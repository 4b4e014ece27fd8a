"""The Outbox contract on both databases: per-object order, dead rows, leases, fencing, two claimers
at once, and the same through the delivery workers' own outbox thread (``own_thread=True``)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update

from relay.store import SqlStore, Store, open_store
from relay.store.outbox import ClaimedDelivery, NewOutboxRow, Outbox, OutcomeWrite
from relay.store.tables import DELIVERY
from tests.conftest import eventually


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A migrated store on each database, not started (these tests drive its outbox directly)."""
    s = open_store(database_url)
    await s.migrate()
    try:
        yield s
    finally:
        await s.close()


def _now() -> datetime:
    return datetime.now(UTC)


async def _queue(outbox: Outbox, objects: int, per_object: int, target: str = "t") -> None:
    rows = [NewOutboxRow(seq, target, "r", f"sessions/NL/GFX/o{seq % objects}")
            for seq in range(1, objects * per_object + 1)]
    assert await outbox.enqueue_missing(rows) == len(rows)


async def _finish(outbox: Outbox, claimed: list[ClaimedDelivery], state: str = "done", owner: str = "w1") -> None:
    await outbox.record([OutcomeWrite(c.id, state, c.attempts + 1, _now()) for c in claimed], owner)


async def test_a_claim_takes_only_the_oldest_open_row_of_each_object(store: Store) -> None:
    outbox = store.outbox()
    await _queue(outbox, objects=2, per_object=3)  # o1: seq 1, 3, 5; o0: seq 2, 4, 6
    first = await outbox.claim("t", 10, "w1", 30)
    assert sorted((c.seq, c.object_key) for c in first) == [(1, "sessions/NL/GFX/o1"), (2, "sessions/NL/GFX/o0")]
    assert await outbox.claim("t", 10, "w1", 30) == []  # both objects have a row in flight
    await _finish(outbox, [c for c in first if c.seq == 1])
    assert [c.seq for c in await outbox.claim("t", 10, "w1", 30)] == [3]
    assert await outbox.claim("other-target", 10, "w1", 30) == []


async def test_a_row_waiting_for_its_retry_still_blocks_its_object(store: Store) -> None:
    outbox = store.outbox()
    await _queue(outbox, objects=1, per_object=2)
    (row,) = await outbox.claim("t", 10, "w1", 30)
    await outbox.record([OutcomeWrite(row.id, "pending", 1, _now() + timedelta(seconds=60), 503, None, "HTTP 503")], "w1")
    assert await outbox.claim("t", 10, "w1", 30) == []  # seq 2 must not overtake seq 1


async def test_a_dead_row_does_not_block_later_rows_and_its_retry_waits_for_them(store: Store) -> None:
    outbox = store.outbox()
    await _queue(outbox, objects=1, per_object=2)
    (first,) = await outbox.claim("t", 10, "w1", 30)
    await _finish(outbox, [first], state="dead")
    (second,) = await outbox.claim("t", 10, "w1", 30)
    assert second.seq == 2
    assert await outbox.retry_dead(None) == [first.id]
    # the retried row is older, but the object has a row in flight: nothing is claimable
    assert await outbox.claim("t", 10, "w1", 30) == []
    await _finish(outbox, [second])
    again = await outbox.claim("t", 10, "w1", 30)
    assert [(c.id, c.attempts) for c in again] == [(first.id, 0)]


@pytest.mark.parametrize("own_thread", [False, True], ids=["engine", "own-thread"])
async def test_an_expired_lease_is_taken_over_and_the_old_owner_can_no_longer_record(
    store: Store, own_thread: bool
) -> None:
    """On the store's engine (CLI) and on the workers' own outbox thread alike."""
    outbox = store.outbox(own_thread=own_thread)
    try:
        await _lease_takeover(outbox)
    finally:
        await outbox.close()


async def _lease_takeover(outbox: Outbox) -> None:
    await _queue(outbox, objects=1, per_object=1)
    (row,) = await outbox.claim("t", 10, "crashed", lease=0.05)

    async def reaped() -> bool:
        return await outbox.reap_expired() == 1

    await eventually(reaped, timeout=5)
    (again,) = await outbox.claim("t", 10, "w2", 30)
    assert again.id == row.id and again.attempts == 0
    await outbox.record([OutcomeWrite(row.id, "dead", 1, _now(), error="late")], "crashed")  # fenced off
    await _finish(outbox, [again], owner="w2")
    (rec,) = await outbox.list_rows()
    assert rec.state == "done" and rec.last_error is None


async def test_a_chain_claim_takes_an_object_s_next_rows_in_order_and_stops_at_a_waiting_one(
    store: Store
) -> None:
    outbox = store.outbox()
    await _queue(outbox, objects=2, per_object=5)  # o1: 1 3 5 7 9; o0: 2 4 6 8 10
    got = await outbox.claim("t", 10, "w1", 30, chain=3)
    assert [(c.object_key[-2:], c.seq) for c in got] == [("o0", 2), ("o0", 4), ("o0", 6),
                                                         ("o1", 1), ("o1", 3), ("o1", 5)]
    o0 = [c for c in got if c.object_key.endswith("o0")]
    # o0: seq 2 done, seq 4 waits for a retry, seq 6 handed back untried
    await outbox.record([OutcomeWrite(o0[0].id, "done", 1, _now()),
                         OutcomeWrite(o0[1].id, "pending", 1, _now() + timedelta(seconds=60))], "w1")
    await outbox.release([o0[2].id], "w1")
    await _finish(outbox, [c for c in got if c.object_key.endswith("o1")])
    again = await outbox.claim("t", 10, "w1", 30, chain=10)
    assert [(c.object_key[-2:], c.seq) for c in again] == [("o1", 7), ("o1", 9)]  # o0 waits behind seq 4
    released = next(r for r in await outbox.list_rows() if r.id == o0[2].id)
    assert (released.state, released.attempts, released.claimed_by) == ("pending", 0, None)
    assert len(await outbox.claim("t", 10, "w1", 30, chain=10, max_rows=1)) == 0  # o1 in flight, o0 waiting


async def test_two_rows_of_one_event_for_one_target_go_out_one_after_the_other(store: Store) -> None:
    outbox = store.outbox()
    key = "sessions/NL/GFX/o1"
    rows = [NewOutboxRow(1, "t", "rule-a", key), NewOutboxRow(1, "t", "rule-b", key), NewOutboxRow(2, "t", "rule-a", key)]
    assert await outbox.enqueue_missing(rows) == 3
    (first,) = await outbox.claim("t", 10, "w1", 30)
    assert (first.seq, first.rule) == (1, "rule-a")
    assert await outbox.claim("t", 10, "w1", 30) == []  # the twin waits like any later row
    await outbox.release([first.id], "w1")
    chain = await outbox.claim("t", 10, "w1", 30, chain=5)
    assert [(c.seq, c.rule) for c in chain] == [(1, "rule-a"), (1, "rule-b"), (2, "rule-a")]


async def test_a_lease_heartbeat_keeps_rows_from_being_taken_over(store: Store) -> None:
    outbox = store.outbox()
    await _queue(outbox, objects=1, per_object=1)
    (row,) = await outbox.claim("t", 10, "w1", lease=0.05)
    await outbox.extend([row.id], "w1", 60)
    assert await outbox.reap_expired() == 0
    (rec,) = await outbox.list_rows()
    assert rec.state == "in_flight" and rec.claimed_by == "w1"


async def test_replay_rows_are_not_queued_twice_while_open(store: Store) -> None:
    outbox = store.outbox()
    rows = [NewOutboxRow(s, "t", "r", f"k{s}") for s in (1, 2, 3)]
    assert await outbox.enqueue_missing(rows) == 3
    assert await outbox.enqueue_missing(rows) == 0
    claimed = await outbox.claim("t", 10, "w1", 30)
    assert await outbox.enqueue_missing(rows) == 0  # in flight counts as open
    await _finish(outbox, claimed)
    assert await outbox.enqueue_missing(rows) == 3  # delivered: a replay sends it again


async def test_two_claimers_never_share_a_row_nor_an_object_and_keep_seq_order(database_url: str,
                                                                                store: Store) -> None:
    """Two stores = two replicas (separate pools; on PostgreSQL the claims really run in parallel)."""
    other = open_store(database_url)
    try:
        outboxes = [store.outbox(), other.outbox()]
        await _queue(outboxes[0], objects=6, per_object=8)
        in_flight: dict[str, str] = {}
        done_order: dict[str, list[int]] = {}
        claimed_ids: list[int] = []

        async def worker(outbox: Outbox, name: str) -> None:
            idle = 0
            while idle < 20:
                got = await outbox.claim("t", 3, name, 30)
                if not got:
                    idle += 1
                    await asyncio.sleep(0.01)
                    continue
                idle = 0
                for c in got:
                    assert c.object_key not in in_flight, f"{c.object_key} claimed by {in_flight.get(c.object_key)} and {name}"
                    in_flight[c.object_key] = name
                    claimed_ids.append(c.id)
                await asyncio.sleep(random.uniform(0, 0.01))
                for c in got:
                    done_order.setdefault(c.object_key, []).append(c.seq)
                    del in_flight[c.object_key]
                await _finish(outbox, got, owner=name)

        await asyncio.gather(worker(outboxes[0], "w1"), worker(outboxes[1], "w2"))
        assert sorted(claimed_ids) == list(range(1, 49))
        assert all(seqs == sorted(seqs) and len(seqs) == 8 for seqs in done_order.values())
    finally:
        await other.close()


@pytest.mark.parametrize("own_thread", [False, True], ids=["engine", "own-thread"])
async def test_outcome_writes_and_heartbeats_name_the_rows_that_are_no_longer_ours(
    store: Store, own_thread: bool
) -> None:
    """A worker must know when its claim is gone: it then stops the chain instead of sending on."""
    outbox = store.outbox(own_thread=own_thread)
    try:
        await outbox.enqueue_missing([NewOutboxRow(1, "t", "r", "sessions/NL/GFX/a"),
                                      NewOutboxRow(2, "t", "r", "sessions/NL/GFX/b")])
        kept_row, lost_row = await outbox.claim("t", 10, "w1", 30)
        assert await outbox.claim("t", 10, "w0", 30) == []  # both objects are in flight
        # w1's claim on ``lost_row`` ends and w2 takes the row over
        await _expire(store, lost_row.id)
        assert await outbox.reap_expired() == 1
        (taken,) = await outbox.claim("t", 10, "w2", 30)
        assert taken.id == lost_row.id
        assert await outbox.extend([kept_row.id, lost_row.id], "w1", 30) == {kept_row.id}
        now = datetime.now(UTC)
        lost = await outbox.record([OutcomeWrite(kept_row.id, "done", 1, now),
                                    OutcomeWrite(lost_row.id, "done", 1, now)], "w1")
        assert lost == {lost_row.id}
        states = {r.id: (r.state, r.claimed_by) for r in await outbox.list_rows()}
        assert states == {kept_row.id: ("done", None), lost_row.id: ("in_flight", "w2")}
        assert await outbox.record([OutcomeWrite(lost_row.id, "done", 1, now)], "w2") == set()
    finally:
        await outbox.close()


async def _expire(store: Store, delivery_id: int) -> None:
    assert isinstance(store, SqlStore)  # raw SQL below the interface: the lease ran out
    async with store.write_engine.begin() as conn:
        await conn.execute(update(DELIVERY).where(DELIVERY.c.id == delivery_id)
                           .values(claimed_until=datetime.now(UTC) - timedelta(minutes=5)))


# -- the workers' own outbox thread ----------------------------------------------------------------


@pytest.fixture
async def outbox(store: Store) -> AsyncIterator[Outbox]:
    o = store.outbox(own_thread=True)
    try:
        yield o
    finally:
        await o.close()


async def test_own_thread_outbox_claims_chains_fences_and_hands_back(outbox: Outbox) -> None:
    rows = [NewOutboxRow(seq, "t", "r", f"sessions/NL/GFX/o{seq % 2}") for seq in range(1, 7)]
    assert await outbox.enqueue_missing(rows) == 6  # o1: 1 3 5; o0: 2 4 6
    got = await outbox.claim("t", 10, "w1", 30, chain=2, with_events=True)
    assert [(c.object_key[-2:], c.seq) for c in got] == [("o0", 2), ("o0", 4), ("o1", 1), ("o1", 3)]
    assert all(c.event is None for c in got)  # no such events in the log: None, never a wrong one
    assert await outbox.claim("t", 10, "w2", 30) == []  # every object has rows in flight
    o0, o1 = got[:2], got[2:]
    await outbox.record([OutcomeWrite(o0[0].id, "done", 1, _now()),
                         OutcomeWrite(o0[1].id, "pending", 1, _now() + timedelta(seconds=60))], "w1")
    await outbox.record([OutcomeWrite(o1[0].id, "dead", 1, _now(), error="not mine")], "w2")  # fenced off
    await outbox.release([o1[1].id], "w1")
    states = {r.id: (r.state, r.claimed_by) for r in await outbox.list_rows()}
    assert states[o0[0].id] == ("done", None)
    assert states[o0[1].id] == ("pending", None)
    assert states[o1[0].id] == ("in_flight", "w1")
    assert states[o1[1].id] == ("pending", None)
    await outbox.record([OutcomeWrite(o1[0].id, "done", 1, _now())], "w1")
    again = await outbox.claim("t", 10, "w1", 30, chain=5)
    assert [(c.object_key[-2:], c.seq) for c in again] == [("o1", 3), ("o1", 5)]  # o0 waits behind seq 4


async def test_two_own_thread_outboxes_never_share_a_row_nor_an_object(database_url: str, store: Store) -> None:
    """Two stores, each with its outbox thread = two replicas (on SQLite: two writers on one file)."""
    other = open_store(database_url)
    outboxes = [store.outbox(own_thread=True), other.outbox(own_thread=True)]
    try:
        rows = [NewOutboxRow(seq, "t", "r", f"sessions/NL/GFX/o{seq % 6}") for seq in range(1, 49)]
        assert await outboxes[0].enqueue_missing(rows) == 48
        in_flight: dict[str, str] = {}
        done_order: dict[str, list[int]] = {}
        claimed_ids: list[int] = []

        async def worker(outbox: Outbox, name: str) -> None:
            idle = 0
            while idle < 20:
                got = await outbox.claim("t", 3, name, 30, chain=3)
                if not got:
                    idle += 1
                    await asyncio.sleep(0.01)
                    continue
                idle = 0
                for c in got:
                    owner = in_flight.setdefault(c.object_key, name)
                    assert owner == name, f"{c.object_key} claimed by {owner} and {name}"
                    claimed_ids.append(c.id)
                await asyncio.sleep(random.uniform(0, 0.01))
                for c in got:
                    done_order.setdefault(c.object_key, []).append(c.seq)
                    in_flight.pop(c.object_key, None)
                await outbox.record([OutcomeWrite(c.id, "done", 1, _now()) for c in got], name)

        await asyncio.gather(worker(outboxes[0], "w1"), worker(outboxes[1], "w2"))
        assert sorted(claimed_ids) == list(range(1, 49))
        assert all(seqs == sorted(seqs) and len(seqs) == 8 for seqs in done_order.values())
    finally:
        for o in outboxes:
            await o.close()
        await other.close()
