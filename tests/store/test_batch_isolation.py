"""Group-commit truth on both databases: one operation the database refuses fails alone, a 3000
means "not committed", and appends keep their order whatever the database's default isolation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime

import pytest

from relay.errors import RowRefused, StoreError
from relay.store import SqlStore, open_store
from relay.store.base import NewRejected, Plan, StateKey, StoredState
from tests.conftest import PG_ADMIN_URL, append_lock_held
from tests.store.test_store import AppendOp, _event


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    s = open_store(database_url, timeout=2.0)
    await s.migrate()
    await s.start()
    try:
        yield s
    finally:
        await s.close()


def _rejected(http_status: int = 400, path: str = "/x") -> NewRejected:
    return NewRejected(received_at=datetime.now(UTC), subscription="test", origin="push", method="PUT", path=path,
                       module="locations", http_status=http_status, status_code=2001, reason="r", body=b"{}",
                       request_id=None)


class PoisonOp:
    """An operation whose values the database refuses: an integer no INTEGER column holds (both
    databases), or text PostgreSQL cannot store (too long for its column, a NUL byte)."""

    reads: tuple[StateKey, ...] = ()

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def plan(self, states: Mapping[StateKey, StoredState | None]) -> Plan:
        if self.kind == "overflow":
            return Plan(rejected=_rejected(http_status=2**70), result=self.kind)
        if self.kind == "too_long":
            return Plan(event=_event("x" * 300), result=self.kind)
        return Plan(rejected=_rejected(path="/locations/NL/GFX/A\x00B"), result=self.kind)


async def test_a_refused_row_fails_alone_and_the_rest_of_its_batch_commits(store: SqlStore, database_url: str) -> None:
    ops: list[AppendOp | PoisonOp] = []
    for i in range(60):
        ops.append(AppendOp(f"ok-{i}", i))
        if i % 6 == 0:
            ops.append(PoisonOp(("overflow", "too_long", "nul")[i % 3]))
    async with append_lock_held(database_url):
        tasks = [asyncio.create_task(store.submit(op)) for op in ops]
        await asyncio.sleep(0)  # one turn of the loop: every submit has queued (all in one or two batches)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for op, res in zip(ops, results, strict=True):
        if isinstance(op, AppendOp):
            assert isinstance(res, Plan) and res.result == op.value, res
        elif op.kind == "overflow" or database_url.startswith("postgresql"):
            # refused for its own values, not a database fault: the caller answers it 2001
            assert isinstance(res, RowRefused), res
        else:
            assert isinstance(res, Plan), res  # SQLite stores any length and NUL in text
    events = await store.read_events(0, 1000)
    assert sorted(e.object_id for e in events if e.object_id.startswith("ok-")) == sorted(f"ok-{i}" for i in range(60))
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    # every valid operation's state is there, with the seq of its own event
    st = await store.get_state(StateKey("sessions", "NL", "GFX", "ok-59"))
    assert st is not None and st.object["v"] == 59


class SlowOp:
    """Decides slowly, inside the writer's transaction (as a batch stuck on a lock or a slow disk)."""

    def __init__(self, object_id: str, seconds: float) -> None:
        self.key = StateKey("sessions", "NL", "GFX", object_id)
        self.reads = (self.key,)
        self.seconds = seconds

    def plan(self, states: Mapping[StateKey, StoredState | None]) -> Plan:
        time.sleep(self.seconds)  # runs on the writer thread, not the event loop
        return Plan(event=_event(self.key.object_id), result="slow")


async def test_a_batch_answered_as_failed_is_never_committed_afterwards(store: SqlStore) -> None:
    # the store's bound on one batch is 3 x its timeout (2 s here): this one takes longer
    with pytest.raises(StoreError):
        await store.submit(SlowOp("late", 6.5))
    # the next batch runs on the same writer thread, after the slow one has finished
    plan = await store.submit(AppendOp("after", 1))
    assert plan.result == 1
    ids = [e.object_id for e in await store.read_events(0, 100)]
    assert ids == ["after"], "a batch answered 3000 was committed after the answer"


@pytest.fixture
async def repeatable_read_default(database_url: str) -> AsyncIterator[None]:
    """PostgreSQL: make REPEATABLE READ the database's default isolation for new connections."""
    if not database_url.startswith("postgresql"):
        yield
        return
    import asyncpg

    name = database_url.rsplit("/", 1)[1]
    admin = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    await admin.execute(f'ALTER DATABASE "{name}" SET default_transaction_isolation = \'repeatable read\'')
    try:
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" RESET default_transaction_isolation')
        await admin.close()


async def test_appends_from_two_writers_keep_order_whatever_the_default_isolation(
    database_url: str, repeatable_read_default: None
) -> None:
    stores = [open_store(database_url), open_store(database_url)]
    await stores[0].migrate()
    for s in stores:
        await s.start()
    try:
        plans = await asyncio.gather(*(s.submit(AppendOp(f"w{i}", i)) for i in range(150) for s in stores))
    finally:
        for s in stores:
            await s.close()
    assert sorted(p.seq for p in plans if p.seq is not None) == list(range(1, 301))
