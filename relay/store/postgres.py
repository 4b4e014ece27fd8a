"""PostgresStore: several replicas on one database.

Appends take a transaction-level advisory lock before reading ``max(seq)``: only one append
transaction runs at a time, so seqs are assigned and committed in the same order and a reader at
cursor N can never later see an event with seq <= N appear (the role ``LOCK TABLE ... IN EXCLUSIVE
MODE`` plays in eventsourcing's PostgreSQL recorder). The lock is released at commit. ``NOTIFY``
inside the same transaction wakes streams on every replica once the rows are visible.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine, Select, cast, create_engine, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import QueuePool

from relay.errors import ConfigError
from relay.store.base import BackupInfo, StateKey, StoredState
from relay.store.outbox import Outbox, OutcomeWrite
from relay.store.sql import STATE_COLS, SqlStore
from relay.store.sql_outbox import SqlOutbox
from relay.store.urls import DriverArgs, driver_args

logger = logging.getLogger(__name__)

APPEND_LOCK = 7_420_002
CHANNEL = "relay_events"


class PostgresStore(SqlStore):
    dialect = "postgresql"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_one = (
            f"SELECT {', '.join(STATE_COLS[:-1])} FROM state WHERE module = %s AND country_code = %s "
            "AND party_id = %s AND object_id = %s"
        )
        self._listener: asyncio.Task[None] | None = None

    @functools.cached_property
    def _drivers(self) -> DriverArgs:
        """What each driver gets for this URL, TLS parameters included (relay.store.urls)."""
        return driver_args(self.url)

    def _make_engine(self) -> AsyncEngine:
        return create_async_engine(
            self._drivers.asyncpg_url,
            pool_size=self.pool_size,
            max_overflow=self.pool_size,
            pool_timeout=self.timeout,
            pool_pre_ping=True,
            connect_args={"timeout": self.timeout, "command_timeout": self.timeout * 3,
                          **self._drivers.asyncpg_connect_args},
        )

    def _make_batch_engine(self) -> Engine:
        # psycopg (blocking, C-accelerated) on the writer thread; asyncpg serves everything else.
        return create_engine(
            self._drivers.psycopg_url, poolclass=QueuePool, pool_size=1, max_overflow=0, pool_pre_ping=True,
            # Set, not inherited from the server or database default: the append lock orders appends
            # only if max(seq) is read in a snapshot taken after the lock is granted. Under REPEATABLE
            # READ or SERIALIZABLE the snapshot is taken by the lock statement itself, before it waits,
            # and two replicas would number events from the same max(seq).
            isolation_level="READ COMMITTED",
            connect_args={
                "connect_timeout": max(1, int(self.timeout)),
                # a batch stuck on the server (lock, I/O) fails by itself instead of committing later
                "options": f"-c statement_timeout={int(self.timeout * 1000)}",
            },
        )

    def _upsert(self, table: Any) -> Any:
        return postgresql.insert(table)

    async def backup(self, path: str, progress: Callable[[int, int], None] | None = None) -> BackupInfo:
        raise ConfigError([
            "relay backup copies SQLite databases only; back up PostgreSQL with its own tools: "
            "pg_dump -Fc for a logical copy, or pg_basebackup with WAL archiving for point-in-time recovery",
        ])

    def outbox(self, *, own_thread: bool = False) -> Outbox:
        # own_thread is ignored: psycopg on a thread measured no better than asyncpg (the GIL it takes
        # back from the event loop costs what the saved hand-offs gain)
        return PostgresOutbox(self)

    def _placeholders(self, n: int) -> str:
        return ", ".join(["%s"] * n)  # psycopg's markers (the group commit is its only raw SQL user)

    def _read_states(self, conn: Connection, keys: Sequence[StateKey]) -> dict[StateKey, StoredState]:
        """One primary-key lookup per key, pipelined by psycopg into one round trip.

        A single ``object_id = ANY(...)`` or IN-list statement depends on the table's statistics: on
        a table that grew since the last ANALYZE (a fresh install, any burst), the planner scans every
        row of the CPO and filters, measured at 4-18 ms per batch. An equality on the whole primary
        key is planned as a unique-index lookup whatever the statistics say."""
        found: dict[StateKey, StoredState] = {}
        uniq = list(dict.fromkeys(keys))
        if not uniq:
            return found
        cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cur.executemany(self._read_one, [(k.module, k.country_code, k.party_id, k.object_id) for k in uniq],
                            returning=True)
            rt = self._read_time
            while True:
                for m, c, p, o, obj, obj_hash, lu, last_seq, deleted in cur.fetchall():
                    key = StateKey(m, c, p, o)
                    found[key] = StoredState(key, orjson.loads(obj), obj_hash, rt(lu), last_seq, bool(deleted))
                if not cur.nextset():
                    break
        finally:
            cur.close()
        return found

    def _lock_appends(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": APPEND_LOCK})

    def _announce(self, conn: Connection, max_seq: int) -> None:
        conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": str(max_seq)})

    def _bind_time(self, value: datetime | None) -> Any:
        # asyncpg takes aware datetimes for timestamptz; naive ones are UTC (as in UtcDateTime)
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)

    def _read_time(self, value: Any) -> datetime | None:
        return None if value is None else value.astimezone(UTC)

    def _json_field(self, column: Any, key: str) -> Any:
        return cast(column, JSONB)[key].astext

    async def _database_bytes(self) -> int | None:
        return await self._read(lambda conn: int(conn.execute(text("SELECT pg_database_size(current_database())"))
                                                 .scalar_one()))

    async def start(self) -> None:
        await super().start()
        self._listener = asyncio.create_task(self._listen(), name="pg-listen")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await super().close()

    async def _listen(self) -> None:
        """LISTEN on a dedicated connection; reconnect with a pause when it drops."""
        import asyncpg  # only the PostgreSQL store needs the driver directly

        dsn, tls = self._drivers.listen_dsn, self._drivers.asyncpg_connect_args
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(dsn, timeout=self.timeout, **tls)

                def _on_notify(_c: Any, _pid: int, _channel: str, payload: str) -> None:
                    with contextlib.suppress(ValueError):
                        self._note_seq(int(payload))

                await conn.add_listener(CHANNEL, _on_notify)
                # catch up on anything committed while we were not listening
                self._note_seq(await self.max_seq())
                while not conn.is_closed():
                    await asyncio.sleep(1.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep listening whatever the network does
                logger.warning("pg listen connection lost", extra={"error": type(exc).__name__})
                await asyncio.sleep(1.0)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 2)


class PostgresOutbox(SqlOutbox):
    """PostgreSQL's outbox: claims lock their heads ``FOR UPDATE SKIP LOCKED`` (replicas never take the
    same row) and everything else they read ``FOR UPDATE`` (see relay.store.outbox)."""

    def _locked(self, stmt: Select[Any], *, skip_locked: bool = False, of: Any = None) -> Select[Any]:
        return stmt.with_for_update(skip_locked=skip_locked, of=of)

    def _record_all(self, outcomes: Sequence[OutcomeWrite], owner: str,
                    now: datetime) -> Callable[[Connection], set[int]]:
        # asyncpg's executemany reports no row counts: lock the rows still ours and write those at once
        return lambda conn: self._record_fenced(conn, outcomes, owner, now)
