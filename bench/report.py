"""From the sections' runs to figures (medians), ratios, target verdicts and the printed table.

Every ratio divides a median relay figure by the median of the ceiling measured in the same run.
Verdicts: MET / MISSED for targets, PASS / FAIL for checks, REPORTED for figures without a bound,
and "not measured" when a section was left out or failed.
"""

from __future__ import annotations

import math
from typing import Any

from common import median

TARGETS = {
    "sqlite_ratio": 0.50, "sqlite_p99": 3.0, "postgres_ratio": 0.45, "stream_ratio": 0.60,
    "delivery_ratio": 0.35, "failing_drop": 0.10, "rss_band": 0.10,
    "lag_slope_share": 0.02,  # lag may grow by at most 2 % of the ingest rate per second ...
    "lag_last_seconds": 1.0,  # ... and must end below one second's worth of events
}


def _n(v: float | None, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"


def _pct(v: float | None) -> str:
    return "-" if v is None or math.isnan(v) else f"{100 * v:.1f} %"


def _med(runs: list[dict[str, Any]], key: str) -> float:
    return median([r[key] for r in runs if r.get(key) is not None])


# -- figures -----------------------------------------------------------------------------------------


def figures(results: dict[str, Any]) -> dict[str, Any]:
    """Medians and ratios of every section that ran."""
    out: dict[str, Any] = {}
    ing = results.get("ingest")
    if ing and "servers" in ing:
        rows = {s["key"]: s for s in ing["servers"]}
        relay_loop = next((s["runtime"].get("loop") for s in ing["servers"] if s["key"] == "relay-sqlite"),
                          None) or next((s["runtime"].get("loop") for s in ing["servers"] if s["kind"] == "relay"), "?")
        base = "bare-uvloop" if relay_loop == "uvloop" else "bare-asyncio"
        fig: dict[str, Any] = {"relay_loop": relay_loop, "ceiling": base, "rows": {}}
        for key, s in rows.items():
            runs = s["runs"]
            ceiling = rows["bare-uvloop" if s["runtime"].get("loop") == "uvloop" else "bare-asyncio"]
            row = {"rate": _med(runs, "rate"), "p50_ms": _med(runs, "p50_ms"), "p99_ms": _med(runs, "p99_ms"),
                   "cpu_us": _med(runs, "server_cpu_us"),
                   "runs": len(runs), "runtime": s["runtime"], "label": s["label"], "kind": s["kind"]}
            if s["kind"] == "relay":
                c_rate, c_p99 = _med(ceiling["runs"], "rate"), _med(ceiling["runs"], "p99_ms")
                row.update(ceiling=ceiling["key"], ratio=row["rate"] / c_rate if c_rate else math.nan,
                           p99_ratio=row["p99_ms"] / c_p99 if c_p99 else math.nan,
                           checks_passed=sum(1 for r in runs if r.get("check")),
                           stored=sum(r.get("stored", 0) for r in runs), ok=sum(r["ok"] for r in runs),
                           outbox_rows=sum(r.get("outbox_rows", 0) for r in runs))
            fig["rows"][key] = row
        out["ingest"] = fig
    st = results.get("stream")
    if st and "runs" in st:
        def rate(case: str) -> float:
            return _med(st["runs"].get(case, []), "rate")

        def size(case: str) -> float:
            return _med(st["runs"].get(case, []), "message_bytes")

        def cpu(case: str) -> float:
            return _med(st["runs"].get(case, []), "server_cpu_us")

        out["stream"] = {
            "events": st["events"],
            "cases": {case: {"rate": rate(case), "message_bytes": size(case), "cpu_us": cpu(case)}
                      for case in st["runs"]},
            "ratio_1": rate("relay/1") / rate("raw-event/1") if rate("raw-event/1") else math.nan,
            "ratio_8": rate("relay/8") / rate("raw-event/8") if rate("raw-event/8") else math.nan,
        }
    dl = results.get("delivery")
    if dl and "runs" in dl:
        c, h, f = (_med(dl["runs"][k], "rate") for k in ("ceiling", "healthy", "with-failing"))
        # the failing-target effect compares runs of the same round (a drift of the machine hits both)
        pairs = [w["rate"] / a["rate"] for a, w in zip(dl["runs"]["healthy"], dl["runs"]["with-failing"], strict=False)
                 if a["rate"]]
        out["delivery"] = {
            "ceiling": c, "healthy": h, "with_failing": f, "ratio": h / c if c else math.nan,
            "failing_drop": 1 - median(pairs) if pairs else math.nan, "failing_pairs": pairs,
            "violations": sum(r["violations"] for k in ("healthy", "with-failing") for r in dl["runs"][k]),
            "duplicates": sum(r["duplicates"] for k in ("healthy", "with-failing") for r in dl["runs"][k]),
            "complete": all(r["complete"] for k in ("healthy", "with-failing") for r in dl["runs"][k]),
            "ceiling_p99_ms": _med(dl["runs"]["ceiling"], "p99_ms"),
        }
    sd = results.get("steady")
    if sd and "lag" in sd:
        rate_target = sd["rate_target"]
        lag = sd["lag"]
        bounded = (not math.isnan(lag["slope_per_s"]) and lag["slope_per_s"] <= TARGETS["lag_slope_share"] * rate_target
                   and lag["last"] <= TARGETS["lag_last_seconds"] * rate_target)
        out["steady"] = {"rate": rate_target, "achieved": sd["load"]["rate"], "lag": lag, "lag_bounded": bounded,
                         "stream": sd["stream"], "delivery": sd["delivery"],
                         "answer_p50_ms": sd["load"]["p50_ms"], "answer_p99_ms": sd["load"]["p99_ms"]}
    mem = results.get("memory")
    if mem and "samples" in mem:
        out["memory"] = {k: mem[k] for k in ("rate_target", "first_mib", "last_mib", "max_mib", "after_warmup_mib",
                                             "max_deviation", "slope_mib_per_min", "warmup_s")}
        out["memory"]["achieved"] = mem["load"]["rate"]
        out["memory"]["flat"] = mem["max_deviation"] <= TARGETS["rss_band"]
    sz = results.get("size")
    if sz and "rows" in sz:
        sq = sz["rows"].get("sqlite")
        out["size"] = {"rows": sz["rows"],
                       "sqlite_ok": all(r["db_ratio"] <= 1.5 for r in sq.values()) if sq else None}
    return out


# -- verdicts ------------------------------------------------------------------------------------------


def results_size(fig: dict[str, Any]) -> str | None:
    """The SQLite bytes-per-event ratios as one value ("0.80x / 0.54x"), None when not measured."""
    rows = fig.get("size", {}).get("rows", {}).get("sqlite")
    return " / ".join(f"{r['db_ratio']:.2f}x" for r in rows.values()) if rows else None


def _verdict(ok: bool | None) -> str:
    return "not measured" if ok is None else ("MET" if ok else "MISSED")


def targets(fig: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per target of issue 8: what, the measured value, the bound, the verdict."""
    lines: list[dict[str, Any]] = []

    def add(name: str, value: str, bound: str, ok: bool | None, kind: str = "target") -> None:
        verdict = _verdict(ok) if kind == "target" else (
            "not measured" if ok is None else ("PASS" if ok else "FAIL") if kind == "check" else "REPORTED")
        lines.append({"target": name, "value": value, "bound": bound, "verdict": verdict})

    rows = fig.get("ingest", {}).get("rows", {})
    sq, pg = rows.get("relay-sqlite"), rows.get("relay-postgres")
    add("durable ingest SQLite vs ceiling", _pct(sq["ratio"]) if sq else "-", ">= 50 %",
        sq["ratio"] >= TARGETS["sqlite_ratio"] if sq else None)
    add("durable ingest SQLite p99 vs ceiling p99", f"{sq['p99_ratio']:.1f}x" if sq else "-", "<= 3x",
        sq["p99_ratio"] <= TARGETS["sqlite_p99"] if sq else None)
    add("durable ingest PostgreSQL vs ceiling", _pct(pg["ratio"]) if pg else "-", ">= 45 %",
        pg["ratio"] >= TARGETS["postgres_ratio"] if pg else None)
    st = fig.get("stream")
    for n in (1, 8):
        r = st[f"ratio_{n}"] if st else None
        add(f"stream to {n} subscriber{'s' if n > 1 else ''} vs raw grpc.aio", _pct(r), ">= 60 %",
            None if r is None or math.isnan(r) else r >= TARGETS["stream_ratio"])
    sd = fig.get("steady")
    if sd:
        lag = sd["lag"]
        add("subscriber lag bounded while ingesting",
            f"first {_n(lag['first'])}, last {_n(lag['last'])}, slope {_n(lag['slope_per_s'], 1)}/s", "not growing",
            sd["lag_bounded"])
    else:
        add("subscriber lag bounded while ingesting", "-", "not growing", None)
    dl = fig.get("delivery")
    add("delivery vs raw aiohttp", _pct(dl["ratio"]) if dl else "-", ">= 35 %",
        dl["ratio"] >= TARGETS["delivery_ratio"] if dl else None)
    add("failing target lowers the healthy rate by", _pct(dl["failing_drop"]) if dl else "-", "<= 10 %",
        dl["failing_drop"] <= TARGETS["failing_drop"] if dl else None)
    add("push->stream p99", f"{_n(sd['stream']['p99_ms'], 1)} ms" if sd else "-", "reported",
        True if sd else None, "report")
    add("push->delivery p99", f"{_n(sd['delivery']['p99_ms'], 1)} ms" if sd else "-", "reported",
        True if sd else None, "report")
    mem = fig.get("memory")
    add("relay RSS flat after warm-up", f"max deviation {_pct(mem['max_deviation'])}" if mem else "-", "<= ±10 %",
        mem["flat"] if mem else None)
    relays = [r for r in rows.values() if r["kind"] == "relay"]
    runs = sum(r["runs"] for r in relays)
    passed = sum(r["checks_passed"] for r in relays)
    size = results_size(fig)
    add("stored bytes per event, SQLite, vs pushed body", size or "-", "<= 1.5x",
        fig["size"]["sqlite_ok"] if "size" in fig and fig["size"]["sqlite_ok"] is not None else None)
    add("CHECK stored events == 1000 answers (every relay ingest run)", f"{passed}/{runs} runs",
        "all runs", passed == runs if relays else None, "check")
    add("CHECK per-object delivery order at the sink", f"{dl['violations']} violations" if dl else "-", "0",
        dl["violations"] == 0 and dl["complete"] if dl else None, "check")
    return lines


# -- table -------------------------------------------------------------------------------------------


def table(results: dict[str, Any], fig: dict[str, Any], lines: list[dict[str, Any]]) -> str:
    m, plan = results["machine"], results["plan"]
    out: list[str] = []
    w = out.append
    dirty = " + uncommitted changes" if m["git_dirty"] else ""
    w(f"ocpi-relay benchmark  {results['started']}  commit {m['git_commit']}{dirty}")
    w(f"machine: {m['nproc']} CPUs, {m['cpu_model']}, Python {m['python']}, load average at start "
      f"{', '.join(f'{x:.2f}' for x in m['loadavg_start'])}")
    w(f"mode: {'quick' if plan['quick'] else 'full'}, medians of {plan['runs']} run(s); databases: "
      f"{', '.join(plan['dbs'])} (SQLite: WAL, synchronous=FULL, as the relay sets it)")
    ing = fig.get("ingest")
    if ing:
        gen = ("wrk (Lua: unique id per PUT, 1000 answers counted in response(), drained before stop)"
               if plan["loadgen"] == "wrk" else "Python generator (bench/loadgen.py, 2 processes)")
        w("")
        w(f"INGEST  PUT /locations/NL/GFX/<unique id>, 1.5 KB body, 64 keep-alive connections, "
          f"{plan['ingest_s']:g} s per run; load: {gen}")
        w(f"  relay serve runs on: {ing['relay_loop']} (seen with py-spy); each ratio uses the bare app "
          f"on the loop that relay process runs on")
        w(f"  {'':56s}{'req/s':>8s}{'p50 ms':>8s}{'p99 ms':>8s}{'ratio':>8s}{'p99 x':>7s}{'CPU/req':>9s}"
          f"  stored = 1000 answers")
        for key, r in ing["rows"].items():
            cpu = f"{_n(r['cpu_us'])} us"
            if r["kind"] == "ceiling":
                w(f"  {r['label']:56s}{_n(r['rate']):>8s}{_n(r['p50_ms'], 1):>8s}{_n(r['p99_ms'], 1):>8s}"
                  f"{'':15s}{cpu:>9s}")
            else:
                check = "PASS" if r["checks_passed"] == r["runs"] else "FAIL"
                extra = f", outbox rows {r['outbox_rows']:,}" if "full" in key else ""
                w(f"  {r['label']:56s}{_n(r['rate']):>8s}{_n(r['p50_ms'], 1):>8s}{_n(r['p99_ms'], 1):>8s}"
                  f"{_pct(r['ratio']):>8s}{r['p99_ratio']:>6.1f}x{cpu:>9s}  {check} {r['stored']:,} = {r['ok']:,}{extra}")
        w("  (CPU/req: CPU time of the server process per answered request; PostgreSQL's own CPU not included)")
    st, st_raw = fig.get("stream"), results.get("stream")
    if st and st_raw:
        w("")
        w(f"STREAM  Subscribe from earliest over {st['events']:,} stored events ({st_raw['db']}), msg/s, "
          f"at most {plan['stream_s']:g} s per run; client: bench/subscriber.py (grpc.aio, bytes)")
        w(f"  {'':56s}{'1 sub':>8s}{'8 subs':>8s}{'msg B':>8s}{'CPU/msg 1':>11s}{'CPU/msg 8':>11s}")
        labels = {**st_raw["labels"], "relay": "relay Subscribe(earliest)"}
        for key in ("raw-event", "raw-1.5k", "relay"):
            one, eight = st["cases"].get(f"{key}/1"), st["cases"].get(f"{key}/8")
            if one and eight:
                w(f"  {labels[key]:56s}{_n(one['rate']):>8s}{_n(eight['rate']):>8s}{_n(one['message_bytes']):>8s}"
                  f"{_n(one['cpu_us']) + ' us':>11s}{_n(eight['cpu_us']) + ' us':>11s}")
        w(f"  {'relay vs relay-shaped ceiling':56s}{_pct(st['ratio_1']):>8s}{_pct(st['ratio_8']):>8s}")
        w("  (CPU/msg: server CPU time per message sent; with 1 subscriber the client process is the slower side)")
    sd = fig.get("steady")
    if sd:
        lag = sd["lag"]
        w("")
        w(f"STEADY  paced {sd['rate']:,.0f} pushes/s for {plan['steady_s']:g} s (achieved {sd['achieved']:,.0f}/s), "
          f"one subscriber from latest, one webhook target")
        w(f"  push -> 1000 answer     p50 {_n(sd['answer_p50_ms'], 1)} ms, p99 {_n(sd['answer_p99_ms'], 1)} ms")
        s, d = sd["stream"], sd["delivery"]
        w(f"  push -> stream event    p50 {_n(s['p50_ms'], 1)} ms, p99 {_n(s['p99_ms'], 1)} ms, "
          f"max {_n(s['max_ms'], 1)} ms ({s['received']:,}/{s['sent']:,} received)")
        w(f"  push -> webhook POST    p50 {_n(d['p50_ms'], 1)} ms, p99 {_n(d['p99_ms'], 1)} ms, "
          f"max {_n(d['max_ms'], 1)} ms ({d['received']:,}/{d['sent']:,} delivered, "
          f"{d.get('delivered_while_pushing', 0):,} of them before the last push)")
        w(f"  subscriber lag (events) first {_n(lag['first'])}, last {_n(lag['last'])}, max {_n(lag['max'])}, "
          f"slope {_n(lag['slope_per_s'], 2)}/s over {len(lag['samples'])} samples -> "
          f"{'bounded' if sd['lag_bounded'] else 'GROWING'}")
    dl, dl_raw = fig.get("delivery"), results.get("delivery")
    if dl and dl_raw:
        rows = dl_raw["rows"]
        w("")
        w(f"DELIVERY  webhook POSTs to a local aiohttp sink, concurrency 16 ({dl_raw['db']} outbox)")
        w(f"  {'ceiling: raw aiohttp ClientSession POST, 16 at a time':56s}{_n(dl['ceiling']):>9s}/s   "
          f"p99 {_n(dl['ceiling_p99_ms'], 1)} ms")
        drain = f"relay: drain of {rows['healthy']['healthy']:,} outbox rows ({dl_raw['objects']:,} objects)"
        w(f"  {drain:56s}"
          f"{_n(dl['healthy']):>9s}/s   {_pct(dl['ratio'])} of ceiling")
        w(f"  {'relay: same rows, beside a failing (503) target':56s}{_n(dl['with_failing']):>9s}/s   "
          f"{_pct(-dl['failing_drop'])} vs healthy alone (median of same-round ratios)")
        w(f"  per-object order at the sink: {dl['violations']} violations, {dl['duplicates']} redeliveries"
          f"{'' if dl['complete'] else ', NOT ALL ROWS DELIVERED'}")
    sz = results.get("size")
    if sz:
        w("")
        w(f"SIZE  stored bytes per event: {sz['events']:,} location PUTs over {sz['objects']} objects (each "
          "applied), fresh database; db = growth of every relay table with indexes (and TOAST), event = "
          "the event table with its indexes")
        w(f"  {'':28s}{'body B':>8s}{'db B/ev':>9s}{'x body':>8s}{'event B/ev':>12s}{'x body':>8s}")
        for kind, rows in sz["rows"].items():
            for name, r in rows.items():
                w(f"  {kind + ', ' + name:28s}{r['body_bytes']:>8,}{r['db_bytes_per_event']:>9,}{r['db_ratio']:>7.2f}x"
                  f"{r['event_bytes_per_event']:>12,}{r['event_ratio']:>7.2f}x")
    mem = fig.get("memory")
    if mem:
        w("")
        w(f"MEMORY  RSS of relay serve (HTTP + gRPC) at {mem['rate_target']:,.0f} pushes/s "
          f"(achieved {mem['achieved']:,.0f}/s) for {plan['memory_s']:g} s, one subscriber reading 1 event/10 ms")
        w(f"  first {mem['first_mib']:.1f} MiB, after {mem['warmup_s']:g} s warm-up {mem['after_warmup_mib']:.1f} MiB, "
          f"last {mem['last_mib']:.1f} MiB, max {mem['max_mib']:.1f} MiB; largest deviation after warm-up "
          f"{_pct(mem['max_deviation'])}, slope {mem['slope_mib_per_min']:+.2f} MiB/min")
    for name, err in results.get("errors", {}).items():
        w("")
        w(f"{name.upper()}  not measured: {err.splitlines()[0][:200]}")
    w("")
    w("TARGETS (each against a ceiling measured in this run)")
    for ln in lines:
        w(f"  {ln['target']:50s}{ln['value']:>32s}  {ln['bound']:>11s}  {ln['verdict']}")
    return "\n".join(out)
