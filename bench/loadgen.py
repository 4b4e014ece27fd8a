"""HTTP/1.1 keep-alive load generator for location PUTs, in separate processes.

It is the fallback when wrk is missing, the preloader (``--count``), and the paced open-loop
generator of the latency, lag and memory runs (``--rate``). A hand-written asyncio protocol keeps
the client's CPU per request well below aiohttp's, which matters on a 2-core machine where the
generator shares the CPUs with the server it measures.

    python bench/loadgen.py --url http://127.0.0.1:8080 --token T [--connections 64] [--processes 2]
        (--duration S | --count N) [--rate R] [--objects M] [--prefix P] [--times FILE]

- ``--duration``: closed loop (each connection sends its next request when the previous one is
  answered) or, with ``--rate``, open loop: request k is due at start + k/R whatever happened
  before; a due request waits for a free connection, and its latency counts from when it was due.
  At the end no new request is sent and every request in flight is waited for, so ``sent ==
  answered`` and "stored events == 1000 answers" is an exact check.
- ``--count``: exactly N requests (a preload).
- ``--objects M``: request i updates object ``i % M`` to version ``i // M`` (a newer last_updated),
  so each object gets a sequence of applied updates; without it every request is a new object.
- ``--times FILE``: the actual send time (``time.monotonic``) of every request by object id, JSON.

Prints one line ``{"event": "result", "sent", "answered", "ok", "statuses", "first", "last",
"rate", "p50_ms", "p99_ms", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LOCATION_PATH, location_parts, percentile  # noqa: E402

_OK = b'"status_code":1000'


class _Conn(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self) -> None:
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.buf = bytearray()
        self.need = -1
        self.start = 0
        self.status = 0
        self.waiter: asyncio.Future[tuple[int, bool]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while True:
            if self.need < 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(buf[:end]).lower()
                self.status = int(head[9:12])
                at = head.find(b"content-length:")
                length = 0
                if at >= 0:
                    eol = head.find(b"\r\n", at)
                    length = int(head[at + 15:eol if eol > 0 else len(head)])
                self.start, self.need = end + 4, end + 4 + length
            if len(buf) < self.need:
                return
            ok = self.status == 200 and buf.find(_OK, self.start, self.need) >= 0
            del buf[:self.need]
            self.need = -1
            if self.waiter is not None and not self.waiter.done():
                self.waiter.set_result((self.status, ok))

    async def send(self, request: bytes) -> tuple[int, bool]:
        if self.lost or self.transport is None:
            raise ConnectionError("connection closed")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


@dataclass(frozen=True)
class Job:
    host: str
    port: int
    token: str
    connections: int
    duration: float | None
    count: int | None
    rate: float | None
    objects: int | None
    prefix: str
    times: bool
    index: int
    procs: int
    start_at: float  # time.monotonic() at which every process starts sending


class _Requests:
    """Request bytes for global request number i (the process's share is i = index, index+procs, ...)."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self._parts: dict[int, tuple[bytes, bytes]] = {}
        self._head = (f"Host: {job.host}:{job.port}\r\nAuthorization: Token {job.token}\r\n"
                      f"Content-Type: application/json\r\n").encode()

    def build(self, i: int) -> tuple[str, bytes]:
        job = self.job
        if job.objects:
            oid, version = f"{job.prefix}{i % job.objects}", i // job.objects
        else:
            oid, version = f"{job.prefix}{i}", 0
        parts = self._parts.get(version)
        if parts is None:
            parts = self._parts[version] = location_parts(version)
        body = parts[0] + oid.encode() + parts[1]
        return oid, (f"PUT {LOCATION_PATH}{oid} HTTP/1.1\r\n".encode() + self._head
                     + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)


async def _work(job: Job) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    conns: list[_Conn] = []
    for _ in range(job.connections):
        _, proto = await loop.create_connection(_Conn, job.host, job.port)
        conns.append(proto)
    reqs = _Requests(job)
    numbers: Any = range(job.index, job.count, job.procs) if job.count is not None else \
        itertools.count(job.index, job.procs)
    numbers = iter(numbers)
    rate = job.rate / job.procs if job.rate else None
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counts = {"sent": 0, "answered": 0, "ok": 0, "errors": 0}
    times: dict[str, float] = {}
    first = last = 0.0
    behind = 0.0
    await asyncio.sleep(max(0.0, job.start_at - time.monotonic()))
    t0 = time.monotonic()
    deadline = t0 + job.duration if job.duration is not None else float("inf")
    seqno = itertools.count()

    async def connection(conn: _Conn) -> None:
        nonlocal first, last, behind
        while True:
            now = time.monotonic()
            due = now
            if rate is not None:
                due = t0 + next(seqno) / rate
                if due >= deadline:
                    return
                if due > now:
                    await asyncio.sleep(due - now)
                else:
                    behind = max(behind, now - due)
            elif now >= deadline:
                return
            i = next(numbers, None)
            if i is None:
                return
            oid, request = reqs.build(i)
            sent_at = time.monotonic()
            if job.times:
                times[oid] = sent_at
            if not first:
                first = sent_at
            counts["sent"] += 1
            try:
                status, ok = await conn.send(request)
            except (ConnectionError, OSError):
                counts["errors"] += 1
                return
            last = time.monotonic()
            counts["answered"] += 1
            counts["ok"] += ok
            statuses[status] = statuses.get(status, 0) + 1
            latencies.append((last - due) * 1000)

    await asyncio.gather(*(connection(c) for c in conns))
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return {**counts, "statuses": statuses, "latencies": latencies, "times": times, "first": first,
            "last": last, "behind_s": behind}


def _run(job: Job) -> dict[str, Any]:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - the stdlib loop works too, only costs more CPU
        pass
    return asyncio.run(_work(job))


def run(args: argparse.Namespace) -> dict[str, Any]:
    url = urlsplit(args.url)
    procs = max(1, args.processes)
    per = [args.connections // procs + (1 if i < args.connections % procs else 0) for i in range(procs)]
    start_at = time.monotonic() + 0.3 + 0.1 * procs
    jobs = [Job(url.hostname or "127.0.0.1", url.port or 80, args.token, per[i], args.duration, args.count,
                args.rate, args.objects, args.prefix, bool(args.times), i, procs, start_at) for i in range(procs)]
    if procs == 1:
        parts = [_run(jobs[0])]
    else:
        with multiprocessing.get_context("fork").Pool(procs) as pool:
            parts = pool.map(_run, jobs)
    lat = [x for p in parts for x in p["latencies"]]
    statuses: dict[str, int] = {}
    for p in parts:
        for k, v in p["statuses"].items():
            statuses[str(k)] = statuses.get(str(k), 0) + v
    first = min((p["first"] for p in parts if p["first"]), default=0.0)
    last = max((p["last"] for p in parts), default=0.0)
    ok = sum(p["ok"] for p in parts)
    if args.times:
        times = {k: v for p in parts for k, v in p["times"].items()}
        Path(args.times).write_text(json.dumps(times))
    return {
        "event": "result", "generator": "python", "sent": sum(p["sent"] for p in parts),
        "answered": sum(p["answered"] for p in parts), "ok": ok, "errors": sum(p["errors"] for p in parts),
        "statuses": statuses, "first": first, "last": last,
        "rate": ok / (last - first) if last > first else 0.0,
        "p50_ms": percentile(lat, 50), "p90_ms": percentile(lat, 90), "p99_ms": percentile(lat, 99),
        "max_ms": max(lat, default=0.0), "mean_ms": sum(lat) / len(lat) if lat else 0.0,
        "behind_s": max(p["behind_s"] for p in parts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--processes", type=int, default=2)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--duration", type=float)
    mode.add_argument("--count", type=int)
    parser.add_argument("--rate", type=float, help="open loop: requests per second in total")
    parser.add_argument("--objects", type=int, help="update this many objects in turn instead of new ones")
    parser.add_argument("--prefix", default="lg-")
    parser.add_argument("--times", help="write {object id: send time} here (JSON)")
    args = parser.parse_args()
    if args.rate is not None and args.duration is None:
        parser.error("--rate needs --duration")
    sys.stdout.write(json.dumps(run(args)) + "\n")


if __name__ == "__main__":
    main()
