"""Storage: the only package that speaks SQL. ``open_store`` picks the backend from the URL.

Callers use the interface: ``Store`` (relay.store.base) with its records, ``Outbox``
(relay.store.outbox, from ``Store.outbox``) and ``PullPosition`` (relay.store.positions).
``SqlStore`` is exported for tests that reach below the interface (raw SQL on its engines)."""

from __future__ import annotations

from typing import Any

from relay.store.base import Store
from relay.store.sql import SqlStore, observe_commits


def async_url(database_url: str) -> str:
    """Map the documented URL forms to SQLAlchemy async driver URLs."""
    url = database_url
    if url.startswith("sqlite+aiosqlite:") or url.startswith("postgresql+asyncpg:"):
        return url
    if url.startswith("sqlite:"):
        return "sqlite+aiosqlite:" + url[len("sqlite:"):]
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        return "postgresql+asyncpg://" + url[len("postgresql://"):]
    raise ValueError(f"unsupported database URL scheme: {url.split(':', 1)[0]}")


def open_store(database_url: str, *, batch_max: int = 512, pool_size: int = 10, timeout: float = 10.0,
               queue_max_bytes: int = 64 * 1024 * 1024, queue_timeout: float = 5.0,
               sqlite_wal_max_bytes: int | None = None) -> Store:
    """A store for ``database_url`` (not started: call ``await store.start()``)."""
    url = async_url(database_url)
    opts: dict[str, Any] = dict(batch_max=batch_max, pool_size=pool_size, timeout=timeout,
                                queue_max_bytes=queue_max_bytes, queue_timeout=queue_timeout)
    if url.startswith("sqlite"):
        from relay.store.sqlite import SQLiteStore

        return SQLiteStore(url, wal_max_bytes=sqlite_wal_max_bytes, **opts)
    from relay.store.postgres import PostgresStore

    return PostgresStore(url, **opts)


__all__ = ["SqlStore", "Store", "async_url", "observe_commits", "open_store"]
