"""Overlapping chains and the workers' own outbox thread: the faster delivery paths keep the rules.

More chains than ``concurrency`` may be claimed (one waits for its outcome's commit while another
sends), so these check that the wire still carries at most ``concurrency`` requests and that each
object's versions still arrive in order; and that an Outbox running its transactions on a thread of
its own (what the workers use on SQLite) claims, fences and hands back exactly like the async path,
also with two of them racing on one database as two replicas would.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from relay.deliver.worker import SendSlots
from relay.store import SqlStore, open_store
from relay.store.outbox import NewOutboxRow, Outbox, OutcomeWrite
from tests.conftest import SESSION_ID, RelayHandle, eventually
from tests.deliver.conftest import put_session
from tests.servers import PartnerSink, Received, Reply

ONE_AT_A_TIME = """
targets:
  - name: hook
    type: webhook
    url: $sink/hook
    secret_env: TEST_HOOK_SECRET
    timeout: 5
    concurrency: 1
    max_attempts: 30
    retry_base: 0.05
    retry_max: 0.4
rules:
  - name: everything
    match: {modules: [sessions]}
    to: [hook]
"""


# -- SendSlots ---------------------------------------------------------------------------------------


async def test_send_slots_hold_at_most_capacity_and_hand_over_in_arrival_order() -> None:
    slots = SendSlots(2)
    await slots.acquire()
    await slots.acquire()
    order: list[int] = []

    async def waiter(n: int) -> None:
        await slots.acquire()
        order.append(n)

    tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
    await asyncio.sleep(0)  # one loop turn, no time: each waiter runs up to its queued acquire
    assert order == [] and slots.held == 2
    slots.release()
    await eventually(lambda: order == [0])
    assert slots.held == 2
    slots.release()
    slots.release()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert order == [0, 1, 2] and slots.held == 2


async def test_send_slots_follow_a_resize_and_pass_on_a_slot_handed_to_a_cancelled_waiter() -> None:
    slots = SendSlots(1)
    await slots.acquire()
    first = asyncio.create_task(slots.acquire())
    second = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)  # one loop turn, no time: both are queued
    slots.resize(2)  # a reload raised concurrency: one waiter gets in at once
    await asyncio.wait_for(first, 10)
    assert not second.done() and slots.held == 2
    slots.release()  # handed to ``second`` ...
    second.cancel()  # ... which is cancelled before it runs: the slot must not leak
    with pytest.raises(asyncio.CancelledError):
        await second
    assert slots.held == 1
    slots.resize(1)
    third = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)  # one loop turn, no time: ``third`` is queued
    assert not third.done()  # back at capacity 1 with one holder
    slots.release()
    await asyncio.wait_for(third, 1)
    assert slots.held == 1


# -- the relay: many chains, one request at a time, order per object ---------------------------------------


@pytest.mark.forwarding(ONE_AT_A_TIME)
async def test_many_claimed_chains_still_send_one_at_a_time_and_in_order_per_object(
    relay: RelayHandle, partner_sink: PartnerSink
) -> None:
    async def slowish(_rec: Received, _n: int) -> Reply:
        await asyncio.sleep(0.005)  # the partner's own pace (so requests could overlap), not a synchronisation
        return 200, None, {}

    partner_sink.answer = slowish
    ids = [f"{SESSION_ID[:-2]}{i:02d}" for i in range(6)]
    for version in range(3):
        for sid in ids:
            await put_session(relay, sid, kwh=float(version + 1))
    await eventually(lambda: len(partner_sink.accepted()) == 18)
    assert partner_sink.max_in_flight == 1
    seqs: dict[str, list[int]] = {}
    for rec in partner_sink.accepted():
        data = rec.json()["data"]
        seqs.setdefault(data["id"], []).append(data["seq"])
    assert sorted(seqs) == sorted(ids)
    assert all(s == sorted(s) and len(s) == 3 for s in seqs.values())


# -- the workers' own outbox thread ----------------------------------------------------------------


@pytest.fixture
async def outbox(store: SqlStore) -> AsyncIterator[Outbox]:
    o = Outbox(store, own_thread=True)
    try:
        yield o
    finally:
        await o.close()


def _now() -> datetime:
    return datetime.now(UTC)


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


async def test_two_own_thread_outboxes_never_share_a_row_nor_an_object(database_url: str, store: SqlStore) -> None:
    """Two stores, each with its outbox thread = two replicas (on SQLite: two writers on one file)."""
    other = open_store(database_url)
    outboxes = [Outbox(store, own_thread=True), Outbox(other, own_thread=True)]
    try:
        rows = [NewOutboxRow(seq, "t", "r", f"sessions/NL/GFX/o{seq % 6}") for seq in range(1, 49)]
        assert await outboxes[0].enqueue_missing(rows) == 48
        in_flight: dict[str, str] = {}
        done_order: dict[str, list[int]] = {}
        claimed_ids: list[int] = []

        async def worker(outbox: Outbox, name: str) -> None:
            while sum(map(len, done_order.values())) < 48:
                got = await outbox.claim("t", 3, name, 30, chain=3)
                if not got:
                    await asyncio.sleep(0.01)  # a worker's idle poll: the other one holds what is left
                    continue
                for c in got:
                    owner = in_flight.setdefault(c.object_key, name)
                    assert owner == name, f"{c.object_key} claimed by {owner} and {name}"
                    claimed_ids.append(c.id)
                await asyncio.sleep(random.uniform(0, 0.01))  # the send: lets the other replica's claims interleave
                for c in got:
                    done_order.setdefault(c.object_key, []).append(c.seq)
                    in_flight.pop(c.object_key, None)
                await outbox.record([OutcomeWrite(c.id, "done", 1, _now()) for c in got], name)

        await asyncio.wait_for(asyncio.gather(worker(outboxes[0], "w1"), worker(outboxes[1], "w2")), 60)
        assert sorted(claimed_ids) == list(range(1, 49))
        assert all(seqs == sorted(seqs) and len(seqs) == 8 for seqs in done_order.values())
    finally:
        for o in outboxes:
            await o.close()
        await other.close()
