"""Where the relay's delivery time goes: a preloaded outbox drained to bench/sink.py under py-spy.

    .venv/bin/python bench/profile_delivery.py [--db sqlite|postgres] [--rows 60000] [--duration 6]

Preloads ``--rows`` location events (ten versions per object) with one webhook target (concurrency
16) through `relay serve --no-grpc --no-workers`, then starts `relay serve --no-http --no-grpc` (the
delivery workers alone) and, while it drains the outbox, measures CPU time per thread without the
profiler, then records py-spy profiles (wall clock with --idle, and GIL holders) and prints them by
category per delivery, as bench/profile_ingest.py does for pushes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH_DIR, PYTHON, Children, TargetSpec, relay_config, relay_env  # noqa: E402
from context import Bench, Plan, Progress  # noqa: E402
from profile_ingest import RATE_HZ, load_raw, summarise, thread_cpu, thread_names  # noqa: E402


def sink_stats(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stats", timeout=10) as resp:
        return dict(json.loads(resp.read()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    # enough for both recordings at ~3,500 deliveries/s (20,000 ran out before the GIL one)
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--duration", type=float, default=6.0, help="seconds per py-spy recording")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = BENCH_DIR / "results" / f"profile-delivery-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="relay-profile-"))
    plan = Plan(quick=True, runs=1, dbs=[args.db], sections=[], loadgen="python", ingest_s=0, stream_s=0,
                deliver_s=0, delivery_rows=0, delivery_objects=0, preload=0, steady_s=0, memory_s=0,
                memory_warmup_s=0, pg_url=args.pg_url)
    bench = Bench(plan=plan, workdir=workdir, progress=Progress(5), children=Children(workdir))
    report: list[str] = []
    try:
        sink = bench.start("sink", "sink.py")
        port = sink.port("sink_listening", 60)
        db = bench.new_db(args.db, "deliver")
        cfg = relay_config(workdir / "d.yaml", [TargetSpec("healthy", f"http://127.0.0.1:{port}/hook", 16)])
        bench.progress.step(f"preloading {args.rows} events")
        relay = bench.start_relay("preload", relay_env(db.url, cfg), "--no-grpc", "--no-workers")
        bench.preload(relay.port("http_listening", 180), args.rows, "pd-", objects=args.rows // 10, connections=16)
        bench.stop(relay)
        rows = db.scalar("SELECT count(*) FROM delivery")
        bench.progress.step("draining")
        relay = bench.start_relay("deliver", relay_env(db.url, cfg), "--no-http", "--no-grpc")
        while sink_stats(port)["hook"] < 200:
            time.sleep(0.05)
        bench.progress.step("per-thread CPU (no profiler)")
        n0, threads0, t0 = sink_stats(port)["hook"], thread_cpu(relay.pid), time.monotonic()
        time.sleep(min(args.duration, 4.0))
        n1, threads1, quiet_s = sink_stats(port)["hook"], thread_cpu(relay.pid), time.monotonic() - t0
        rate = (n1 - n0) / quiet_s
        for name, extra in (("wall", ["--idle", "--threads"]), ("gil", ["--gil", "--threads"])):
            bench.progress.step(f"py-spy record ({name})")
            before = sink_stats(port)["hook"]
            rec = bench.children.start(f"py-spy-{name}", [spy, "record", "-p", str(relay.pid), "-d",
                                                          f"{args.duration:g}", "-r", str(RATE_HZ), "-f", "raw",
                                                          "-o", str(out / f"{name}.txt"), *extra])
            rec.proc.wait(args.duration + 60)
            delivered = sink_stats(port)["hook"] - before
            report.append(f"(during the {name} recording: {delivered:,} deliveries)")
        final = sink_stats(port)
        bench.stop(relay)
        names = thread_names(out / "wall.txt", out / "gil.txt")
        report.insert(0, f"relay delivery workers on {args.db}: {rows:,} outbox rows, target concurrency 16; "
                         f"{rate:,.0f} deliveries/s without the profiler; sink order violations {final['violations']}")
        report.append(f"== CPU time per thread over {quiet_s:.1f} s without the profiler (per delivery)")
        used = {tid: threads1[tid] - threads0.get(tid, 0.0) for tid in threads1}
        for tid, sec in sorted(used.items(), key=lambda kv: -kv[1]):
            if sec > 0.005:
                report.append(f"   {sec / quiet_s * 100:5.1f} % of a core  {sec / (n1 - n0) * 1e6:7.1f} us/delivery  "
                              f"{names.get(tid, f'thread {tid}')}")
        per = rate * args.duration
        report += summarise(load_raw(out / "wall.txt"), "wall clock, all threads (--idle)", requests=per)
        report += summarise(load_raw(out / "gil.txt"), "GIL holders (--gil)", possible=args.duration * RATE_HZ,
                            requests=per)
    finally:
        bench.children.stop_all()
        bench.drop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    bench.progress.finish()
    text = "\n".join(report).replace("us/req", "us/dlv")
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    print(f"\nraw profiles: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
