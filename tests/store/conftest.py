"""The store under test: migrated to head and started, on a real SQLite file and a real PostgreSQL
database (``database_url`` runs every test twice)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from relay.store import SqlStore, open_store


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[SqlStore]:
    s = open_store(database_url)
    await s.migrate()
    await s.start()
    try:
        yield s  # type: ignore[misc]  # the SQL implementation: some tests read its tables directly
    finally:
        await s.close()
