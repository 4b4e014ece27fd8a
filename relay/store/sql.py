"""SqlStore: the Store on SQLAlchemy's async engine; dialect specifics live in sqlite.py / postgres.py."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from sqlalchemy import and_, func, or_, select, text, tuple_, update
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import DataError, DBAPIError, SQLAlchemyError, StatementError
from sqlalchemy.ext.asyncio import AsyncEngine

from relay import metrics
from relay.errors import RowRefused, StoreError
from relay.store import migrate, retention
from relay.store.base import (
    PRUNE_CHUNK,
    CommitTiming,
    EventFilter,
    EventRecord,
    Monitoring,
    Operation,
    Plan,
    PruneProgress,
    PruneReport,
    RejectedRecord,
    RetentionHold,
    StateKey,
    Store,
    StoredState,
)
from relay.store.packing import pack, unpack
from relay.store.positions import PullPosition
from relay.store.tables import CONSUMER, DELIVERY, EVENT, PULL_POSITION, REJECTED, STATE
from relay.store.writer import GroupCommitWriter

if TYPE_CHECKING:
    from relay.store.retention import Waiting, WriteRunner

T = TypeVar("T")

logger = logging.getLogger(__name__)

# Column orders of the group commit's driver-level inserts (the tuples in _apply_batch follow them).
EVENT_COLS = ("seq", "module", "action", "country_code", "party_id", "object_id", "evse_uid", "connector_id",
              "last_updated", "received_at", "origin", "subscription", "request_id", "status", "body",
              "body_hash", "object", "packed")
STATE_COLS = ("module", "country_code", "party_id", "object_id", "object", "object_hash", "last_updated",
              "last_seq", "deleted", "updated_at")
DELIVERY_COLS = ("seq", "target", "rule", "object_key", "state", "attempts", "next_attempt_at", "created_at",
                 "updated_at")
_KEY_COLS = (STATE.c.module, STATE.c.country_code, STATE.c.party_id, STATE.c.object_id)


class translated:  # noqa: N801 - used as a context manager, like contextlib's lower-case ones
    """``with translated("database read"):`` turns a driver error raised inside into
    ``StoreError("database read failed: <type>: <first line of the driver's message>")``.

    The one place where the store maps SQLAlchemy's and the OS's errors to the project's (the role
    of eventsourcing's ``SQLiteTransaction.__exit__``). Reusable and reentrant: the store keeps one
    per kind of access."""

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        # TimeoutError is an OSError: a driver's or a pool's timeout is a database failure too
        if isinstance(exc, SQLAlchemyError | OSError):
            raise StoreError(f"{self.what} failed: {type(exc).__name__}: {short_error(exc)}") from exc


DB_READ = translated("database read")
DB_WRITE = translated("database write")


def short_error(exc: BaseException) -> str:
    """The first line of a driver error's message (at most 200 characters)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig).splitlines()[0][:200]
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _row_level(exc: BaseException) -> bool:
    """A failure caused by the values of some row, not by the database: a data exception (SQLSTATE
    class 22: too long, out of range, a NUL byte in text) or a value the driver cannot bind."""
    if isinstance(exc, DataError):
        return True
    if isinstance(exc, StatementError) and isinstance(exc.orig, OverflowError | DataError):
        return True
    return isinstance(exc, OverflowError)


class _Abandoned(Exception):
    """The event loop gave up on the batch before the thread committed it: roll it back."""


_commit_observers: list[Callable[[CommitTiming], None]] = []


def observe_commits(observer: Callable[[CommitTiming], None]) -> None:
    """Call ``observer`` (on the event loop) with the timing of every group commit of this process.

    A diagnostics hook for benchmarks; the figures are taken whether or not anyone observes them
    (a few clock reads per batch)."""
    _commit_observers.append(observer)


class _BatchTicket:
    """Hand-off between the event loop and the writer thread for one batch.

    The loop may give up on a batch (timeout, shutdown) and answer 3000 only while the thread has not
    started to commit; the thread commits only a batch nobody gave up on. So a 3000 answer always
    means "not committed", and a commit that began is awaited and answered with its real outcome.
    """

    __slots__ = ("_lock", "_state", "apply_cpu", "apply_wall", "thread_cpu", "thread_end", "thread_start")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = "running"
        # timings (perf_counter / thread_time seconds), written by the thread (see CommitTiming)
        self.thread_start = self.thread_end = self.thread_cpu = self.apply_wall = self.apply_cpu = 0.0

    def may_commit(self) -> bool:
        """Thread side, just before COMMIT."""
        with self._lock:
            if self._state == "abandoned":
                return False
            self._state = "committing"
            return True

    def abandon(self) -> bool:
        """Loop side: True when the batch will now roll back, False when its commit already began."""
        with self._lock:
            if self._state == "committing":
                return False
            self._state = "abandoned"
            return True


def _never() -> bool:
    """PostgreSQL's ``Waiting``: a maintenance transaction locks only the rows it deletes, and
    ingest never waits for it."""
    return False


def now_utc() -> datetime:
    return datetime.now(UTC)


def json_hash(text_value: str | bytes) -> str:
    data = text_value.encode() if isinstance(text_value, str) else text_value
    return hashlib.sha256(data).hexdigest()


DECODE_ON_LOOP = 32  # rows a read decodes on the event loop; more go to a worker thread


async def _decode(rows: Sequence[Row[Any]], decode: Callable[[Row[Any]], T]) -> list[T]:
    """``decode`` each row; a page (500 location events: ~8 ms of zstd and parsing) on a worker
    thread, so that the loop goes on answering pushes meanwhile (the GIL switches every ms)."""
    if len(rows) <= DECODE_ON_LOOP:
        return [decode(r) for r in rows]
    return await asyncio.to_thread(lambda: [decode(r) for r in rows])


def _state(row: Row[Any]) -> StoredState:
    m = row._mapping
    return StoredState(
        key=StateKey(m["module"], m["country_code"], m["party_id"], m["object_id"]),
        object=orjson.loads(m["object"]),
        object_hash=m["object_hash"],
        last_updated=m["last_updated"],
        last_seq=m["last_seq"],
        deleted=bool(m["deleted"]),
    )


def event_record(row: Row[Any]) -> EventRecord:
    m = row._mapping
    packed = m["packed"]
    body, obj = unpack(packed) if packed is not None else (m["body"], m["object"])
    return EventRecord(
        seq=m["seq"], module=m["module"], action=m["action"], country_code=m["country_code"],
        party_id=m["party_id"], object_id=m["object_id"], evse_uid=m["evse_uid"],
        connector_id=m["connector_id"], last_updated=m["last_updated"], received_at=m["received_at"],
        origin=m["origin"], subscription=m["subscription"], request_id=m["request_id"],
        status=m["status"], body=body, object=obj,
    )


def _rejected(row: Row[Any]) -> RejectedRecord:
    m = row._mapping
    return RejectedRecord(
        id=m["id"], received_at=m["received_at"], subscription=m["subscription"], origin=m["origin"],
        method=m["method"], path=m["path"], module=m["module"], http_status=m["http_status"],
        status_code=m["status_code"], reason=m["reason"], body=bytes(m["body"]),
        request_id=m["request_id"], replayed_at=m["replayed_at"], replay_seq=m["replay_seq"],
    )


def cpo_clause(cc_col: Any, party_col: Any, cpos: Sequence[tuple[str, str]]) -> Any:
    parts = []
    for cc, party in cpos:
        conds = []
        if cc != "*":
            conds.append(func.upper(cc_col) == cc.upper())
        if party != "*":
            conds.append(func.upper(party_col) == party.upper())
        if not conds:
            return None  # "*" matches everything
        parts.append(and_(*conds))
    return or_(*parts) if parts else text("1=0")


class SqlStore(Store):
    """Shared implementation; subclasses provide engines, the append lock and wake-ups."""

    dialect = "sql"

    def __init__(self, async_url: str, *, batch_max: int = 512, pool_size: int = 10, timeout: float = 10.0,
                 queue_max_bytes: int = 64 * 1024 * 1024, queue_timeout: float = 5.0) -> None:
        self.url = async_url
        self.batch_max = batch_max
        self.pool_size = pool_size
        self.timeout = timeout
        self.engine: AsyncEngine = self._make_engine()
        self.write_engine: AsyncEngine = self._make_write_engine()
        self._writer = GroupCommitWriter(self._commit_batch, batch_max=batch_max, queue_max_bytes=queue_max_bytes,
                                         queue_timeout=queue_timeout)
        # The group commit runs each whole batch as one call on a dedicated thread with a blocking
        # driver: through an async driver every statement is a round trip between the event loop and
        # the driver, and under HTTP load each of those waits behind the loop's other work (measured
        # ~1 ms per statement on SQLite through aiosqlite, and a 32-push PostgreSQL batch took 24 ms
        # through asyncpg under load against ~3 ms alone). One hand-off per batch removes that.
        self._batch_engine = self._make_batch_engine()
        self._batch_thread = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="db-writer")
        # The group commit's writes are driver-level statements built once, fed tuples built in
        # _apply_batch: SQLAlchemy's per-row work (dict rows, type processors, cache keys) was more
        # than half of each batch's CPU, all of it holding the GIL the receiver needs.
        self._sql_event = self._insert_sql("event", EVENT_COLS)
        self._sql_delivery = self._insert_sql("delivery", DELIVERY_COLS)
        self._sql_state = self._insert_sql("state", STATE_COLS) + (
            " ON CONFLICT (module, country_code, party_id, object_id) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in STATE_COLS[4:])
        )
        self._insert_rejected = REJECTED.insert()
        self._read_sql: dict[int, str] = {}  # _read_states' statements by number of ids
        self._latest_seq = 0
        self._seq_changed = asyncio.Event()

    # -- dialect hooks -------------------------------------------------------------------------
    def _make_engine(self) -> AsyncEngine:
        raise NotImplementedError

    def _make_write_engine(self) -> AsyncEngine:
        return self.engine

    def _make_batch_engine(self) -> Engine:
        """A blocking engine with one connection, used only by the group commit's thread."""
        raise NotImplementedError

    def _lock_appends(self, conn: Connection) -> None:
        """Serialise appends so that commit order equals seq order (see the subclasses)."""

    def _announce(self, conn: Connection, max_seq: int) -> None:
        """Inside the transaction: tell other processes about new events (PostgreSQL NOTIFY)."""

    def _placeholders(self, n: int) -> str:
        """The driver's markers for ``n`` parameters (qmark here; PostgreSQL overrides)."""
        return ", ".join("?" * n)

    def _read_states_sql(self, n: int, prefix: tuple[str, str, str], ids: list[str]) -> tuple[str, tuple[Any, ...]]:
        """The states of ``n`` object ids under one (module, country_code, party_id): an IN list
        (statements kept per length); PostgreSQL overrides with one ``= ANY(array)`` statement."""
        sql = self._read_sql.get(n)
        if sql is None:
            sql = self._read_sql[n] = (
                f"SELECT {', '.join(STATE_COLS[:-1])} FROM state WHERE module = ? AND country_code = ? "
                f"AND party_id = ? AND object_id IN ({self._placeholders(n)})"
            )
        return sql, (*prefix, *ids)

    def _read_time(self, value: Any) -> datetime | None:
        """A timestamp as the driver returns it, as an aware UTC datetime (dialects override)."""
        raise NotImplementedError

    def _bind_time(self, value: datetime | None) -> Any:
        """A timestamp as the driver stores it (see ``UtcDateTime``); PostgreSQL overrides."""
        return value

    def _upsert(self, table: Any) -> Any:
        """The dialect's INSERT with ``on_conflict_do_update`` (SQLite's and PostgreSQL's differ in type)."""
        raise NotImplementedError

    def _insert_sql(self, table: str, cols: Sequence[str]) -> str:
        return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({self._placeholders(len(cols))})"

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        self._latest_seq = await self.max_seq()
        self._writer.start()

    async def close(self) -> None:
        await self._writer.close()
        await asyncio.get_running_loop().run_in_executor(self._batch_thread, self._batch_engine.dispose)
        self._batch_thread.shutdown(wait=True)
        await self.write_engine.dispose()
        if self.write_engine is not self.engine:
            await self.engine.dispose()

    async def migrate(self) -> None:
        """Apply the Alembic revisions (blocking Alembic runs in a worker thread)."""
        await asyncio.to_thread(migrate.upgrade_to_head, self.url)

    # -- writes ----------------------------------------------------------------------------------
    async def submit(self, op: Operation) -> Plan:
        return await self._writer.submit(op)

    def _read_states(self, conn: Connection, keys: Sequence[StateKey]) -> dict[StateKey, StoredState]:
        found: dict[StateKey, StoredState] = {}
        # Grouped as prefix = ... AND object_id IN (...): a row-value IN list makes SQLite scan the table.
        groups: dict[tuple[str, str, str], set[str]] = {}
        for k in keys:
            groups.setdefault((k.module, k.country_code, k.party_id), set()).add(k.object_id)
        rt = self._read_time
        for (module, cc, party), ids in groups.items():
            id_list = sorted(ids)
            for i in range(0, len(id_list), 500):
                chunk = id_list[i : i + 500]
                sql, params = self._read_states_sql(len(chunk), (module, cc, party), chunk)
                for m, c, p, o, obj, obj_hash, lu, last_seq, deleted in conn.exec_driver_sql(sql, params):
                    key = StateKey(m, c, p, o)
                    found[key] = StoredState(key, orjson.loads(obj), obj_hash, rt(lu), last_seq, bool(deleted))
        return found

    async def _commit_batch(self, ops: list[Operation]) -> list[Plan | BaseException]:
        ticket = _BatchTicket()
        t0 = time.perf_counter()
        try:
            with DB_WRITE:
                results, last_seq = await self._run_batch(ops, ticket)
        except _Abandoned:
            raise StoreError(f"database write took longer than {self.timeout * 3:g}s; rolled back") from None
        if last_seq is not None:
            self._note_seq(last_seq)
        if _commit_observers:
            t1 = time.perf_counter()
            timing = CommitTiming(
                ops=len(ops), commit_ms=(t1 - t0) * 1000, hop_in_ms=(ticket.thread_start - t0) * 1000,
                thread_ms=(ticket.thread_end - ticket.thread_start) * 1000, thread_cpu_ms=ticket.thread_cpu * 1000,
                apply_ms=ticket.apply_wall * 1000, apply_cpu_ms=ticket.apply_cpu * 1000,
                hop_out_ms=(t1 - ticket.thread_end) * 1000,
            )
            for observe in _commit_observers:
                observe(timing)
        return results

    async def _run_batch(self, ops: list[Operation],
                         ticket: _BatchTicket) -> tuple[list[Plan | BaseException], int | None]:
        """Run the batch as one call on the writer thread, bounded by 3 x the database timeout.

        On timeout (or cancellation) the batch is abandoned only if its commit has not begun; the thread
        then rolls it back. If the commit has begun, its real outcome is awaited instead."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._batch_thread, self._timed_batch, ops, ticket)
        try:
            async with asyncio.timeout(self.timeout * 3):
                return await asyncio.shield(future)
        except TimeoutError:
            if ticket.abandon():
                raise
            return await future
        except asyncio.CancelledError:
            if ticket.abandon():
                raise
            result = await future
            # answer the callers with what was committed, then let the cancellation through
            asyncio.current_task().cancel()  # type: ignore[union-attr]
            return result

    def _timed_batch(self, ops: list[Operation], ticket: _BatchTicket) -> tuple[list[Plan | BaseException], int | None]:
        ticket.thread_start, c0 = time.perf_counter(), time.thread_time()
        try:
            return self._batch_in_thread(ops, ticket)
        finally:
            ticket.thread_end, ticket.thread_cpu = time.perf_counter(), time.thread_time() - c0

    def _batch_in_thread(self, ops: list[Operation], ticket: _BatchTicket) -> tuple[list[Plan | BaseException], int | None]:
        """The whole batch in one transaction; if the database refuses some row's values, the batch is
        split in halves, each retried in its own transaction, down to the operations at fault, which
        fail alone with RowRefused while every other operation commits (batch isolation)."""
        try:
            return self._transaction(ops, ticket)
        except (StatementError, OverflowError) as exc:  # DataError is a StatementError
            if not _row_level(exc):
                raise
            if len(ops) == 1:
                metrics.STORE_ROWS_REFUSED.inc()
                logger.warning("database refused an operation's values", extra={"error": short_error(exc)})
                return [RowRefused(f"the database refused a value: {short_error(exc)}")], None
        mid = len(ops) // 2
        first, seq1 = self._batch_in_thread(ops[:mid], ticket)
        second, seq2 = self._batch_in_thread(ops[mid:], ticket)
        return first + second, seq2 if seq2 is not None else seq1

    def _transaction(self, ops: list[Operation], ticket: _BatchTicket) -> tuple[list[Plan | BaseException], int | None]:
        with self._batch_engine.connect() as conn, conn.begin():
            w0, c0 = time.perf_counter(), time.thread_time()
            result = self._apply_batch(conn, ops)
            ticket.apply_wall += time.perf_counter() - w0
            ticket.apply_cpu += time.thread_time() - c0
            if not ticket.may_commit():
                raise _Abandoned
            return result

    def _apply_batch(self, conn: Connection, ops: list[Operation]) -> tuple[list[Plan | BaseException], int | None]:
        """Inside one transaction: lock appends, number events, decide every operation against the
        states of the batch (later operations see earlier ones' writes), write everything in a few
        executemany statements. Returns each operation's plan (or error) and the last seq appended."""
        now = now_utc()
        t = self._bind_time
        now_b = t(now)
        self._lock_appends(conn)
        seq = conn.exec_driver_sql("SELECT coalesce(max(seq), 0) FROM event").scalar_one()
        keys: list[StateKey] = [k for op in ops for k in op.reads]
        overlay: dict[StateKey, StoredState | None] = dict(self._read_states(conn, keys))
        view = _View(overlay)
        results: list[Plan | BaseException] = []
        events: list[tuple[Any, ...]] = []
        states: dict[StateKey, tuple[Any, ...]] = {}
        deliveries: list[tuple[Any, ...]] = []
        rejected: list[dict[str, Any]] = []
        replays: list[dict[str, Any]] = []
        for op in ops:
            try:
                plan = op.plan(view)
            except Exception as exc:  # noqa: BLE001 - one bad operation must not fail the batch
                logger.exception("operation failed to plan")
                results.append(exc)
                continue
            if plan.event is not None:
                seq += 1
                plan.seq = seq
                ev = plan.event
                # order of EVENT_COLS
                events.append((
                    seq, ev.module, ev.action, ev.country_code, ev.party_id, ev.object_id, ev.evse_uid,
                    ev.connector_id, t(ev.last_updated), t(ev.received_at), ev.origin, ev.subscription,
                    ev.request_id, ev.status, "", ev.body_hash, None, pack(ev.body, ev.object),
                ))
                for d in plan.deliveries:
                    # order of DELIVERY_COLS
                    deliveries.append((seq, d.target, d.rule, d.object_key, "pending", 0, now_b, now_b, now_b))
            for sw in plan.states:
                obj_text = sw.text if sw.text is not None else orjson.dumps(sw.object).decode()
                overlay[sw.key] = StoredState(sw.key, sw.object, sw.object_hash, sw.last_updated, seq, sw.deleted)
                k = sw.key
                # order of STATE_COLS
                states[k] = (k.module, k.country_code, k.party_id, k.object_id, obj_text, sw.object_hash,
                             t(sw.last_updated), seq, sw.deleted, now_b)
            if plan.rejected is not None:
                r = plan.rejected
                rejected.append({
                    "received_at": r.received_at, "subscription": r.subscription, "origin": r.origin,
                    "method": r.method, "path": r.path, "module": r.module, "http_status": r.http_status,
                    "status_code": r.status_code, "reason": r.reason, "body": r.body,
                    "request_id": r.request_id,
                })
            if plan.rejected_replay is not None:
                replays.append({"rid": plan.rejected_replay[0], "at": plan.rejected_replay[1], "rseq": plan.seq})
            results.append(plan)
        if events:
            conn.exec_driver_sql(self._sql_event, events)
        if states:
            conn.exec_driver_sql(self._sql_state, list(states.values()))
        if deliveries:
            conn.exec_driver_sql(self._sql_delivery, deliveries)
        if rejected:
            conn.execute(self._insert_rejected, rejected)
        for rp in replays:
            conn.execute(
                update(REJECTED).where(REJECTED.c.id == rp["rid"]).values(replayed_at=rp["at"], replay_seq=rp["rseq"])
            )
        if events:
            self._announce(conn, seq)
        return results, (seq if events else None)

    def _note_seq(self, seq: int) -> None:
        if seq > self._latest_seq:
            self._latest_seq = seq
            self._seq_changed.set()
            self._seq_changed = asyncio.Event()

    # -- reads -----------------------------------------------------------------------------------
    async def _fetch(self, stmt: Any) -> list[Row[Any]]:
        with DB_READ:
            async with self.engine.connect() as conn:
                return list(await conn.execute(stmt))

    async def _execute(self, stmt: Any, engine: AsyncEngine) -> None:
        """One statement in its own transaction on ``engine`` (the write engine begins IMMEDIATE on SQLite)."""
        with DB_WRITE:
            async with engine.begin() as conn:
                await conn.execute(stmt)

    async def get_state(self, key: StateKey) -> StoredState | None:
        rows = await self._fetch(
            select(STATE).where(tuple_(*_KEY_COLS) == (key.module, key.country_code, key.party_id, key.object_id))
        )
        return _state(rows[0]) if rows else None

    async def find_states(self, module: str, object_id: str, *, case_insensitive: bool = False) -> list[StoredState]:
        cond = (func.lower(STATE.c.object_id) == object_id.lower()) if case_insensitive else (STATE.c.object_id == object_id)
        rows = await self._fetch(select(STATE).where(STATE.c.module == module, cond).order_by(STATE.c.last_seq.desc()))
        return [_state(r) for r in rows]

    async def list_states(
        self, module: str, cpos: Sequence[tuple[str, str]] | None, after: tuple[str, str, str] | None, limit: int
    ) -> list[StoredState]:
        stmt = select(STATE).where(STATE.c.module == module, STATE.c.deleted == False)  # noqa: E712
        if cpos is not None:
            clause = cpo_clause(STATE.c.country_code, STATE.c.party_id, cpos)
            if clause is not None:
                stmt = stmt.where(clause)
        if after is not None:
            stmt = stmt.where(tuple_(STATE.c.country_code, STATE.c.party_id, STATE.c.object_id) > after)
        stmt = stmt.order_by(STATE.c.country_code, STATE.c.party_id, STATE.c.object_id).limit(limit)
        return await _decode(await self._fetch(stmt), _state)

    async def read_events(
        self, after_seq: int, limit: int, flt: EventFilter | None = None, *, applied_only: bool = True
    ) -> list[EventRecord]:
        stmt = select(EVENT).where(EVENT.c.seq > after_seq)
        if applied_only:
            stmt = stmt.where(EVENT.c.status == "applied")
        if flt is not None:
            if flt.modules is not None:
                stmt = stmt.where(EVENT.c.module.in_(sorted(flt.modules)))
            if flt.cpos is not None:
                clause = cpo_clause(EVENT.c.country_code, EVENT.c.party_id, flt.cpos)
                if clause is not None:
                    stmt = stmt.where(clause)
            if flt.object_ids is not None:
                stmt = stmt.where(EVENT.c.object_id.in_(sorted(flt.object_ids)))
            if flt.subscriptions is not None:
                stmt = stmt.where(EVENT.c.subscription.in_(sorted(flt.subscriptions)))
        stmt = stmt.order_by(EVENT.c.seq).limit(limit)
        return await _decode(await self._fetch(stmt), event_record)

    async def max_seq(self) -> int:
        rows = await self._fetch(select(func.coalesce(func.max(EVENT.c.seq), 0)))
        return int(rows[0][0])

    async def first_seq_since(self, since: datetime) -> int:
        rows = await self._fetch(select(func.min(EVENT.c.seq)).where(EVENT.c.received_at >= since))
        first = rows[0][0]
        return (int(first) - 1) if first is not None else await self.max_seq()

    async def wait_for_events(self, after_seq: int, timeout: float) -> int:
        if self._latest_seq > after_seq:
            return self._latest_seq
        changed = self._seq_changed
        try:
            await asyncio.wait_for(changed.wait(), timeout)
        except TimeoutError:
            # another process (CLI replay, another replica without NOTIFY) may have appended
            self._note_seq(await self.max_seq())
        return self._latest_seq

    @property
    def latest_seq(self) -> int:
        return self._latest_seq

    async def get_cursor(self, name: str) -> int | None:
        rows = await self._fetch(select(CONSUMER.c.seq).where(CONSUMER.c.name == name))
        return int(rows[0][0]) if rows else None

    async def commit_cursor(self, name: str, seq: int) -> None:
        # One upsert that never moves backwards: two first commits of one name (two replicas serving
        # one consumer) cannot both INSERT and collide, as an update-then-insert could.
        values = self._upsert(CONSUMER).values(name=name, seq=seq, updated_at=now_utc())
        stmt = values.on_conflict_do_update(
            index_elements=[CONSUMER.c.name],
            set_={"seq": values.excluded.seq, "updated_at": values.excluded.updated_at},
            where=CONSUMER.c.seq <= values.excluded.seq,
        )
        await self._execute(stmt, self.engine)

    async def list_rejected(self, limit: int = 1000, *, only_open: bool = False) -> list[RejectedRecord]:
        stmt = select(REJECTED)
        if only_open:
            stmt = stmt.where(REJECTED.c.replayed_at.is_(None))
        stmt = stmt.order_by(REJECTED.c.id).limit(limit)
        return [_rejected(r) for r in await self._fetch(stmt)]

    async def get_rejected(self, rejected_id: int) -> RejectedRecord | None:
        rows = await self._fetch(select(REJECTED).where(REJECTED.c.id == rejected_id))
        return _rejected(rows[0]) if rows else None

    async def update_rejected_reason(self, rejected_id: int, http_status: int, status_code: int, reason: str) -> None:
        await self._execute(
            update(REJECTED).where(REJECTED.c.id == rejected_id)
            .values(http_status=http_status, status_code=status_code, reason=reason),
            self.engine,
        )

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                # read a table: a bare SELECT 1 never touches an SQLite file
                await self._fetch(select(func.max(EVENT.c.seq)))
            return True
        except (StoreError, TimeoutError):
            return False

    async def schema_revision(self) -> str | None:
        try:
            with DB_READ:
                return await migrate.current_revision(self.engine)
        except StoreError:
            return None

    async def stats(self) -> dict[str, Any]:
        now = now_utc()
        ev = [r._mapping for r in await self._fetch(
            select(EVENT.c.status, func.count().label("n"), func.max(EVENT.c.seq).label("last"))
            .group_by(EVENT.c.status)
        )]
        by_status = {m["status"]: int(m["n"]) for m in ev}
        last_seq = max((int(m["last"] or 0) for m in ev), default=0)
        outbox = [r._mapping for r in await self._fetch(
            select(DELIVERY.c.target, DELIVERY.c.state, func.count().label("n"),
                   func.min(DELIVERY.c.created_at).label("oldest"))
            .group_by(DELIVERY.c.target, DELIVERY.c.state)
        )]
        targets: dict[str, dict[str, Any]] = {}
        for m in outbox:
            t = targets.setdefault(m["target"], {"pending": 0, "in_flight": 0, "done": 0, "dead": 0,
                                                 "oldest_pending_age_s": None})
            t[m["state"]] = int(m["n"])
            if m["state"] in ("pending", "in_flight") and m["oldest"] is not None:
                age = (now - m["oldest"]).total_seconds()
                t["oldest_pending_age_s"] = round(max(age, t["oldest_pending_age_s"] or 0.0), 3)
        for t in targets.values():
            t["depth"] = t["pending"] + t["in_flight"]
        consumers = [r._mapping for r in await self._fetch(select(CONSUMER.c.name, CONSUMER.c.seq))]
        rej = (await self._fetch(
            select(func.count().label("n"), func.count(REJECTED.c.replayed_at).label("replayed")).select_from(REJECTED)
        ))[0]._mapping
        return {
            "events": sum(by_status.values()),
            "events_by_status": by_status,
            "last_seq": last_seq,
            "unmatched": by_status.get("unmatched", 0),
            "rejected": int(rej["n"]),
            "rejected_open": int(rej["n"]) - int(rej["replayed"]),
            "targets": targets,
            "consumers": {m["name"]: {"seq": int(m["seq"]), "lag": last_seq - int(m["seq"])} for m in consumers},
            **await self._retention_stats(),
        }


    async def monitoring(self, *, sessions_before: datetime, locations_before: datetime) -> Monitoring:
        live = STATE.c.deleted == False  # noqa: E712 - SQL comparison, not a Python truth test
        silent_sessions = select(func.count()).select_from(STATE).where(
            STATE.c.module == "sessions", live, STATE.c.updated_at < sessions_before,
            self._json_field(STATE.c.object, "status") == "ACTIVE")
        locations = select(
            func.count(), func.count().filter(STATE.c.updated_at < locations_before)
        ).select_from(STATE).where(STATE.c.module == "locations", live)
        oldest = (select(DELIVERY.c.target, func.min(DELIVERY.c.created_at))
                  .where(DELIVERY.c.state.in_(("pending", "in_flight"))).group_by(DELIVERY.c.target))
        with DB_READ:
            async with self.engine.connect() as conn:
                sessions = int((await conn.execute(silent_sessions)).scalar_one())
                total, silent = (await conn.execute(locations)).one()
                oldest_open = {t: when for t, when in await conn.execute(oldest) if when is not None}
                last = int((await conn.execute(select(func.max(EVENT.c.seq)))).scalar_one() or 0)
                lag = {name: max(0, last - int(seq))
                       for name, seq in await conn.execute(select(CONSUMER.c.name, CONSUMER.c.seq))}
        try:
            size = await self._database_bytes()
        except (OSError, StoreError) as exc:
            logger.warning("database size unknown", extra={"error": str(exc)[:200]})
            size = None
        return Monitoring(sessions, int(silent), int(total), oldest_open, lag, size)

    def _json_field(self, column: Any, key: str) -> Any:
        """SQL for the text of ``key`` in a JSON text column (dialects override)."""
        raise NotImplementedError

    # -- retention (relay.store.retention) -------------------------------------------------------
    async def prune(self, cutoff: datetime, *, dry_run: bool = False, chunk: int = PRUNE_CHUNK,
                    progress: PruneProgress | None = None) -> PruneReport:
        return await retention.prune(self, cutoff, dry_run=dry_run, chunk=max(1, chunk), progress=progress)

    async def retention_holds(self) -> list[RetentionHold]:
        return await self._read(retention.holds)

    async def rejected_counts(self) -> dict[str | None, int]:
        return await self._read(retention.rejected_counts)

    async def _retention_stats(self) -> dict[str, Any]:
        """`relay status`'s size, oldest event, refusals' volume and what holds retention back."""
        out = await self._read(retention.volume)
        out["database_bytes"] = await self._database_bytes()
        out["retention_held_by"] = [
            {"kind": h.kind, "name": h.name, "seq": h.seq,
             "since": h.since.isoformat().replace("+00:00", "Z") if h.since else None}
            for h in await self.retention_holds()
        ]
        return out

    async def _read(self, work: Callable[[Connection], T]) -> T:
        """``work`` on a read connection (the async engine's, run through its sync facade)."""
        with DB_READ:
            async with self.engine.connect() as conn:
                return await conn.run_sync(work)

    @contextlib.asynccontextmanager
    async def _maintenance(self) -> AsyncIterator[WriteRunner]:
        """A runner of short write transactions for maintenance (retention) next to ingest; SQLite
        overrides it to queue behind the group commit at its write gate."""

        async def run(work: Callable[[Connection, Waiting], T]) -> T:
            with DB_WRITE:
                async with self.write_engine.begin() as conn:
                    return await conn.run_sync(work, _never)

        yield run

    async def _reclaim_space(self, run_write: WriteRunner) -> int:
        """After a prune: give free pages back to the file system (SQLite); pages freed."""
        return 0

    async def _database_bytes(self) -> int | None:
        """The database's size on disk (dialects override)."""
        return None

    # -- pull positions --------------------------------------------------------------------------
    async def get_positions(self, source: str) -> dict[str, PullPosition]:
        rows = await self._fetch(select(PULL_POSITION).where(PULL_POSITION.c.source == source))
        out: dict[str, PullPosition] = {}
        for row in rows:
            m = row._mapping
            out[m["module"]] = PullPosition(m["source"], m["module"], m["position"], m["last_run_at"],
                                            m["last_status"])
        return out

    async def set_position(self, source: str, module: str, *, position: datetime | None, run_at: datetime,
                           status: str, keep_position: bool = False) -> None:
        values: dict[str, Any] = {"source": source, "module": module, "position": position, "last_run_at": run_at,
                                  "last_status": status[:2000], "updated_at": now_utc()}
        changing = ["last_run_at", "last_status", "updated_at"] + ([] if keep_position else ["position"])
        if keep_position:
            # first pass ever failed: the row is created without a position (next pass is a full one)
            values["position"] = None
        ins = self._upsert(PULL_POSITION)
        await self._execute(ins.values(**values).on_conflict_do_update(
            index_elements=["source", "module"], set_={c: ins.excluded[c] for c in changing}
        ), self.write_engine)  # like every other writer's, its transaction begins IMMEDIATE on SQLite

    async def rejected_hashes(self, source: str, module: str, since: datetime) -> set[str]:
        rows = await self._fetch(select(REJECTED.c.body).where(
            REJECTED.c.subscription == source, REJECTED.c.origin == "pull", REJECTED.c.module == module,
            REJECTED.c.received_at >= since,
        ))
        return {hashlib.sha256(bytes(r[0])).hexdigest() for r in rows}

    async def existing_ids(self, module: str, object_ids: Iterable[str]) -> set[str]:
        ids = sorted({i for i in object_ids if isinstance(i, str)})
        found: set[str] = set()
        with DB_READ:
            async with self.engine.connect() as conn:
                for i in range(0, len(ids), 500):
                    stmt = select(STATE.c.object_id).where(
                        STATE.c.module == module, STATE.c.object_id.in_(ids[i : i + 500]),
                        STATE.c.deleted == False,  # noqa: E712 - SQL comparison, not a Python truth test
                    )
                    found.update(r[0] for r in await conn.execute(stmt))
        return found


class _View(Mapping[StateKey, "StoredState | None"]):
    """Read-only view of the batch's states for one operation (missing keys read as None)."""

    __slots__ = ("_d",)

    def __init__(self, d: dict[StateKey, StoredState | None]) -> None:
        self._d = d

    def __getitem__(self, key: StateKey) -> StoredState | None:
        return self._d.get(key)

    def __iter__(self) -> Any:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

