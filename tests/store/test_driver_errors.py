"""Driver errors leave the store as StoreError, on every concern and both databases.

The store points at a database that cannot be opened (a file in a missing directory; a PostgreSQL
database that does not exist): every read and write raises ``StoreError``, never a driver exception,
and the health checks answer instead of raising.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from relay.errors import StoreError
from relay.store import Store, open_store
from relay.store.base import StateKey
from relay.store.outbox import NewOutboxRow, OutcomeWrite

NOW = datetime(2024, 3, 5, 8, 0, tzinfo=UTC)


@pytest.fixture
async def broken(database_url: str, tmp_path: Path) -> AsyncIterator[Store]:
    if database_url.startswith("sqlite"):
        url = f"sqlite:///{tmp_path / 'missing' / 'relay.db'}"
    else:
        url = database_url.rsplit("/", 1)[0] + "/relay_no_such_database"
    s = open_store(url, timeout=2.0)
    try:
        yield s
    finally:
        await s.close()


CALLS: dict[str, Callable[[Store], Awaitable[object]]] = {
    "get_state": lambda s: s.get_state(StateKey("locations", "NL", "GFX", "A")),
    "read_events": lambda s: s.read_events(0, 10),
    "commit_cursor": lambda s: s.commit_cursor("billing", 1),
    "list_rejected": lambda s: s.list_rejected(),
    "update_rejected_reason": lambda s: s.update_rejected_reason(1, 400, 2001, "again"),
    "stats": lambda s: s.stats(),
    "get_positions": lambda s: s.get_positions("cpo"),
    "set_position": lambda s: s.set_position("cpo", "locations", position=NOW, run_at=NOW, status="ok"),
    "existing_ids": lambda s: s.existing_ids("locations", ["A"]),
    "outbox.claim": lambda s: s.outbox().claim("t", 1, "w1", 30),
    "outbox.record": lambda s: s.outbox().record([OutcomeWrite(1, "done", 1, NOW)], "w1"),
    "outbox.list_rows": lambda s: s.outbox().list_rows(),
    "outbox.events": lambda s: s.outbox().events([1]),
    "outbox.enqueue_missing": lambda s: s.outbox().enqueue_missing([NewOutboxRow(1, "t", "r", "k")]),
}


@pytest.mark.parametrize("call", sorted(CALLS))
async def test_every_read_and_write_raises_store_error(broken: Store, call: str) -> None:
    with pytest.raises(StoreError, match="failed: "):
        await CALLS[call](broken)


async def test_the_health_checks_answer_instead_of_raising(broken: Store) -> None:
    assert await broken.ping() is False
    assert await broken.schema_revision() is None
