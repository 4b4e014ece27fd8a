"""Retention benchmark: ingest latency beside a prune, and a time-compressed month of retention.

    .venv/bin/python bench/prune.py [--events N] [--rate R] [--seconds S] [--db sqlite|postgres]
    .venv/bin/python bench/prune.py --simulate [--per-day K]

Part 1 fills the log with N old events (1.5 KB bodies, written with raw SQL for speed; 10 events per
object, so 9 of 10 are prunable), then submits pushes through the store's group commit at R per second
for S seconds, once alone and once while a prune removes the old events in the same process (as the
`RELAY_RETENTION` part does), and prints p50/p99 of the group commit's answer time for both.

Part 2 (``--simulate``) stamps K pushes a day over 30 simulated days and prunes with a 7-day window after
each day, printing the database size (SQLite pages in use, after the prune gave pages back): it should
level off after day 7.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relay.store import SqlStore, open_store  # noqa: E402
from relay.store.base import NewEvent, Plan, StateKey, StateWrite, StoredState  # noqa: E402

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


async def fill(store: SqlStore, n: int, at: datetime) -> None:
    """N old events, 10 per object, written in big transactions below the group commit (bench only)."""
    t = store._bind_time(at)
    rows = []
    async with store.write_engine.begin() as conn:
        first = int((await conn.exec_driver_sql("SELECT coalesce(max(seq), 0) FROM event")).scalar_one())
    for i in range(n):
        seq = first + i + 1
        rows.append({"seq": seq, "module": "locations", "action": "put", "country_code": "NL", "party_id": "GFX",
                     "object_id": f"old-{i % (n // 10 or 1)}", "last_updated": t, "received_at": t,
                     "origin": "push", "status": "applied", "body": BODY, "body_hash": "h", "object": BODY})
        if len(rows) == 20_000 or i == n - 1:
            from sqlalchemy import text

            async with store.write_engine.begin() as conn:
                await conn.execute(text(
                    "INSERT INTO event (seq, module, action, country_code, party_id, object_id, last_updated, "
                    "received_at, origin, status, body, body_hash, object) VALUES (:seq, :module, :action, "
                    ":country_code, :party_id, :object_id, :last_updated, :received_at, :origin, :status, :body, "
                    ":body_hash, :object)"), rows)
            rows = []
            sys.stderr.write(f"\rfilled {i + 1}/{n}")
    sys.stderr.write("\n")
    store._note_seq(first + n)


async def paced(store: SqlStore, rate: float, seconds: float, tag: str) -> list[float]:
    lat: list[float] = []
    now = datetime.now(UTC)

    async def one(i: int) -> None:
        t0 = time.perf_counter()
        await store.submit(PushOp(f"{tag}-{i}", now))
        lat.append((time.perf_counter() - t0) * 1000)

    tasks = []
    start = time.perf_counter()
    for i in range(int(rate * seconds)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    return lat


def pct(values: list[float], p: float) -> float:
    return statistics.quantiles(values, n=100)[int(p) - 1] if len(values) > 1 else values[0]


async def latency(url: str, events: int, rate: float, seconds: float, chunk: int) -> None:
    store = open_store(url)
    await store.migrate()
    await store.start()
    try:
        await fill(store, events, datetime.now(UTC) - timedelta(days=40))
        alone = await paced(store, rate, seconds, "alone")
        t0 = time.perf_counter()
        prune = asyncio.create_task(store.prune(datetime.now(UTC) - timedelta(days=30), chunk=chunk))
        beside = await paced(store, rate, seconds, "beside")
        report = await prune
        took = time.perf_counter() - t0
    finally:
        await store.close()
    print(f"{store.dialect}: {events} old events; ingest {rate:g}/s for {seconds:g} s; chunk {chunk}")
    print(f"  alone:        p50 {pct(alone, 50):.1f} ms  p99 {pct(alone, 99):.1f} ms")
    print(f"  beside prune: p50 {pct(beside, 50):.1f} ms  p99 {pct(beside, 99):.1f} ms  "
          f"(p99 ratio {pct(beside, 99) / pct(alone, 99):.2f}x)")
    print(f"  prune removed {report.events} events in {took:.1f} s ({report.events / took:,.0f}/s while ingesting), "
          f"pages freed {report.pages_freed}")


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
                size = await store._read(lambda c: int(c.exec_driver_sql("PRAGMA page_count").scalar_one())
                                         * int(c.exec_driver_sql("PRAGMA page_size").scalar_one()))
                print(f"{day + 1:>3}  {stats['events']:>11}  {size / 1e6:>11.1f}")
        finally:
            await store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rate", type=float, default=500.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--db", choices=("sqlite", "postgres"), default="sqlite")
    ap.add_argument("--pg-url", default=os.environ.get("RELAY_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/relay_bench"))
    ap.add_argument("--chunk", type=int, default=2000)
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
