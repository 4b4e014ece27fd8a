"""Retention on the real store (SQLite file and PostgreSQL): what a prune removes, and what it keeps."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.dialects import sqlite

from relay.store import SqlStore, open_store
from relay.store.base import NewDelivery, NewEvent, NewRejected, Plan, StateKey, StateWrite, StoredState
from relay.store.retention import event_prunable
from relay.store.tables import EVENT

NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=40)
CUTOFF = NOW - timedelta(days=30)



class Op:
    """One event of ``object_id`` received at ``at``; ``state`` writes the object's state (applied)."""

    def __init__(self, object_id: str, at: datetime, *, state: bool = True, target: str | None = None,
                 body: str = "{}") -> None:
        self.key = StateKey("sessions", "NL", "GFX", object_id)
        self.reads = (self.key,)
        self.at, self.state, self.target, self.body = at, state, target, body

    def plan(self, states: Mapping[StateKey, StoredState | None]) -> Plan:
        k = self.key
        event = NewEvent(module=k.module, action="put", country_code=k.country_code, party_id=k.party_id,
                         object_id=k.object_id, evse_uid=None, connector_id=None, last_updated=self.at,
                         received_at=self.at, origin="push", subscription="gfx", request_id=None,
                         status="applied" if self.state else "stale", body=self.body, body_hash="h", object=self.body)
        return Plan(event=event,
                    states=[StateWrite(k, {"id": k.object_id}, "h", self.at)] if self.state else [],
                    deliveries=[NewDelivery(self.target, "r", k.as_str())] if self.target else [])


class RejectOp:
    reads: tuple[StateKey, ...] = ()

    def __init__(self, at: datetime, subscription: str = "gfx") -> None:
        self.row = NewRejected(received_at=at, subscription=subscription, origin="push", method="PUT",
                               path="/sessions/NL/GFX/x", module="sessions", http_status=400, status_code=2001,
                               reason="bad", body=b'{"x": 1}', request_id=None)

    def plan(self, states: Mapping[StateKey, StoredState | None]) -> Plan:
        return Plan(rejected=self.row)


async def _sql(store: SqlStore, sql: str, **params: Any) -> list[Any]:
    async with store.write_engine.begin() as conn:
        result = await conn.execute(text(sql), params)
        return list(result) if result.returns_rows else []


async def _seqs(store: SqlStore) -> list[int]:
    return [r[0] for r in await _sql(store, "SELECT seq FROM event ORDER BY seq")]


async def _old(store: SqlStore, table: str, column: str, where: str) -> None:
    """Backdate rows (what the outbox and a replay write is always 'now')."""
    bind = store._bind_time(OLD)
    await _sql(store, f"UPDATE {table} SET {column} = :t WHERE {where}", t=bind)


async def _fill(store: SqlStore) -> None:
    """seq: A 1 2 3 | B 4 (state) 5 (stale) | C 6 pending, 7 done, 8 dead, 9 new | D 10 old, 11 new."""
    for op in (Op("A", OLD), Op("A", OLD), Op("A", OLD), Op("B", OLD), Op("B", OLD, state=False),
               Op("C", OLD, target="t1"), Op("C", OLD, target="t1"), Op("C", OLD, target="t1"),
               Op("C", NOW, target="t1"), Op("D", OLD), Op("D", NOW)):
        await store.submit(op)
    await _sql(store, "UPDATE delivery SET state = 'done' WHERE seq IN (7, 9)")
    await _sql(store, "UPDATE delivery SET state = 'dead' WHERE seq = 8")
    await _old(store, "delivery", "updated_at", "seq = 7")  # delivered 40 days ago; seq 9's today
    for at in (OLD, OLD, OLD, NOW):  # rejected ids 1..4
        await store.submit(RejectOp(at))
    # 2 was replayed 40 days ago as event 2; 3 was replayed today as event 1 (it holds that event)
    await _sql(store, "UPDATE rejected SET replay_seq = 2 WHERE id = 2")
    await _old(store, "rejected", "replayed_at", "id = 2")
    await _sql(store, "UPDATE rejected SET replay_seq = 1, replayed_at = :t WHERE id = 3", t=store._bind_time(NOW))
    await store.commit_cursor("slow", 5)


async def test_prune_removes_exactly_what_nothing_needs_and_keeps_everything_else(store: SqlStore) -> None:
    await _fill(store)
    states = await _sql(store, "SELECT module, object_id, last_seq FROM state ORDER BY object_id")

    report = await store.prune(CUTOFF, chunk=1)  # one row per transaction: the chunk walk too

    # event 2 only: 1 is a kept refusal's replay, 3 and 4 are states' events, 5 is B's latest, and the
    # consumer "slow" (cursor 5) holds 6, 7, 8 and 10
    assert await _seqs(store) == [1, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    assert [r[0] for r in await _sql(store, "SELECT id FROM rejected ORDER BY id")] == [3, 4]
    assert [r[0] for r in await _sql(store, "SELECT seq FROM delivery ORDER BY seq")] == [6, 8, 9]
    assert (report.events, report.deliveries, report.rejected) == (1, 1, 2)
    assert report.events_kept == 8
    assert report.held_by_consumer == {"slow": 4}
    assert report.held_by_outbox == {"t1": 2}
    assert await _sql(store, "SELECT module, object_id, last_seq FROM state ORDER BY object_id") == states

    holds = await store.retention_holds()
    assert [(h.kind, h.name, h.seq) for h in holds] == [("consumer", "slow", 6), ("outbox", "t1", 6)]
    assert holds[0].since is not None and abs(holds[0].since - OLD) < timedelta(seconds=1)

    # the consumer moves on: now 7 (its delivery is done) and 10 go; 6 (pending) and 8 (dead) stay
    await store.commit_cursor("slow", 11)
    report = await store.prune(CUTOFF)
    assert await _seqs(store) == [1, 3, 4, 5, 6, 8, 9, 11]
    assert report.events == 2 and report.held_by_consumer == {"slow": 0}
    assert await _sql(store, "SELECT module, object_id, last_seq FROM state ORDER BY object_id") == states

    # max(seq) never goes back: the next event is numbered after everything ever appended
    plan = await store.submit(Op("E", NOW))
    assert plan.seq == 12


async def test_dry_run_counts_the_same_rows_and_deletes_nothing(store: SqlStore) -> None:
    await _fill(store)
    before = (await _seqs(store), await _sql(store, "SELECT id FROM rejected"), await _sql(store, "SELECT id FROM delivery"))

    dry = await store.prune(CUTOFF, dry_run=True)

    assert (await _seqs(store), await _sql(store, "SELECT id FROM rejected"),
            await _sql(store, "SELECT id FROM delivery")) == before
    assert dry.dry_run and (dry.events, dry.deliveries, dry.rejected) == (1, 1, 2)
    real = await store.prune(CUTOFF)
    assert (real.events, real.deliveries, real.rejected, real.events_kept) == (
        dry.events, dry.deliveries, dry.rejected, dry.events_kept)


async def test_a_cursor_behind_the_window_holds_its_events(store: SqlStore) -> None:
    for i in range(20):
        await store.submit(Op("X", OLD + timedelta(seconds=i)))
    await store.submit(Op("X", NOW))
    await store.commit_cursor("behind", 3)

    report = await store.prune(CUTOFF)

    # 1..3 are behind the cursor and go; 4..20 are after it and stay, so the consumer resumes gaplessly
    assert await _seqs(store) == list(range(4, 22))
    assert report.held_by_consumer == {"behind": 17}
    events = await store.read_events(3, 100)
    assert [e.seq for e in events] == list(range(4, 22))


async def test_stats_show_size_oldest_event_rejected_volume_and_holds(store: SqlStore) -> None:
    await _fill(store)
    stats = await store.stats()
    assert stats["database_bytes"] > 0
    assert stats["oldest_event_at"] is not None and stats["oldest_event_at"].startswith(f"{OLD:%Y-%m-%d}")
    assert stats["rejected_count"] == 4 and stats["rejected_bytes"] == 4 * len(b'{"x": 1}')
    assert [(h["kind"], h["name"], h["seq"]) for h in stats["retention_held_by"]] == [
        ("consumer", "slow", 6), ("outbox", "t1", 6)]
    assert await store.rejected_counts() == {"gfx": 4}


async def test_new_sqlite_database_reuses_pruned_space(tmp_path: Any) -> None:
    db = tmp_path / "fresh.db"
    s = open_store(f"sqlite:///{db}")
    await s.migrate()
    await s.start()
    try:
        body = "x" * 4000
        for i in range(300):
            await s.submit(Op("big", OLD + timedelta(seconds=i), body=body))
        await s.submit(Op("big", NOW))
        report = await s.prune(CUTOFF)
        assert report.events == 300
        assert report.pages_freed > 0
    finally:
        await s.close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
        assert conn.execute("PRAGMA freelist_count").fetchone()[0] < 10
    finally:
        conn.close()


async def test_finding_prunable_events_never_scans_the_state_table(tmp_path: Any) -> None:
    """Each candidate event is checked against its own object's state by primary key: with a scan
    of `state` per event (as when `last_seq` lost its index), 100,000 events over 10,000 objects
    took ~2 s per 500-row chunk instead of ~4 ms, and a pass stalled for minutes."""
    db = tmp_path / "plan.db"
    store = open_store(f"sqlite:///{db}")
    await store.migrate()
    await store.close()
    find = select(EVENT.c.seq).where(*event_prunable(CUTOFF)).order_by(EVENT.c.seq).limit(100)
    sql = str(find.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    conn = sqlite3.connect(db)
    try:
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql)]
    finally:
        conn.close()
    assert any(step.startswith("SEARCH state USING") for step in plan), plan
    assert not any(step.startswith("SCAN state") for step in plan), plan


async def test_a_prune_gives_the_write_lock_to_ingest_within_a_chunk_and_still_removes_everything(
        tmp_path: Any) -> None:
    """On SQLite a chunk's transaction looks, every few rows, whether the group commit waits for the
    write lock, and if so commits at once and lets it go first; the pass goes on from the row where
    it stopped. With pushes arriving all the time, a 1,000-row chunk is cut into many transactions
    (one before), and every prunable event is still removed in one pass."""
    store = open_store(f"sqlite:///{tmp_path / 'yield.db'}")
    await store.migrate()
    await store.start()
    try:
        for i in range(0, 1000, 100):
            await asyncio.gather(*(store.submit(Op(f"obj-{j % 100}", OLD)) for j in range(i, i + 100)))
        transactions: list[int] = []
        prune = asyncio.create_task(store.prune(CUTOFF, chunk=1000,
                                                progress=lambda table, n: transactions.append(n)))
        pushed = 0
        while not prune.done() and pushed < 50_000:  # ingest goes on beside it, one push after another
            await store.submit(Op(f"new-{pushed}", NOW))
            pushed += 1
        report = await prune
        assert report.events == 900  # 10 events of each of 100 objects, each object's latest kept
        assert len(await _seqs(store)) == 100 + pushed
        assert len(transactions) > 5, transactions  # the one chunk went in several transactions
    finally:
        await store.close()
