"""Retention in a running relay: the background part of `relay serve`, and the bound on `rejected`."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

from relay.metrics import REGISTRY
from relay.settings import Settings
from relay.store import open_store
from tests.conftest import LIMITED_TOKEN, SESSION_ID, eventually, example_bytes, start_relay, stop_relay
from tests.store.test_retention import NOW, OLD, Op

SESS = f"/sessions/NL/GFX/{SESSION_ID}"


def _settings(database_url: str, config_path: Path, **kw: object) -> Settings:
    return Settings(database_url=database_url, config=str(config_path), http_port=0, grpc_port=0, grpc=False,
                    workers=False, **kw)  # type: ignore[arg-type]


async def test_relay_serve_with_retention_prunes_in_the_background(database_url: str, config_path: Path) -> None:
    store = open_store(database_url)
    await store.migrate()
    await store.start()
    try:
        for i in range(5):  # received 40 days ago, then one today: 1..5 are old, 6 is the object's latest
            await store.submit(Op("A", OLD + timedelta(seconds=i)))
        await store.submit(Op("A", NOW))
        await store.submit(Op("B", OLD))  # the only event of B: kept
    finally:
        await store.close()

    relay = await start_relay(_settings(database_url, config_path, retention="30d"))
    try:
        async def pruned() -> bool:
            return [e.seq for e in await relay.store.read_events(0, 100)] == [6, 7]

        await eventually(pruned)
        assert (await relay.store.get_state(Op("A", NOW).key)) is not None
    finally:
        await stop_relay(relay)


def _dropped(subscription: str) -> float:
    return REGISTRY.get_sample_value("relay_rejected_dropped_total", {"subscription": subscription}) or 0.0


async def test_refusals_past_the_bound_are_answered_counted_and_not_stored(database_url: str,
                                                                          config_path: Path) -> None:
    relay = await start_relay(_settings(database_url, config_path, rejected_max_per_subscription=2))
    try:
        before = _dropped("greenflux")
        bad = example_bytes("invalid_session_negative_kwh.json")
        for _ in range(3):
            ans = await relay.request("PUT", SESS, raw=bad)
            assert ans.status == 400 and ans.body["status_code"] == 2001, ans.body
        assert (await relay.store.rejected_counts()) == {"greenflux": 2}
        assert _dropped("greenflux") == before + 1

        # the bound is per subscription: another sender's refusal is still kept
        ans = await relay.request("PUT", SESS, raw=bad, token=LIMITED_TOKEN)
        assert ans.status in (400, 403)
        assert (await relay.store.rejected_counts()) == {"greenflux": 2, "limited": 1}
        assert _dropped("greenflux") == before + 1
    finally:
        await stop_relay(relay)


def test_retention_settings_are_validated() -> None:
    import pytest

    from relay.errors import ConfigError

    for bad in ("30", "d", "0d", "-1d", "1w", "1.5h"):
        with pytest.raises(ConfigError, match="RELAY_RETENTION"):
            Settings.from_env({"RELAY_RETENTION": bad})
    assert dataclasses.replace(Settings.from_env({"RELAY_RETENTION": "12h"})).retention == "12h"
