"""SQLiteStore: WAL, synchronous=FULL, one writer thread that begins IMMEDIATE.

Reads use the async engine (aiosqlite); the group commit runs on the writer thread with the
standard sqlite3 driver (see ``SqlStore``).

Checkpoints run on their own thread. With SQLite's automatic checkpoint, whichever commit pushes the
WAL past 1,000 pages copies them into the database file and fsyncs it inside that commit: under a
burst that is every ~25 group commits, each stalling every request of its batch (the commit-time
spikes seen in bench/profile_ingest.py). Here every connection of the process turns the automatic
checkpoint off and a background task runs ``wal_checkpoint(PASSIVE)`` on a separate connection
every half second, which never blocks writers or readers.

A passive checkpoint never restarts the WAL, though: SQLite starts writing the WAL from its beginning
again only when a writer finds every frame copied and no reader in it, and under sustained load with
subscribers and deliveries attached there always is one (measured: 11.9 GB after 8 minutes at 800
pushes/s). So the same thread also watches the WAL: once it holds an eighth of ``wal_max_bytes``
(RELAY_SQLITE_WAL_MAX_BYTES) it copies passively until little is left, then takes the process's
``WriteGate`` (the group commit and the outbox writers wait) and runs ``wal_checkpoint(RESTART)``,
which copies that tail and waits for the readers in the WAL to finish (short queries): the next
commit writes the WAL from its start again. A file that grew past a quarter of the limit anyway is
truncated the same way. The pause is logged (``sqlite_wal_truncated``, ``mode``, ``pause_ms``).
``journal_size_limit`` makes every connection shrink a WAL it restarts on its own.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, func
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool

from relay.errors import StoreError
from relay.store.base import BackupInfo, Operation, Plan
from relay.store.migrate import SQLITE_PAGE_SIZE
from relay.store.outbox import Outbox, OutcomeWrite
from relay.store.retention import Waiting, WriteRunner, pause_after
from relay.store.sql import DB_WRITE, SqlStore
from relay.store.sql_outbox import OUTBOX_WRITE, Fenced, SqlOutbox

logger = logging.getLogger(__name__)
T = TypeVar("T")


CHECKPOINT_EVERY = 0.5  # seconds between background checkpoints
WAL_CHECK_EVERY = 0.05  # seconds between looks at the -wal file's size
WAL_MAX_BYTES = 256 * 1024 * 1024  # default RELAY_SQLITE_WAL_MAX_BYTES
RESTART_AT = 0.125  # share of the limit the WAL's content may reach before it is restarted (_bound_wal)
TRUNCATE_AT = 0.25  # share of the limit the -wal file may reach before it is truncated (_bound_wal)
CATCH_UP_UNTIL = 0.75  # share of the limit past which the passive rounds before a restart stop
TRUNCATE_TAIL_FRAMES = 64  # uncopied WAL frames (1 MiB) left for the truncating checkpoint's pause
TRUNCATE_CATCH_UP_ROUNDS = 10  # passive checkpoints at most before it (each copies what the last left)
TRUNCATE_BUSY_MS = 100  # how long a restarting or truncating checkpoint waits for readers (writers paused meanwhile)
TRUNCATE_BACKOFF_MAX = 30.0  # seconds between tries while a long reader (a backup) keeps the WAL busy
BACKUP_STEP_PAGES = 1024  # pages `Store.backup` copies per step (progress is reported after each)


def apply_pragmas(engine: Engine, *, immediate: bool, busy_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event decide how transactions start (pysqlite's own BEGIN is deferred).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")  # a no-op unless the file is new
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute(f"PRAGMA busy_timeout={busy_ms}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA wal_autocheckpoint=0")  # the store's checkpoint thread does it
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # IMMEDIATE takes the write lock at BEGIN: the max(seq) read below it cannot race another
        # writer process (a CLI replay while `relay serve` runs).
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class WriteGate:
    """One SQLite write transaction at a time among this process's writer threads, ingest first.

    SQLite has one write lock per database. Two connections of one process that want it at once do
    not queue: the loser's busy handler sleeps 1, 2, 5, 10 ... 100 ms and tries again, and a thread
    that writes in a loop (the delivery workers' outbox thread) wins again and again. Measured: paced
    ingest with a webhook target at 1,400 pushes/s answered in 2.2 s (p50) instead of 21 ms. Here the
    threads queue on a condition instead, and a waiting group commit goes before any other writer:
    GreenFlux's pushes time out, deliveries only wait. Other processes (CLI) still meet the busy
    handler, rarely.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._urgent = 0

    @contextlib.contextmanager
    def hold(self, *, urgent: bool) -> Iterator[None]:
        with self._cond:
            if urgent:
                self._urgent += 1
            try:
                while self._busy or (not urgent and self._urgent):
                    self._cond.wait()
            finally:
                if urgent:
                    self._urgent -= 1
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                self._cond.notify_all()

    def urgent_waiting(self) -> bool:
        """Whether a group commit (or the WAL bound) waits for the holder: maintenance work asks
        this between rows and commits at once (a read without the lock: a hint, checked often)."""
        return self._urgent > 0


class SQLiteStore(SqlStore):
    dialect = "sqlite"

    def __init__(self, *args: Any, wal_max_bytes: int | None = None, **kwargs: Any) -> None:
        self.write_gate = WriteGate()  # before super(): its engines may connect at once
        super().__init__(*args, **kwargs)
        self._db_file = self._batch_engine.url.database
        self._checkpoints: asyncio.Task[None] | None = None
        self._checkpoint_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="db-checkpoint")
        self._checkpoint_conn: sqlite3.Connection | None = None
        self.wal_max_bytes = wal_max_bytes or WAL_MAX_BYTES
        self._wal_file = f"{self._db_file}-wal"
        self._last_passive = 0.0
        self._wal_frames = 0  # frames in the WAL at the last checkpoint
        self._page_size = 0
        self._truncate_after = 0.0  # monotonic time before which no truncation is tried (back-off)
        self._truncate_backoff = 0.0
        for engine in (self._batch_engine, self.engine.sync_engine, self.write_engine.sync_engine):
            self.limit_journal(engine)

    def limit_journal(self, engine: Engine) -> None:
        """A WAL that one of ``engine``'s connections restarts is cut back to a quarter of the limit."""
        limit = self.wal_max_bytes // 4

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute(f"PRAGMA journal_size_limit={limit}").fetchall()

    async def start(self) -> None:
        await super().start()
        if self._db_file and self._db_file != ":memory:":
            self._checkpoints = asyncio.create_task(self._checkpoint_loop(), name="sqlite-checkpoint")

    async def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._checkpoints
        await super().close()
        if self._checkpoints is not None:
            # what this process wrote goes into the database file before it stops
            with contextlib.suppress(sqlite3.Error):
                await asyncio.get_running_loop().run_in_executor(self._checkpoint_thread, self._checkpoint)
        await asyncio.get_running_loop().run_in_executor(self._checkpoint_thread, self._close_checkpoint_conn)
        self._checkpoint_thread.shutdown(wait=True)

    async def _checkpoint_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(WAL_CHECK_EVERY)
            try:
                await loop.run_in_executor(self._checkpoint_thread, self._checkpoint_step)
            except sqlite3.Error as exc:
                logger.warning("sqlite checkpoint failed", extra={"error": str(exc)[:200]})

    def _checkpoint_step(self) -> None:
        """On the checkpoint thread: restart a WAL whose content passed ``RESTART_AT`` of the limit,
        truncate one whose file passed ``TRUNCATE_AT`` of it, else a passive checkpoint every
        ``CHECKPOINT_EVERY`` seconds."""
        size = self._wal_size()
        now = time.monotonic()
        if now >= self._truncate_after and size >= self.wal_max_bytes * TRUNCATE_AT:
            self._bound_wal("TRUNCATE", size)
        elif now >= self._truncate_after and self._wal_frames * self._page_size >= self.wal_max_bytes * RESTART_AT:
            self._bound_wal("RESTART", size)
        elif now - self._last_passive >= CHECKPOINT_EVERY:
            self._checkpoint()  # (with nothing new in the WAL this returns at once)

    def _wal_size(self) -> int:
        try:
            return os.stat(self._wal_file).st_size
        except FileNotFoundError:
            return 0

    def _connection(self) -> sqlite3.Connection:
        if self._checkpoint_conn is None:
            self._checkpoint_conn = sqlite3.connect(self._db_file or "", timeout=self.timeout,
                                                    isolation_level=None, check_same_thread=False)
            self._checkpoint_conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        return self._checkpoint_conn

    def _checkpoint(self) -> int:
        """A passive checkpoint; returns the frames it left uncopied (appended while it ran, or held
        by a reader), and notes how many frames the WAL holds."""
        self._last_passive = time.monotonic()
        conn = self._connection()
        if not self._page_size:
            self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        _busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        self._wal_frames = max(0, int(frames))
        return max(0, int(frames) - int(copied))

    def _bound_wal(self, mode: str, size: int) -> None:
        """Copy the WAL into the database and have it start again from its beginning (``RESTART``:
        the file keeps its size and is written over) or cut to zero bytes (``TRUNCATE``), this
        process's writers paused meanwhile.

        RESTART is the usual way: the file's blocks stay allocated, so nothing is freed and allocated
        again each time (on a file system mounted with ``discard``, freeing 32 MB costs a TRIM, and
        truncating 128 MB took 23 ms on the test machine). TRUNCATE is for a file that grew past
        ``TRUNCATE_AT`` anyway (a long reader kept the WAL from restarting).

        The copying is done by passive checkpoints first, without pausing anyone, again and again
        while writers keep appending (each round copies what came during the one before), until at
        most ``TRUNCATE_TAIL_FRAMES`` are left: the pause then covers only that tail. Measured beside
        a prune: with one passive round ~30 MB were left for the pause, which took 100-540 ms."""
        conn = self._connection()
        for _ in range(TRUNCATE_CATCH_UP_ROUNDS):
            if self._checkpoint() <= TRUNCATE_TAIL_FRAMES or self._wal_size() >= self.wal_max_bytes * CATCH_UP_UNTIL:
                break  # little left to copy, or writers outran the rounds: pause them now, before the limit
        asked = time.perf_counter()
        conn.execute(f"PRAGMA busy_timeout={TRUNCATE_BUSY_MS}")
        try:
            with self.write_gate.hold(urgent=True):
                held = time.perf_counter()
                busy, frames, _copied = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
                released = time.perf_counter()
        finally:
            conn.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        extra = {"mode": mode.lower(), "wal_bytes": size, "wait_ms": round((held - asked) * 1000, 1),
                 "pause_ms": round((released - held) * 1000, 1)}
        if busy:
            # A reader stayed longer than TRUNCATE_BUSY_MS (a backup or another process's long read):
            # try again later, waiting longer each time, so that writers are not paused over and over.
            self._truncate_backoff = min(TRUNCATE_BACKOFF_MAX, max(0.5, self._truncate_backoff * 2))
            self._truncate_after = time.monotonic() + self._truncate_backoff
            logger.warning("sqlite_wal_truncate_busy",
                           extra={**extra, "frames": frames, "retry_in_s": self._truncate_backoff})
        else:
            self._truncate_backoff = 0.0
            self._wal_frames = 0
            logger.info("sqlite_wal_truncated", extra=extra)

    # -- backup ----------------------------------------------------------------------------------
    async def backup(self, path: str, progress: Callable[[int, int], None] | None = None) -> BackupInfo:
        """SQLite's online backup, in steps of ``BACKUP_STEP_PAGES`` on a thread of its own.

        The source connection holds one read transaction for the whole copy: every step reads the
        same snapshot (SQLite restarts a backup whose source another connection changed between steps,
        which under steady ingest would never finish), and writers go on meanwhile (WAL). The copy
        is written to ``path``.partial and renamed when complete."""
        if not self._db_file or self._db_file == ":memory:":
            raise StoreError("an in-memory database cannot be backed up")
        return await asyncio.to_thread(self._backup, path, progress)

    def _backup(self, path: str, progress: Callable[[int, int], None] | None) -> BackupInfo:
        if os.path.exists(path):
            raise StoreError(f"backup target {path!r} exists; choose a new file")
        partial = path + ".partial"
        try:
            src = sqlite3.connect(self._db_file or "", timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the database: {exc}") from exc
        try:
            dst = sqlite3.connect(partial, isolation_level=None)
        except sqlite3.Error as exc:
            src.close()
            raise StoreError(f"cannot create {partial!r}: {exc}") from exc
        try:
            src.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
            src.execute("BEGIN")
            last_seq = src.execute("SELECT coalesce(max(seq), 0) FROM event").fetchone()[0]  # the snapshot starts
            pages = src.execute("PRAGMA page_count").fetchone()[0]
            page_size = src.execute("PRAGMA page_size").fetchone()[0]

            def step(_status: int, remaining: int, total: int) -> None:
                if progress is not None:
                    progress(total - remaining, total)

            src.backup(dst, pages=BACKUP_STEP_PAGES, progress=step)
            src.execute("COMMIT")
            dst.close()
            os.replace(partial, path)
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise StoreError(f"backup failed: {exc}") from exc
        finally:
            dst.close()
            src.close()
        return BackupInfo(path=path, pages=pages, bytes=pages * page_size, last_seq=int(last_seq))

    def _close_checkpoint_conn(self) -> None:
        if self._checkpoint_conn is not None:
            self._checkpoint_conn.close()
            self._checkpoint_conn = None

    def _make_batch_engine(self) -> Engine:
        sync_url = self.url.replace("sqlite+aiosqlite:", "sqlite:", 1)
        engine = create_engine(sync_url, poolclass=QueuePool, pool_size=1, max_overflow=0)
        apply_pragmas(engine, immediate=True, busy_ms=int(self.timeout * 1000))
        return engine

    def _make_engine(self) -> AsyncEngine:
        engine = create_async_engine(self.url, poolclass=AsyncAdaptedQueuePool, pool_size=self.pool_size, max_overflow=4)
        apply_pragmas(engine.sync_engine, immediate=False, busy_ms=int(self.timeout * 1000))
        return engine

    def _make_write_engine(self) -> AsyncEngine:
        # Small write transactions outside the group commit (outbox claims, cursors) begin IMMEDIATE too.
        engine = create_async_engine(self.url, poolclass=AsyncAdaptedQueuePool, pool_size=1, max_overflow=2)
        apply_pragmas(engine.sync_engine, immediate=True, busy_ms=int(self.timeout * 1000))
        return engine

    def _transaction(self, ops: list[Operation], ticket: Any) -> tuple[list[Plan | BaseException], int | None]:
        with self.write_gate.hold(urgent=True):
            return super()._transaction(ops, ticket)

    def _upsert(self, table: Any) -> Any:
        return sqlite.insert(table)

    def outbox(self, *, own_thread: bool = False) -> Outbox:
        return SQLiteOutbox(self, own_thread=own_thread)

    def _bind_time(self, value: datetime | None) -> Any:
        # What SQLAlchemy's SQLite DATETIME stores for UtcDateTime: naive UTC, this exact text form.
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(" ", "microseconds")  # == "%Y-%m-%d %H:%M:%S.%f", at a fifth of the cost

    def _read_time(self, value: Any) -> datetime | None:
        return None if value is None else datetime.fromisoformat(value).replace(tzinfo=UTC)

    def _json_field(self, column: Any, key: str) -> Any:
        return func.json_extract(column, f"$.{key}")

    # -- retention -------------------------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _maintenance(self) -> AsyncIterator[WriteRunner]:
        # a thread and connection of its own, behind the group commit at the write gate (as the
        # delivery workers' outbox writes): a prune chunk never makes a push wait on the busy handler
        thread = _OwnThread(self)
        waiting = self.write_gate.urgent_waiting

        async def run(work: Callable[[Connection, Waiting], T]) -> T:
            with DB_WRITE:
                return await thread.run(lambda conn: work(conn, waiting))

        try:
            yield run
        finally:
            await thread.close()

    async def _reclaim_space(self, run_write: WriteRunner) -> int:
        """``incremental_vacuum`` in steps of ``VACUUM_STEP`` pages, each its own transaction; a
        database made before auto_vacuum=INCREMENTAL was set needs one VACUUM first (README)."""
        freed = 0
        while True:
            t0 = time.perf_counter()
            step, more = await run_write(_vacuum_step)
            freed += step
            await pause_after(time.perf_counter() - t0)  # paced as the prune's chunks
            if not more:
                return freed

    async def _database_bytes(self) -> int | None:
        size = await self._read(
            lambda conn: int(conn.exec_driver_sql("PRAGMA page_count").scalar_one())
            * int(conn.exec_driver_sql("PRAGMA page_size").scalar_one())
        )
        if self._db_file and self._db_file != ":memory:":
            size += await asyncio.to_thread(_file_size, self._db_file + "-wal")
        return size


VACUUM_STEP = 100  # pages a prune gives back per write transaction (1.6 MB: a few ms)


def _vacuum_step(conn: Connection, waiting: Waiting) -> tuple[int, bool]:
    """Up to ``VACUUM_STEP`` free pages given back, fewer if ingest waits; (pages freed, any left)."""
    if conn.exec_driver_sql("PRAGMA auto_vacuum").scalar_one() != 2:  # 2 = INCREMENTAL
        return 0, False
    before = int(conn.exec_driver_sql("PRAGMA freelist_count").scalar_one())
    if not before:
        return 0, False
    # SQLite frees one page per step of the statement, and Python's sqlite3 steps a statement that
    # returns no columns once per execute (fetchall does not step it again): one execute per page
    cur = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    stopped = False
    try:
        for _ in range(min(before, VACUUM_STEP)):
            cur.execute("PRAGMA incremental_vacuum")
            if waiting():
                stopped = True
                break
    finally:
        cur.close()
    freed = before - int(conn.exec_driver_sql("PRAGMA freelist_count").scalar_one())
    return freed, freed > 0 and (stopped or freed >= VACUUM_STEP)


def _file_size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# The fenced outcome write of sql_outbox._RECORD as driver-level SQL, fed tuples: SQLAlchemy's per-row
# parameter processing was most of this write's GIL time on the workers' thread.
_RECORD_SQL = (
    "UPDATE delivery SET state = ?, attempts = ?, next_attempt_at = ?, last_http_status = ?, last_ocpi_status = ?, "
    "last_error = ?, claimed_by = NULL, claimed_until = NULL, updated_at = ? "
    "WHERE id = ? AND state = 'in_flight' AND claimed_by = ?"
)


class _OwnThread:
    """A blocking SQLite connection on a thread of its own: a whole transaction per hand-off.

    Same PRAGMAs and BEGIN IMMEDIATE as the store's engines, so the locking is unchanged; one
    thread means this outbox's transactions queue here instead of on the database lock.
    """

    def __init__(self, store: SQLiteStore) -> None:
        self.gate = store.write_gate  # the group commit goes first (see WriteGate)
        sync_url = store.url.replace("sqlite+aiosqlite:", "sqlite:", 1)
        self.engine: Engine = create_engine(sync_url, poolclass=QueuePool, pool_size=1, max_overflow=0)
        apply_pragmas(self.engine, immediate=True, busy_ms=int(store.timeout * 1000))
        store.limit_journal(self.engine)
        self.thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-writer")

    async def run(self, work: Callable[[Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.thread, self._in_thread, work)

    def _in_thread(self, work: Callable[[Connection], T]) -> T:
        with self.gate.hold(urgent=False), self.engine.begin() as conn:
            return work(conn)

    async def close(self) -> None:
        # queued behind any transaction still running, so nothing is cut off
        await asyncio.get_running_loop().run_in_executor(self.thread, self.engine.dispose)
        self.thread.shutdown(wait=False)


class SQLiteOutbox(SqlOutbox):
    """SQLite's outbox: one write transaction of this outbox at a time, and (``own_thread``, the
    delivery workers') each on a thread of its own. No row locks: SQLite serialises write transactions
    (BEGIN IMMEDIATE), so a claim is atomic as it is."""

    def __init__(self, store: SQLiteStore, *, own_thread: bool = False) -> None:
        super().__init__(store)
        self._bind = store._bind_time
        self._thread = _OwnThread(store) if own_thread else None
        # SQLite has one writer: queueing our own writes here keeps at most one of this process's
        # outbox transactions waiting on the database lock next to the ingest writer.
        self._write_lock = asyncio.Lock()

    async def close(self) -> None:
        if self._thread is not None:
            thread, self._thread = self._thread, None
            await thread.close()

    async def _transaction(self, work: Callable[[Connection], T]) -> T:
        if self._thread is not None:
            with OUTBOX_WRITE:
                return await self._thread.run(work)
        async with self._write_lock:
            return await super()._transaction(work)

    def _record_all(self, outcomes: Sequence[OutcomeWrite], owner: str,
                    now: datetime) -> Callable[[Connection], set[int]]:
        if self._thread is None:
            return super()._record_all(outcomes, owner, now)
        t = self._bind
        now_b = t(now)
        rows = [(o.state, o.attempts, t(o.next_attempt_at), o.http_status, o.ocpi_status, o.error, now_b, o.id,
                 owner) for o in outcomes]

        def work(conn: Connection) -> set[int]:
            if conn.exec_driver_sql(_RECORD_SQL, rows).rowcount != len(rows):
                raise Fenced  # some row is not ours any more: roll back, sort them out one by one
            return set()

        return work
