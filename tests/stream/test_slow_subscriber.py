"""A subscriber far slower than ingest costs the server a bounded amount of memory and loses nothing.

The slow subscriber reads one event and naps while thousands of pushes arrive; the server must not
queue the backlog for it (DESIGN: it falls back to reading the store). Measured in-process, since the
relay runs in the test's event loop: the Python heap (tracemalloc) while the backlog grows, and the
stream hub's own counters (events held per subscriber, events in the shared page cache).
"""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
import uuid
from typing import Any

import pytest

from relay.stream import fanout
from relay.stream._pb import relay_pb2_grpc as pb_grpc
from tests.conftest import RelayHandle, eventually
from tests.stream.conftest import location, put_location, subscribe

EVENTS = 3000
WARM_UP = 200
PUSHERS = 32
NAP = 0.01  # seconds per event while slow: ~100 events/s, far below the ingest rate


class SlowReader:
    """Reads a Subscribe call one event at a time, napping after each while ``slow`` is set."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.seqs: list[int] = []
        self.ids: list[str] = []
        self.slow = True
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for event in self.call:
            self.seqs.append(event.seq)
            self.ids.append(event.object_id)
            if self.slow:
                await asyncio.sleep(NAP)  # the deliberate slowness, not a synchronisation

    async def has(self, n: int) -> bool:
        return len(self.seqs) >= n


async def test_a_slow_subscriber_keeps_server_memory_bounded_and_still_receives_everything(
    relay: RelayHandle, stub: pb_grpc.RelayStub, record_property: pytest.RecordProperty
) -> None:
    (hub,) = [h for h in fanout.live_hubs() if h.store is relay.store]
    body_bytes = len(json.dumps(location()).encode())
    reader = SlowReader(await subscribe(stub, earliest=True))
    ids = [str(uuid.uuid4()) for _ in range(EVENTS)]
    acknowledged: list[str] = []

    async def flood(batch: list[str]) -> None:
        # A fixed pool of pushers: the test itself should not allocate per pending push.
        todo = iter(batch)

        async def pusher() -> None:
            for object_id in todo:
                await put_location(relay, location(object_id))
                acknowledged.append(object_id)

        await asyncio.gather(*(pusher() for _ in range(PUSHERS)))

    peak_held = peak_cached = 0

    async def sample() -> None:
        nonlocal peak_held, peak_cached
        while True:
            peak_held = max([peak_held, *(c.held for c in hub.cursors)])
            peak_cached = max(peak_cached, hub.cached)
            await asyncio.sleep(0.02)  # the sampling period of a measurement, not a synchronisation

    debug = asyncio.get_running_loop().get_debug()

    def traced() -> tuple[int, int]:
        """(retained, peak) heap since tracing started. Garbage not yet collected is not retained:
        under `tune_gc`'s larger young generation a run kept 5.8 MB of uncollected cycles here.
        (Not in debug mode, where the heap is not checked and a full collection would hold the loop.)"""
        if not debug:
            gc.collect()
        return tracemalloc.get_traced_memory()

    await flood(ids[:WARM_UP])  # every code path runs once before measuring
    half = (EVENTS + WARM_UP) // 2
    tracemalloc.start()
    sampler = asyncio.create_task(sample())
    try:
        baseline, _ = traced()
        await flood(ids[WARM_UP:half])
        retained_1, _ = traced()
        backlog_1 = len(acknowledged) - len(reader.seqs)
        await flood(ids[half:])
        retained_2, peak = traced()
        backlog_2 = len(acknowledged) - len(reader.seqs)
    finally:
        tracemalloc.stop()
        sampler.cancel()
    event_bytes = 2 * body_bytes  # each event is stored with its body and its merged object
    record_property("backlog_events", backlog_2)
    record_property("backlog_bytes", backlog_2 * event_bytes)
    record_property("heap_retained_growth_bytes", retained_2 - baseline)
    record_property("heap_peak_growth_bytes", peak - baseline)

    # The subscriber really fell behind, and further behind during the second half.
    assert backlog_1 > (half - WARM_UP) // 2 and backlog_2 > backlog_1 + (EVENTS - half) // 2
    if not debug:  # (asyncio debug mode keeps a stack per pending future)
        # Queueing the backlog would cost at least event_bytes per event; the heap kept a small
        # fraction of the first half's backlog and did not grow with the second half's.
        assert retained_1 - baseline < backlog_1 * event_bytes / 5
        assert retained_2 - retained_1 < (backlog_2 - backlog_1) * event_bytes / 10
        # Transient peak, whatever the backlog: about one page being read (rows, then records, then
        # messages) plus the group commits in flight.
        assert peak - baseline < 3 * fanout.PAGE_SIZE * event_bytes
    # The structural bound behind it: one page per subscriber, a bounded shared cache.
    assert 0 < peak_held <= fanout.PAGE_SIZE
    assert peak_cached <= fanout.CACHED_EVENTS + fanout.PAGE_SIZE

    reader.slow = False
    await eventually(lambda: reader.has(EVENTS), timeout=30)
    reader.call.cancel()
    assert sorted(reader.ids) == sorted(acknowledged) == sorted(ids)
    stored: list[int] = []
    while page := await relay.store.read_events(stored[-1] if stored else 0, fanout.PAGE_SIZE):
        stored += [e.seq for e in page]  # a page at a time, as the hub reads (3,000 at once held the loop 0.1 s)
    assert reader.seqs == stored
    assert reader.seqs == sorted(set(reader.seqs))
