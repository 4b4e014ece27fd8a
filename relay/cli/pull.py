"""`relay pull [--once] [--source NAME] [--full]`: pull from the configured sender interfaces.

Without ``--once`` the schedule runs in the foreground until Ctrl-C, as inside `relay serve`. With
``--once`` each source (or the named one) gets one pass with a progress bar on stderr and a summary
line per source and module on stdout. Exit 0 when every module passed, 1 when one failed, 2 on usage
or configuration errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from typing import Any, TextIO

from relay.cli.options import add_common_options, settings_from_args
from relay.cli.output import printable
from relay.ingest import Ingestor
from relay.log import setup_logging
from relay.pull.scheduler import run_schedule
from relay.pull.sync import ModuleSummary, pull_source
from relay.routing.holder import ConfigHolder
from relay.routing.model import PullSource
from relay.settings import Settings
from relay.store import Store, open_store
from relay.store.migrate import head_revision


def register(subparsers: Any) -> None:
    """Add `relay pull` to the `relay` parser."""
    p = subparsers.add_parser(
        "pull", help="pull from GreenFlux's sender interface to repair lost pushes",
        description="Pull the configured `pull` sources of forwarding.yaml: incremental from each "
                    "module's stored position (full on the first pass or with --full).",
    )
    add_common_options(p)  # (log level: WARNING with --once unless given)
    p.add_argument("--once", action="store_true", help="one pass of each source with a progress bar, then exit")
    p.add_argument("--source", metavar="NAME", help="only the pull source called NAME (all sources when not given)")
    p.add_argument("--full", action="store_true",
                   help="with --once: ignore the stored positions and fetch everything")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run `relay pull`; returns the exit code."""
    settings = settings_from_args(args)
    setup_logging(settings.log_level if args.log_level or not args.once else "WARNING")
    if args.full and not args.once:
        sys.stderr.write("relay pull: --full only goes with --once\n")
        return 2
    holder = ConfigHolder(settings.config)  # ConfigError: relay.cli prints file:line and exits 2
    sources = holder().pull
    if args.source is not None:
        sources = tuple(p for p in sources if p.name == args.source)
        if not sources:
            known = ", ".join(p.name for p in holder().pull) or "none"
            sys.stderr.write(f"relay pull: no pull source named {args.source!r} in {settings.config} "
                             f"(configured: {known})\n")
            return 2
    if not sources:
        sys.stderr.write(f"relay pull: {settings.config} has no pull sources\n")
        return 2
    head = head_revision()
    if args.once:
        return asyncio.run(_once(settings, holder, sources, args.full, head))
    return asyncio.run(_forever(settings, holder, args.source, head))


async def _open(settings: Settings, head: str | None) -> Store | None:
    store = open_store(settings.database_url, batch_max=settings.batch_max, pool_size=settings.db_pool_size,
                       timeout=settings.db_timeout, queue_max_bytes=settings.write_queue_max_bytes,
                       queue_timeout=settings.write_queue_timeout)
    revision = await store.schema_revision()
    if revision != head:
        await store.close()
        sys.stderr.write(f"relay pull: the database is at revision {revision or 'none'}, not {head}: "
                         "run `relay migrate` first\n")
        return None
    await store.start()
    return store


async def _once(settings: Settings, holder: ConfigHolder, sources: tuple[PullSource, ...], full: bool,
                head: str | None) -> int:
    store = await _open(settings, head)
    if store is None:
        return 1
    ok = True
    try:
        ingestor = Ingestor.from_settings(store, holder, settings)
        for source in sources:
            bar = ProgressBar(sys.stderr)
            try:
                summaries = await pull_source(store, ingestor, source, full=full, progress=bar.update)
            finally:
                bar.finish()
            for summary in summaries:
                sys.stdout.write(printable(summary.line()) + "\n")
                ok = ok and summary.ok
            sys.stdout.flush()
    finally:
        await store.close()
    return 0 if ok else 1


async def _forever(settings: Settings, holder: ConfigHolder, only: str | None, head: str | None) -> int:
    store = await _open(settings, head)
    if store is None:
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGHUP, holder.reload)
    try:
        await run_schedule(store, Ingestor.from_settings(store, holder, settings), holder, stop,
                           only=only)
    finally:
        await store.close()
    return 0


class ProgressBar:
    """Objects fetched / the sender's X-Total-Count on ``stream``.

    On a terminal one line is redrawn in place; elsewhere (a log file, CI) a plain line is written
    at most every ``every`` seconds and at the end of each module, so logs stay readable.
    """

    WIDTH = 30

    def __init__(self, stream: TextIO, *, tty: bool | None = None, every: float = 5.0) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.every = every
        self._last_write = 0.0
        self._current: ModuleSummary | None = None

    def update(self, summary: ModuleSummary) -> None:
        """Show ``summary``'s progress (called after each ingested chunk)."""
        if self._current is not None and self._current is not summary:
            self._end_line()
        self._current = summary
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + self._text(summary))
        elif now - self._last_write >= self.every:
            self.stream.write(self._text(summary) + "\n")
            self._last_write = now
        self.stream.flush()

    def finish(self) -> None:
        """Close the current line (the final count of the module)."""
        self._end_line()
        self._current = None

    def _end_line(self) -> None:
        if self._current is None:
            return
        if self.tty:
            self.stream.write("\r" + self._text(self._current) + "\n")
        else:
            self.stream.write(self._text(self._current) + "\n")
        self._last_write = 0.0
        self.stream.flush()

    def _text(self, s: ModuleSummary) -> str:
        total = s.total if s.total is not None and s.total >= s.fetched else None
        if total:
            filled = int(self.WIDTH * s.fetched / total)
            bar = "#" * filled + "." * (self.WIDTH - filled)
            count = f"{s.fetched}/{total} ({100 * s.fetched // total}%)"
        else:
            bar = "#" * self.WIDTH if s.total is not None else "?" * self.WIDTH
            count = f"{s.fetched}/{s.total if s.total is not None else '?'}"
        return f"{s.source} {s.module} [{bar}] {count}".ljust(72)
