"""/metrics of a running relay: every metric the shipped alert rules and Grafana dashboard name is
exported, and the monitoring gauges (silence, breaker, oldest pending, database size) move."""

from __future__ import annotations

import base64
import dataclasses
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from relay.settings import Settings
from tests.conftest import RelayHandle, eventually, example, start_relay, stop_relay

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "ocpi-relay.json"
OURS = re.compile(r"\b((?:relay|process|python)_[a-zA-Z0-9_]+)\b")


def _closed_port() -> int:
    """A local port nothing listens on (connections to it are refused: a partner that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def extra_config(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_DOWN_SECRET", "whsec_" + base64.b64encode(b"down-secret-5c2e-0123456789abcdef").decode())
    return f"""
targets:
  - name: down
    type: webhook
    url: http://127.0.0.1:{_closed_port()}/hook
    secret_env: TEST_DOWN_SECRET
    timeout: 2
    max_attempts: 1000
    retry_base: 0.05
    retry_max: 0.4
rules:
  - name: locations-down
    match: {{modules: [locations]}}
    to: [down]
"""


@pytest.fixture
async def monitored(relay_settings: Settings) -> AsyncIterator[RelayHandle]:
    """A relay with delivery workers and a fast monitoring refresh; a session counts as silent after 1 s."""
    settings = dataclasses.replace(relay_settings, workers=True, session_silence=1, monitor_interval=0.1)
    handle = await start_relay(settings)
    try:
        yield handle
    finally:
        await stop_relay(handle)


async def _scrape(relay: RelayHandle) -> str:
    async with relay.http.get(relay.url + "/metrics") as resp:
        assert resp.status == 200
        return await resp.text()


def _exported(text: str) -> set[str]:
    """Every series name /metrics offers: sample names, and families declared by HELP/TYPE lines
    (a labelled family without children yet has no samples), with a histogram's derived names."""
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            names.add(name)
            if kind == "histogram":
                names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def _value(text: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else None


def _named_in_rules_and_dashboard() -> set[str]:
    exprs = [rule["expr"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    return {name for expr in exprs for name in OURS.findall(expr)}


async def test_every_metric_named_by_the_alerts_and_the_dashboard_is_exported(monitored: RelayHandle) -> None:
    named = _named_in_rules_and_dashboard()
    assert {"relay_last_push_timestamp_seconds", "relay_circuit_breaker_state", "relay_database_size_bytes",
            "relay_pull_consecutive_failures", "relay_consumer_lag_events", "process_cpu_seconds_total"} <= named
    exported = _exported(await _scrape(monitored))
    assert named - exported == set()
    assert {"relay_build_info", "python_gc_objects_collected_total", "process_resident_memory_bytes"} <= exported


async def test_monitoring_gauges_follow_pushes_sessions_and_a_dead_partner(monitored: RelayHandle) -> None:
    relay = monitored
    text = await _scrape(relay)
    # a configured module that never got a push counts as silent from the relay's start
    assert _value(text, "relay_last_push_timestamp_seconds", '{module="locations",subscription="limited"}')
    assert _value(text, "relay_build_info", '{version="0.1.0"}') == 1.0

    pushed_after = time.time()
    session = example("session_active.json")
    path = f"/sessions/NL/GFX/{session['id']}"
    assert (await relay.put(path, session)).status == 200
    text = await _scrape(relay)
    last = _value(text, "relay_last_push_timestamp_seconds", '{module="sessions",subscription="greenflux"}')
    assert last is not None and last >= pushed_after

    async def silent(count: float) -> bool:
        return _value(await _scrape(relay), "relay_sessions_silent") == count

    await eventually(lambda: silent(1.0))  # ACTIVE and no PATCH for RELAY_SESSION_SILENCE (1 s here)
    assert (await relay.patch(path, {"status": "COMPLETED", "end_datetime": session["start_datetime"],
                                     "last_updated": _later(session["last_updated"])})).status == 200
    await eventually(lambda: silent(0.0))  # completed sessions are never silent

    location = example("location_full.json")
    assert (await relay.put(f"/locations/NL/GFX/{location['id']}", location)).status == 200

    async def partner_down() -> bool:
        text = await _scrape(relay)
        breaker = _value(text, "relay_circuit_breaker_state", '{target="down"}')
        age = _value(text, "relay_outbox_oldest_pending_age_seconds", '{target="down"}')
        return breaker is not None and breaker >= 1 and age is not None and age > 0

    await eventually(partner_down)
    text = await _scrape(relay)
    assert (_value(text, "relay_database_size_bytes") or 0) > 0
    assert (_value(text, "relay_locations") or 0) >= 1
    assert (_value(text, "relay_monitor_refresh_timestamp_seconds") or 0) >= pushed_after


def _later(stamp: str) -> str:
    """An OCPI timestamp one second after ``stamp``."""
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00")) + timedelta(seconds=1)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")
