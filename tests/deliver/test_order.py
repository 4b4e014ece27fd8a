"""Order per object while outcomes cannot be recorded: the object's next row waits for the previous outcome.

A second connection takes the database's write lock right after the partner received an object's
first version (SQLite: BEGIN IMMEDIATE; PostgreSQL: LOCK TABLE delivery IN EXCLUSIVE MODE), so
the relay's outcome write for that row fails (busy timeout / command timeout). Every request the
partner gets is checked on arrival against the outbox, read through that same connection: no
older row of the object may still be open (``pending`` or ``in_flight``) when a newer one arrives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
from typing import Any

import asyncpg
import pytest

from relay.settings import Settings
from tests.conftest import SESSION_ID, eventually, start_relay, stop_relay
from tests.deliver.conftest import ONE_AT_A_TIME, patch_session, put_session
from tests.servers import PartnerSink, Received, Reply

# The relay once gave an outcome write 3 tries, then sent the object's next row anyway.
PAST_GIVING_UP = 4
OPEN_BEFORE = ("SELECT count(*) FROM delivery WHERE target = 'hook' AND object_key = {key} AND seq < {seq} "
               "AND state IN ('pending', 'in_flight')")


class WriteLock:
    """A second connection to the relay's database: holds its write lock and reads the outbox."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self.sqlite: sqlite3.Connection | None = None
        self.pg: asyncpg.Connection | None = None
        self.held = False
        self._mutex = asyncio.Lock()  # one statement at a time on the connection

    async def open(self) -> None:
        if self.url.startswith("sqlite"):
            path = self.url.removeprefix("sqlite:///")
            self.sqlite = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        else:
            self.pg = await asyncpg.connect(self.url, timeout=5)

    async def _sqlite(self, sql: str, *args: Any) -> list[Any]:
        conn = self.sqlite
        assert conn is not None
        return await asyncio.to_thread(lambda: conn.execute(sql, args).fetchall())

    async def lock(self) -> None:
        async with self._mutex:
            if self.sqlite is not None:
                await self._sqlite("BEGIN IMMEDIATE")
            else:
                assert self.pg is not None
                await self.pg.execute("BEGIN")
                await self.pg.execute("LOCK TABLE delivery IN EXCLUSIVE MODE")  # plain reads still go on
            self.held = True

    async def unlock(self) -> None:
        async with self._mutex:
            if not self.held:
                return
            if self.sqlite is not None:
                await self._sqlite("ROLLBACK")
            else:
                assert self.pg is not None
                await self.pg.execute("ROLLBACK")
            self.held = False

    async def open_before(self, object_key: str, seq: int) -> int:
        """Rows of ``object_key`` older than ``seq`` that are not settled yet."""
        async with self._mutex:
            if self.sqlite is not None:
                rows = await self._sqlite(OPEN_BEFORE.format(key="?", seq="?"), object_key, seq)
                return int(rows[0][0])
            assert self.pg is not None
            return int(await self.pg.fetchval(OPEN_BEFORE.format(key="$1", seq="$2"), object_key, seq))

    async def close(self) -> None:
        await self.unlock()
        if self.sqlite is not None:
            self.sqlite.close()
        if self.pg is not None:
            await self.pg.close()


@pytest.mark.forwarding(ONE_AT_A_TIME)
async def test_an_unrecorded_outcome_holds_back_the_object_s_next_row(
    relay_settings: Settings, partner_sink: PartnerSink, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="relay.deliver")
    # 1. three versions of each of two sessions are stored (and queued) by a relay without workers
    ingest = await start_relay(dataclasses.replace(relay_settings, workers=False))
    sessions = [f"{SESSION_ID[:-2]}{i:02d}" for i in range(2)]
    try:
        for sid in sessions:
            await put_session(ingest, sid)
            for i in (1, 2):
                await patch_session(ingest, i, float(i), session_id=sid)
    finally:
        await stop_relay(ingest)

    # 2. the partner takes the database's write lock on its first request, before answering 200
    lock = WriteLock(relay_settings.database_url)
    await lock.open()
    arrivals: list[tuple[str, int]] = []
    out_of_order: list[tuple[str, int, int]] = []

    async def answer(rec: Received, n: int) -> Reply:
        data = rec.json()["data"]
        key, seq = f"sessions/NL/GFX/{data['id']}", int(data["seq"])
        arrivals.append((key, seq))
        unsettled = await lock.open_before(key, seq)
        if unsettled:
            out_of_order.append((key, seq, unsettled))
        if n == 1:
            await lock.lock()
        return 200, None, {}

    partner_sink.answer = answer

    def write_failures() -> int:
        return sum(1 for r in caplog.records if r.getMessage() == "recording delivery outcomes failed")

    relay = await start_relay(dataclasses.replace(relay_settings, db_timeout=0.5))
    try:
        # 3. the outcome of that first request cannot be written; hold the lock until the relay
        # either sent something else (the bug) or kept retrying past the old give-up point
        # (the other object's rows may go out meanwhile: they do not wait for this outcome)
        await eventually(lambda: len(arrivals) >= 1, timeout=60)
        first = arrivals[0][0]
        await eventually(lambda: sum(k == first for k, _ in arrivals) >= 2 or write_failures() >= PAST_GIVING_UP, timeout=60)
        assert not out_of_order, f"sent while an older row of the object was unrecorded: {out_of_order}"
        await lock.unlock()

        # 4. everything arrives, each object's versions in order, none before its predecessor was settled
        await eventually(lambda: len(set(arrivals)) == 6, timeout=60)

        async def all_settled() -> bool:
            return all([await lock.open_before(f"sessions/NL/GFX/{sid}", 1 << 40) == 0 for sid in sessions])

        await eventually(all_settled, timeout=30)
    finally:
        await stop_relay(relay)
        await lock.close()
    assert not out_of_order, f"sent while an older row of the object was unrecorded: {out_of_order}"
    per_object: dict[str, list[int]] = {}
    for key, seq in arrivals:
        per_object.setdefault(key, []).append(seq)
    assert len(per_object) == 2
    for key, seqs in per_object.items():
        assert seqs == sorted(seqs), f"{key} arrived out of order: {seqs}"
        assert len(set(seqs)) == 3, f"{key}: {seqs}"
