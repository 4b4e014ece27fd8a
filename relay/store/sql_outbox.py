"""The outbox's SQL on SQLAlchemy, shared by both dialects (the interface: relay.store.outbox).

Every transaction is a plain function of a blocking ``Connection``, run by ``_transaction``: here on
the store's async write engine (``run_sync``). The dialects change only how it runs and how rows are
locked: ``SQLiteOutbox`` (relay.store.sqlite) runs the delivery workers' transactions on a thread of
its own with a blocking connection (through aiosqlite every statement, BEGIN and COMMIT is a round
trip between the event loop and the driver's thread: a claim was ~10 of them, an outcome write ~5,
each paid for by the loop; the thread does a whole transaction per hand-off), ``PostgresOutbox``
(relay.store.postgres) adds ``FOR UPDATE [SKIP LOCKED]``. The SQL and the fencing are the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Select, and_, bindparam, exists, func, literal, or_, select, update
from sqlalchemy.engine import Connection

from relay.store.base import EventRecord
from relay.store.outbox import (
    OPEN_STATES,
    ClaimedDelivery,
    DeliveryRecord,
    NewOutboxRow,
    Outbox,
    OutcomeWrite,
)
from relay.store.sql import SqlStore, event_record, now_utc, translated
from relay.store.tables import DELIVERY, EVENT

T = TypeVar("T")
OUTBOX_WRITE = translated("outbox write")
OUTBOX_READ = translated("outbox read")


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
            ev = event_record(row)
            found[ev.seq] = ev
    return found


class Fenced(Exception):  # noqa: N818 - a signal between a transaction and its caller, not an error
    """Raised inside an outcome transaction to roll it back: some row is no longer the writer's claim."""


def _record_params(outcomes: Sequence[OutcomeWrite], owner: str, now: datetime) -> list[dict[str, Any]]:
    return [
        {"b_id": o.id, "b_owner": owner, "b_state": o.state, "b_attempts": o.attempts, "b_next": o.next_attempt_at,
         "b_http": o.http_status, "b_ocpi": o.ocpi_status, "b_error": o.error, "b_now": now}
        for o in outcomes
    ]


class SqlOutbox(Outbox):
    """Every SQL statement of the delivery side, on one SqlStore (started or not).

    Dialect hooks: ``_transaction`` (how a write transaction runs), ``_locked`` (row locks of a
    claim's reads) and ``_record_all`` (the outcome write of a whole batch)."""

    def __init__(self, store: SqlStore) -> None:
        self.store: SqlStore = store

    async def close(self) -> None:
        """Nothing of its own to release here (``SQLiteOutbox`` may hold a thread)."""

    # -- dialect hooks ---------------------------------------------------------------------------
    async def _transaction(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in one short write transaction (IMMEDIATE on SQLite); driver errors -> StoreError."""
        with OUTBOX_WRITE:
            async with self.store.write_engine.begin() as conn:
                return await conn.run_sync(work)

    def _locked(self, stmt: Select[Any], *, skip_locked: bool = False, of: Any = None) -> Select[Any]:
        """``stmt`` locking the rows it reads until commit; as is where write transactions are
        serialised anyway (SQLite). PostgreSQL adds ``FOR UPDATE [SKIP LOCKED]``."""
        return stmt

    def _record_all(self, outcomes: Sequence[OutcomeWrite], owner: str,
                    now: datetime) -> Callable[[Connection], set[int]]:
        """The transaction that writes every outcome in one executemany; it counts the rows written
        and raises ``Fenced`` (rolling back) when some row is no longer ``owner``'s."""
        params = _record_params(outcomes, owner, now)

        def work(conn: Connection) -> set[int]:
            if conn.execute(_RECORD, params).rowcount != len(outcomes):
                raise Fenced
            return set()

        return work

    # -- plumbing --------------------------------------------------------------------------------
    async def _write(self, stmt: Any, params: Any = None, *, rows: bool = False) -> list[Any]:
        def work(conn: Connection) -> list[Any]:
            result = conn.execute(stmt, params) if params is not None else conn.execute(stmt)
            return list(result.all()) if rows else []

        return await self._transaction(work)

    async def _read(self, stmt: Any) -> list[Any]:
        with OUTBOX_READ:
            async with self.store.engine.connect() as conn:
                return list(await conn.execute(stmt))

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
        candidates = self._locked(candidates, skip_locked=True, of=d)
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
        rest = self._locked(rest)
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
        with OUTBOX_READ:
            async with self.store.engine.connect() as conn:
                return await conn.run_sync(_read_events, seqs)

    async def record(self, outcomes: Sequence[OutcomeWrite], owner: str) -> set[int]:
        if not outcomes:
            return set()
        now = now_utc()
        try:
            # every row is still ours (the usual case): one statement for all
            return await self._transaction(self._record_all(outcomes, owner, now))
        except Fenced:
            return await self._transaction(lambda conn: self._record_fenced(conn, outcomes, owner, now))

    def _record_fenced(self, conn: Connection, outcomes: Sequence[OutcomeWrite], owner: str,
                       now: datetime) -> set[int]:
        """Lock the rows still claimed by ``owner`` and write only those; the rest are returned."""
        ids = [o.id for o in outcomes]
        mine_q = select(DELIVERY.c.id).where(DELIVERY.c.id.in_(ids), DELIVERY.c.state == "in_flight",
                                              DELIVERY.c.claimed_by == owner)
        mine_q = self._locked(mine_q)
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


__all__ = ["SqlOutbox"]
