"""`relay prune`: remove old events, delivered outbox rows and old refusals (README "Run it for months")."""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

from relay.cli.operate import opened
from relay.cli.options import add_common_options, settings_from_args
from relay.cli.output import json_text, printable
from relay.log import setup_logging
from relay.settings import Settings, parse_duration
from relay.store.base import PRUNE_CHUNK
from relay.store.retention import publish


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "prune", help="remove events, delivered outbox rows and refusals older than a window",
        description="Remove what is older than --older-than and no longer needed: events every durable consumer "
                    "has passed, with no open delivery, that are not the latest of their object; delivered "
                    "outbox rows; refusals (replayed ones a window after their replay). Current states stay. "
                    "Runs in small transactions next to a running relay.",
    )
    add_common_options(p)
    p.add_argument("--older-than", required=True, metavar="DURATION", help="window to keep, e.g. 30d (s, m, h, d)")
    p.add_argument("--dry-run", action="store_true", help="count what would be removed, remove nothing")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--chunk", type=int, default=PRUNE_CHUNK, metavar="N",
                   help=f"rows per transaction (default {PRUNE_CHUNK})")
    p.set_defaults(func=prune_command)


def prune_command(args: argparse.Namespace) -> int:
    try:
        window = parse_duration(args.older_than)
    except ValueError as exc:
        sys.stderr.write(f"relay prune: --older-than: {exc}\n")
        return 2
    if args.chunk < 1:
        sys.stderr.write("relay prune: --chunk: must be at least 1\n")
        return 2
    settings = settings_from_args(args)
    setup_logging(settings.log_level if args.log_level else "WARNING")
    return asyncio.run(prune(settings, timedelta(seconds=window), dry_run=args.dry_run, as_json=args.json,
                             chunk=args.chunk))


async def prune(settings: Settings, window: timedelta, *, dry_run: bool, as_json: bool, chunk: int) -> int:
    verb = "would remove" if dry_run else "removed"

    def progress(table: str, n: int) -> None:
        sys.stderr.write(f"\r{table}: {n} {verb}")
        sys.stderr.flush()

    async with opened(settings) as store:
        report = await store.prune(datetime.now(UTC) - window, dry_run=dry_run, chunk=chunk, progress=progress)
    sys.stderr.write("\n")
    publish(report)
    if as_json:
        sys.stdout.write(json_text(report.as_dict()) + "\n")
        return 0
    w = sys.stdout.write
    w(f"{verb} (older than {report.cutoff:%Y-%m-%d %H:%M:%S}Z): {report.events} events, "
      f"{report.deliveries} delivered outbox rows, {report.rejected} refusals\n")
    w(f"events older than the window still kept: {report.events_kept}\n")
    for name, n in sorted(report.held_by_consumer.items()):
        if n:
            w(f"  held by consumer {printable(name)}: {n} events (its cursor has not passed them)\n")
    for target, n in sorted(report.held_by_outbox.items()):
        w(f"  held by target {printable(target)}: {n} events with pending, in-flight or dead deliveries\n")
    if report.pages_freed:
        w(f"database pages given back: {report.pages_freed}\n")
    return 0
