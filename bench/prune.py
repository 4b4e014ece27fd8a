"""Retention benchmark: ingest latency beside a prune, and a time-compressed month of retention.

    .venv/bin/python bench/prune.py [--events N] [--rate R] [--seconds S] [--db sqlite|postgres]
    .venv/bin/python bench/prune.py --simulate [--per-day K]

Part 1 fills the log with N old events (1.5 KB bodies, 10 events per object, so 9 of 10 are
prunable), then submits pushes through the store's group commit at R per second
for S seconds alone, then for as long as a prune of the old events runs in the same process (as the
`RELAY_RETENTION` part does), and prints p50/p99 of the group commit's answer time for both. Only
the store's public interface is used: the old events go through ``Store.submit`` stamped 40 days ago.

Part 2 (``--simulate``) stamps K pushes a day over 30 simulated days and prunes with a 7-day window after
each day, printing the database size (SQLite pages in use, after the prune gave pages back): it should
level off after day 7.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.store import open_store  # noqa: E402
from relay.store.base import PRUNE_CHUNK, NewEvent, Plan, StateKey, StateWrite, Store, StoredState  # noqa: E402

BODY = "{" + '"x": "' + "y" * 1500 + '"}'


class PushOp:
    def __init__(self, object_id: str, at: datetime) -> None:
        self.key = StateKey("locations", "NL", "GFX", object_id)
        self.reads = (self.key,)
        self.at = at
        self.size = len(BODY)

    def plan(self, states: Mapping[StateKey, StoredState | None]) -> Plan:
        k = self.key
        ev = NewEvent(module=k.module, action="put", country_code=k.country_code, party_id=k.party_id,
                      object_id=k.object_id, evse_uid=None, connector_id=None, last_updated=self.at,
                      received_at=self.at, origin="push", subscription="bench", request_id=None, status="applied",
                      body=BODY, body_hash="h", object=BODY)
        return Plan(event=ev, states=[StateWrite(k, {"id": k.object_id}, "h", self.at, text=BODY)])


async def fill(store: Store, n: int, at: datetime) -> None:
    """N old events, 10 per object (N/10 objects), through the store's group commit like any push."""
    objects = max(1, n // 10)
    done, batch, t0 = 0, 2048, time.perf_counter()
    while done < n:
        size = min(batch, n - done)
        await asyncio.gather(*(store.submit(PushOp(f"old-{(done + j) % objects}", at)) for j in range(size)))
        done += size
        sys.stderr.write(f"\rfilled {done:,}/{n:,} ({done / (time.perf_counter() - t0):,.0f}/s)")
    sys.stderr.write("\n")


async def paced(store: Store, rate: float, seconds: float, tag: str,
                until: asyncio.Task[Any] | None = None) -> list[float]:
    """Submit pushes at ``rate`` per second for ``seconds`` (or, with ``until``, for as long as that
    task runs) and return each one's answer time in ms."""
    lat: list[float] = []
    now = datetime.now(UTC)
    slow.clear()

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        await store.submit(PushOp(f"{tag}-{i % 5000}", now))
        took = (time.perf_counter() - t0) * 1000
        lat.append(took)
        if took >= SLOW_MS:
            slow.append(t0 - start)

    tasks = []
    start = time.perf_counter()
    i = 0
    while (until is None and i < rate * seconds) or (until is not None and not until.done()):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
        i += 1
    await asyncio.gather(*tasks)
    return lat


class Truncations(logging.Handler):
    """Counts the WAL bound's truncating checkpoints (log event ``sqlite_wal_truncated``) and their
    pauses of every writer: beside a prune they, not the prune's own transactions, can set the p99."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.pauses: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage() == "sqlite_wal_truncated":
            self.pauses.append(float(getattr(record, "pause_ms", 0.0)))

    def take(self) -> str:
        pauses, self.pauses = self.pauses, []
        return f"{len(pauses)} WAL truncations" + (f" (pauses max {max(pauses):.0f} ms, total {sum(pauses):.0f} ms)"
                                                   if pauses else "")


SLOW_MS = 50.0
slow: list[float] = []  # when (s into the phase) each push slower than SLOW_MS was submitted


def timeline(seconds: float) -> str:
    """Pushes slower than SLOW_MS per tenth of the phase: spread out or bunched at one moment."""
    if not slow:
        return f"no push over {SLOW_MS:g} ms"
    width = seconds / 10
    counts = [0] * 10
    for t in slow:
        counts[min(9, int(t / width))] += 1
    return f"pushes over {SLOW_MS:g} ms per tenth of the phase: {counts}"


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1] if len(values) > 1 else values[0]


async def latency(url: str, events: int, rate: float, seconds: float, chunk: int) -> None:
    store = open_store(url)
    await store.migrate()
    await store.start()
    chunks: list[float] = []
    last = [time.perf_counter()]

    def progress(table: str, removed: int) -> None:
        now = time.perf_counter()
        chunks.append((now - last[0]) * 1000)
        last[0] = now
        if table == "event":
            sys.stderr.write(f"\rpruned {removed:,} events")

    truncations = Truncations()
    store_log = logging.getLogger("relay.store")
    store_log.addHandler(truncations)
    store_log.setLevel(logging.INFO)
    store_log.propagate = False
    try:
        await fill(store, events, datetime.now(UTC) - timedelta(days=40))
        await asyncio.sleep(5)  # let the checkpoints catch up with the fill
        truncations.take()
        alone = await paced(store, rate, seconds, "alone")
        alone_truncations = truncations.take()
        alone_slow = timeline(seconds)
        t0 = last[0] = time.perf_counter()
        prune = asyncio.create_task(store.prune(datetime.now(UTC) - timedelta(days=30), chunk=chunk,
                                                progress=progress))
        beside = await paced(store, rate, seconds, "beside", until=prune)
        report = await prune
        took = time.perf_counter() - t0
        beside_truncations = truncations.take()
        beside_slow = timeline(took)
        sys.stderr.write("\n")
    finally:
        await store.close()
    print(f"{store.dialect}: {events:,} old events; ingest {rate:g}/s; chunk {chunk}", flush=True)
    print(f"  alone ({len(alone):,} pushes):        p50 {pct(alone, 50):.1f} ms  p99 {pct(alone, 99):.1f} ms; {alone_truncations}")
    print(f"  beside prune ({len(beside):,} pushes): p50 {pct(beside, 50):.1f} ms  p99 {pct(beside, 99):.1f} ms  "
          f"(p99 ratio {pct(beside, 99) / pct(alone, 99):.2f}x); {beside_truncations}")
    print(f"  prune removed {report.events:,} events, {report.deliveries:,} deliveries in {took:.1f} s "
          f"({report.events / took:,.0f}/s while ingesting); {len(chunks):,} steps, step p50 "
          f"{pct(chunks, 50):.1f} ms p99 {pct(chunks, 99):.1f} ms (work and pause); pages freed {report.pages_freed:,}",
          flush=True)
    print(f"  alone: {alone_slow}\n  beside: {beside_slow}", flush=True)


async def simulate(per_day: int, objects: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "sim.db")
        store = open_store(f"sqlite:///{db}")
        await store.migrate()
        await store.start()
        start = datetime.now(UTC) - timedelta(days=30)
        try:
            print("day  events kept  database MB")
            for day in range(30):
                base = start + timedelta(days=day)
                step = timedelta(seconds=86_400 / per_day)
                for i in range(0, per_day, 256):
                    await asyncio.gather(*(store.submit(PushOp(f"obj-{(i + j) % objects}", base + step * (i + j)))
                                           for j in range(min(256, per_day - i))))
                await store.prune(base + timedelta(days=1) - timedelta(days=7))
                stats = await store.stats()
                print(f"{day + 1:>3}  {stats['events']:>11}  {stats['database_bytes'] / 1e6:>11.1f}", flush=True)
        finally:
            await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--pg-url", default=os.environ.get("RELAY_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/relay_bench"))
    ap.add_argument("--chunk", type=int, default=PRUNE_CHUNK)
    ap.add_argument("--simulate", action="store_true")
    ap.add_argument("--per-day", type=int, default=5000)
    ap.add_argument("--objects", type=int, default=2000)
    args = ap.parse_args()
    if args.simulate:
        asyncio.run(simulate(args.per_day, args.objects))
        return
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{os.path.join(tmp, 'bench.db')}" if args.db == "sqlite" else args.pg_url
        asyncio.run(latency(url, args.events, args.rate, args.seconds, args.chunk))


if __name__ == "__main__":
    main()
