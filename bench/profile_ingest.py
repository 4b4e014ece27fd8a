"""Where the relay's ingest time goes: py-spy profiles and group-commit timings under the benchmark's load.

    .venv/bin/python bench/profile_ingest.py [--db sqlite|postgres] [--loop default|asyncio|uvloop]
                                      [--duration 10] [--rule] [--rate N] [--out DIR]

Starts `relay serve --no-grpc --no-workers` through bench/relay_wrapper.py --instrument on a fresh
database (``--rule`` adds a webhook rule, so every push also writes an outbox row), drives it with
the ingest benchmark's load (64 connections, unique 1.5 KB location PUTs; ``--rate`` paces it), and
while the load runs records two py-spy profiles of ``--duration`` seconds each:

1. wall clock, every thread, idle included (``--idle --threads``): what each thread waits on;
2. GIL holders only (``--gil``): where the CPU time that serialises the process goes. The share of
   samples over the possible ones is how busy the GIL is (near 100 % = the process is GIL-bound).

Then it prints, per thread, the samples by category (deepest frame of a known package wins, so time
in the stdlib counts for its caller: HTTP stack, auth, validation, ingest planning, SQLAlchemy,
sqlite3 execute, BEGIN/COMMIT, asyncio loop, metrics, ...), the functions with the most inclusive
time, and the group-commit figures (operations per batch, commit time, time the writer thread waited
for the GIL). Raw profiles (py-spy's collapsed format) and the timings go to DIR
(default bench/results/profile-<UTC time>/); open them with speedscope or flamegraph.pl.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH_DIR,
    PYTHON,
    Children,
    TargetSpec,
    median,
    percentile,
    relay_config,
    relay_env,
)
from context import Bench, Plan, Progress, cpu_seconds, detect_runtime  # noqa: E402

RATE_HZ = 100
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# (category, file substring, function regex or None); the deepest frame matching any rule decides.
RULES: list[tuple[str, str, str | None]] = [
    ("COMMIT (WAL fsync)", "sqlalchemy/engine/default.py", r"do_commit"),
    ("sqlite3/asyncpg execute (C)", "sqlalchemy/engine/default.py", r"do_execute"),
    ("BEGIN IMMEDIATE / advisory lock", "relay/store/sqlite.py", r"_on_begin"),
    ("SQLAlchemy (Python)", "sqlalchemy/", None),
    ("asyncpg", "asyncpg/", None),
    ("aiosqlite", "aiosqlite/", None),
    ("metrics (prometheus_client)", "prometheus_client/", None),
    ("logging", "logging/", None),
    ("auth (token lookup)", "relay/http/auth.py", None),
    ("auth (token lookup)", "relay/routing/tokens.py", None),
    ("validation (relay/ocpi/validate.py)", "relay/ocpi/validate.py", None),
    ("delivery: transforms (relay/routing/transforms.py)", "relay/routing/transforms.py", None),
    ("delivery: render + sign (relay/deliver/senders.py)", "relay/deliver/senders.py", None),
    ("delivery: backoff/breaker (relay/deliver/backoff.py)", "relay/deliver/backoff.py", None),
    ("delivery: worker loop (relay/deliver/)", "relay/deliver/", None),
    ("outbox SQL (relay/store/outbox.py)", "relay/store/outbox.py", None),
    ("aiohttp client", "aiohttp/", None),
    ("yarl / multidict", "yarl/", None),
    ("path resolution (relay/ocpi/paths.py)", "relay/ocpi/paths.py", None),
    ("merge decision (relay/ocpi/merge.py)", "relay/ocpi/merge.py", None),
    ("routing rules (relay/routing)", "relay/routing/", None),
    ("group commit: batch building (relay/store)", "relay/store/", None),
    ("ingest use case (relay/ingest.py)", "relay/ingest.py", None),
    ("receiver endpoint/middleware (relay/http)", "relay/http/", None),
    ("Starlette", "starlette/", None),
    ("uvicorn + httptools", "uvicorn/", None),
    ("uvicorn + httptools", "httptools", None),
    ("executor hand-off (concurrent.futures)", "concurrent/futures/", None),
    ("asyncio event loop (Python)", "asyncio/", None),
    ("threading", "threading.py", None),
]
IDLE = [("select (selectors.py", "idle: waiting in select/epoll"),
        ("_worker (concurrent/futures/thread.py", "idle: executor thread waiting for work"),
        ("wait (threading.py", "idle: threading wait"),
        ("_connection_worker_thread (aiosqlite/core.py", "idle: aiosqlite thread waiting")]
INCLUSIVE = [
    ("Receiver.endpoint", "relay/http/endpoints.py", "endpoint"),
    ("  read_body", "relay/http/endpoints.py", "read_body"),
    ("  Ingestor.handle (validate, submit, wait)", "relay/ingest.py", "handle"),
    ("    validate_object", "relay/ocpi/validate.py", "validate_object"),
    ("    check_path_ids", "relay/ocpi/validate.py", "check_path_ids"),
    ("    Ingestor._parse (orjson + depth check)", "relay/ingest.py", "_parse"),
    ("    parse_datetime (last_updated)", "relay/ocpi/validate.py", "parse_datetime"),
    ("  envelope (answer)", "relay/http/envelope.py", "envelope"),
    ("  metrics (labels + observe)", "prometheus_client/", None),
    ("RequestIdMiddleware", "relay/http/middleware.py", "__call__"),
    ("uvicorn protocol (parse, send)", "uvicorn/protocols/http/", None),
    ("SqlStore._apply_batch (lock, read, plan, write)", "relay/store/sql.py", "_apply_batch"),
    ("  _read_states", "relay/store/sql.py", "_read_states"),
    ("  PushOperation.plan (merge, route, hash, dumps)", "relay/ingest.py", "plan"),
    ("  executemany (event, state, delivery)", "sqlalchemy/engine/default.py", "do_executemany"),
    ("COMMIT", "sqlalchemy/engine/default.py", "do_commit"),
    ("GroupCommitWriter._run (resolve futures)", "relay/store/writer.py", "_run"),
]


def parse_frame(text: str) -> tuple[str, str]:
    m = _FRAME.match(text.strip())
    return (m.group("func"), m.group("file")) if m else (text, "")


def categorise(frames: list[str]) -> str:
    leaf = frames[-1] if frames else ""
    for prefix, label in IDLE:
        if leaf.startswith(prefix) or f" {prefix}" in leaf:
            return label
    if leaf.startswith("Runner.run (asyncio/runners.py"):
        # uvloop's loop is C: the Python stack ends here while it polls (idle) or runs C callbacks
        return "event loop in C (uvloop: poll when idle, transport/callback C code)"
    for frame in reversed(frames):
        func, file = parse_frame(frame)
        for category, path, func_re in RULES:
            if path in file and (func_re is None or re.search(func_re, func)):
                return category
    return "other: " + (parse_frame(leaf)[1] or leaf)[:60]


def thread_role(text: str) -> str:
    """What a thread is, from its name and all its stacks (an idle writer looks like any executor)."""
    if "db-writer" in text:
        return "database writer thread"
    if "MainThread" in text:
        return "event loop (main) thread"
    if "relay/store/sqlite.py" in text or ("concurrent/futures/thread.py" in text and "sqlite" in text.lower()):
        return "database writer thread"
    if "aiosqlite/core.py" in text:
        return "aiosqlite reader threads"
    if "asyncio/runners.py" in text or "relay/cli.py" in text or "MainThread" in text:
        return "event loop (main) thread"
    if "concurrent/futures/thread.py" in text:
        return "executor threads"
    return "other threads"


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of every thread of a process, by native thread id."""
    import psutil

    try:
        return {t.id: t.user_time + t.system_time for t in psutil.Process(pid).threads()}
    except psutil.Error:
        return {}


def thread_names(*raw_files: Path) -> dict[int, str]:
    """Native thread id -> Python thread name, from py-spy's ``thread (tid): name`` root frames."""
    names: dict[int, str] = {}
    for path in raw_files:
        if path.exists():
            for m in re.finditer(r"^thread \((\d+)\): ([^;]*);", path.read_text(), re.M):
                names[int(m.group(1))] = m.group(2)
    return names


def load_raw(path: Path) -> list[tuple[list[str], int]]:
    """py-spy's collapsed stacks: ``frame;frame;... count`` (root first)."""
    out = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            out.append((stack.split(";"), int(count)))
    return out


def split_thread(frames: list[str]) -> tuple[str, list[str]]:
    if frames and frames[0].startswith(("thread ", "process ")):
        return frames[0], frames[1:]
    return "", frames


def summarise(stacks: list[tuple[list[str], int]], title: str, possible: float | None = None,
              requests: float | None = None) -> list[str]:
    """Samples per thread role and category; with ``requests`` (answered during the recording) also
    the cost per request: samples x sampling interval / requests."""
    seen_text: dict[str, list[str]] = defaultdict(list)
    for frames, _ in stacks:
        tid, body = split_thread(frames)
        seen_text[tid].append(";".join(body))
    roles = {tid: thread_role(tid + "\n" + "\n".join(texts)) for tid, texts in seen_text.items()}
    by_role: dict[str, Counter[str]] = defaultdict(Counter)
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    leaves: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for frames, count in stacks:
        tid, body = split_thread(frames)
        role = roles[tid]
        by_role[role][categorise(body)] += count
        totals[role] += count
        leaves[role][body[-1] if body else "?"] += count
        seen = set()
        for label, path, func in INCLUSIVE:
            for f in body:
                fn, file = parse_frame(f)
                if path in file and (func is None or fn.split(".")[-1] == func) and label not in seen:
                    seen.add(label)
                    inclusive[role][label] += count
                    break
    all_samples = sum(totals.values())
    lines = [f"== {title}: {all_samples:,} samples"]
    if possible:
        lines[-1] += f" = {100 * all_samples / possible:.0f} % of {possible:,.0f} possible (GIL busy share)"

    def cost(n: int) -> str:
        return f"{n / RATE_HZ / requests * 1e6:6.1f} us/req" if requests else ""

    for role, total in totals.most_common():
        lines.append(f"-- {role}: {total:,} samples ({100 * total / max(all_samples, 1):.1f} % of all) {cost(total)}")
        for cat, n in by_role[role].most_common(16):
            lines.append(f"   {100 * n / total:5.1f} %  {cost(n)}  {cat}")
        if inclusive[role]:
            lines.append("   inclusive (share of this thread's samples with the function on the stack):")
            for label, _, _ in INCLUSIVE:
                n = inclusive[role].get(label, 0)
                if n:
                    lines.append(f"     {100 * n / total:5.1f} %  {cost(n)}  {label}")
        lines.append("   top leaf frames:")
        for leaf, n in leaves[role].most_common(12):
            lines.append(f"     {100 * n / total:5.1f} %  {cost(n)}  {leaf[:110]}")
    return lines


def batch_summary(path: Path) -> list[str]:
    if not path.exists():
        return ["(no group-commit timings: the relay did not exit cleanly)"]
    batches = json.loads(path.read_text())["batches"]
    if not batches:
        return ["(no batches recorded)"]
    lines = [f"== group commit: {len(batches):,} batches, {sum(b['ops'] for b in batches):,} operations"]

    def row(key: str, label: str) -> None:
        vals = [b[key] for b in batches if key in b]
        if vals:
            lines.append(f"   {label:58s} mean {sum(vals) / len(vals):8.2f}  p50 {median(vals):8.2f}  "
                         f"p90 {percentile(vals, 90):8.2f}  max {max(vals):8.2f}")

    row("ops", "operations per batch")
    row("commit_ms", "commit round trip on the loop (ms)")
    row("hop_in_ms", "hand-off: loop submit -> writer thread starts (ms)")
    row("thread_ms", "writer thread: whole transaction, wall (ms)")
    row("thread_cpu_ms", "writer thread: whole transaction, CPU (ms)")
    row("apply_ms", "_apply_batch (lock, max(seq), read, plan, executemany) wall (ms)")
    row("apply_cpu_ms", "_apply_batch CPU (ms)")
    rest = [b["thread_ms"] - b["apply_ms"] for b in batches if "thread_ms" in b and "apply_ms" in b]
    if rest:
        lines.append(f"   {'BEGIN IMMEDIATE + COMMIT (fsync), wall (ms)':58s} mean {sum(rest) / len(rest):8.2f}  "
                     f"p50 {median(rest):8.2f}  p90 {percentile(rest, 90):8.2f}  max {max(rest):8.2f}")
    row("hop_out_ms", "hand-back: writer thread done -> loop resumes (ms)")
    waits = [b["apply_ms"] - b["apply_cpu_ms"] for b in batches if "apply_cpu_ms" in b]
    if waits:
        share = sum(waits) / max(sum(b["apply_ms"] for b in batches if "apply_cpu_ms" in b), 1e-9)
        lines.append(f"   _apply_batch wall not spent on its own CPU (GIL wait + page-cache I/O): {100 * share:.0f} %")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=["relay", "bare"], default="relay",
                   help="bare = the ingest ceiling (bench/bare_app.py, on uvloop unless --loop asyncio) under the same load")
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--loop", choices=["default", "asyncio", "uvloop"], default="default")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per py-spy recording")
    p.add_argument("--rule", action="store_true", help="add a webhook rule (an outbox row per push)")
    p.add_argument("--rate", type=float, help="pace the load at this many pushes/s (default: as fast as it goes)")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--out", help="directory for raw profiles (default bench/results/profile-<time>)")
    args = p.parse_args()
    spy = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = Path(args.out) if args.out else BENCH_DIR / "results" / f"profile-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="relay-profile-"))
    loadgen = "wrk" if shutil.which("wrk") else "python"
    plan = Plan(quick=True, runs=1, dbs=[args.db], sections=[], loadgen=loadgen, ingest_s=0, stream_s=0,
                deliver_s=0, delivery_rows=0, delivery_objects=0, preload=0, steady_s=0, memory_s=0,
                memory_warmup_s=0, pg_url=args.pg_url)
    bench = Bench(plan=plan, workdir=workdir, progress=Progress(4), children=Children(workdir))
    timings = out / "group-commit.json"
    report: list[str] = []
    try:
        if args.target == "bare":
            loop = "asyncio" if args.loop == "asyncio" else "uvloop"
            relay = bench.start("bare", "bare_app.py", "--loop", loop)
        else:
            db = bench.new_db(args.db, "profile")
            targets = [TargetSpec("partner", "http://127.0.0.1:9/hook")] if args.rule else []
            cfg = relay_config(workdir / "profile.yaml", targets, stream=True)
            relay = bench.start_relay("relay", relay_env(db.url, cfg), "--no-grpc", "--no-workers",
                                      loop=None if args.loop == "default" else args.loop, instrument=timings)
        port = relay.port("http_listening", 180)
        bench.progress.step("warm-up")
        bench.load(port, "pw-", 2.0)
        runtime = detect_runtime(relay.pid)
        seconds = 2 * args.duration + min(args.duration, 5.0) + 4
        bench.progress.step(f"load for {seconds:g} s with two py-spy recordings")
        result: dict[str, Any] = {}

        def drive() -> None:
            if args.rate:
                result.update(bench.paced(port, args.rate, seconds, "pp-").result(seconds + 120))
            else:
                result.update(bench.load(port, "pp-", seconds))

        driver = threading.Thread(target=drive, daemon=True)
        driver.start()
        time.sleep(1.0)
        # per-thread CPU over a window without the profiler attached (py-spy pauses the process to sample)
        quiet = min(args.duration, 5.0)
        bench.progress.step(f"per-thread CPU time ({quiet:g} s, no profiler)")
        threads0, t0 = thread_cpu(relay.pid), time.monotonic()
        time.sleep(quiet)
        threads1, quiet_s = thread_cpu(relay.pid), time.monotonic() - t0
        cpu0, t0 = cpu_seconds(relay.pid), time.monotonic()
        for name, extra in (("wall", ["--idle", "--threads"]), ("gil", ["--gil", "--threads"])):
            bench.progress.step(f"py-spy record ({name}, {args.duration:g} s)")
            rec = bench.children.start(f"py-spy-{name}", [spy, "record", "-p", str(relay.pid), "-d",
                                                          f"{args.duration:g}", "-r", str(RATE_HZ), "-f", "raw",
                                                          "-o", str(out / f"{name}.txt"), *extra])
            rec.proc.wait(args.duration + 60)
        cpu_share = (cpu_seconds(relay.pid) - cpu0) / (time.monotonic() - t0)
        driver.join(seconds + 120)
        load = result
        bench.stop(relay)
        what = "bare app (ceiling)"
        if args.target == "relay":
            what = f"relay on {args.db}, rule {'on' if args.rule else 'off'}"
        report.append(f"{what}, loop {runtime['loop']}, http {runtime['http']}; load {load.get('generator', loadgen)}: "
                      f"{load['ok']:,} answers at {load['rate']:,.0f}/s, p50 {load['p50_ms']:.1f} ms, "
                      f"p99 {load['p99_ms']:.1f} ms; server process CPU {100 * cpu_share:.0f} % of one core")
        requests = load["rate"] * args.duration  # answered during each recording (about)
        names = thread_names(out / "wall.txt", out / "gil.txt")
        per_req = load["rate"] * quiet_s
        report.append(f"== CPU time per thread over {quiet_s:.1f} s without the profiler (/proc, per answered request)")
        used = {tid: threads1[tid] - threads0.get(tid, 0.0) for tid in threads1}
        for tid, sec in sorted(used.items(), key=lambda kv: -kv[1]):
            if sec > 0.005:
                report.append(f"   {sec / quiet_s * 100:5.1f} % of a core  {sec / per_req * 1e6:7.1f} us/req  "
                              f"{names.get(tid, f'thread {tid}')}")
        total = sum(used.values())
        report.append(f"   {total / quiet_s * 100:5.1f} % of a core  {total / per_req * 1e6:7.1f} us/req  all threads")
        report += summarise(load_raw(out / "wall.txt"), "wall clock, all threads (--idle)", requests=requests)
        report += summarise(load_raw(out / "gil.txt"), "GIL holders (--gil)", possible=args.duration * RATE_HZ,
                            requests=requests)
        if args.target == "relay":
            report += batch_summary(timings)
    finally:
        bench.children.stop_all()
        bench.drop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    bench.progress.finish()
    text = "\n".join(report)
    (out / "summary.txt").write_text(text + "\n")
    print(text)
    print(f"\nraw profiles and timings: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
