"""Outbox SQL: claim due deliveries in per-object order, record outcomes, dead letters, replays.

Order per (target, object): a row can head a claim only while no other row of the same (target,
object_key) is ``in_flight`` and no row before it in (seq, id) order is ``pending``; the same claim
may take the object's next due rows behind it (a chain, sent one after another by one worker). A
``dead`` row does not block: later changes of that object go on (a partner that refuses one version
still gets the newer ones; the operator sees the dead one in `relay dead list` and can retry it).
Expired leases are turned back into ``pending`` by ``reap_expired``, so claims only look at
``pending`` rows.

PostgreSQL claims heads with ``FOR UPDATE SKIP LOCKED`` so replicas never take the same row: a
concurrent claim whose snapshot predates ours still sees our head as ``pending`` (so it keeps
blocking the object's later rows), and once our claim commits it re-checks the head as
``in_flight`` and skips it. Only the owner of an object's head ever locks that object's other rows.
SQLite serialises write transactions (the write engine begins IMMEDIATE), so a claim is atomic
there. Claims and outcomes are separate, short transactions: nothing is held across a send.

Every transaction is a plain function of a blocking ``Connection``. By default it runs on the
store's async write engine (``run_sync``); an Outbox made with ``own_thread=True`` (the delivery
workers') runs it instead, on SQLite, on a thread of its own with a blocking connection: through
aiosqlite every statement, BEGIN and COMMIT is a round trip between the event loop and the driver's
thread (a claim was ~10 of them, an outcome write ~5), each paid for by the loop. The thread does a
whole transaction per hand-off. The SQL, the locks and the fencing are the same on both paths.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, and_, bindparam, create_engine, exists, func, literal, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import QueuePool

from relay.errors import StoreError
from relay.store.base import EventRecord
from relay.store.sql import SqlStore, _event, now_utc
from relay.store.sqlite import SQLiteStore, apply_pragmas
from relay.store.tables import DELIVERY, EVENT

OPEN_STATES = ("pending", "in_flight")
T = TypeVar("T")

# Built once: an alias sets up its column collection on creation, which was most of the event
# loop's SQLAlchemy time per claim.
_D, _E = DELIVERY.alias("d"), DELIVERY.alias("e")
# The fenced outcome write (executemany): only the row's current claimer may settle it.
_RECORD = (
    update(DELIVERY)
    .where(DELIVERY.c.id == bindparam("b_id"), DELIVERY.c.state == "in_flight",
           DELIVERY.c.claimed_by == bindparam("b_owner"))
    .values(state=bindparam("b_state"), attempts=bindparam("b_attempts"),
            next_attempt_at=bindparam("b_next"), last_http_status=bindparam("b_http"),
            last_ocpi_status=bindparam("b_ocpi"), last_error=bindparam("b_error"),
            claimed_by=None, claimed_until=None, updated_at=bindparam("b_now"))
)

_RECORD_SQLITE = (
    "UPDATE delivery SET state = ?, attempts = ?, next_attempt_at = ?, last_http_status = ?, last_ocpi_status = ?, "
    "last_error = ?, claimed_by = NULL, claimed_until = NULL, updated_at = ? "
    "WHERE id = ? AND state = 'in_flight' AND claimed_by = ?"
)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A row this worker now owns until ``claimed_until``; ``attempts`` counts earlier attempts."""

    id: int
    seq: int
    target: str
    rule: str
    object_key: str
    attempts: int
    created_at: datetime
    claimed_until: datetime
    event: EventRecord | None = field(default=None, compare=False)  # claim(with_events=True) only


@dataclass(frozen=True, slots=True)
class OutcomeWrite:
    """The new state of one claimed row after an attempt (``done``, ``pending`` again, or ``dead``)."""

    id: int
    state: str
    attempts: int
    next_attempt_at: datetime
    http_status: int | None = None
    ocpi_status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One outbox row as the operator commands show it."""

    id: int
    seq: int
    target: str
    rule: str
    object_key: str
    state: str
    attempts: int
    next_attempt_at: datetime
    claimed_by: str | None
    last_http_status: int | None
    last_ocpi_status: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime

    def summary(self) -> dict[str, Any]:
        """The documented JSON shape of a `relay dead list --json` entry."""
        return {
            "id": self.id,
            "seq": self.seq,
            "target": self.target,
            "rule": self.rule,
            "object_key": self.object_key,
            "attempts": self.attempts,
            "last_http_status": self.last_http_status,
            "last_ocpi_status": self.last_ocpi_status,
            "last_error": self.last_error,
            "updated_at": _iso(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class NewOutboxRow:
    """A delivery that `relay replay` adds for an event already in the log."""

    seq: int
    target: str
    rule: str
    object_key: str


def _record(row: Any) -> DeliveryRecord:
    m = row._mapping
    return DeliveryRecord(
        id=m["id"], seq=m["seq"], target=m["target"], rule=m["rule"], object_key=m["object_key"],
        state=m["state"], attempts=m["attempts"], next_attempt_at=m["next_attempt_at"],
        claimed_by=m["claimed_by"], last_http_status=m["last_http_status"],
        last_ocpi_status=m["last_ocpi_status"], last_error=m["last_error"], created_at=m["created_at"],
        updated_at=m["updated_at"],
    )


def _read_events(conn: Connection, seqs: Iterable[int]) -> dict[int, EventRecord]:
    """The events of ``seqs`` by seq (missing ones are left out), in chunks of 500 ids."""
    wanted = sorted(set(seqs))
    found: dict[int, EventRecord] = {}
    for i in range(0, len(wanted), 500):
        for row in conn.execute(select(EVENT).where(EVENT.c.seq.in_(wanted[i : i + 500]))):
            ev = _event(row)
            found[ev.seq] = ev
    return found


def _short(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig).splitlines()[0][:200]
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


class _Fenced(Exception):
    """Raised inside an outcome transaction to roll it back: some row is no longer the writer's claim."""


def _record_params(outcomes: Sequence[OutcomeWrite], owner: str, now: datetime) -> list[dict[str, Any]]:
    return [
        {"b_id": o.id, "b_owner": owner, "b_state": o.state, "b_attempts": o.attempts, "b_next": o.next_attempt_at,
         "b_http": o.http_status, "b_ocpi": o.ocpi_status, "b_error": o.error, "b_now": now}
        for o in outcomes
    ]


class _OwnThread:
    """A blocking SQLite connection on a thread of its own: a whole transaction per hand-off.

    Same PRAGMAs and BEGIN IMMEDIATE as the store's engines, so the locking is unchanged; one
    thread means this Outbox's transactions queue here instead of on the database lock.
    """

    def __init__(self, store: SQLiteStore) -> None:
        self.gate = store.write_gate  # the group commit goes first (see WriteGate)
        sync_url = store.url.replace("sqlite+aiosqlite:", "sqlite:", 1)
        self.engine: Engine = create_engine(sync_url, poolclass=QueuePool, pool_size=1, max_overflow=0)
        apply_pragmas(self.engine, immediate=True, busy_ms=int(store.timeout * 1000))
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


class Outbox:
    """Every SQL statement of the delivery side, on one SqlStore (started or not).

    ``own_thread=True`` (SQLite; ignored on PostgreSQL) runs the write transactions on a dedicated
    thread and connection; such an Outbox must be closed with ``close``.
    """

    def __init__(self, store: SqlStore, *, own_thread: bool = False) -> None:
        self.store = store
        # PostgreSQL stays on asyncpg: psycopg on a thread measured no better (the GIL it takes back
        # from the event loop costs what the saved hand-offs gain)
        self._thread = _OwnThread(store) if own_thread and isinstance(store, SQLiteStore) else None
        # SQLite has one writer: queueing our own writes here keeps at most one of this process's
        # outbox transactions waiting on the database lock next to the ingest writer.
        self._write_lock = asyncio.Lock() if store.dialect == "sqlite" else None

    async def close(self) -> None:
        """Release the own thread's connection (a no-op without one)."""
        if self._thread is not None:
            thread, self._thread = self._thread, None
            await thread.close()

    # -- plumbing --------------------------------------------------------------------------------
    async def _transaction(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one short write transaction (IMMEDIATE on SQLite); driver errors -> StoreError."""
        try:
            if self._thread is not None:
                return await self._thread.run(work)
            if self._write_lock is None:
                return await self._transaction_once(work)
            async with self._write_lock:
                return await self._transaction_once(work)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"outbox write failed: {type(exc).__name__}: {_short(exc)}") from exc

    async def _transaction_once(self, work: Callable[[Connection], T]) -> T:
        async with self.store.write_engine.begin() as conn:
            return await conn.run_sync(work)

    async def _write(self, stmt: Any, params: Any = None, *, rows: bool = False) -> list[Any]:
        def work(conn: Connection) -> list[Any]:
            result = conn.execute(stmt, params) if params is not None else conn.execute(stmt)
            return list(result.all()) if rows else []

        return await self._transaction(work)

    async def _read(self, stmt: Any) -> list[Any]:
        try:
            async with self.store.engine.connect() as conn:
                return list(await conn.execute(stmt))
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"outbox read failed: {type(exc).__name__}: {_short(exc)}") from exc

    # -- the worker's side ------------------------------------------------------------------------
    async def has_due(self, target: str, now: datetime | None = None) -> bool:
        """Cheap read-only check before a claim (which is a write transaction)."""
        now = now or now_utc()
        stmt = (
            select(literal(1)).select_from(DELIVERY)
            .where(DELIVERY.c.state == "pending", DELIVERY.c.target == target, DELIVERY.c.next_attempt_at <= now)
            .limit(1)
        )
        return bool(await self._read(stmt))

    async def claim(self, target: str, limit: int, owner: str, lease: float, *,
                    chain: int = 1, max_rows: int = 256, with_events: bool = False) -> list[ClaimedDelivery]:
        """Take due rows of ``target`` for ``lease`` seconds: the oldest open row of up to ``limit``
        objects, each followed by up to ``chain - 1`` later due rows of the same object (in seq
        order, with no open row skipped), at most ``max_rows`` in all. Sorted by (object, seq).

        ``with_events`` reads each row's event in the same transaction (``ClaimedDelivery.event``,
        None when the event is gone): one round trip less than a separate ``events`` call."""
        if limit <= 0:
            return []
        now = now_utc()
        until = now + timedelta(seconds=lease)
        d, e = _D, _E
        blocker = select(literal(1)).select_from(e).where(
            e.c.target == d.c.target,
            e.c.object_key == d.c.object_key,
            e.c.id != d.c.id,
            # (seq, id) order: two rows of one event (two rules to one target) are ordered too, so a
            # claimer never takes a head that another claimer's head is the twin of
            or_(e.c.state == "in_flight",
                and_(e.c.state == "pending", or_(e.c.seq < d.c.seq, and_(e.c.seq == d.c.seq, e.c.id < d.c.id)))),
        )
        candidates = (
            select(d.c.id)
            .where(d.c.state == "pending", d.c.target == target, d.c.next_attempt_at <= now, ~exists(blocker))
            # next_attempt_at alone: the ix_delivery_due order, so LIMIT stops the scan early
            .order_by(d.c.next_attempt_at)
            .limit(min(limit, max_rows))
        )
        postgres = self.store.dialect == "postgresql"
        if postgres:
            candidates = candidates.with_for_update(skip_locked=True, of=d)
        returning = (DELIVERY.c.id, DELIVERY.c.seq, DELIVERY.c.target, DELIVERY.c.rule, DELIVERY.c.object_key,
                     DELIVERY.c.attempts, DELIVERY.c.created_at)

        def take(ids: Any) -> Any:
            return (update(DELIVERY).where(DELIVERY.c.id.in_(ids))
                    .values(state="in_flight", claimed_by=owner, claimed_until=until, updated_at=now)
                    .returning(*returning))

        def work(conn: Connection) -> tuple[list[Any], dict[int, EventRecord]]:
            rows = list(conn.execute(take(candidates)).all())
            followers = self._followers(conn, target, rows, now, chain, max_rows - len(rows))
            if followers:
                rows += list(conn.execute(take(followers)).all())
            return rows, (_read_events(conn, (r.seq for r in rows)) if with_events else {})

        rows, events = await self._transaction(work)
        claimed = [
            ClaimedDelivery(r.id, r.seq, r.target, r.rule, r.object_key, r.attempts, r.created_at, until,
                            events.get(r.seq))
            for r in rows
        ]
        return sorted(claimed, key=lambda c: (c.object_key, c.seq, c.id))

    def _followers(self, conn: Connection, target: str, heads: list[Any], now: datetime, chain: int,
                   room: int) -> list[int]:
        """Ids of the rows that follow each claimed head in its object's chain (same transaction)."""
        if chain <= 1 or not heads or room <= 0:
            return []
        # Followers of each head: every other open row of those objects is pending (a head is
        # claimable only when none is in flight), so the chain is the next pending rows by seq.
        # Plain FOR UPDATE, never SKIP LOCKED here: a skipped row would open a gap in the chain.
        rest = (
            select(DELIVERY.c.id, DELIVERY.c.object_key, DELIVERY.c.seq, DELIVERY.c.next_attempt_at)
            .where(DELIVERY.c.target == target, DELIVERY.c.state == "pending",
                   DELIVERY.c.object_key.in_(sorted({h.object_key for h in heads})))
            .order_by(DELIVERY.c.object_key, DELIVERY.c.seq, DELIVERY.c.id)
            .limit(4 * (room + len(heads)))  # bounds the read when one object has a long backlog
        )
        if self.store.dialect == "postgresql":
            rest = rest.with_for_update()
        picked: list[int] = []
        per_key: dict[str, int] = {}
        stopped: set[str] = set()
        head_at = {h.object_key: (h.seq, h.id) for h in heads}
        for rid, key, seq, due in conn.execute(rest):
            if key in stopped or len(picked) >= room:
                continue
            if (seq, rid) < head_at[key] or due > now or per_key.get(key, 1) >= chain:
                # an older row (retried meanwhile) or one waiting for its retry ends the chain
                stopped.add(key)
                continue
            per_key[key] = per_key.get(key, 1) + 1
            picked.append(rid)
        return picked

    async def release(self, ids: Sequence[int], owner: str) -> None:
        """Claimed rows that were not attempted go back to ``pending`` untouched (no attempt counted)."""
        if not ids:
            return
        now = now_utc()
        await self._write(
            update(DELIVERY)
            .where(DELIVERY.c.id.in_(list(ids)), DELIVERY.c.state == "in_flight", DELIVERY.c.claimed_by == owner)
            .values(state="pending", claimed_by=None, claimed_until=None, updated_at=now)
        )

    async def extend(self, ids: Sequence[int], owner: str, lease: float) -> set[int]:
        """Heartbeat: keep the lease of rows this worker still holds (queued or being sent).

        Returns the ids whose lease was extended; a missing one is no longer this owner's claim."""
        kept: set[int] = set()
        if not ids:
            return kept
        until = now_utc() + timedelta(seconds=lease)
        for i in range(0, len(ids), 500):
            rows = await self._write(
                update(DELIVERY)
                .where(DELIVERY.c.id.in_(list(ids[i : i + 500])), DELIVERY.c.state == "in_flight",
                       DELIVERY.c.claimed_by == owner)
                .values(claimed_until=until)
                .returning(DELIVERY.c.id),
                rows=True,
            )
            kept.update(int(r[0]) for r in rows)
        return kept

    async def events(self, seqs: Iterable[int]) -> dict[int, EventRecord]:
        """The events the claimed rows refer to, by seq."""
        try:
            async with self.store.engine.connect() as conn:
                return await conn.run_sync(_read_events, seqs)
        except (SQLAlchemyError, OSError) as exc:
            raise StoreError(f"outbox read failed: {type(exc).__name__}: {_short(exc)}") from exc

    async def record(self, outcomes: Sequence[OutcomeWrite], owner: str) -> set[int]:
        """Store attempt outcomes in one transaction, fenced: only rows still claimed by ``owner``.

        Returns the ids that were not written because the row is no longer this owner's claim (its
        lease ended and it was taken back or over): that attempt's outcome is void, and the caller
        must not treat the row as settled (the object's next row must not follow it)."""
        if not outcomes:
            return set()
        now = now_utc()
        if self._thread is not None:
            # the workers' SQLite thread: the same fenced UPDATE as _RECORD, as driver-level SQL fed
            # tuples (SQLAlchemy's per-row parameter processing was most of this write's GIL time)
            t = self.store._bind_time
            now_b = t(now)
            rows = [(o.state, o.attempts, t(o.next_attempt_at), o.http_status, o.ocpi_status, o.error, now_b, o.id,
                     owner) for o in outcomes]

            def driver(conn: Connection) -> set[int]:
                if conn.exec_driver_sql(_RECORD_SQLITE, rows).rowcount != len(rows):
                    raise _Fenced  # some row is not ours any more: roll back, sort them out below
                return set()

            return await self._record_or_sort_out(driver, outcomes, owner, now)
        if not self.store.write_engine.dialect.supports_sane_multi_rowcount:  # asyncpg's executemany
            return await self._transaction(lambda conn: self._record_fenced(conn, outcomes, owner, now))

        def sqlalchemy(conn: Connection) -> set[int]:
            if conn.execute(_RECORD, _record_params(outcomes, owner, now)).rowcount != len(outcomes):
                raise _Fenced
            return set()

        return await self._record_or_sort_out(sqlalchemy, outcomes, owner, now)

    async def _record_or_sort_out(self, fast: Callable[[Connection], set[int]], outcomes: Sequence[OutcomeWrite],
                                  owner: str, now: datetime) -> set[int]:
        """``fast`` writes them all when every row is still ours (it counts); else one row at a time."""
        try:
            return await self._transaction(fast)
        except _Fenced:
            return await self._transaction(lambda conn: self._record_fenced(conn, outcomes, owner, now))

    def _record_fenced(self, conn: Connection, outcomes: Sequence[OutcomeWrite], owner: str,
                       now: datetime) -> set[int]:
        """Lock the rows still claimed by ``owner`` and write only those; the rest are returned."""
        ids = [o.id for o in outcomes]
        mine_q = select(DELIVERY.c.id).where(DELIVERY.c.id.in_(ids), DELIVERY.c.state == "in_flight",
                                              DELIVERY.c.claimed_by == owner)
        if self.store.dialect == "postgresql":
            mine_q = mine_q.with_for_update()
        held = {int(r[0]) for r in conn.execute(mine_q)}
        mine = [o for o in outcomes if o.id in held]
        if mine:
            conn.execute(_RECORD, _record_params(mine, owner, now))
        return set(ids) - held

    async def reap_expired(self) -> int:
        """Rows whose claimer vanished (lease over) become ``pending`` again; no attempt is counted."""
        now = now_utc()
        probe = (
            select(literal(1)).select_from(DELIVERY)
            .where(DELIVERY.c.state == "in_flight", DELIVERY.c.claimed_until < now).limit(1)
        )
        if not await self._read(probe):
            return 0
        stmt = (
            update(DELIVERY)
            .where(DELIVERY.c.state == "in_flight", DELIVERY.c.claimed_until < now)
            .values(state="pending", claimed_by=None, claimed_until=None, updated_at=now)
            .returning(DELIVERY.c.id)
        )
        return len(await self._write(stmt, rows=True))

    async def counts(self) -> dict[str, tuple[int, int]]:
        """(pending + in_flight, dead) per target, for the gauges; done rows are not scanned."""
        stmt = (
            select(DELIVERY.c.target, DELIVERY.c.state, func.count())
            .where(DELIVERY.c.state.in_((*OPEN_STATES, "dead")))
            .group_by(DELIVERY.c.target, DELIVERY.c.state)
        )
        out: dict[str, tuple[int, int]] = {}
        for target, state, count in await self._read(stmt):
            depth, dead = out.get(target, (0, 0))
            out[target] = (depth, dead + int(count)) if state == "dead" else (depth + int(count), dead)
        return out

    # -- the operator's side ----------------------------------------------------------------------
    async def list_rows(self, state: str | None = None, target: str | None = None,
                        limit: int = 1000) -> list[DeliveryRecord]:
        """Outbox rows (of one state and/or target), oldest first."""
        stmt = select(DELIVERY)
        if state is not None:
            stmt = stmt.where(DELIVERY.c.state == state)
        if target is not None:
            stmt = stmt.where(DELIVERY.c.target == target)
        return [_record(r) for r in await self._read(stmt.order_by(DELIVERY.c.id).limit(limit))]

    async def list_dead(self, target: str | None = None, limit: int = 1000) -> list[DeliveryRecord]:
        """Dead deliveries, oldest first."""
        return await self.list_rows("dead", target, limit)

    async def get(self, delivery_id: int) -> tuple[DeliveryRecord, EventRecord | None] | None:
        """One delivery row (any state) with its event."""
        rows = await self._read(select(DELIVERY).where(DELIVERY.c.id == delivery_id))
        if not rows:
            return None
        rec = _record(rows[0])
        events = await self.events([rec.seq])
        return rec, events.get(rec.seq)

    async def retry_dead(self, ids: Sequence[int] | None, target: str | None = None) -> list[int]:
        """Dead rows (the given ids, or all) back to ``pending`` now, with the attempt count reset."""
        now = now_utc()
        stmt = update(DELIVERY).where(DELIVERY.c.state == "dead")
        if ids is not None:
            if not ids:
                return []
            stmt = stmt.where(DELIVERY.c.id.in_(list(ids)))
        if target is not None:
            stmt = stmt.where(DELIVERY.c.target == target)
        stmt = stmt.values(state="pending", attempts=0, next_attempt_at=now, claimed_by=None, claimed_until=None,
                           updated_at=now).returning(DELIVERY.c.id)
        return sorted(int(r[0]) for r in await self._write(stmt, rows=True))

    async def enqueue_missing(self, rows: Sequence[NewOutboxRow]) -> int:
        """Insert the rows that have no ``pending``/``in_flight`` twin (same seq, target, rule) yet.

        The check and the insert share one transaction; on SQLite that makes two concurrent replays
        safe, on PostgreSQL two replays racing on the same range may both insert (at-least-once anyway).
        """
        if not rows:
            return 0
        now = now_utc()
        lo, hi = min(r.seq for r in rows), max(r.seq for r in rows)
        targets = sorted({r.target for r in rows})
        existing = (
            select(DELIVERY.c.seq, DELIVERY.c.target, DELIVERY.c.rule)
            .where(DELIVERY.c.seq.between(lo, hi), DELIVERY.c.target.in_(targets),
                   DELIVERY.c.state.in_(OPEN_STATES))
        )

        def work(conn: Connection) -> int:
            have = {(s, t, r) for s, t, r in conn.execute(existing)}
            new = [r for r in rows if (r.seq, r.target, r.rule) not in have]
            if new:
                conn.execute(DELIVERY.insert(), [
                    {"seq": r.seq, "target": r.target, "rule": r.rule, "object_key": r.object_key,
                     "state": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now,
                     "updated_at": now}
                    for r in new
                ])
            return len(new)

        return await self._transaction(work)


__all__ = ["ClaimedDelivery", "DeliveryRecord", "NewOutboxRow", "Outbox", "OutcomeWrite"]
