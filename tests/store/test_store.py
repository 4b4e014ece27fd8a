"""The Store contract, run against a real SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from relay.store import SqlStore, open_store
from relay.store.base import NewDelivery, NewEvent, NewRejected, Plan, StateKey, StateWrite, StoredState


def _event(object_id: str, body: str = "{}") -> NewEvent:
    now = datetime.now(UTC)
    return NewEvent(
        module="sessions", action="put", country_code="NL", party_id="GFX", object_id=object_id, evse_uid=None,
        connector_id=None, last_updated=now, received_at=now, origin="push", subscription="test",
        request_id=None, status="applied", body=body, body_hash="h", object=body,
    )


class AppendOp:
    """Appends one event and upserts its state; counts the prior state it saw."""

    def __init__(self, object_id: str, value: int, targets: tuple[str, ...] = ()) -> None:
        self.key = StateKey("sessions", "NL", "GFX", object_id)
        self.reads = (self.key,)
        self.value = value
        self.targets = targets
        self.seen: int | None = None

    def plan(self, states: Mapping[StateKey, StoredState | None]) -> Plan:
        prior = states[self.key]
        self.seen = prior.object["v"] if prior is not None else None
        obj = {"id": self.key.object_id, "v": self.value}
        return Plan(
            event=_event(self.key.object_id, f'{{"v": {self.value}}}'),
            states=[StateWrite(self.key, obj, str(self.value), None)],
            deliveries=[NewDelivery(t, "r", self.key.as_str()) for t in self.targets],
            result=self.value,
        )


class FailingOp:
    reads: tuple[StateKey, ...] = ()

    def plan(self, states: Mapping[StateKey, StoredState | None]) -> Plan:
        raise RuntimeError("bug in one operation")


async def test_concurrent_appends_get_strictly_increasing_gapless_seqs(store: SqlStore) -> None:
    plans = await asyncio.gather(*(store.submit(AppendOp(f"s{i}", i)) for i in range(300)))
    seqs = sorted(p.seq for p in plans if p.seq is not None)
    assert seqs == list(range(1, 301))
    events = await store.read_events(0, 1000)
    assert [e.seq for e in events] == seqs
    assert await store.max_seq() == 300
    # they really shared commits: far fewer batches than operations
    assert store._writer.batches < 300


async def test_operations_in_one_batch_see_each_others_state(store: SqlStore) -> None:
    ops = [AppendOp("same", i) for i in range(50)]
    await asyncio.gather(*(store.submit(op) for op in ops))
    seen = [op.seen for op in ops]
    assert seen[0] is None and seen[1:] == list(range(49))
    st = await store.get_state(StateKey("sessions", "NL", "GFX", "same"))
    assert st is not None and st.object == {"id": "same", "v": 49} and st.last_seq == 50


async def test_one_failing_operation_does_not_fail_its_batch(store: SqlStore) -> None:
    results = await asyncio.gather(
        store.submit(AppendOp("a", 1)), store.submit(FailingOp()), store.submit(AppendOp("b", 2)),
        return_exceptions=True,
    )
    assert isinstance(results[1], RuntimeError)
    assert [r.result for r in (results[0], results[2])] == [1, 2]  # type: ignore[union-attr]
    assert await store.max_seq() == 2


async def test_outbox_rows_commit_with_their_event(store: SqlStore) -> None:
    await store.submit(AppendOp("x", 1, targets=("research", "partner")))
    stats = await store.stats()
    assert stats["targets"]["research"]["pending"] == 1 and stats["targets"]["partner"]["depth"] == 1


async def test_two_stores_writing_concurrently_never_reuse_or_reorder_seqs(database_url: str, store: SqlStore) -> None:
    """Two writers (two replicas, or `relay rejected replay` beside `relay serve`) on one database."""
    other = open_store(database_url)
    await other.start()
    try:
        plans = await asyncio.gather(
            *(s.submit(AppendOp(f"o{i}", i)) for i in range(200) for s in (store, other))
        )
    finally:
        await other.close()
    seqs = sorted(p.seq for p in plans if p.seq is not None)
    assert seqs == list(range(1, 401))


async def test_reader_never_sees_a_smaller_seq_appear_later(database_url: str, store: SqlStore) -> None:
    """Commit order equals seq order: a reader following the log never skips an event."""
    writer2 = open_store(database_url)
    await writer2.start()
    seen: list[int] = []
    done = asyncio.Event()

    async def follow() -> None:
        cursor = 0
        while not (done.is_set() and cursor >= await store.max_seq()):
            for e in await store.read_events(cursor, 500):
                seen.append(e.seq)
                cursor = e.seq
            await asyncio.sleep(0)

    reader = asyncio.create_task(follow())
    try:
        await asyncio.gather(*(s.submit(AppendOp(f"r{i}", i)) for i in range(150) for s in (store, writer2)))
    finally:
        done.set()
        await asyncio.wait_for(reader, 30)
        await writer2.close()
    assert seen == list(range(1, 301))


async def test_cursor_commits_never_move_backwards(store: SqlStore) -> None:
    assert await store.get_cursor("billing") is None
    await store.commit_cursor("billing", 10)
    await store.commit_cursor("billing", 5)
    assert await store.get_cursor("billing") == 10
    await store.commit_cursor("billing", 12)
    assert await store.get_cursor("billing") == 12


async def test_rejected_rows_keep_the_body_as_received(store: SqlStore) -> None:
    now = datetime.now(UTC)

    class RejectOp:
        reads: tuple[StateKey, ...] = ()

        def plan(self, states: Mapping[StateKey, StoredState | None]) -> Plan:
            return Plan(rejected=NewRejected(now, "sub", "push", "PUT", "/x", "locations", 400, 2001, "bad", b"\xff{",
                                             "rid"))

    await store.submit(RejectOp())
    [rec] = await store.list_rejected()
    assert rec.body == b"\xff{" and rec.reason == "bad" and rec.replayed_at is None
    assert rec.summary()["status_code"] == 2001


async def test_first_seq_since_is_inclusive_on_received_at(store: SqlStore) -> None:
    await store.submit(AppendOp("t1", 1))
    mark = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await store.submit(AppendOp("t2", 2))
    assert await store.first_seq_since(mark) == 1
    assert await store.first_seq_since(mark - timedelta(days=1)) == 0
    assert await store.first_seq_since(mark + timedelta(days=1)) == 2


async def test_wait_for_events_wakes_on_commit(store: SqlStore) -> None:
    waiter = asyncio.create_task(store.wait_for_events(0, 10))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await store.submit(AppendOp("w", 1))
    assert await asyncio.wait_for(waiter, 5) == 1


async def test_list_states_pages_in_key_order(store: SqlStore) -> None:
    await asyncio.gather(*(store.submit(AppendOp(f"p{i:02d}", i)) for i in range(25)))
    page1 = await store.list_states("sessions", None, None, 10)
    page2 = await store.list_states("sessions", [("NL", "GFX")], ("NL", "GFX", page1[-1].key.object_id), 100)
    ids = [s.key.object_id for s in page1 + page2]
    assert ids == sorted(f"p{i:02d}" for i in range(25))
    assert await store.list_states("sessions", [("BE", "*")], None, 10) == []


async def test_schema_is_at_head_after_migrate(store: SqlStore) -> None:
    from relay.store.migrate import head_revision

    assert await store.schema_revision() == head_revision()
    assert await store.ping()


async def test_postgresql_compresses_the_json_columns_with_lz4(store: SqlStore) -> None:
    if store.dialect != "postgresql":
        pytest.skip("column compression is a PostgreSQL setting")
    from sqlalchemy import text

    async with store.engine.connect() as conn:
        if not (await conn.execute(text(
            "SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'"
        ))).scalar():
            pytest.skip("this PostgreSQL server was built without lz4")
        rows = (await conn.execute(text(
            "SELECT attrelid::regclass::text, attname, attcompression::text FROM pg_attribute "
            "WHERE attrelid IN ('event'::regclass, 'state'::regclass) AND attname IN ('body', 'object')"
        ))).all()
    assert sorted(tuple(r) for r in rows) == [("event", "body", "l"), ("event", "object", "l"), ("state", "object", "l")]


async def test_migrations_downgrade_to_base_and_upgrade_again(database_url: str) -> None:
    """Every revision's downgrade works, so an operator can step back; the suite itself runs on head."""
    import asyncio as _asyncio

    from alembic import command

    from relay.store import async_url
    from relay.store.migrate import alembic_config, upgrade_to_head

    cfg = alembic_config(async_url(database_url))
    await _asyncio.to_thread(upgrade_to_head, async_url(database_url))
    await _asyncio.to_thread(command.downgrade, cfg, "base")
    await _asyncio.to_thread(upgrade_to_head, async_url(database_url))
    s = open_store(database_url)
    try:
        from relay.store.migrate import head_revision

        assert await s.schema_revision() == head_revision()
    finally:
        await s.close()


async def test_relay_migrate_from_several_processes_at_once_is_safe(database_url: str) -> None:
    """Replicas starting together all run `relay migrate`; the advisory lock makes them take turns."""
    import sys

    from relay.store.migrate import head_revision

    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-m", "relay", "migrate", "--database-url", database_url,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        for _ in range(3)
    ]
    outs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [o[1].decode()[-500:] for o in outs]
    s = open_store(database_url)
    try:
        assert await s.schema_revision() == head_revision()
    finally:
        await s.close()


async def test_sqlite_wal_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    """Commits never checkpoint (wal_autocheckpoint=0 on every connection); the store's background
    task copies the WAL into the database file while it runs, and once more when it closes."""
    db = tmp_path / "ckpt.db"
    s = open_store(f"sqlite:///{db}")
    await s.migrate()
    await s.start()
    try:
        start_size = db.stat().st_size
        body = '{"pad": "' + "x" * 4000 + '"}'
        await asyncio.gather(*(s.submit(AppendOp(f"c{i}", i)) for i in range(10)))
        plans = await asyncio.gather(*(s.submit(_BigOp(f"b{i}", body)) for i in range(300)))
        assert all(p.seq is not None for p in plans)
        # ~2.4 MB went to the WAL: the database file itself grows only through a checkpoint
        deadline = asyncio.get_running_loop().time() + 15
        while db.stat().st_size < start_size + 1_000_000:
            assert asyncio.get_running_loop().time() < deadline, "the WAL was not checkpointed within 15 s"
            await asyncio.sleep(0.1)
        with sqlite3.connect(db) as conn:
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)  # a fresh connection's default
    finally:
        await s.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM event").fetchone() == (310,)


class _BigOp:
    def __init__(self, object_id: str, body: str) -> None:
        self.key = StateKey("sessions", "NL", "GFX", object_id)
        self.reads = (self.key,)
        self.body = body

    def plan(self, states: Mapping[StateKey, StoredState | None]) -> Plan:
        return Plan(event=_event(self.key.object_id, self.body),
                    states=[StateWrite(self.key, {"id": self.key.object_id, "pad": self.body}, "h", None)])


def test_sqlite_write_gate_lets_a_waiting_group_commit_go_first() -> None:
    """Writer threads of one process queue on the gate (not on SQLite's sleeping busy handler), and
    a waiting group commit (urgent) goes before the outbox thread's transactions."""
    import threading
    import time

    from relay.store.sqlite import WriteGate

    gate = WriteGate()
    order: list[str] = []
    holding = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with gate.hold(urgent=False):
            holding.set()
            release.wait(5)
            order.append("first")

    def waiter(name: str, urgent: bool) -> None:
        with gate.hold(urgent=urgent):
            order.append(name)

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    assert holding.wait(5)
    for name, urgent in (("outbox-1", False), ("outbox-2", False), ("ingest", True)):
        t = threading.Thread(target=waiter, args=(name, urgent))
        t.start()
        threads.append(t)
        time.sleep(0.05)  # each is waiting before the next arrives
    release.set()
    for t in threads:
        t.join(5)
    assert order[:2] == ["first", "ingest"]
    assert sorted(order[2:]) == ["outbox-1", "outbox-2"]
