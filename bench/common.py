"""Shared pieces of the benchmark harness: the pushed location, relay configs, child processes,
databases, machine facts and small statistics. Nothing here measures anything by itself.

Every child process is started in its own session (process group) and registered in a
``Children`` registry; ``Children.stop_all`` terminates, then kills, every group, which is what
lets ``run.py`` clean up on errors and Ctrl-C.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import os
import platform
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PYTHON = sys.executable

PUSH_TOKEN = "bench-push-token-5b1e0c"
STREAM_TOKEN = "bench-stream-token-8d2f47"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"bench-webhook-secret-0123456789ab").decode()
LOCATION_PATH = "/locations/NL/GFX/"
ID_MARK = "@ID@"
LU_MARK = "@LU@"
BASE_LAST_UPDATED = 1_709_625_600  # 2024-03-05T08:00:00Z; version v of an object is this + v seconds


# -- the pushed object -----------------------------------------------------------------------------


def _location_template() -> str:
    """A realistic OCPI 2.1.1 location (one EVSE, two connectors), compact JSON, about 1.5 KB."""
    lu = LU_MARK
    loc = {
        "id": ID_MARK, "type": "PARKING_GARAGE", "name": "Parkeergarage Eemplein", "address": "Eemplein 74",
        "city": "Amersfoort", "postal_code": "3812 EA", "country": "NLD",
        "coordinates": {"latitude": "52.160418", "longitude": "5.381967"},
        "evses": [{
            "uid": "NL-GFX-E0873421-1", "evse_id": "NL*GFX*E0873421*1", "status": "AVAILABLE",
            "capabilities": ["RFID_READER", "REMOTE_START_STOP_CAPABLE", "CREDIT_CARD_PAYABLE"],
            "connectors": [
                {"id": "1", "standard": "IEC_62196_T2_COMBO", "format": "CABLE", "power_type": "DC",
                 "voltage": 920, "amperage": 200, "tariff_id": "GFX-DC-0.69",
                 "terms_and_conditions": "https://cpo.example.nl/voorwaarden/laden", "last_updated": lu},
                {"id": "2", "standard": "CHADEMO", "format": "CABLE", "power_type": "DC", "voltage": 500,
                 "amperage": 125, "tariff_id": "GFX-DC-0.69", "last_updated": lu},
            ],
            "floor_level": "-1", "coordinates": {"latitude": "52.160377", "longitude": "5.382044"},
            "physical_reference": "P-1 snellader",
            "directions": [{"language": "nl", "text": "Niveau -1, direct links na de slagboom."}],
            "parking_restrictions": ["EV_ONLY", "PLUGGED"], "last_updated": lu,
        }],
        "directions": [{"language": "nl", "text": "Volg de borden P Eemplein; laadpunten op niveau -1."}],
        "operator": {"name": "Voorbeeld Laadnet B.V.", "website": "https://cpo.example.nl"},
        "owner": {"name": "Gemeente Amersfoort (voorbeeld)"},
        "facilities": ["MALL", "TRAIN_STATION", "WIFI"], "time_zone": "Europe/Amsterdam",
        "opening_times": {"twentyfourseven": True}, "charging_when_closed": True,
        "last_updated": lu,
    }
    return json.dumps(loc, separators=(",", ":"))


def last_updated(version: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(BASE_LAST_UPDATED + version))


def location_parts(version: int = 0) -> tuple[bytes, bytes]:
    """The body split around the object id: ``head + id + tail`` is one location PUT body."""
    text = _location_template().replace(LU_MARK, last_updated(version))
    head, tail = text.split(ID_MARK)
    return head.encode(), tail.encode()


def location_body(object_id: str, version: int = 0) -> bytes:
    head, tail = location_parts(version)
    return head + object_id.encode() + tail


def write_wrk_template(path: Path) -> int:
    """The body for the wrk script, with ``@ID@`` where each request puts its own id; returns its size."""
    head, tail = location_parts(0)
    path.write_bytes(head + ID_MARK.encode() + tail)
    return len(head) + len(tail) + len("bench-0-000000")


# -- forwarding.yaml -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    name: str
    url: str
    concurrency: int = 16


def relay_config(path: Path, targets: Sequence[TargetSpec] = (), *, stream: bool = False) -> Path:
    """A forwarding.yaml: one push subscription, optionally a stream client and webhook targets
    with one rule routing every location event to all of them."""
    lines = [
        "subscriptions:",
        "  - name: bench",
        "    token_env: BENCH_PUSH_TOKEN",
        '    cpos: ["NL*GFX"]',
        "    modules: [locations, sessions, cdrs, tariffs]",
        '    default_cpo: "NL*GFX"',
    ]
    if stream:
        lines += ["stream_clients:", "  - name: bench", "    token_env: BENCH_STREAM_TOKEN", '    cpos: ["*"]']
    if targets:
        lines.append("targets:")
        for t in targets:
            lines += [f"  - name: {t.name}", "    type: webhook", f"    url: {t.url}",
                      "    secret_env: BENCH_WEBHOOK_SECRET", "    timeout: 10", f"    concurrency: {t.concurrency}"]
        lines += ["rules:", "  - name: every-location", "    match: {modules: [locations]}",
                  "    to: [" + ", ".join(t.name for t in targets) + "]"]
    path.write_text("\n".join(lines) + "\n")
    return path


def relay_env(database_url: str, config: Path, **extra: str) -> dict[str, str]:
    env = {
        "RELAY_DATABASE_URL": database_url, "RELAY_CONFIG": str(config), "RELAY_HTTP_PORT": "0",
        "RELAY_GRPC_PORT": "0", "RELAY_LOG_LEVEL": "WARNING", "BENCH_PUSH_TOKEN": PUSH_TOKEN,
        "BENCH_STREAM_TOKEN": STREAM_TOKEN, "BENCH_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    env.update(extra)
    return env


# -- child processes -------------------------------------------------------------------------------


class ChildError(RuntimeError):
    """A child process failed or did not say what we waited for; carries the end of its output."""


class Child:
    """A subprocess in its own process group; JSON lines on stdout/stderr become ``records``."""

    def __init__(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc = subprocess.Popen(
            self.argv, env=full_env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, start_new_session=True,
        )
        self.records: list[dict[str, Any]] = []
        self.tail: deque[str] = deque(maxlen=60)
        self._new = threading.Condition()
        self._readers = [threading.Thread(target=self._read, args=(s,), daemon=True)
                         for s in (self.proc.stdout, self.proc.stderr)]
        for r in self._readers:
            r.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            text = raw.decode(errors="replace").rstrip("\n")
            rec: dict[str, Any] | None = None
            if text.startswith("{"):
                with contextlib.suppress(ValueError):
                    parsed = json.loads(text)
                    rec = parsed if isinstance(parsed, dict) else None
            with self._new:
                self.tail.append(text[:400])
                if rec is not None:
                    self.records.append(rec)
                self._new.notify_all()
        stream.close()

    def output(self) -> str:
        return "\n".join(self.tail)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        """The first record matching ``predicate``; ChildError if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new:
            while True:
                for rec in self.records[seen:]:
                    if predicate(rec):
                        return rec
                seen = len(self.records)
                left = deadline - time.monotonic()
                if self.proc.poll() is not None and not any(r.is_alive() for r in self._readers):
                    raise ChildError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
                if left <= 0:
                    raise ChildError(f"{self.name}: nothing after {timeout:.0f}s:\n{self.output()}")
                self._new.wait(min(left, 0.2))

    def port(self, event: str, timeout: float = 60) -> int:
        return int(self.wait_for(lambda r: r.get("event") == event, timeout)["port"])

    def result(self, timeout: float) -> dict[str, Any]:
        """Wait for the process to end; its last ``{"event": "result"}`` record."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ChildError(f"{self.name} still running after {timeout:.0f}s:\n{self.output()}") from None
        for r in self._readers:
            r.join(5)
        results = [r for r in self.records if r.get("event") == "result"]
        if self.proc.returncode != 0 or not results:
            raise ChildError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
        return results[-1]

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM to the group, SIGKILL after ``timeout``; the exit code."""
        if self.running():
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(5)
        # whatever the leader left behind in its group goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode


class Children:
    """Every child this run started, so that all of them end with the run, whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._all: list[Child] = []

    def start(self, name: str, argv: Sequence[str], *, env: dict[str, str] | None = None) -> Child:
        child = Child(name, argv, env=env, cwd=self.workdir)
        self._all.append(child)
        return child

    def stop(self, child: Child, timeout: float = 15.0) -> int | None:
        code = child.stop(timeout)
        with contextlib.suppress(ValueError):
            self._all.remove(child)
        return code

    def stop_all(self) -> None:
        for child in reversed(self._all):
            child.signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for child in reversed(self._all):
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            child.stop(1)
        self._all.clear()


# -- databases -------------------------------------------------------------------------------------


def _pg_dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def _pg_fetch(url: str, sql: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(_pg_dsn(url), timeout=10)
    try:
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def pg_execute(url: str, sql: str) -> list[Any]:
    return asyncio.run(_pg_fetch(url, sql))


@dataclass
class Database:
    """A bench database: a SQLite file in the temp dir or a PostgreSQL database of its own."""

    kind: str  # sqlite | postgres
    url: str
    path: Path | None = None
    admin_url: str | None = None
    name: str | None = None
    dropped: bool = field(default=False)

    @classmethod
    def sqlite(cls, path: Path) -> Database:
        return cls("sqlite", f"sqlite:///{path}", path=path)

    @classmethod
    def postgres(cls, admin_url: str, name: str | None = None) -> Database:
        name = name or f"relay_bench_{secrets.token_hex(4)}"
        pg_execute(admin_url, f'CREATE DATABASE "{name}"')
        return cls("postgres", admin_url.rsplit("/", 1)[0] + "/" + name, admin_url=admin_url, name=name)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.kind == "sqlite":
            assert self.path is not None
            conn = sqlite3.connect(self.path, timeout=30)
            try:
                return list(conn.execute(sql))
            finally:
                conn.close()
        return [tuple(r) for r in pg_execute(self.url, sql)]

    def scalar(self, sql: str) -> int:
        rows = self.query(sql)
        return int(rows[0][0] or 0) if rows else 0

    def events(self) -> int:
        return self.scalar("SELECT count(*) FROM event")

    def clone(self, label: str) -> Database:
        """A copy (the source must not be in use): file copy for SQLite, TEMPLATE for PostgreSQL."""
        if self.kind == "sqlite":
            assert self.path is not None
            dest = self.path.with_name(f"{self.path.stem}-{label}.db")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    shutil.copyfile(src, Path(str(dest) + suffix))
            return Database.sqlite(dest)
        assert self.admin_url is not None
        name = f"{self.name}_{label}"[:63]
        pg_execute(self.admin_url, f'CREATE DATABASE "{name}" TEMPLATE "{self.name}"')
        return Database("postgres", self.admin_url.rsplit("/", 1)[0] + "/" + name, admin_url=self.admin_url,
                        name=name)

    def drop(self) -> None:
        if self.dropped:
            return
        self.dropped = True
        if self.kind == "postgres":
            assert self.admin_url is not None
            with contextlib.suppress(Exception):
                pg_execute(self.admin_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        elif self.path is not None:
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    Path(str(self.path) + suffix).unlink()


def pg_reachable(admin_url: str) -> str | None:
    """None when PostgreSQL answers, else the reason."""
    try:
        pg_execute(admin_url, "SELECT 1")
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not usable for this run"
        return f"{type(exc).__name__}: {exc}"


# -- machine ---------------------------------------------------------------------------------------


def _run_text(argv: Sequence[str]) -> str:
    try:
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit() -> tuple[str, bool]:
    """Short commit and whether the working tree differs from it."""
    commit = _run_text(["git", "rev-parse", "--short", "HEAD"]) or "nogit"
    dirty = bool(_run_text(["git", "status", "--porcelain", "--untracked-files=no"]))
    return commit, dirty


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def package_versions(names: Iterable[str]) -> dict[str, str]:
    from importlib import metadata

    out = {}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "-"
    return out


def machine_info() -> dict[str, Any]:
    commit, dirty = git_commit()
    wrk = shutil.which("wrk")
    wrk_version = ""
    if wrk:
        m = re.search(r"wrk (\S+)", _run_text([wrk, "--version"]) or "")
        wrk_version = m.group(1) if m else "?"
    return {
        "nproc": os.cpu_count(), "cpu_model": cpu_model(), "python": platform.python_version(),
        "platform": platform.platform(), "git_commit": commit, "git_dirty": dirty,
        "loadavg_start": list(os.getloadavg()), "wrk": wrk_version or None,
        "packages": package_versions(["uvicorn", "starlette", "httptools", "uvloop", "grpcio", "protobuf",
                                      "aiohttp", "SQLAlchemy", "asyncpg", "orjson"]),
    }


# -- statistics ------------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    vals = sorted(v for v in values if v is not None and not math.isnan(v))
    if not vals:
        return math.nan
    mid = len(vals) // 2
    return vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    vals = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(vals)))
    return vals[min(rank, len(vals)) - 1]


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys over xs."""
    n = len(xs)
    if n < 2:
        return math.nan
    mx, my = sum(xs) / n, sum(ys) / n
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else math.nan


def json_line(**fields: Any) -> None:
    """One JSON record on stdout (how the bench tools talk to run.py)."""
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()
