"""The measurements: ingest, stream, delivery, steady (lag and latency), memory and size (bytes per event).

Each section starts its own servers, then interleaves ceiling and relay runs round by round, so a
burst of load from elsewhere on the machine tends to hit both sides of a ratio. Sections return
plain data (lists of runs); report.py takes medians, ratios and verdicts.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import psutil
from common import (
    BENCH_DIR,
    Child,
    Database,
    TargetSpec,
    median,
    percentile,
    relay_config,
    relay_env,
    slope,
)
from context import Bench, cpu_seconds, detect_runtime

BIG = 10**9


@dataclass
class Server:
    key: str
    label: str
    kind: str  # ceiling | relay
    child: Child
    db: Database | None = None
    port: int = 0
    runtime: dict[str, str] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)


def _sink_call(port: int, method: str, path: str) -> Any:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


# -- ingest ------------------------------------------------------------------------------------------


def ingest(b: Bench) -> dict[str, Any]:
    plan, wd = b.plan, b.workdir
    servers = [
        Server("bare-asyncio", "ceiling: bare Starlette/uvicorn, asyncio loop", "ceiling",
               b.start("bare-asyncio", "bare_app.py", "--loop", "asyncio")),
        Server("bare-uvloop", "ceiling: bare Starlette/uvicorn, uvloop", "ceiling",
               b.start("bare-uvloop", "bare_app.py", "--loop", "uvloop")),
    ]
    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    for kind in plan.dbs:
        for full in (False, True):
            tag = f"{kind}-full" if full else kind
            db = b.new_db(kind, f"ingest-{tag}")
            targets = [TargetSpec("partner", "http://127.0.0.1:9/hook")] if full else []
            cfg = relay_config(wd / f"ingest-{tag}.yaml", targets, stream=True)
            label = f"relay {names[kind]}" + (" + webhook rule (outbox row per push)" if full else "")
            servers.append(Server(f"relay-{tag}", label, "relay",
                                  b.start_relay(f"relay-{tag}", relay_env(db.url, cfg), "--no-grpc", "--no-workers"), db))
    for s in servers:
        b.progress.show(f"ingest: starting {s.label}")
        s.port = s.child.port("http_listening", 180)
    for s in servers:
        s.runtime = detect_runtime(s.child.pid)
    if "sqlite" in plan.dbs:
        # the relay once more on the loop it does not use by default (detected above, not assumed)
        default = next(s.runtime["loop"] for s in servers if s.key == "relay-sqlite")
        alt = "asyncio" if default == "uvloop" else "uvloop"
        db = b.new_db("sqlite", "ingest-sqlite-alt")
        cfg = relay_config(wd / "ingest-sqlite-alt.yaml", stream=True)
        s = Server("relay-sqlite-alt", f"relay SQLite on {alt} (relay_wrapper.py --loop)", "relay",
                   b.start_relay("relay-sqlite-alt", relay_env(db.url, cfg), "--no-grpc", "--no-workers", loop=alt), db)
        s.port = s.child.port("http_listening", 180)
        s.runtime = detect_runtime(s.child.pid)
        servers.append(s)
    warm = 1.0 if plan.quick else 2.0
    for i, s in enumerate(servers):
        b.progress.step(f"ingest: warm-up {s.label}")
        b.load(s.port, f"w{i}-", warm)
        # again once traffic went through: uvicorn imports its HTTP parser after logging the port
        s.runtime = detect_runtime(s.child.pid)
    for r in range(plan.runs):
        for i, s in enumerate(servers):
            b.progress.step(f"ingest run {r + 1}/{plan.runs}: {s.label} ({plan.ingest_s:g} s)")
            before = s.db.events() if s.db else 0
            rows_before = s.db.scalar("SELECT count(*) FROM delivery") if s.db else 0
            cpu = cpu_seconds(s.child.pid)
            res = b.load(s.port, f"r{r}s{i}-", plan.ingest_s)
            res["server_cpu_us"] = (cpu_seconds(s.child.pid) - cpu) / max(res["ok"], 1) * 1e6
            if s.db is not None:
                res["stored"] = s.db.events() - before
                res["outbox_rows"] = s.db.scalar("SELECT count(*) FROM delivery") - rows_before
                res["check"] = res["stored"] == res["ok"] and res["sent"] == res["answered"]
            s.runs.append(res)
    for s in servers:
        b.stop(s.child)
    return {
        "generator": b.plan.loadgen,
        "servers": [{"key": s.key, "label": s.label, "kind": s.kind, "runtime": s.runtime, "runs": s.runs,
                     "db": s.db.kind if s.db else None, "db_url": s.db.url if s.db else None} for s in servers],
    }


def durable_rate(ingest_result: dict[str, Any] | None, kind: str) -> float | None:
    if not ingest_result:
        return None
    for s in ingest_result["servers"]:
        if s["key"] == f"relay-{kind}":
            return median([r["rate"] for r in s["runs"]])
    return None


def ceiling_rate(ingest_result: dict[str, Any] | None, kind: str) -> float | None:
    """Median rate of the bare app on the event loop the relay (on ``kind``) was seen running on."""
    if not ingest_result:
        return None
    servers = {s["key"]: s for s in ingest_result["servers"]}
    relay = servers.get(f"relay-{kind}")
    loop = relay["runtime"].get("loop") if relay else "asyncio"
    bare = servers.get("bare-uvloop" if loop == "uvloop" else "bare-asyncio")
    return median([r["rate"] for r in bare["runs"]]) if bare else None


# -- stream ------------------------------------------------------------------------------------------


def stream(b: Bench, ingest_result: dict[str, Any] | None) -> dict[str, Any]:
    plan, wd = b.plan, b.workdir
    kind = plan.dbs[0]
    raws = [("raw-event", "ceiling: raw grpc.aio, relay-shaped event (body+object)", ["--object"])]
    if not plan.quick:
        raws.append(("raw-1.5k", "ceiling: raw grpc.aio, 1.5 KB message (issue 8)", []))
    raw_children = {key: (label, b.start(key, "raw_grpc.py", *args)) for key, label, args in raws}
    db: Database | None = None
    if ingest_result:
        for s in ingest_result["servers"]:
            if s["key"] == f"relay-{kind}":
                db = next((d for d in b.databases if d.url == s["db_url"]), None)
    if db is None:
        db = b.new_db(kind, "stream")
    cfg = relay_config(wd / "stream.yaml", stream=True)
    relay = b.start_relay("relay-stream", relay_env(db.url, cfg), "--no-workers")
    http_port, grpc_port = relay.port("http_listening", 180), relay.port("grpc_listening", 60)
    raw_ports = {key: child.port("grpc_listening", 60) for key, (_, child) in raw_children.items()}
    have = db.scalar("SELECT count(*) FROM event WHERE status = 'applied'")
    preload = None
    if have < plan.preload:
        b.progress.step(f"stream: preloading {plan.preload - have} events through HTTP")
        preload = b.preload(http_port, plan.preload - have, "sp-")
    events = db.scalar("SELECT count(*) FROM event WHERE status = 'applied'")
    runs: dict[str, list[dict[str, Any]]] = {}
    cases = [("raw-event", 1), ("raw-event", 8), ("relay", 1), ("relay", 8)]
    if "raw-1.5k" in raw_ports:
        cases += [("raw-1.5k", 1), ("raw-1.5k", 8)]
    for r in range(plan.runs):
        for key, streams in cases:
            label = "relay Subscribe(earliest)" if key == "relay" else raw_children[key][0]
            b.progress.step(f"stream run {r + 1}/{plan.runs}: {label}, {streams} subscriber(s)")
            port = grpc_port if key == "relay" else raw_ports[key]
            server_pid = relay.pid if key == "relay" else raw_children[key][1].pid
            cpu = cpu_seconds(server_pid)
            child = b.start("subscriber", "subscriber.py", "rate", "--target", f"127.0.0.1:{port}",
                            "--streams", str(streams), "--duration", f"{plan.stream_s:g}",
                            "--max-messages", str(events if key == "relay" else BIG))
            try:
                res = child.result(plan.stream_s + 90)
            finally:
                b.stop(child)
            res["server_cpu_us"] = (cpu_seconds(server_pid) - cpu) / max(sum(res["counts"]), 1) * 1e6
            runs.setdefault(f"{key}/{streams}", []).append(res)
    runtime = detect_runtime(relay.pid)
    b.stop(relay)
    for _, child in raw_children.values():
        b.stop(child)
    return {"events": events, "preload": preload, "db": kind, "runs": runs, "relay_runtime": runtime,
            "labels": {key: label for key, (label, _) in raw_children.items()}}


# -- delivery ----------------------------------------------------------------------------------------


def delivery(b: Bench) -> dict[str, Any]:
    plan, wd = b.plan, b.workdir
    kind = plan.dbs[0]
    sink = b.start("sink", "sink.py")
    port = sink.port("sink_listening", 60)
    hook, fail = f"http://127.0.0.1:{port}/hook", f"http://127.0.0.1:{port}/fail"
    setups = {
        "healthy": [TargetSpec("healthy", hook, 16)],
        "with-failing": [TargetSpec("healthy", hook, 16), TargetSpec("failing", fail, 16)],
    }
    templates: dict[str, tuple[Database, Any, dict[str, int]]] = {}
    for key, targets in setups.items():
        b.progress.step(f"delivery: preloading {plan.delivery_rows} events into an outbox ({key})")
        db = b.new_db(kind, f"deliver-{key}")
        cfg = relay_config(wd / f"deliver-{key}.yaml", targets)
        relay = b.start_relay(f"relay-preload-{key}", relay_env(db.url, cfg), "--no-grpc", "--no-workers")
        b.preload(relay.port("http_listening", 180), plan.delivery_rows, f"d{key[0]}-",
                  objects=plan.delivery_objects, connections=16)
        b.stop(relay)
        rows = {t.name: db.scalar(f"SELECT count(*) FROM delivery WHERE target = '{t.name}'") for t in targets}
        templates[key] = (db, cfg, rows)
    runs: dict[str, list[dict[str, Any]]] = {"ceiling": [], "healthy": [], "with-failing": []}
    for r in range(plan.runs):
        b.progress.step(f"delivery run {r + 1}/{plan.runs}: ceiling, raw aiohttp POST x16 ({plan.deliver_s:g} s)")
        _sink_call(port, "POST", "/_reset")
        poster = b.start("poster", "poster.py", "--url", hook, "--duration", f"{plan.deliver_s:g}", "--concurrency", "16")
        try:
            res = poster.result(plan.deliver_s + 60)
        finally:
            b.stop(poster)
        res["sink"] = _sink_call(port, "GET", "/_stats")
        runs["ceiling"].append(res)
        for key, (template, cfg, rows) in templates.items():
            b.progress.step(f"delivery run {r + 1}/{plan.runs}: relay drains {rows['healthy']} rows ({key})")
            runs[key].append(_drain(b, port, template, cfg, rows, f"r{r}{key[0]}"))
    b.stop(sink)
    return {"db": kind, "runs": runs, "rows": {k: v[2] for k, v in templates.items()},
            "objects": plan.delivery_objects}


def _drain(b: Bench, sink_port: int, template: Database, cfg: Any, rows: dict[str, int], label: str) -> dict[str, Any]:
    """A relay with only its workers on, on a copy of a preloaded outbox: time to deliver every
    healthy row, measured at the sink from the first to the last arrival."""
    db = b.clone_db(template, label)
    _sink_call(sink_port, "POST", "/_reset")
    relay = b.start_relay(f"relay-deliver-{label}", relay_env(db.url, cfg), "--no-http", "--no-grpc")
    want = rows["healthy"]
    deadline = time.monotonic() + max(120.0, want / 50)
    stats = _sink_call(sink_port, "GET", "/_stats")
    try:
        while stats["hook"] < want and time.monotonic() < deadline and relay.running():
            time.sleep(0.2)
            stats = _sink_call(sink_port, "GET", "/_stats")
    finally:
        b.stop(relay)
        db.drop()
    span = stats["last"] - stats["first"]
    return {"rows": want, "delivered": stats["hook"], "failing_attempts": stats["fail"],
            "rate": (stats["hook"] - 1) / span if span > 0 else 0.0, "drain_s": span,
            "violations": stats["violations"], "duplicates": stats["duplicates"], "complete": stats["hook"] >= want}


# -- steady: lag and latency ---------------------------------------------------------------------------


def steady(b: Bench, rate: float) -> dict[str, Any]:
    """Paced ingest at ``rate`` with one subscriber following from ``latest`` and a webhook target:
    lag over time, push->stream and push->delivery latency."""
    plan, wd = b.plan, b.workdir
    kind = plan.dbs[0]
    sink = b.start("sink", "sink.py")
    sink_port = sink.port("sink_listening", 60)
    db = b.new_db(kind, "steady")
    cfg = relay_config(wd / "steady.yaml", [TargetSpec("partner", f"http://127.0.0.1:{sink_port}/hook", 16)],
                       stream=True)
    relay = b.start_relay("relay-steady", relay_env(db.url, cfg))
    http_port, grpc_port = relay.port("http_listening", 180), relay.port("grpc_listening", 60)
    out = wd / "steady-follow.json"
    sub = b.start("follow", "subscriber.py", "follow", "--target", f"127.0.0.1:{grpc_port}", "--db-url", db.url,
                  "--out", str(out))
    sub.wait_for(lambda r: r.get("event") == "ready", 60)
    _sink_call(sink_port, "POST", "/_reset")
    times_path = wd / "steady-times.json"
    b.progress.step(f"steady: {rate:.0f} pushes/s for {plan.steady_s:g} s, 1 subscriber, webhook target")
    gen = b.paced(http_port, rate, plan.steady_s, "st-", times_path)
    res = gen.result(plan.steady_s + 120)
    b.stop(gen)
    # let the stream and the deliveries catch up with the last pushes
    deadline = time.monotonic() + (10.0 if plan.quick else 20.0)
    stats = _sink_call(sink_port, "GET", "/_stats")
    while stats["hook"] < res["ok"] and time.monotonic() < deadline:
        time.sleep(0.25)
        stats = _sink_call(sink_port, "GET", "/_stats")
    catch_up = time.monotonic()
    sub.signal(signal.SIGTERM)
    sub_res = sub.result(60)
    arrivals_sink = _sink_call(sink_port, "GET", "/_arrivals")
    b.stop(relay)
    b.stop(sink)
    followed = json.loads(out.read_text())
    times: dict[str, float] = json.loads(times_path.read_text())
    stream_arr: dict[str, list[float]] = followed["arrivals"]
    first_delivery: dict[str, float] = {}
    for t, oid, _seq in arrivals_sink:
        first_delivery.setdefault(oid, t)
    in_time = sum(1 for t, _oid, _seq in arrivals_sink if t <= res["last"])
    lat_stream = [(stream_arr[i][0] - t) * 1000 for i, t in times.items() if i in stream_arr]
    lat_deliver = [(first_delivery[i] - t) * 1000 for i, t in times.items() if i in first_delivery]
    samples = [(t, lag) for t, _newest, lag in followed["samples"] if res["first"] + 1 <= t <= res["last"]]
    lags = [lag for _, lag in samples]
    return {
        "rate_target": rate, "load": res, "subscriber": sub_res, "db": kind,
        "stream": {"received": len(lat_stream), "sent": len(times), "p50_ms": percentile(lat_stream, 50),
                   "p99_ms": percentile(lat_stream, 99), "max_ms": max(lat_stream, default=float("nan"))},
        "delivery": {"received": len(lat_deliver), "sent": len(times), "p50_ms": percentile(lat_deliver, 50),
                     "p99_ms": percentile(lat_deliver, 99), "max_ms": max(lat_deliver, default=float("nan")),
                     "violations": stats["violations"], "waited_s": catch_up - res["last"],
                     "delivered_while_pushing": in_time},
        "lag": {"samples": samples, "first": median(lags[:3]), "last": median(lags[-3:]),
                "max": max(lags, default=0), "slope_per_s": slope([t for t, _ in samples], lags)},
    }


# -- memory ------------------------------------------------------------------------------------------


def memory(b: Bench, rate: float) -> dict[str, Any]:
    """RSS of `relay serve` (HTTP + gRPC) under paced ingest with one slow subscriber attached."""
    plan, wd = b.plan, b.workdir
    kind = plan.dbs[0]
    db = b.new_db(kind, "memory")
    cfg = relay_config(wd / "memory.yaml", stream=True)
    relay = b.start_relay("relay-memory", relay_env(db.url, cfg), "--no-workers")
    http_port, grpc_port = relay.port("http_listening", 180), relay.port("grpc_listening", 60)
    slow = b.start("slow", "subscriber.py", "slow", "--target", f"127.0.0.1:{grpc_port}", "--interval", "0.01")
    slow.wait_for(lambda r: r.get("event") == "ready", 60)
    proc = psutil.Process(relay.pid)
    label = f"memory: {rate:.0f} pushes/s for {plan.memory_s:g} s, one subscriber reading 100 events/s"
    b.progress.step(label)
    gen = b.paced(http_port, rate, plan.memory_s, "mem-")
    t0 = time.monotonic()
    samples: list[tuple[float, int]] = []
    while gen.running():
        samples.append((time.monotonic() - t0, proc.memory_info().rss))
        b.progress.show(f"{label}: {samples[-1][0]:.0f} s, RSS {samples[-1][1] / 2**20:.1f} MiB")
        time.sleep(max(0.05, 1.0 - (time.monotonic() - t0) % 1.0))
    res = gen.result(60)
    slow.signal(signal.SIGTERM)
    slow_res = slow.result(30)
    b.stop(relay)
    b.stop(gen)
    rss = [s for _, s in samples]
    post = [(t, s) for t, s in samples if t >= plan.memory_warmup_s]
    ref = post[0][1] if post else 0
    spread = max((abs(s - ref) / ref for _, s in post), default=0.0) if ref else float("nan")
    return {
        "rate_target": rate, "load": res, "slow_subscriber": slow_res, "db": kind, "warmup_s": plan.memory_warmup_s,
        "samples": samples, "first_mib": rss[0] / 2**20 if rss else 0, "last_mib": rss[-1] / 2**20 if rss else 0,
        "max_mib": max(rss, default=0) / 2**20, "after_warmup_mib": ref / 2**20, "max_deviation": spread,
        "slope_mib_per_min": slope([t for t, _ in post], [s / 2**20 for _, s in post]) * 60 if len(post) > 1 else 0.0,
    }


# -- size ---------------------------------------------------------------------------------------------


def size(b: Bench) -> dict[str, Any]:
    """Stored bytes per event (bench/store_size.py in a process of its own, on fresh databases)."""
    plan = b.plan
    events = 2000 if plan.quick else 4000
    b.progress.step(f"size: bytes per event, {events} location PUTs on {', '.join(plan.dbs)}")
    out = subprocess.run(
        [sys.executable, str(BENCH_DIR / "store_size.py"), "--json", "--db", ",".join(plan.dbs), "--events",
         str(events), "--objects", "100", "--pg-url", plan.pg_url],
        capture_output=True, text=True, timeout=1800, check=True,
    )
    return {"events": events, "objects": 100, "rows": json.loads(out.stdout.strip().splitlines()[-1])}
# -- soak: bounded WAL and RSS over minutes ------------------------------------------------------------


def soak(b: Bench, max_rate: float | None, seconds: float) -> dict[str, Any]:
    """Paced ingest at 80 % of the maximum ingest rate for ``seconds`` (``--soak-duration``) with a
    webhook target and two gRPC subscribers: the -wal file's size and the RSS over time, the ingest
    p99, and the writers' pauses of the truncating checkpoints (``sqlite_wal_truncated`` log lines)."""
    plan, wd = b.plan, b.workdir
    kind = plan.dbs[0]
    sink = b.start("sink", "sink.py")
    sink_port = sink.port("sink_listening", 60)
    db = b.new_db(kind, "soak")
    cfg = relay_config(wd / "soak.yaml", [TargetSpec("partner", f"http://127.0.0.1:{sink_port}/hook", 16)],
                       stream=True)
    relay = b.start_relay("relay-soak", relay_env(db.url, cfg, RELAY_LOG_LEVEL="INFO"))
    http_port, grpc_port = relay.port("http_listening", 180), relay.port("grpc_listening", 60)
    subs = [b.start(f"sub{i}", "subscriber.py", "slow", "--target", f"127.0.0.1:{grpc_port}", "--interval", "0")
            for i in range(2)]
    for s in subs:
        s.wait_for(lambda r: r.get("event") == "ready", 60)
    how = "80 % of the ingest section's SQLite rate"
    if not max_rate:
        # measured as the soak runs: webhook target and both subscribers attached (without them the
        # relay takes ~25 % more, and 80 % of that overloads it: answers then queue for minutes)
        b.progress.step("soak: measuring the maximum ingest rate of this relay (10 s closed loop)")
        max_rate = b.load(http_port, "soak-max-", 10.0)["rate"]
        how = "80 % of a 10 s closed-loop run against the soak relay itself, webhook target and subscribers on"
    rate = 0.8 * max_rate
    wal = db.path.with_name(db.path.name + "-wal") if db.path is not None else None
    proc = psutil.Process(relay.pid)
    label = f"soak: {rate:.0f} pushes/s for {seconds:g} s, webhook target, 2 subscribers"
    b.progress.step(label)
    gen = b.paced(http_port, rate, seconds, "soak-")
    t0 = time.monotonic()
    samples: list[tuple[float, int, int]] = []  # (s, RSS, WAL bytes)
    while gen.running():
        wal_bytes = wal.stat().st_size if wal is not None and wal.exists() else 0
        samples.append((time.monotonic() - t0, proc.memory_info().rss, wal_bytes))
        if len(samples) % 10 == 1:
            b.progress.note(f"soak {samples[-1][0]:5.0f} s: RSS {samples[-1][1] / 2**20:7.1f} MiB, "
                            f"WAL {wal_bytes / 2**20:7.1f} MiB")
        time.sleep(max(0.05, 1.0 - (time.monotonic() - t0) % 1.0))
    res = gen.result(120)
    b.stop(gen)
    for s in subs:
        s.signal(signal.SIGTERM)
    sub_res = [s.result(60) for s in subs]
    pauses = sorted(float(r["pause_ms"]) for r in relay.records if r.get("event") == "sqlite_wal_truncated")
    busy = sum(1 for r in relay.records if r.get("event") == "sqlite_wal_truncate_busy")
    stored = db.events()
    b.stop(relay)
    b.stop(sink)
    wals = [w for _, _, w in samples]
    rss = [r for _, r, _ in samples]
    return {
        "db": kind, "rate_target": rate, "rate_basis": how, "max_rate": max_rate, "seconds": seconds, "load": res,
        "stored": stored, "subscribers": sub_res, "samples": samples,
        "wal_max_mib": max(wals, default=0) / 2**20, "wal_limit_mib": 256.0,
        "rss_first_mib": rss[0] / 2**20 if rss else 0, "rss_max_mib": max(rss, default=0) / 2**20,
        "rss_last_mib": rss[-1] / 2**20 if rss else 0,
        "rss_slope_mib_per_min": slope([t for t, _, _ in samples], [r / 2**20 for r in rss]) * 60
        if len(samples) > 1 else 0.0,
        "truncations": len(pauses), "truncate_busy": busy,
        "pause_ms_p50": percentile(pauses, 50) if pauses else None, "pause_ms_max": max(pauses, default=None),
    }
