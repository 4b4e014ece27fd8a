"""`relay backup PATH`: a consistent copy made while a `relay serve` subprocess keeps ingesting."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import sys
from pathlib import Path

import aiohttp

from tests.conftest import Sink, process_config, process_env, put_location_acked, spawn_relay

CLIENTS = 16


async def _push(url: str, prefix: str, acked: set[str], *, count: int | None = None,
                stop: asyncio.Event | None = None) -> None:
    """PUT unique locations from CLIENTS concurrent clients: ``count`` of them, or until ``stop``."""
    numbers = iter(range(count if count is not None else 10**9))

    async def client(session: aiohttp.ClientSession) -> None:
        for i in numbers:
            if stop is not None and stop.is_set():
                return
            await put_location_acked(session, url, f"{prefix}-{i}", acked)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(client(session) for _ in range(CLIENTS)))


async def _relay_cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", *args, env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_backup_during_load_restores_every_acknowledged_event(tmp_path: Path, sink: Sink) -> None:
    db = tmp_path / "relay.db"
    env = process_env(f"sqlite:///{db}", process_config(tmp_path, sink, timeout=5))
    relay = await spawn_relay(env, want=("http", "grpc"))
    copy = tmp_path / "backup" / "copy.db"
    copy.parent.mkdir()
    try:
        before: set[str] = set()
        await _push(relay.url, "before", before, count=1000)
        assert len(before) == 1000
        during: set[str] = set()
        stop = asyncio.Event()
        load = asyncio.create_task(_push(relay.url, "during", during, stop=stop))
        # the backup starts while pushes are being answered
        while not during:
            await asyncio.sleep(0.01)
        code, out, err = await _relay_cli(env, "backup", str(copy))
        acked_while_copying = len(during)
        stop.set()
        await load
    finally:
        assert await relay.stop() == 0
    assert code == 0, err
    assert "backup written to" in out and "backup: 100 %" in err, (out, err)
    assert acked_while_copying > 0
    _check_restored(copy, before)


def _check_restored(copy: Path, before: set[str]) -> None:
    """Restore: open the copy on its own, as a relay started on it would."""
    assert not Path(f"{copy}.partial").exists()
    conn = sqlite3.connect(copy)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        stored = {r[0] for r in conn.execute("SELECT object_id FROM event WHERE object_id LIKE 'before-%'")}
        seqs = [r[0] for r in conn.execute("SELECT seq FROM event ORDER BY seq")]
    finally:
        conn.close()
    assert stored == before
    assert seqs == list(range(1, len(seqs) + 1)), "the copy's event log has a gap"


async def test_backup_refuses_an_existing_file(tmp_path: Path, sink: Sink) -> None:
    env = process_env(f"sqlite:///{tmp_path / 'relay.db'}", process_config(tmp_path, sink, timeout=5))
    code, _out, _err = await _relay_cli(env, "migrate")
    assert code == 0
    existing = tmp_path / "keep.db"
    existing.write_bytes(b"precious")
    code, _out, err = await _relay_cli(env, "backup", str(existing))
    assert code == 2
    assert "exists" in err
    assert existing.read_bytes() == b"precious"


async def test_backup_of_postgresql_is_refused_with_its_own_tools_named(pg_database: str, tmp_path: Path,
                                                                       sink: Sink) -> None:
    env = process_env(pg_database, process_config(tmp_path, sink, timeout=5))
    code, _out, err = await _relay_cli(env, "backup", str(tmp_path / "copy.db"))
    assert code == 2
    assert "pg_dump" in err and "pg_basebackup" in err
    assert not (tmp_path / "copy.db").exists()
