"""`relay backup PATH`: a consistent copy of the SQLite database while `relay serve` keeps ingesting.

The copy is SQLite's online backup in steps (``Store.backup``), made from one read snapshot: it
holds every event committed before the command started and none half-written. PostgreSQL is
refused (exit 2) with a pointer to pg_dump and base backups.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

from relay.cli.options import add_common_options, settings_from_args
from relay.cli.output import printable
from relay.log import setup_logging
from relay.settings import Settings
from relay.store import open_store


def register(subparsers: Any) -> None:
    """Add `relay backup` to the `relay` parser."""
    p = subparsers.add_parser(
        "backup", help="write a consistent copy of the SQLite database (relay serve may keep running)",
        description="Copy the SQLite database to PATH (a new file) with SQLite's online backup, in steps, "
                    "while relay serve keeps ingesting. Restore: stop the relay, replace the database file "
                    "with the copy, remove its -wal and -shm files, start the relay. PostgreSQL: use "
                    "pg_dump or pg_basebackup.",
    )
    add_common_options(p)
    p.add_argument("path", help="the new file to write (must not exist)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(func=backup_command)


def backup_command(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if os.path.exists(args.path):
        sys.stderr.write(f"relay backup: {printable(args.path)} exists; give a new file\n")
        return 2
    setup_logging(settings.log_level if args.log_level else "WARNING")
    return asyncio.run(backup(settings, args.path, quiet=args.quiet))


async def backup(settings: Settings, path: str, *, quiet: bool = False) -> int:
    store = open_store(settings.database_url, timeout=settings.db_timeout, pool_size=1)
    shown = [-1]

    def progress(done: int, total: int) -> None:
        percent = done * 100 // max(total, 1)
        if not quiet and percent != shown[0]:
            shown[0] = percent
            sys.stderr.write(f"\rbackup: {percent:3d} % ({done}/{total} pages)")
            sys.stderr.flush()

    started = time.monotonic()
    try:
        info = await store.backup(path, progress)
    finally:
        if shown[0] >= 0:
            sys.stderr.write("\n")
        await store.close()
    sys.stdout.write(f"backup written to {printable(info.path)}: {info.pages} pages, {info.bytes} bytes, "
                     f"events up to seq {info.last_seq}, {time.monotonic() - started:.1f} s\n")
    return 0
