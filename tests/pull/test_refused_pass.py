"""A pull pass that stores nothing it fetched fails: `relay pull --once` exits 1, the pull-failing
gauge rises (deploy/prometheus/alerts.yml RelayPullFailing), and `relay check-config` warns about a
source that invites it (no default_cpo for OCPI 2.1.1 objects, which carry no party)."""

from __future__ import annotations

from pathlib import Path

import pytest

from relay.metrics import REGISTRY
from tests.commands import relay_cli_async
from tests.conftest import RelayHandle
from tests.pull.conftest import PULL_TOKEN, SOURCE, FakeSender, Puller, at, location
from tests.pull.test_schedule_and_cli import _migrated, _relay_pull


@pytest.fixture
def extra_config(sender: FakeSender, pull_token: str) -> str:
    # like the shared one, without default_cpo: 2.1.1 locations name no party, so each is refused
    return f"""
pull:
  - name: {SOURCE}
    url: {sender.url}
    token_env: TEST_PULL_TOKEN
    modules: [locations, tariffs]
    interval: 1h
    page_limit: 25
    timeout: 10
"""


def _fill(sender: FakeSender, n: int = 3) -> None:
    for i in range(n):
        sender.put("locations", location(f"LOC-{i:05d}", at(i)))


def _gauge(name: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"source": SOURCE})


async def test_relay_pull_once_exits_1_when_every_fetched_object_is_refused(
    database_url: str, config_path: Path, sender: FakeSender
) -> None:
    await _migrated(database_url)
    _fill(sender)
    code, out, err = await _relay_pull(database_url, config_path, "--once")
    assert code == 1, (out, err)
    line = next(x for x in out.splitlines() if x.startswith(f"{SOURCE} locations:"))
    assert "fetched=3" in line and "rejected=3" in line
    assert "FAILED: every object fetched (3) was refused" in line and "default_cpo" in line
    # a module that fetched nothing did not fail
    assert next(x for x in out.splitlines() if x.startswith(f"{SOURCE} tariffs:")).endswith("(full)")


async def test_a_pass_refusing_everything_counts_as_a_failed_pass(
    relay: RelayHandle, sender: FakeSender, pull: Puller
) -> None:
    _fill(sender)
    before = _gauge("relay_pull_consecutive_failures") or 0.0
    success = _gauge("relay_pull_last_success_timestamp_seconds")
    summaries = await pull()
    assert not summaries["locations"].ok and summaries["locations"].rejected == 3
    assert _gauge("relay_pull_consecutive_failures") == before + 1
    assert _gauge("relay_pull_last_success_timestamp_seconds") == success
    # the position did not move: the next pass reads the same objects again (and fails again)
    assert (await relay.store.get_positions(SOURCE))["locations"].position is None
    async with relay.http.get(relay.url + "/metrics") as resp:
        text = await resp.text()
    assert f'relay_pull_consecutive_failures{{source="{SOURCE}"}} {before + 1}' in text

    # once the objects can be stored the pass is good again and the count falls back to 0
    for i in range(3):
        sender.put("locations", location(f"LOC-{i:05d}", at(10 + i), country_code="NL", party_id="GFX"))
    summaries = await pull()
    assert summaries["locations"].ok, summaries["locations"].error
    assert _gauge("relay_pull_consecutive_failures") == 0
    assert (_gauge("relay_pull_last_success_timestamp_seconds") or 0) > (success or 0)


async def test_check_config_warns_about_a_pull_source_without_default_cpo(config_path: Path) -> None:
    res = await relay_cli_async("check-config", str(config_path), env={"TEST_PULL_TOKEN": PULL_TOKEN}, timeout=60)
    assert res.returncode == 0, res.stderr
    assert ": ok (" in res.stdout
    warning = res.stderr
    assert "warning: pull source" in warning and SOURCE in warning and "default_cpo" in warning
    assert PULL_TOKEN not in warning
