"""A `relay serve` process killed (SIGKILL) between claim and delivery: its rows are delivered after restart."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import update

from relay.settings import Settings
from relay.store import open_store
from relay.store.tables import DELIVERY
from tests.conftest import SESSION_ID, eventually, start_relay, stop_relay
from tests.deliver.conftest import REPO, put_session
from tests.servers import PartnerSink, Received, Reply


async def _age_leases(database_url: str) -> None:
    """Stand-in for waiting out the lease (target timeout + 30 s): move every claim into the past."""
    store = open_store(database_url)
    try:
        async with store.write_engine.begin() as conn:
            await conn.execute(update(DELIVERY).where(DELIVERY.c.state == "in_flight")
                               .values(claimed_until=datetime.now(UTC) - timedelta(minutes=5)))
    finally:
        await store.close()


async def test_rows_claimed_by_a_killed_relay_are_delivered_after_restart(
    relay_settings: Settings, partner_sink: PartnerSink, tmp_path: Path
) -> None:
    # 1. events and their outbox rows are stored by a relay that runs no workers
    ingest = await start_relay(dataclasses.replace(relay_settings, workers=False))
    sessions = [f"{SESSION_ID[:-2]}{i:02d}" for i in range(3)]
    try:
        for sid in sessions:
            await put_session(ingest, sid)
    finally:
        await stop_relay(ingest)

    # 2. a `relay serve` process claims them; the partner holds the requests; the process is killed
    release = asyncio.Event()

    async def held(_rec: Received, n: int) -> Reply:
        if n <= 3:
            await release.wait()
        return 200, None, {}

    partner_sink.answer = held
    log = (tmp_path / "serve.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "serve", "--database-url", relay_settings.database_url,
        "--config", relay_settings.config, "--http-port", "0", "--no-grpc", "--no-migrate",
        stdout=log, stderr=log, cwd=str(REPO), env=dict(os.environ),
    )
    try:
        await eventually(lambda: len(partner_sink.received) == 3, timeout=60)
    finally:
        proc.kill()
        await proc.wait()
        log.close()
    held_ids = sorted(r.headers["webhook-id"] for r in partner_sink.received)

    store = open_store(relay_settings.database_url)
    try:
        left = await store.outbox().list_rows()
    finally:
        await store.close()
    assert [r.state for r in left] == ["in_flight"] * 3
    assert all(r.claimed_by and r.claimed_by.endswith(f"-{proc.pid}") for r in left)

    # 3. the dead process's leases run out; a new relay takes the rows over and delivers them
    await _age_leases(relay_settings.database_url)
    release.set()
    restarted = await start_relay(dataclasses.replace(relay_settings, instance="restarted"))
    try:
        await eventually(lambda: len([r for r in partner_sink.received[3:] if r.ok]) == 3)
        assert sorted(r.headers["webhook-id"] for r in partner_sink.received[3:]) == held_ids

        async def done() -> bool:
            return [r.state for r in await restarted.store.outbox().list_rows()] == ["done"] * 3

        await eventually(done)
    finally:
        await stop_relay(restarted)
