"""Retention: remove old events, delivered outbox rows and old refusals in small transactions.

What may go (see ``Store.prune``) is decided by one set of SQL conditions, used twice: to find the
candidates of a chunk (a read, outside any write lock) and again in the chunk's DELETE, so a row
that became needed in between (a consumer created behind it, a dead delivery replayed) is kept.
Each chunk is its own short write transaction through the store's maintenance writer (on SQLite
behind the group commit at the write gate). On SQLite a chunk also gives way: every ``PREEMPT_ROWS``
rows it looks whether the group commit waits for the lock and, if so, commits what it did and lets
it go first, so a push waits for a few rows and one commit, never for a whole chunk.

Nothing here touches ``state``; an object's latest event and the event its state points to stay,
so the receiver's stale/identical decisions (made on ``state``) and GetObject never need a pruned
row, and ``max(seq)`` (the next seq of the group commit) never goes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from sqlalchemy import ColumnElement, and_, bindparam, delete, exists, func, or_, select
from sqlalchemy.engine import Connection

from relay import metrics
from relay.errors import StoreError
from relay.settings import Settings, parse_duration
from relay.store.base import PruneProgress, PruneReport, RetentionHold, Store
from relay.store.tables import CONSUMER, DELIVERY, EVENT, REJECTED, STATE

if TYPE_CHECKING:
    from relay.store.sql import SqlStore

logger = logging.getLogger(__name__)
T = TypeVar("T")
OPEN_STATES = ("pending", "in_flight", "dead")
PREEMPT_ROWS = 10  # rows a chunk deletes between two looks at whether ingest waits for the lock
DUTY = 0.1  # share of the time a pass spends in its write transactions; ingest keeps the rest


async def pause_after(took: float) -> None:
    """Sleep so that a write step of ``took`` seconds is at most ``DUTY`` of the time. Every
    pruned event rewrites about one page of its object index (events of one object are far apart
    in seq), so a pass writes about a page of WAL per event, and the WAL bound's restarts follow
    it: the pass is paced to keep that below what ingest notices. Measured (bench/prune.py, 200,000
    old events, 500 pushes/s beside, 4 KB pages, chunks that give way to ingest): 25 % of the time
    gave 2.9x the group commit's p99 alone and 2.5x its p50, 10 % 1.1x and 1.0x."""
    await asyncio.sleep(took * (1 - DUTY) / DUTY)


Waiting = Callable[[], bool]
"""Whether ingest waits for the maintenance transaction that asks (SQLite's write gate; never on
PostgreSQL, whose row locks let both go on)."""


class WriteRunner(Protocol):
    """Runs ``work`` in one write transaction of its own (see ``SqlStore._maintenance``), passing
    it the ``Waiting`` check: work that finds ingest waiting stops where it is, and its transaction
    commits at once."""

    def __call__(self, work: Callable[[Connection, Waiting], T]) -> Awaitable[T]: ...


def event_prunable(cutoff: datetime) -> list[ColumnElement[bool]]:
    """Conditions under which the ``event`` row may be removed (all must hold)."""
    e = EVENT
    newer = EVENT.alias("newer")
    return [
        e.c.received_at < cutoff,
        # every durable consumer has passed it (no consumer: nothing to wait for)
        ~exists().where(CONSUMER.c.seq < e.c.seq),
        # no delivery still to make or kept dead for `relay dead retry`
        ~exists().where(DELIVERY.c.seq == e.c.seq, DELIVERY.c.state != "done"),
        # not what its object's current state points to (a state row only ever points to an event of
        # its own key: found by the primary key, never by a scan, since last_seq has no index)
        ~exists().where(STATE.c.module == e.c.module, STATE.c.country_code == e.c.country_code,
                        STATE.c.party_id == e.c.party_id, STATE.c.object_id == e.c.object_id,
                        STATE.c.last_seq == e.c.seq),
        # not the latest event of its object (ix_event_object serves this)
        exists().where(newer.c.module == e.c.module, newer.c.country_code == e.c.country_code,
                       newer.c.party_id == e.c.party_id, newer.c.object_id == e.c.object_id,
                       newer.c.seq > e.c.seq),
        # not what a kept refusal was replayed as
        e.c.seq.not_in(select(REJECTED.c.replay_seq).where(REJECTED.c.replay_seq.is_not(None),
                                                           ~and_(*rejected_prunable(cutoff)))),
    ]


def rejected_prunable(cutoff: datetime) -> list[ColumnElement[bool]]:
    """A refusal goes a window after it arrived; a replayed one also a window after its replay."""
    r = REJECTED
    return [r.c.received_at < cutoff, or_(r.c.replayed_at.is_(None), r.c.replayed_at < cutoff)]


def delivery_prunable(cutoff: datetime) -> list[ColumnElement[bool]]:
    """A delivered outbox row goes a window after it was delivered."""
    return [DELIVERY.c.state == "done", DELIVERY.c.updated_at < cutoff]


async def prune(store: SqlStore, cutoff: datetime, *, dry_run: bool, chunk: int,
                progress: PruneProgress | None) -> PruneReport:
    removed: dict[str, int] = {}
    async with store._maintenance() as run_write:
        for table, key, conds in (
            ("rejected", REJECTED.c.id, rejected_prunable(cutoff)),
            ("delivery", DELIVERY.c.id, delivery_prunable(cutoff)),
            ("event", EVENT.c.seq, event_prunable(cutoff)),
        ):
            removed[table] = await _prune_table(store, run_write, table, key, conds, dry_run=dry_run, chunk=chunk,
                                                progress=progress)
        pages = 0 if dry_run else await store._reclaim_space(run_write)
    kept, by_consumer, by_outbox = await store._read(lambda conn: _held(conn, cutoff))
    if dry_run:
        kept -= removed["event"]
    return PruneReport(cutoff=cutoff, dry_run=dry_run, events=removed["event"], deliveries=removed["delivery"],
                       rejected=removed["rejected"], events_kept=kept, held_by_consumer=by_consumer,
                       held_by_outbox=by_outbox, pages_freed=pages)


async def _prune_table(store: SqlStore, run_write: WriteRunner, table: str, key: Any,
                       conds: Sequence[ColumnElement[bool]], *, dry_run: bool, chunk: int,
                       progress: PruneProgress | None) -> int:
    """Walk ``table`` in key order, ``chunk`` candidates at a time; delete each chunk in its own
    transaction with the conditions checked again."""
    total, after = 0, None
    while True:
        find = select(key).where(*conds)
        if after is not None:
            find = find.where(key > after)
        find = find.order_by(key).limit(chunk)
        keys = await store._read(lambda conn, stmt=find: [r[0] for r in conn.execute(stmt)])  # type: ignore[misc]
        if not keys:
            return total
        if dry_run:
            total += len(keys)
            after = keys[-1]
        else:
            t0 = time.perf_counter()
            removed, done = await run_write(_deleter(key, conds, keys))
            total += removed
            after = keys[done - 1]
            await pause_after(time.perf_counter() - t0)
        if progress is not None:
            progress(table, total)  # after every transaction
        if after == keys[-1] and len(keys) < chunk:
            return total  # (a chunk cut short by ingest goes on where it stopped)


def _deleter(key: Any, conds: Sequence[ColumnElement[bool]],
             keys: list[Any]) -> Callable[[Connection, Waiting], tuple[int, int]]:
    """Work for one chunk: delete ``keys`` ``PREEMPT_ROWS`` at a time (``conds`` checked again), and
    stop as soon as ingest waits for the lock, so that a push waits for a few rows and a commit, not
    for a whole chunk. Returns the rows removed and how many of ``keys`` were gone through."""
    stmt = delete(key.table).where(key.in_(bindparam("keys", expanding=True)), *conds)

    def work(conn: Connection, waiting: Waiting) -> tuple[int, int]:
        removed = 0
        for start in range(0, len(keys), PREEMPT_ROWS):
            part = keys[start:start + PREEMPT_ROWS]
            removed += int(conn.execute(stmt, {"keys": part}).rowcount or 0)
            if waiting():
                return removed, start + len(part)
        return removed, len(keys)

    return work


def _held(conn: Connection, cutoff: datetime) -> tuple[int, dict[str, int], dict[str, int]]:
    """Events received before ``cutoff`` still stored, and how many of them each consumer (events
    after its cursor) and each target (events with an open delivery) holds."""
    e = EVENT
    kept = int(conn.execute(select(func.count()).select_from(e).where(e.c.received_at < cutoff)).scalar_one())
    by_consumer: dict[str, int] = {}
    if kept:
        for name, seq in conn.execute(select(CONSUMER.c.name, CONSUMER.c.seq)):
            n = conn.execute(select(func.count()).select_from(e).where(e.c.seq > seq, e.c.received_at < cutoff))
            by_consumer[name] = int(n.scalar_one())
    rows = conn.execute(
        select(DELIVERY.c.target, func.count(func.distinct(DELIVERY.c.seq)))
        .join(e, e.c.seq == DELIVERY.c.seq)
        .where(DELIVERY.c.state.in_(OPEN_STATES), e.c.received_at < cutoff)
        .group_by(DELIVERY.c.target)
    )
    return kept, by_consumer, {target: int(n) for target, n in rows}


def holds(conn: Connection) -> list[RetentionHold]:
    """Consumers and targets that still need events, oldest need first."""
    found: list[tuple[str, str, int]] = [("consumer", name, int(seq) + 1)
                                         for name, seq in conn.execute(select(CONSUMER.c.name, CONSUMER.c.seq))]
    found += [("outbox", target, int(seq)) for target, seq in conn.execute(
        select(DELIVERY.c.target, func.min(DELIVERY.c.seq))
        .where(DELIVERY.c.state.in_(OPEN_STATES)).group_by(DELIVERY.c.target)
    )]
    out = []
    for kind, name, seq in sorted(found, key=lambda h: (h[2], h[0], h[1])):
        since = conn.execute(select(EVENT.c.received_at).where(EVENT.c.seq >= seq)
                             .order_by(EVENT.c.seq).limit(1)).scalar()
        out.append(RetentionHold(kind, name, seq, since))
    return out


def volume(conn: Connection) -> dict[str, Any]:
    """Oldest event and the refusals' volume, for `relay status`."""
    oldest = conn.execute(select(func.min(EVENT.c.received_at))).scalar()
    n, size = conn.execute(select(func.count(), func.coalesce(func.sum(func.length(REJECTED.c.body)), 0))).one()
    return {"oldest_event_at": oldest.isoformat().replace("+00:00", "Z") if oldest else None,
            "rejected_bytes": int(size), "rejected_count": int(n)}


def rejected_counts(conn: Connection) -> dict[str | None, int]:
    rows = conn.execute(select(REJECTED.c.subscription, func.count()).group_by(REJECTED.c.subscription))
    return {sub: int(n) for sub, n in rows}


async def run_retention(store: Store, settings: Settings, stop: asyncio.Event) -> None:
    """`relay serve`'s retention part: a prune with ``RELAY_RETENTION`` at start and every
    ``RELAY_RETENTION_INTERVAL`` seconds until ``stop``; a failed pass is logged and tried again."""
    window = timedelta(seconds=parse_duration(settings.retention))
    while not stop.is_set():
        try:
            report = await store.prune(datetime.now(UTC) - window)
        except StoreError as exc:
            logger.warning("retention pass failed", extra={"error": str(exc)[:300]})
        else:
            publish(report)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.retention_interval)


def publish(report: PruneReport) -> None:
    """A pass's counts as metrics and one log line (also used by `relay prune`)."""
    for table, n in (("event", report.events), ("delivery", report.deliveries), ("rejected", report.rejected)):
        if n and not report.dry_run:
            metrics.RETENTION_REMOVED.labels(table).inc(n)
    metrics.RETENTION_HELD.clear()
    for name, n in report.held_by_consumer.items():
        metrics.RETENTION_HELD.labels(name).set(n)
    logger.info("retention pass", extra={"removed_events": report.events, "removed_deliveries": report.deliveries,
                                         "removed_rejected": report.rejected, "events_kept": report.events_kept,
                                         "held_by_consumer": report.held_by_consumer,
                                         "held_by_outbox": report.held_by_outbox, "dry_run": report.dry_run})
