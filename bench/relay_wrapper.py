"""Run the ``relay`` command on a chosen event loop and/or with group-commit timing, without editing relay/.

    python bench/relay_wrapper.py [--loop asyncio|uvloop] [--instrument FILE] serve [relay serve flags...]

``--loop`` makes the whole relay (uvicorn, grpc.aio, the writer) run on that loop: it installs the
loop's policy before ``relay.cli.main`` starts its loop (relays that call ``asyncio.run``) and sets
``RELAY_EVENT_LOOP`` (relays that choose their loop from that setting). The ingest benchmark runs the
relay this way on the loop it does not use by default and compares it with the bare app on that loop.

``--instrument FILE`` observes every group commit through the store's public hook
(``relay.store.observe_commits``, fields described by ``relay.store.base.CommitTiming``) and, at exit,
writes per-batch figures to FILE (JSON): operations per batch; the loop-side time of a commit
(hand-off to the writer thread, the transaction, hand-back); the thread-side time of the transaction,
how long the writer thread waited to start after the hand-off (``hop_in``) and how long the loop took
to resume after the thread finished (``hop_out``): both are time spent waiting for the GIL or the
loop; the time before COMMIT (lock, max(seq), state reads, planning, executemany) with its thread CPU
time, and the rest of the transaction (BEGIN IMMEDIATE and COMMIT, i.e. the WAL fsync).

The receiver's cost without any store is measured by ``bench/asgi_cost.py`` (an app built with a
store that answers at once, through ``create_app``), not by replacing parts of a running relay.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import sys
from pathlib import Path


def instrument(path: Path) -> None:
    from dataclasses import asdict

    from relay.store import observe_commits
    from relay.store.base import CommitTiming

    batches: list[dict[str, float]] = []

    def observe(timing: CommitTiming) -> None:
        batches.append(asdict(timing))

    observe_commits(observe)

    def dump() -> None:
        path.write_text(json.dumps({"batches": batches}))

    atexit.register(dump)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loop", choices=["asyncio", "uvloop"])
    parser.add_argument("--instrument", help="write per-batch group-commit timings here at exit")
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
    from relay.cli import main as relay_main

    sys.argv = ["relay", *rest]
    try:
        relay_main()
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    main()
