"""SQLiteStore: WAL, synchronous=FULL, one writer connection that begins IMMEDIATE."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool

from relay.store.sql import SqlStore
from relay.store.tables import STATE


def _pragmas(engine: AsyncEngine, *, immediate: bool, busy_ms: int) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event decide how transactions start (pysqlite's own BEGIN is deferred).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock at BEGIN: the max(seq) read below it cannot race another
        # writer process (a CLI replay while `relay serve` runs).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class SQLiteStore(SqlStore):
    dialect = "sqlite"

    def _make_engine(self) -> AsyncEngine:
        engine = create_async_engine(self.url, poolclass=AsyncAdaptedQueuePool, pool_size=self.pool_size, max_overflow=4)
        _pragmas(engine, immediate=False, busy_ms=int(self.timeout * 1000))
        return engine

    def _make_write_engine(self) -> AsyncEngine:
        # One connection: SQLite has one writer anyway, and the group commit is that writer.
        engine = create_async_engine(self.url, poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=2)
        _pragmas(engine, immediate=True, busy_ms=int(self.timeout * 1000))
        return engine

    def _upsert_state(self) -> Any:
        ins = sqlite_insert(STATE)
        return ins.on_conflict_do_update(
            index_elements=["module", "country_code", "party_id", "object_id"],
            set_={c: ins.excluded[c] for c in ("object", "object_hash", "last_updated", "last_seq", "deleted", "updated_at")},
        )
