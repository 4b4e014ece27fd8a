"""SQLiteStore: WAL, synchronous=FULL, one writer thread that begins IMMEDIATE.

Reads use the async engine (aiosqlite); the group commit runs on the writer thread with the
standard sqlite3 driver (see ``SqlStore``).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool

from relay.store.sql import SqlStore


def _pragmas(engine: Engine, *, immediate: bool, busy_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event decide how transactions start (pysqlite's own BEGIN is deferred).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock at BEGIN: the max(seq) read below it cannot race another
        # writer process (a CLI replay while `relay serve` runs).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class SQLiteStore(SqlStore):
    dialect = "sqlite"

    def _make_batch_engine(self) -> Engine:
        sync_url = self.url.replace("sqlite+aiosqlite:", "sqlite:", 1)
        engine = create_engine(sync_url, poolclass=QueuePool, pool_size=1, max_overflow=0)
        _pragmas(engine, immediate=True, busy_ms=int(self.timeout * 1000))
        return engine

    def _make_engine(self) -> AsyncEngine:
        engine = create_async_engine(self.url, poolclass=AsyncAdaptedQueuePool, pool_size=self.pool_size, max_overflow=4)
        _pragmas(engine.sync_engine, immediate=False, busy_ms=int(self.timeout * 1000))
        return engine

    def _make_write_engine(self) -> AsyncEngine:
        # Small write transactions outside the group commit (outbox claims, cursors) begin IMMEDIATE too.
        engine = create_async_engine(self.url, poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=2)
        _pragmas(engine.sync_engine, immediate=True, busy_ms=int(self.timeout * 1000))
        return engine

    def _bind_time(self, value: datetime | None) -> Any:
        # What SQLAlchemy's SQLite DATETIME stores for UtcDateTime: naive UTC, this exact text form.
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(" ", "microseconds")  # == "%Y-%m-%d %H:%M:%S.%f", at a fifth of the cost

    def _read_time(self, value: Any) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)
