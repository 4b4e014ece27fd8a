"""Pull positions: where each pull source stands per module, and the small reads a pull pass needs.

A position is the ``date_from`` of the next incremental pull of (source, module). It moves only
after a successful module pass; a failed pass records its status and leaves the position alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import SQLAlchemyError

from relay.errors import StoreError
from relay.store.sql import SqlStore
from relay.store.tables import PULL_POSITION, REJECTED, STATE


@dataclass(frozen=True, slots=True)
class PullPosition:
    """One row of ``pull_position``."""

    source: str
    module: str
    position: datetime | None
    last_run_at: datetime | None
    last_status: str | None


async def get_positions(store: SqlStore, source: str) -> dict[str, PullPosition]:
    """Positions of every module of ``source``, keyed by module (modules never pulled are absent)."""
    stmt = select(PULL_POSITION).where(PULL_POSITION.c.source == source)
    try:
        async with store.engine.connect() as conn:
            rows = list(await conn.execute(stmt))
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"reading pull positions of {source} failed: {type(exc).__name__}") from exc
    out: dict[str, PullPosition] = {}
    for row in rows:
        m = row._mapping
        out[m["module"]] = PullPosition(m["source"], m["module"], m["position"], m["last_run_at"], m["last_status"])
    return out


async def get_position(store: SqlStore, source: str, module: str) -> PullPosition | None:
    """The position of (``source``, ``module``), or None before its first successful pass."""
    return (await get_positions(store, source)).get(module)


async def set_position(
    store: SqlStore, source: str, module: str, *, position: datetime | None, run_at: datetime, status: str,
    keep_position: bool = False,
) -> None:
    """Record a pass of (``source``, ``module``): its status and time, and (unless ``keep_position``)
    the new position. A failed pass calls this with ``keep_position=True`` so the next pass starts
    where the last good one ended."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {"source": source, "module": module, "position": position, "last_run_at": run_at,
                              "last_status": status[:2000], "updated_at": now}
    changing = ["last_run_at", "last_status", "updated_at"] + ([] if keep_position else ["position"])
    ins: Any = pg_insert(PULL_POSITION) if store.dialect == "postgresql" else sqlite_insert(PULL_POSITION)
    if keep_position:
        # first pass ever failed: the row is created without a position (next pass is a full one)
        values["position"] = None
    stmt = ins.values(**values).on_conflict_do_update(
        index_elements=["source", "module"], set_={c: ins.excluded[c] for c in changing}
    )
    try:
        # the write engine: on SQLite its transactions begin IMMEDIATE, like every other writer's
        async with store.write_engine.begin() as conn:
            await conn.execute(stmt)
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"writing the pull position of {source}/{module} failed: {type(exc).__name__}") from exc


async def rejected_hashes(store: SqlStore, source: str, module: str, since: datetime) -> set[str]:
    """SHA-256 of the bodies this pull source had refused for ``module`` since ``since``.

    An incremental pull re-reads the newest objects (``date_from`` is inclusive and moved back by a
    safety overlap), so an invalid object would otherwise land in ``rejected`` again on every pass.
    """
    stmt = select(REJECTED.c.body).where(
        REJECTED.c.subscription == source, REJECTED.c.origin == "pull", REJECTED.c.module == module,
        REJECTED.c.received_at >= since,
    )
    try:
        async with store.engine.connect() as conn:
            return {hashlib.sha256(bytes(r[0])).hexdigest() for r in await conn.execute(stmt)}
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"reading rejected pulls of {source}/{module} failed: {type(exc).__name__}") from exc


async def existing_ids(store: SqlStore, module: str, object_ids: Iterable[str]) -> set[str]:
    """Which of ``object_ids`` already have a live state in ``module`` (under any CPO).

    One query per page of a pull, so the pass can tell a new object from a changed one without a
    read per object.
    """
    ids = sorted({i for i in object_ids if isinstance(i, str)})
    found: set[str] = set()
    try:
        async with store.engine.connect() as conn:
            for i in range(0, len(ids), 500):
                stmt = select(STATE.c.object_id).where(
                    STATE.c.module == module, STATE.c.object_id.in_(ids[i : i + 500]),
                    STATE.c.deleted == False,  # noqa: E712 - SQL comparison, not a Python truth test
                )
                found.update(r[0] for r in await conn.execute(stmt))
    except (SQLAlchemyError, OSError) as exc:
        raise StoreError(f"reading states of {module} failed: {type(exc).__name__}") from exc
    return found
