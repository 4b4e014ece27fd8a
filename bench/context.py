"""What every benchmark section shares: the plan (durations, sizes), the progress line, the child
processes and databases of this run, and the load generators (wrk or the Python one)."""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common import (
    BENCH_DIR,
    PUSH_TOKEN,
    PYTHON,
    REPO,
    Child,
    Children,
    Database,
    write_wrk_template,
)

CONNECTIONS = 64
WRK_THREADS = 2


@dataclass
class Plan:
    """Durations and sizes of one run (``--quick`` shortens all of them)."""

    quick: bool
    runs: int
    dbs: list[str]
    sections: list[str]
    loadgen: str  # wrk | python
    ingest_s: float  # measured send window of one ingest run
    stream_s: float  # longest a stream rate measurement reads
    deliver_s: float  # raw aiohttp ceiling run
    delivery_rows: int  # outbox rows per target drained by one relay delivery run
    delivery_objects: int  # those rows are versions of this many objects
    preload: int  # events the stream measurement reads from
    steady_s: float  # lag and latency run (paced)
    memory_s: float  # RSS run (paced)
    memory_warmup_s: float
    pg_url: str


class Progress:
    """One progress line on stderr: rewritten in place on a terminal, one line per step otherwise."""

    def __init__(self, total: int) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.t0 = time.monotonic()
        self.tty = sys.stderr.isatty()
        self._width = 0

    def step(self, text: str) -> None:
        self.show(text)
        self.done += 1

    def show(self, text: str) -> None:
        elapsed = int(time.monotonic() - self.t0)
        pct = min(99, int(100 * self.done / self.total))
        line = f"[{elapsed // 60:2d}:{elapsed % 60:02d} {pct:2d}%] {text}"
        if self.tty:
            sys.stderr.write("\r" + line.ljust(self._width)[:160])
            self._width = min(160, max(self._width, len(line)))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def note(self, text: str) -> None:
        """A message on a line of its own (warnings, skipped parts)."""
        if self.tty and self._width:
            sys.stderr.write("\r" + " " * self._width + "\r")
        sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def finish(self) -> None:
        if self.tty:
            sys.stderr.write("\r" + " " * self._width + "\r")
        elapsed = time.monotonic() - self.t0
        sys.stderr.write(f"benchmark finished in {elapsed / 60:.1f} min\n")


@dataclass
class Bench:
    """The run: plan, progress, children, databases, temp dir, and the load generators."""

    plan: Plan
    workdir: Path
    progress: Progress
    children: Children
    databases: list[Database] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _template: Path | None = None

    # -- databases ------------------------------------------------------------------------------
    def new_db(self, kind: str, label: str) -> Database:
        if kind == "sqlite":
            db = Database.sqlite(self.workdir / f"{label}.db")
        else:
            db = Database.postgres(self.plan.pg_url)
        self.databases.append(db)
        return db

    def clone_db(self, db: Database, label: str) -> Database:
        copy = db.clone(label)
        self.databases.append(copy)
        return copy

    def drop_all(self) -> None:
        for db in self.databases:
            db.drop()

    # -- processes ------------------------------------------------------------------------------
    def start(self, name: str, script: str, *args: str, env: dict[str, str] | None = None) -> Child:
        return self.children.start(name, [PYTHON, str(BENCH_DIR / script), *args],
                                   env={"PYTHONPATH": str(REPO), **(env or {})})

    def start_relay(self, name: str, env: dict[str, str], *flags: str, loop: str | None = None,
                    instrument: Path | None = None, wrapper_flags: tuple[str, ...] = ()) -> Child:
        """`relay serve` (``python -m relay``), or through bench/relay_wrapper.py to pick its event loop
        or time its group commit."""
        wrapper: list[str] = []
        if loop or instrument is not None or wrapper_flags:
            wrapper = [str(BENCH_DIR / "relay_wrapper.py"), *wrapper_flags]
            if loop:
                wrapper += ["--loop", loop]
            if instrument is not None:
                wrapper += ["--instrument", str(instrument)]
        argv = [PYTHON, *wrapper] if wrapper else [PYTHON, "-m", "relay"]
        return self.children.start(name, [*argv, "serve", *flags], env={"PYTHONPATH": str(REPO), **env})

    def stop(self, child: Child, timeout: float = 20.0) -> int | None:
        return self.children.stop(child, timeout)

    # -- load -------------------------------------------------------------------------------------
    def template(self) -> Path:
        if self._template is None:
            self._template = self.workdir / "location_template.json"
            write_wrk_template(self._template)
        return self._template

    def load(self, port: int, prefix: str, seconds: float) -> dict[str, Any]:
        """Closed-loop PUTs on 64 keep-alive connections for ``seconds``; every request sent is
        answered before the generator stops (see put_location.lua / loadgen.py)."""
        if self.plan.loadgen == "wrk":
            return self._wrk(port, prefix, seconds)
        child = self.start("loadgen", "loadgen.py", "--url", f"http://127.0.0.1:{port}", "--token", PUSH_TOKEN,
                           "--connections", str(CONNECTIONS), "--processes", "2", "--duration", str(seconds),
                           "--prefix", prefix)
        try:
            res = child.result(seconds + 120)
        finally:
            self.children.stop(child)
        return res

    def _wrk(self, port: int, prefix: str, seconds: float) -> dict[str, Any]:
        total = math.ceil(seconds + 1.0)  # at least a second for the answers still in flight
        argv = ["wrk", f"-t{WRK_THREADS}", f"-c{CONNECTIONS}", f"-d{total}s", "--timeout", "30s",
                "-s", str(BENCH_DIR / "put_location.lua"), f"http://127.0.0.1:{port}", "--",
                prefix, str(self.template()), f"{seconds:.3f}", PUSH_TOKEN]
        child = self.children.start("wrk", argv)
        try:
            rec = child.wait_for(lambda r: r.get("bench") == "wrk", total + 60)
            child.proc.wait(10)
        finally:
            self.children.stop(child)
        first, last = float(rec["first"]), float(rec["last"])
        return {
            "generator": "wrk", "sent": rec["sent"], "answered": rec["answered"], "ok": rec["ok"],
            "other": rec["other"], "first": first, "last": last,
            "rate": rec["ok"] / (last - first) if last > first else 0.0,
            "p50_ms": rec["p50_us"] / 1000, "p90_ms": rec["p90_us"] / 1000, "p99_ms": rec["p99_us"] / 1000,
            "max_ms": rec["max_us"] / 1000, "socket_errors": rec["socket_errors"],
        }

    def preload(self, port: int, count: int, prefix: str, objects: int | None = None,
                connections: int = CONNECTIONS) -> dict[str, Any]:
        args = ["--url", f"http://127.0.0.1:{port}", "--token", PUSH_TOKEN, "--connections", str(connections),
                "--processes", "2", "--count", str(count), "--prefix", prefix]
        if objects:
            args += ["--objects", str(objects)]
        child = self.start("preload", "loadgen.py", *args)
        try:
            return child.result(600)
        finally:
            self.children.stop(child)

    def paced(self, port: int, rate: float, seconds: float, prefix: str, times: Path | None = None) -> Child:
        """Open-loop PUTs at ``rate``/s for ``seconds`` (started, not waited for)."""
        args = ["--url", f"http://127.0.0.1:{port}", "--token", PUSH_TOKEN, "--connections", str(CONNECTIONS),
                "--processes", "2" if rate > 4000 else "1", "--duration", str(seconds), "--rate", f"{rate:.1f}",
                "--prefix", prefix]
        if times is not None:
            args += ["--times", str(times)]
        return self.start("paced", "loadgen.py", *args)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, all its threads included (0 if it is gone)."""
    import psutil

    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


def detect_runtime(pid: int) -> dict[str, str]:
    """Which event loop and HTTP parser a running server uses, seen from outside: the main thread's
    Python stack (py-spy dump) shows asyncio's ``_run_once`` only on the stdlib loop; uvloop's and
    httptools' extension modules show up in the process's memory maps once they are imported."""
    out: dict[str, str] = {"loop": "unknown", "http": "unknown"}
    maps = ""
    with contextlib.suppress(OSError):
        maps = Path(f"/proc/{pid}/maps").read_text()
    if "/httptools/parser/" in maps:
        out["http"] = "httptools"
    elif "/h11/" in maps:
        out["http"] = "h11"
    spy = shutil.which("py-spy") or str(Path(PYTHON).with_name("py-spy"))
    dump = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True,
                              timeout=20).stdout
    main = dump.split("Thread ", 2)[1] if dump.count("Thread ") >= 1 else ""
    if re.search(r"\(asyncio/base_events\.py", main):
        out["loop"] = "asyncio"
    elif "uvloop" in main or re.search(r"/uvloop/loop\.cpython", maps):
        out["loop"] = "uvloop"
    elif not dump:
        out["loop"] = "unknown (py-spy dump failed)"
    return out
