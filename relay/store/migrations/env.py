"""Alembic environment: runs the revisions over the relay's async engine.

Several replicas may run `relay migrate` at once: on PostgreSQL a session advisory lock makes them
take turns, so the second one finds the schema at head and does nothing.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from relay.store.tables import metadata
from relay.store.urls import driver_args

MIGRATION_LOCK = 7_420_001  # arbitrary, shared by every replica


def _run(connection: Connection) -> None:
    is_pg = connection.dialect.name == "postgresql"
    if is_pg:
        connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK})
        connection.commit()
    try:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
    finally:
        if is_pg:
            connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK})
            connection.commit()


async def _main(url: str) -> None:
    if url.startswith("postgresql"):  # libpq TLS parameters become asyncpg's ssl argument
        drivers = driver_args(url)
        engine = create_async_engine(drivers.asyncpg_url, connect_args=drivers.asyncpg_connect_args)
    else:
        engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(_run)
    finally:
        await engine.dispose()


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url
    asyncio.run(_main(url))


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `relay migrate`")
run_migrations_online()
