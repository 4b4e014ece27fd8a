"""Delivery fixtures: a relay with its workers on, pointed at partner sinks on port 0.

The sinks are tests/servers.py's ``PartnerSink`` (fixtures ``partner_sink`` and ``other_sink`` in
tests/conftest.py). A test picks its forwarding.yaml with ``@pytest.mark.forwarding(TEMPLATE)``;
``$sink`` / ``$other`` in the template become the sinks' base URLs.
"""

from __future__ import annotations

import base64
import string
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from relay.settings import Settings
from relay.store.outbox import DeliveryRecord
from tests.commands import relay_cli_async
from tests.conftest import SESSION_ID, RelayHandle, example
from tests.servers import PartnerSink

HOOK_SECRET = "whsec_" + base64.b64encode(b"hook-test-secret-0123456789abcdef").decode()
RESEARCH_SECRET = "whsec_" + base64.b64encode(b"research-test-secret-9876543210").decode()
PSEUDO_KEY = "pseudo-test-key-5e1f0a"
PARTNER_TOKEN = "partner-token-3c9d2b"
REPO = Path(__file__).resolve().parents[2]

# retry_base is tiny so that retries (and breaker pauses) take milliseconds in tests.
DEFAULT_FORWARDING = """
targets:
  - name: hook
    type: webhook
    url: $sink/hook
    secret_env: TEST_HOOK_SECRET
    timeout: 5
    concurrency: 4
    max_attempts: 30
    retry_base: 0.05
    retry_max: 0.4
rules:
  - name: everything
    match: {modules: [locations, sessions, cdrs, tariffs]}
    to: [hook]
"""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "forwarding(template): forwarding.yaml targets/rules for a delivery test")


@pytest.fixture(autouse=True)
def delivery_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_HOOK_SECRET", HOOK_SECRET)
    monkeypatch.setenv("TEST_RESEARCH_SECRET", RESEARCH_SECRET)
    monkeypatch.setenv("TEST_PSEUDO_KEY", PSEUDO_KEY)
    monkeypatch.setenv("TEST_PARTNER_TOKEN", PARTNER_TOKEN)


def render_forwarding(template: str, sink: PartnerSink, other: PartnerSink | None = None) -> str:
    values = {"sink": sink.url, "other": other.url if other is not None else "http://127.0.0.1:9"}
    return string.Template(template).substitute(values)


@pytest.fixture
def extra_config(request: pytest.FixtureRequest, partner_sink: PartnerSink) -> str:
    marker = request.node.get_closest_marker("forwarding")
    template = marker.args[0] if marker is not None else DEFAULT_FORWARDING
    other = request.getfixturevalue("other_sink") if "$other" in template else None
    return render_forwarding(template, partner_sink, other)


@pytest.fixture
def relay_settings(database_url: str, config_path: Path) -> Settings:
    return Settings(database_url=database_url, config=str(config_path), http_port=0, grpc_port=0,
                    grpc=False, workers=True, instance="test-relay")


# -- helpers -----------------------------------------------------------------------------------------


async def rows(relay: RelayHandle, state: str | None = None, target: str | None = None) -> list[DeliveryRecord]:
    """Outbox rows by id, read through the store's outbox API."""
    return await relay.store.outbox().list_rows(state, target, limit=100_000)


async def run_cli(*args: str, settings: Settings) -> tuple[int, str, str]:
    """Run `relay ...` as a separate process against the test database and config."""
    res = await relay_cli_async(*args, "--database-url", settings.database_url, "--config", settings.config,
                                cwd=REPO, timeout=60)
    return res.returncode, res.stdout, res.stderr


def session_path(session_id: str = SESSION_ID) -> str:
    return f"/sessions/NL/GFX/{session_id}"


async def put_session(relay: RelayHandle, session_id: str = SESSION_ID, kwh: float = 0.0) -> None:
    """PUT the example active session (under ``session_id``); asserts the relay answered 1000."""
    body = example("session_active.json")
    body["id"], body["kwh"] = session_id, kwh
    ans = await relay.put(session_path(session_id), body)
    assert ans.body.get("status_code") == 1000, ans.body


async def patch_session(relay: RelayHandle, i: int, kwh: float, session_id: str = SESSION_ID) -> None:
    """A compact GreenFlux PATCH, ``i`` minutes after the session's start (so it is always newer)."""
    ts = (datetime(2024, 3, 5, 8, 15, tzinfo=UTC) + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M:%SZ")
    ans = await relay.patch(session_path(session_id), {"kwh": kwh, "last_updated": ts})
    assert ans.body.get("status_code") == 1000, ans.body


# One webhook target taking one request at a time, for every session event (order tests).
ONE_AT_A_TIME = """
targets:
  - name: hook
    type: webhook
    url: $sink/hook
    secret_env: TEST_HOOK_SECRET
    timeout: 5
    concurrency: 1
    max_attempts: 30
    retry_base: 0.05
    retry_max: 0.4
rules:
  - name: everything
    match: {modules: [sessions]}
    to: [hook]
"""
