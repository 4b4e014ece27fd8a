"""`relay prune` and `relay status` as an operator runs them: real subprocesses, a real database."""

from __future__ import annotations

import json
from datetime import timedelta

from relay.store import open_store
from tests.commands import relay_cli, relay_cli_async
from tests.store.test_retention import NOW, OLD, Op, RejectOp


async def _fill(url: str) -> None:
    store = open_store(url)
    await store.migrate()
    await store.start()
    try:
        for i in range(10):
            await store.submit(Op("A", OLD + timedelta(seconds=i)))
        await store.submit(Op("A", NOW))
        await store.submit(RejectOp(OLD))
        await store.submit(RejectOp(NOW))
        await store.commit_cursor("slow", 4)
    finally:
        await store.close()


async def test_prune_dry_run_then_prune_then_status(database_url: str) -> None:
    await _fill(database_url)
    env = {"RELAY_DATABASE_URL": database_url}

    dry = await relay_cli_async("prune", "--older-than", "30d", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    assert report["removed"] == {"event": 4, "delivery": 0, "rejected": 1}  # seqs 1..4: behind the cursor
    assert report["held_by_consumer"] == {"slow": 6}  # seqs 5..10: old, after its cursor

    res = await relay_cli_async("prune", "--older-than", "30d", "--chunk", "3", env=env)
    assert res.returncode == 0, res.stderr
    assert "removed" in res.stdout and "4 events" in res.stdout and "1 refusals" in res.stdout
    assert "held by consumer slow: 6 events" in res.stdout
    assert "event: 4 removed" in res.stderr  # progress

    again = json.loads((await relay_cli_async("prune", "--older-than", "30d", "--json", env=env)).stdout)
    assert again["removed"] == {"event": 0, "delivery": 0, "rejected": 0}

    status = await relay_cli_async("status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    stats = json.loads(status.stdout)
    assert stats["events"] == 7 and stats["rejected_count"] == 1
    assert stats["database_bytes"] > 0 and stats["oldest_event_at"] is not None
    assert stats["retention_held_by"][0]["kind"] == "consumer" and stats["retention_held_by"][0]["name"] == "slow"
    text = (await relay_cli_async("status", env=env)).stdout
    assert "database size:" in text and "retention held back by consumer slow" in text


def test_prune_needs_a_valid_window() -> None:
    res = relay_cli("prune", "--older-than", "30 days", env={"RELAY_DATABASE_URL": "sqlite:///unused.db"})
    assert res.returncode == 2 and "--older-than" in res.stderr
    res = relay_cli("prune", env={"RELAY_DATABASE_URL": "sqlite:///unused.db"})
    assert res.returncode == 2
