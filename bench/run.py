"""ocpi-relay benchmark (issue 8): ingest, stream and delivery, each against a ceiling measured in the
same run, on this machine.

    .venv/bin/python bench/run.py [--quick] [--db sqlite,postgres] [--duration S] [--out FILE]
                                  [--sections ingest,stream,delivery,steady,memory,size] [--loadgen auto|wrk|python]

Run from a clone after ``pip install -e '.[test]'`` (or ``pip install . psutil``); PostgreSQL is
used when ``--db`` names it (``--pg-url``, default ``$RELAY_TEST_PG_URL`` or
``postgresql://postgres@127.0.0.1:5432/test``; a database ``relay_bench_<hex>`` is created for each
need and dropped at the end). A full run takes about 8 minutes on 2 cores, ``--quick`` about 2.

What it measures (medians of 3 runs, 1 with ``--quick``; ceiling and relay runs interleaved):

- ingest: PUT of a 1.5 KB location with a unique id per request on 64 keep-alive connections (wrk
  with bench/put_location.lua, or bench/loadgen.py when wrk is missing). Ceiling: bench/bare_app.py,
  a bare Starlette handler under uvicorn served as relay.runtime serves the receiver, on the asyncio
  loop and on uvloop. Relay: `relay serve --no-grpc --no-workers` on a fresh SQLite file and on a
  fresh PostgreSQL database, plain and "full stack" (a webhook rule, so each push also writes an
  outbox row). The event loop each server really runs on is read from outside (py-spy dump), each
  ratio uses the bare app on that loop, and the SQLite relay runs once more on the other loop through
  bench/relay_wrapper.py --loop. Each relay run checks that the events stored equal the 1000 answers
  counted by the load generator; CPU/req is the server process's CPU time per answer.
- stream: Subscribe from earliest over the stored events, 1 and 8 subscribers (bench/subscriber.py),
  against bench/raw_grpc.py streaming prebuilt messages of the same shape.
- delivery: drain of a preloaded outbox by `relay serve --no-http --no-grpc` to bench/sink.py
  (per-object order checked there), alone and beside a target answering 503; ceiling: raw aiohttp
  POSTs at concurrency 16 (bench/poster.py).
- steady: paced pushes at half the target ingest rate (capped at half the measured one) with a
  subscriber and a webhook target: push->stream and push->delivery latency, and the subscriber's lag
  sampled every second.
- memory: RSS of `relay serve` at the target rate (capped at 90 % of the measured one) for 60 s
  (20 s with --quick) with a subscriber reading one event per 10 ms.
- soak (only when named in ``--sections``): paced pushes at 80 % of the maximum ingest rate (the
  ingest section's, else a 10 s closed-loop run with the webhook target and subscribers attached) for
  ``--soak-duration`` seconds (600) with a webhook target and two subscribers: the SQLite -wal file's size and the RSS over time, ingest p99, and the
  writers' pauses of the truncating checkpoints (relay.store.sqlite).

It prints a progress line on stderr, then the table and the verdict of every target on stdout, and
writes every run's raw numbers with machine facts to bench/results/<UTC time>-<commit>.json.

Diagnostics (not part of the table): bench/profile_ingest.py and bench/profile_delivery.py (py-spy
profiles by category plus per-thread CPU under load), bench/commit_cost.py (group-commit cost by
batch size) and bench/asgi_cost.py (the receiver app's CPU per request, piece by piece).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import report  # noqa: E402
import sections  # noqa: E402
from common import BENCH_DIR, Children, machine_info, pg_reachable  # noqa: E402
from context import Bench, Plan, Progress  # noqa: E402

SECTIONS = ["ingest", "stream", "delivery", "steady", "memory", "size"]
OPT_IN = ["soak"]  # long runs, only when named in --sections
FALLBACK_RATE = 500.0  # pushes/s of the paced runs when the ingest section did not run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 run per figure, shorter runs (about 3 minutes)")
    p.add_argument("--db", default="sqlite,postgres", help="databases for the relay, first one also for stream, "
                   "delivery, steady and memory (default: sqlite,postgres)")
    p.add_argument("--duration", type=float, help="seconds per ingest/stream/delivery-ceiling run "
                   "(default 5/4/4, --quick 3)")
    p.add_argument("--runs", type=int, help="runs per figure (default 3, --quick 1)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help=f"subset of {','.join(SECTIONS + OPT_IN)} (default: all but {','.join(OPT_IN)})")
    p.add_argument("--soak-duration", type=float, default=600.0,
                   help="seconds of the soak section's paced run (default 600)")
    p.add_argument("--loadgen", choices=["auto", "wrk", "python"], default="auto",
                   help="ingest load generator; auto = wrk when installed")
    p.add_argument("--pg-url", default=os.environ.get("RELAY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
                   help="PostgreSQL admin URL (bench databases are created and dropped through it)")
    p.add_argument("--out", help="result JSON (default bench/results/<UTC time>-<commit>.json)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (databases, logs) for inspection")
    p.add_argument("--paced-rate", type=float, help="pushes/s of the steady and memory runs (default: derived "
                   "from this run's ingest figures, 500 without them); fixes the load to compare commits")
    return p.parse_args(argv)


def make_plan(args: argparse.Namespace, progress_note: Any) -> Plan:
    dbs = [d.strip() for d in args.db.split(",") if d.strip()]
    for d in dbs:
        if d not in ("sqlite", "postgres"):
            raise SystemExit(f"--db: unknown database {d!r} (sqlite, postgres)")
    if "postgres" in dbs:
        why = pg_reachable(args.pg_url)
        if why is not None:
            progress_note(f"PostgreSQL at {args.pg_url} is not usable ({why}); measuring without it")
            dbs.remove("postgres")
    if not dbs:
        raise SystemExit("no database left to measure")
    sections_ = [s.strip() for s in args.sections.split(",") if s.strip()]
    for s in sections_:
        if s not in SECTIONS + OPT_IN:
            raise SystemExit(f"--sections: unknown section {s!r} ({', '.join(SECTIONS + OPT_IN)})")
    loadgen = args.loadgen
    if loadgen == "auto":
        loadgen = "wrk" if shutil.which("wrk") else "python"
    elif loadgen == "wrk" and not shutil.which("wrk"):
        raise SystemExit("--loadgen wrk: wrk is not installed")
    q = args.quick
    d = args.duration
    return Plan(
        quick=q, runs=args.runs or (1 if q else 3), dbs=dbs, sections=sections_, loadgen=loadgen,
        ingest_s=d or (3.0 if q else 5.0), stream_s=d or (3.0 if q else 4.0), deliver_s=d or (3.0 if q else 4.0),
        delivery_rows=4000 if q else 12_000, delivery_objects=400 if q else 1200, preload=15_000 if q else 50_000,
        steady_s=10.0 if q else 20.0, memory_s=20.0 if q else 60.0, memory_warmup_s=5.0 if q else 10.0,
        pg_url=args.pg_url,
    )


def count_steps(plan: Plan) -> int:
    n_ingest = 2 + 2 * len(plan.dbs) + (1 if "sqlite" in plan.dbs else 0)
    steps = {
        "ingest": n_ingest * (plan.runs + 1),
        "stream": 1 + plan.runs * (4 if plan.quick else 6),
        "delivery": 2 + plan.runs * 3,
        "steady": 1,
        "memory": 1,
        "size": 1,
        "soak": 2,
    }
    return sum(steps[s] for s in plan.sections)


def paced_rates(results: dict[str, Any], plan: Plan, fixed: float | None = None) -> tuple[float, float, str]:
    """(steady rate, memory rate, how they were chosen) from the ingest figures of this run."""
    if fixed:
        return fixed, fixed, f"fixed {fixed:g}/s (--paced-rate)"
    ing = results.get("ingest")
    measured = sections.durable_rate(ing, plan.dbs[0])
    ceiling = sections.ceiling_rate(ing, plan.dbs[0])
    if not measured or not ceiling or math.isnan(measured) or math.isnan(ceiling):
        return FALLBACK_RATE, FALLBACK_RATE, f"fixed {FALLBACK_RATE:g}/s (ingest not measured in this run)"
    target = report.TARGETS["sqlite_ratio" if plan.dbs[0] == "sqlite" else "postgres_ratio"] * ceiling
    steady = 0.5 * min(target, measured)
    mem = min(target, 0.9 * measured)
    why = (f"target ingest rate {target:,.0f}/s ({plan.dbs[0]} target x ceiling), measured {measured:,.0f}/s: "
           f"steady = half of the smaller, memory = the target capped at 90 % of the measured")
    return steady, mem, why


def soak_summary(r: dict[str, Any]) -> str:
    """The soak section's lines: WAL and RSS over time, ingest p99, the checkpoints' pauses."""
    load = r["load"]
    out = [f"\nsoak ({r['db']}): {r['rate_target']:.0f} pushes/s ({r['rate_basis']}) for {r['seconds']:g} s, "
           f"webhook target, 2 subscribers; {load['ok']} answered 1000 of {load['sent']}, {r['stored']} stored",
           f"  ingest p50 {load['p50_ms']:.1f} ms, p99 {load['p99_ms']:.1f} ms",
           f"  WAL: largest {r['wal_max_mib']:.1f} MiB (limit {r['wal_limit_mib']:.0f} MiB); "
           f"{r['truncations']} truncating checkpoints, writers paused {r['pause_ms_p50']} ms median, "
           f"{r['pause_ms_max']} ms longest; {r['truncate_busy']} found a reader in the way",
           f"  RSS: {r['rss_first_mib']:.1f} MiB first, {r['rss_max_mib']:.1f} max, {r['rss_last_mib']:.1f} last, "
           f"slope {r['rss_slope_mib_per_min']:+.2f} MiB/min",
           "  time s   RSS MiB   WAL MiB"]
    samples = r["samples"]
    step = max(1, len(samples) // 20)
    for t, rss, wal in samples[::step]:
        out.append(f"  {t:6.0f} {rss / 2**20:9.1f} {wal / 2**20:9.1f}")
    return "\n".join(out)


def default_out(started: str, commit: str) -> Path:
    return BENCH_DIR / "results" / f"{started.replace(':', '').replace('-', '')}-{commit}.json"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    early = Progress(1)
    plan = make_plan(args, early.note)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    machine = machine_info()
    out = Path(args.out) if args.out else default_out(started, machine["git_commit"])
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    progress = Progress(count_steps(plan))
    bench = Bench(plan=plan, workdir=workdir, progress=progress, children=Children(workdir))
    results: dict[str, Any] = {"started": started, "machine": machine, "plan": vars(plan), "errors": {}}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Ctrl-C must reach us even when started where SIGINT is ignored (a background job of a script)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for name in plan.sections:
            t0 = time.monotonic()
            try:
                if name == "ingest":
                    results["ingest"] = sections.ingest(bench)
                elif name == "stream":
                    results["stream"] = sections.stream(bench, results.get("ingest"))
                elif name == "delivery":
                    results["delivery"] = sections.delivery(bench)
                elif name == "size":
                    results["size"] = sections.size(bench)
                elif name == "soak":
                    results["soak"] = sections.soak(bench, sections.durable_rate(results.get("ingest"), plan.dbs[0]),
                                                    args.soak_duration)
                else:
                    steady_rate, mem_rate, why = paced_rates(results, plan, args.paced_rate)
                    results["paced_rates"] = why
                    if name == "steady":
                        results["steady"] = sections.steady(bench, steady_rate)
                    else:
                        results["memory"] = sections.memory(bench, mem_rate)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:  # noqa: BLE001 - one broken section must not lose the others
                results["errors"][name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
                progress.note(f"{name}: failed: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
                bench.children.stop_all()
            results.setdefault("timings", {})[name] = round(time.monotonic() - t0, 1)
    except KeyboardInterrupt:
        progress.note("interrupted: stopping every process and dropping the bench databases")
        results["interrupted"] = True
    finally:
        bench.children.stop_all()
        bench.drop_all()
        if args.keep:
            progress.note(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    progress.finish()
    machine["loadavg_end"] = list(os.getloadavg())
    fig = report.figures(results)
    lines = report.targets(fig)
    results["figures"], results["targets"] = fig, lines
    print(report.table(results, fig, lines))
    if "soak" in results:
        print(soak_summary(results["soak"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"\nresults: {out}")
    return 130 if results.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
