"""Cost of one group commit by batch size: the fixed part per batch and the part per push.

    .venv/bin/python bench/commit_cost.py [--db sqlite|postgres] [--sizes 1,2,4,8,32,128] [--batches 200]
                                          [--rule]

Builds location PUT operations exactly as the receiver does (path resolution, then
``Ingestor.prepare``: scope, validation, key) and submits each batch's operations to the store at once (``submit``),
awaiting them before the next batch, so each batch is one group commit. The figures are
the writer thread's, from the store's public commit hook (``relay.store.observe_commits``): no HTTP,
no event-loop work besides the hand-offs. It prints, per batch size, the wall and CPU time per
batch and per push, then fits ``cpu(batch) = fixed + per_push x size``. (For where the time goes,
bench/profile_ingest.py samples a running relay with py-spy.)
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LOCATION_PATH, PUSH_TOKEN, TargetSpec, location_body, relay_config, slope  # noqa: E402

_LOOP = asyncio.new_event_loop()  # the store (its engines, its writer) lives on this one loop


def build_ops(config_path: Path, prefix: str, n: int) -> list[Any]:
    """``n`` location PUT operations, each prepared by the receiver's ``Ingestor.prepare``."""
    from relay.ingest import Ingestor, Push, Source
    from relay.ocpi.paths import resolve
    from relay.routing.loader import load_config

    cfg = load_config(config_path, {"BENCH_PUSH_TOKEN": PUSH_TOKEN, "BENCH_STREAM_TOKEN": "x",
                                    "BENCH_WEBHOOK_SECRET": "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB"})
    sub = cfg.subscription_for_token(PUSH_TOKEN)
    assert sub is not None
    ingestor = Ingestor(None, lambda: cfg)  # type: ignore[arg-type]  # prepare() of a location PUT reads no store

    async def prepare_all() -> list[Any]:
        ops = []
        for i in range(n):
            path = LOCATION_PATH + f"{prefix}{i}"
            push = Push(method="PUT", path=path, address=resolve("PUT", path), body=location_body(f"{prefix}{i}"),
                        source=Source.of(sub), request_id="r", received_at=datetime.now(UTC))
            ops.append(await ingestor.prepare(push))
        return ops

    return _LOOP.run_until_complete(prepare_all())


def measure(store: Any, timings: list[Any], ops: list[Any], size: int) -> tuple[float, float, int]:
    """(writer-thread wall s, writer-thread CPU s, batches) committing ``ops`` in batches of ``size``."""

    async def run() -> None:
        for i in range(0, len(ops) - size + 1, size):
            await asyncio.gather(*(store.submit(op) for op in ops[i:i + size]))

    timings.clear()
    _LOOP.run_until_complete(run())
    sizes = {t.ops for t in timings}
    if sizes != {size}:
        raise RuntimeError(f"batches of {sorted(sizes)} operations formed, not of {size}")
    return (sum(t.thread_ms for t in timings) / 1000, sum(t.thread_cpu_ms for t in timings) / 1000,
            len(timings))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--sizes", default="1,2,4,8,32,128")
    p.add_argument("--batches", type=int, default=200, help="batches per size (fewer for the large sizes)")
    p.add_argument("--rule", action="store_true", help="route every event to a webhook target (outbox rows)")
    args = p.parse_args()
    from common import Database

    from relay.store import async_url, observe_commits, open_store
    from relay.store.migrate import upgrade_to_head

    workdir = Path(tempfile.mkdtemp(prefix="relay-commit-"))
    db = Database.sqlite(workdir / "c.db") if args.db == "sqlite" else Database.postgres(args.pg_url)
    try:
        upgrade_to_head(async_url(db.url))
        cfg = relay_config(workdir / "c.yaml", [TargetSpec("partner", "http://127.0.0.1:9/hook")] if args.rule else [])
        timings: list[Any] = []
        observe_commits(timings.append)
        store = open_store(db.url, batch_max=max(512, *(int(x) for x in args.sizes.split(","))))
        _LOOP.run_until_complete(store.start())
        sizes = [int(x) for x in args.sizes.split(",")]
        print(f"{args.db}, rule {'on' if args.rule else 'off'}: one group commit of N location PUTs "
              "(lock, max(seq), read states, plan, executemany, COMMIT)")
        print(f"{'N':>5s} {'batches':>8s} {'wall ms/batch':>14s} {'CPU ms/batch':>13s} {'CPU us/push':>12s} "
              f"{'wall us/push':>13s}")
        xs, ys = [], []
        n = 0
        for size in sizes:
            count = max(3, min(args.batches, 4000 // size)) * size
            ops = build_ops(cfg, f"c{size}-", count + size)
            measure(store, timings, ops[:size], size)  # warm the statement caches
            wall, cpu, batches = measure(store, timings, ops[size:], size)
            n += batches
            xs.append(size)
            ys.append(cpu / batches * 1000)
            print(f"{size:5d} {batches:8d} {wall / batches * 1000:14.2f} {cpu / batches * 1000:13.2f} "
                  f"{cpu / batches / size * 1e6:12.1f} {wall / batches / size * 1e6:13.1f}")
        per_push = slope(xs, ys)
        fixed = sum(ys) / len(ys) - per_push * sum(xs) / len(xs)
        print(f"fit: CPU per batch = {fixed:.2f} ms fixed + {per_push * 1000:.1f} us per push")
        _LOOP.run_until_complete(store.close())
    finally:
        db.drop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
