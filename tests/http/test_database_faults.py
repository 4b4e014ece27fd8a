"""The receiver while its database is unreachable: 3000-class answers, never 1000, and recovery."""

from __future__ import annotations

import asyncio
import copy
import os
import sqlite3
from typing import Any

import pytest

from relay.settings import Settings
from tests.conftest import (
    LOC_ID,
    RelayHandle,
    eventually,
    example,
    pg_allow_connections,
    start_relay,
    stop_relay,
)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_unreachable_database_answers_3000_then_recovers(relay: RelayHandle) -> None:
    url = relay.settings.database_url
    ok = await relay.put(f"/locations/NL/GFX/{LOC_ID}", example("location_full.json"))
    assert ok.body["status_code"] == 1000
    await pg_allow_connections(url, False)
    try:
        answers = []
        for i in range(5):
            body = copy.deepcopy(example("location_full.json"))
            body["id"] = f"down-{i}"
            answers.append(await relay.put(f"/locations/NL/GFX/down-{i}", body))
        assert all(a.body["status_code"] == 3000 and a.status in (500, 503) for a in answers), [
            (a.status, a.body) for a in answers
        ]
        async with relay.http.get(relay.url + "/readyz") as r:
            assert r.status == 503
    finally:
        await pg_allow_connections(url, True)

    async def recovered() -> bool:
        body = copy.deepcopy(example("location_full.json"))
        body["id"] = "after"
        return (await relay.put("/locations/NL/GFX/after", body)).body["status_code"] == 1000

    await eventually(recovered, timeout=30, interval=0.5)
    ids = {s.key.object_id for s in await relay.store.list_states("locations", None, None, 100)}
    assert ids == {LOC_ID, "after"}  # nothing answered 3000 was stored, everything answered 1000 was


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_locked_sqlite_database_answers_3000_then_recovers(database_url: str, config_path: Any) -> None:
    """Another process holds SQLite's write lock (a backup, a stuck tool): 3000, never 1000, then recovery."""
    settings = Settings(database_url=database_url, config=str(config_path), http_port=0, grpc=False, workers=False,
                        db_timeout=0.5)
    relay = await start_relay(settings)
    path = database_url.removeprefix("sqlite:///")
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        answers = []
        for i in range(3):
            body = copy.deepcopy(example("location_full.json"))
            body["id"] = f"locked-{i}"
            answers.append(await relay.put(f"/locations/NL/GFX/locked-{i}", body))
        assert all(a.body["status_code"] == 3000 and a.status == 503 for a in answers), [a.body for a in answers]
        blocker.execute("ROLLBACK")
        body = copy.deepcopy(example("location_full.json"))
        body["id"] = "after"
        assert (await relay.put("/locations/NL/GFX/after", body)).body["status_code"] == 1000
        ids = {s.key.object_id for s in await relay.store.list_states("locations", None, None, 100)}
        assert ids == {"after"}
    finally:
        blocker.close()
        await stop_relay(relay)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_unwritable_sqlite_file_answers_3000_then_recovers(database_url: str, config_path: Any) -> None:
    """The database file becomes unwritable (full disk, read-only mount; made immutable with chattr here)."""
    import shutil

    if shutil.which("chattr") is None or os.geteuid() != 0:
        pytest.skip("needs chattr and root to make the database file immutable")
    settings = Settings(database_url=database_url, config=str(config_path), http_port=0, grpc=False, workers=False,
                        db_timeout=0.5)
    relay = await start_relay(settings)
    path = database_url.removeprefix("sqlite:///")
    files = [path, path + "-wal"]
    body = copy.deepcopy(example("location_full.json"))
    try:
        assert (await relay.put(f"/locations/NL/GFX/{LOC_ID}", body)).body["status_code"] == 1000
        await _chattr("+i", files)
        try:
            answers = []
            for i in range(3):
                b = dict(body, id=f"ro-{i}")
                answers.append(await relay.put(f"/locations/NL/GFX/ro-{i}", b))
            assert all(a.body["status_code"] == 3000 for a in answers), [a.body for a in answers]
        finally:
            await _chattr("-i", files)

        async def recovered() -> bool:
            return (await relay.put("/locations/NL/GFX/after", dict(body, id="after"))).body["status_code"] == 1000

        await eventually(recovered, timeout=30, interval=0.5)
        ids = {s.key.object_id for s in await relay.store.list_states("locations", None, None, 100)}
        assert ids == {LOC_ID, "after"}
    finally:
        await stop_relay(relay)


async def _chattr(flag: str, files: list[str]) -> None:
    proc = await asyncio.create_subprocess_exec("chattr", flag, *files)
    assert await proc.wait() == 0
