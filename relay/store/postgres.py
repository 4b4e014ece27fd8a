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
import logging
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from relay.store.sql import SqlStore
from relay.store.tables import STATE

logger = logging.getLogger(__name__)

APPEND_LOCK = 7_420_002
CHANNEL = "relay_events"


class PostgresStore(SqlStore):
    dialect = "postgresql"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._listener: asyncio.Task[None] | None = None

    def _make_engine(self) -> AsyncEngine:
        return create_async_engine(
            self.url,
            pool_size=self.pool_size,
            max_overflow=self.pool_size,
            pool_timeout=self.timeout,
            pool_pre_ping=True,
            connect_args={"timeout": self.timeout, "command_timeout": self.timeout * 3},
        )

    def _lock_appends(self, conn: Connection) -> None:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": APPEND_LOCK})

    def _announce(self, conn: Connection, max_seq: int) -> None:
        conn.execute(text("SELECT pg_notify(:c, :p)"), {"c": CHANNEL, "p": str(max_seq)})

    def _upsert_state(self) -> Any:
        ins = pg_insert(STATE)
        return ins.on_conflict_do_update(
            index_elements=["module", "country_code", "party_id", "object_id"],
            set_={c: ins.excluded[c] for c in ("object", "object_hash", "last_updated", "last_seq", "deleted", "updated_at")},
        )

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

        dsn = self.url.replace("postgresql+asyncpg://", "postgresql://", 1)
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(dsn, timeout=self.timeout)

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
