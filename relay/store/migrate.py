"""Apply the Alembic revisions shipped inside the package (`relay migrate`)."""

from __future__ import annotations

import fcntl
import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

MIGRATIONS = Path(__file__).with_name("migrations")
# Page size of SQLite databases created from now on (an existing file keeps its own: it is fixed once
# the file is in WAL mode). SQLite's default: since events are stored compressed (revision 0005) their
# rows fit 4 KB pages as well as 16 KB ones (bench/store_size.py: 1,192 vs 1,188 B per event of the
# 1.5 KB location), and every commit writes whole pages to the WAL, so 16 KB pages wrote ~2.7x the WAL
# bytes per push and ~4x per pruned event (README "Store").
SQLITE_PAGE_SIZE = 4096


def alembic_config(async_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", async_url.replace("%", "%%"))
    return cfg


def upgrade_to_head(async_url: str) -> None:
    """Blocking: call through ``asyncio.to_thread`` from async code (env.py runs its own loop).

    Several processes may migrate at once (replicas starting together): PostgreSQL takes turns on
    an advisory lock in env.py; SQLite on an exclusive lock of a file beside the database, since
    its version check happens before any write lock would be taken.
    """
    db_file = _sqlite_file(async_url)
    if db_file is None:
        command.upgrade(alembic_config(async_url), "head")
        return
    with open(db_file + ".migrate-lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            _new_sqlite_file(db_file)
            command.upgrade(alembic_config(async_url), "head")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _new_sqlite_file(db_file: str) -> None:
    """A database file with no table yet gets its page size and ``auto_vacuum=INCREMENTAL`` (so a prune
    can give pages back with ``PRAGMA incremental_vacuum``), applied by an empty VACUUM, then WAL mode
    (as the store opens it). SQLite takes both settings only before the first table: an existing
    database keeps its own until an operator's VACUUM (README, "Run it for months")."""
    conn = sqlite3.connect(db_file, isolation_level=None)
    try:
        if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
            conn.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("VACUUM")
        conn.execute("PRAGMA journal_mode=WAL")
    finally:
        conn.close()


def _sqlite_file(async_url: str) -> str | None:
    if not async_url.startswith("sqlite"):
        return None
    path = async_url.split(":///", 1)[1] if ":///" in async_url else ""
    return path if path and not path.startswith(":memory:") else None


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())
