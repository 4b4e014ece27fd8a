"""Overlapping chains: the faster delivery paths keep the rules.

More chains than ``concurrency`` may be claimed (one waits for its outcome's commit while another
sends), so these check that the wire still carries at most ``concurrency`` requests and that each
object's versions still arrive in order. (The workers' own outbox thread is checked with the outbox
contract, in tests/store/test_outbox.py.)
"""

from __future__ import annotations

import asyncio

import pytest

from relay.deliver.slots import SendSlots
from tests.conftest import SESSION_ID, RelayHandle, eventually
from tests.deliver.conftest import ONE_AT_A_TIME, put_session
from tests.servers import PartnerSink, Received, Reply

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
