"""Run the ``relay`` command on a chosen event loop and/or with group-commit timing, without editing relay/.

    python bench/relay_wrapper.py [--loop asyncio|uvloop] [--instrument FILE] serve [relay serve flags...]

``--loop`` makes the whole relay (uvicorn, grpc.aio, the writer) run on that loop: it installs the
loop's policy before ``relay.cli.main`` starts its loop (relays that call ``asyncio.run``) and sets
``RELAY_EVENT_LOOP`` (relays that choose their loop from that setting). The ingest benchmark runs the
relay this way on the loop it does not use by default and compares it with the bare app on that loop.

``--instrument FILE`` wraps the group commit's methods and, at exit, writes per-batch figures to FILE
(JSON): operations per batch; the loop-side time of a commit (``_commit_batch``: hand-off to the
writer thread, the transaction, hand-back); for SQLite the thread-side time of the transaction, how
long the writer thread waited to start after the hand-off (``hop_in``) and how long the loop took to
resume after the thread finished (``hop_out``): both are time spent waiting for the GIL or the loop;
the time of ``_apply_batch`` (lock, max(seq), state reads, planning, executemany) with its thread CPU
time, and the rest of the transaction (BEGIN IMMEDIATE and COMMIT, i.e. the WAL fsync).

Diagnostics (never benchmark figures): ``--instant-store`` makes the store answer every push at once
as applied without writing anything (the receiver's cost with a free store and no writer thread);
``--sync-commit`` runs each group commit on the event loop itself instead of the writer thread
(the loop blocks for the batch, fsync included, but no GIL is handed between two threads).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import sys
import time
from pathlib import Path
from typing import Any


def instrument(path: Path) -> None:
    from relay.store import sql

    batches: list[dict[str, float]] = []
    local_rec: list[dict[str, float]] = []  # the batch in progress (one writer: at most one at a time)
    state: dict[str, float] = {"submitted": 0.0, "thread_end": 0.0}

    orig_commit = sql.SqlStore._commit_batch
    orig_apply = sql.SqlStore._apply_batch
    orig_in_thread = sql.SqlStore._batch_in_thread

    async def commit_batch(self: Any, ops: list[Any]) -> Any:
        rec: dict[str, float] = {"ops": len(ops)}
        local_rec.append(rec)
        t0 = time.perf_counter()
        state["submitted"] = t0
        try:
            return await orig_commit(self, ops)
        finally:
            t1 = time.perf_counter()
            rec["commit_ms"] = (t1 - t0) * 1000
            if state["thread_end"]:
                rec["hop_out_ms"] = (t1 - state["thread_end"]) * 1000
                state["thread_end"] = 0.0
            batches.append(rec)
            local_rec.clear()

    def apply_batch(self: Any, conn: Any, ops: list[Any]) -> Any:
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            return orig_apply(self, conn, ops)
        finally:
            if local_rec:
                local_rec[-1]["apply_ms"] = (time.perf_counter() - w0) * 1000
                local_rec[-1]["apply_cpu_ms"] = (time.thread_time() - c0) * 1000

    def batch_in_thread(self: Any, ops: list[Any]) -> Any:
        w0, c0 = time.perf_counter(), time.thread_time()
        rec = local_rec[-1] if local_rec else {}
        rec["hop_in_ms"] = (w0 - state["submitted"]) * 1000
        try:
            return orig_in_thread(self, ops)
        finally:
            w1 = time.perf_counter()
            rec["thread_ms"] = (w1 - w0) * 1000
            rec["thread_cpu_ms"] = (time.thread_time() - c0) * 1000
            state["thread_end"] = w1

    sql.SqlStore._commit_batch = commit_batch  # type: ignore[method-assign]
    sql.SqlStore._apply_batch = apply_batch  # type: ignore[method-assign]
    sql.SqlStore._batch_in_thread = batch_in_thread  # type: ignore[method-assign]

    def dump() -> None:
        path.write_text(json.dumps({"batches": batches}))

    atexit.register(dump)


def instant_store() -> None:
    from relay.ingest import Outcome
    from relay.store import sql
    from relay.store.base import Plan

    plan = Plan(result=Outcome(200, 1000, "Success", "applied"))
    plan.seq = 1

    async def submit(self: Any, op: Any) -> Any:
        return plan

    sql.SqlStore.submit = submit  # type: ignore[method-assign]


def sync_commit() -> None:
    from relay.store import sql

    async def run_batch(self: Any, ops: list[Any]) -> Any:
        return self._batch_in_thread(ops)

    sql.SqlStore._run_batch = run_batch  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", choices=["asyncio", "uvloop"])
    parser.add_argument("--instrument", help="write per-batch group-commit timings here at exit")
    parser.add_argument("--instant-store", action="store_true", help="diagnostic: answer pushes without storing")
    parser.add_argument("--sync-commit", action="store_true", help="diagnostic: group commits on the event loop")
    args, rest = parser.parse_known_args()
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif args.loop == "asyncio":
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
    if args.loop:
        os.environ["RELAY_EVENT_LOOP"] = args.loop
    if args.instrument:
        instrument(Path(args.instrument))
    if args.instant_store:
        instant_store()
    if args.sync_commit:
        sync_commit()
    from relay.cli import main as relay_main

    sys.argv = ["relay", *rest]
    try:
        relay_main()
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    main()
