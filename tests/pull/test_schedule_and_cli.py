"""The pull schedule inside `relay serve`, and `relay pull` as the operator runs it (a subprocess)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from pathlib import Path

from relay.ingest import Ingestor
from relay.pull.sync import pull_source
from relay.routing.holder import ConfigHolder
from relay.settings import Settings
from relay.store import open_store
from relay.store.base import StateKey
from tests.commands import relay_cli_async
from tests.conftest import eventually, start_relay, stop_relay
from tests.pull.conftest import PULL_TOKEN, SOURCE, FakeSender, at, location


def _fill(sender: FakeSender, n: int = 60) -> None:
    for i in range(n):
        sender.put("locations", location(f"LOC-{i:05d}", at(i)))


async def _migrated(database_url: str) -> None:
    store = open_store(database_url)
    try:
        await store.migrate()
    finally:
        await store.close()


async def test_relay_serve_pulls_promptly_from_the_stored_position_after_a_restart(
    relay_settings: Settings, sender: FakeSender
) -> None:
    _fill(sender)
    store = open_store(relay_settings.database_url)
    await store.migrate()
    await store.start()
    holder = ConfigHolder(relay_settings.config)
    source = holder().pull_source(SOURCE)
    assert source is not None
    await pull_source(store, Ingestor(store, holder), source)
    await store.close()
    # the relay is down; GreenFlux's push of this change is lost, only a pull can find it
    sender.put("locations", location("LOC-00003", at(300), name="changed during the outage"))
    sender.requests.clear()

    handle = await start_relay(dataclasses.replace(relay_settings, workers=True))
    try:
        async def repaired() -> bool:
            st = await handle.store.get_state(StateKey("locations", "NL", "GFX", "LOC-00003"))
            return st is not None and st.object["name"] == "changed during the outage"

        await eventually(repaired, timeout=20)
        assert sender.queries("locations")[0]["date_from"] == at(59)  # incremental, from the stored position
        events = await handle.store.read_events(0, 1000)
        assert [e.origin for e in events if e.object_id == "LOC-00003"] == ["pull", "pull"]
    finally:
        await stop_relay(handle)


async def _relay_pull(database_url: str, config_path: Path, *args: str) -> tuple[int, str, str]:
    env = {"RELAY_DATABASE_URL": database_url, "RELAY_CONFIG": str(config_path), "TEST_PULL_TOKEN": PULL_TOKEN}
    res = await relay_cli_async("pull", *args, env=env)
    return res.returncode, res.stdout, res.stderr


async def test_relay_pull_once_shows_progress_and_prints_a_summary_per_module(
    database_url: str, config_path: Path, sender: FakeSender
) -> None:
    await _migrated(database_url)
    _fill(sender)
    code, out, err = await _relay_pull(database_url, config_path, "--once")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 4
    assert lines[0].startswith(f"{SOURCE} locations: fetched=60 new=60 changed=0 unchanged=0 rejected=0 seconds=")
    assert lines[0].endswith("(full)")
    assert lines[1].startswith(f"{SOURCE} sessions: fetched=0 new=0")
    assert "60/60" in err  # the progress bar: objects fetched / X-Total-Count

    code, out, err = await _relay_pull(database_url, config_path, "--once", "--source", SOURCE)
    assert code == 0, err
    assert f"{SOURCE} locations: fetched=1 new=0 changed=0 unchanged=1 rejected=0" in out  # incremental


async def test_relay_pull_once_exits_1_naming_the_source_when_the_token_is_refused(
    database_url: str, config_path: Path, sender: FakeSender
) -> None:
    await _migrated(database_url)
    sender.token = "another-token"
    code, out, err = await _relay_pull(database_url, config_path, "--once")
    assert code == 1
    assert f"{SOURCE} locations:" in out and "HTTP 401" in out and f"pull source {SOURCE}" in out
    assert PULL_TOKEN not in out + err
    assert len(sender.requests) == 1


async def test_relay_pull_with_an_unknown_source_is_a_usage_error(database_url: str, config_path: Path,
                                                                  sender: FakeSender) -> None:
    code, _, err = await _relay_pull(database_url, config_path, "--once", "--source", "nope")
    assert code == 2
    assert "no pull source named 'nope'" in err and SOURCE in err
    assert sender.requests == []


async def test_relay_pull_without_once_runs_the_schedule_until_interrupted(
    database_url: str, config_path: Path, sender: FakeSender
) -> None:
    await _migrated(database_url)
    _fill(sender, 3)
    env = {**os.environ, "RELAY_DATABASE_URL": database_url, "RELAY_CONFIG": str(config_path),
           "TEST_PULL_TOKEN": PULL_TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "pull", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    store = open_store(database_url)
    try:
        async def every_module_pulled() -> bool:
            positions = await store.get_positions(SOURCE)
            return all((positions[m].last_status or "").startswith("ok") for m in
                       ("locations", "sessions", "cdrs", "tariffs") if m in positions) and len(positions) == 4

        await eventually(every_module_pulled, timeout=30)
    finally:
        await store.close()
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    assert '"event":"pull finished"' in err.decode()
