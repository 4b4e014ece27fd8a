"""Delivery fixtures: scriptable partner sinks on ephemeral ports and a relay with its workers on.

``partner_sink`` is a small Starlette app under uvicorn on port 0 (svix's ``TestReceiver``): it
records every request and answers whatever the test scripts through ``sink.answer``. A test picks
its forwarding.yaml with ``@pytest.mark.forwarding(TEMPLATE)``; ``$sink`` / ``$other`` in the
template become the sinks' base URLs.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import os
import string
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relay.runtime import bind
from relay.settings import Settings
from relay.store.outbox import DeliveryRecord
from tests.conftest import SESSION_ID, RelayHandle, eventually, example

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


@dataclass
class Received:
    """One request as the sink saw it; ``status`` is what the sink answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float
    status: int | None = None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


Reply = tuple[int, Any, dict[str, str]]
Answer = Callable[[Received, int], "Reply | Awaitable[Reply]"]


def ocpi_envelope(status_code: int = 1000, message: str = "Success") -> dict[str, Any]:
    return {"status_code": status_code, "status_message": message, "timestamp": "2024-03-05T12:00:00Z"}


def answer_ok(_rec: Received, _n: int) -> Reply:
    return 200, ocpi_envelope(), {}


@dataclass
class PartnerSink:
    """Records requests; ``answer(received, n)`` (n counts from 1) decides status, body and headers."""

    answer: Answer = answer_ok
    received: list[Received] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    port: int = 0
    _server: uvicorn.Server | None = None
    _task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accepted(self, path_prefix: str = "") -> list[Received]:
        """Requests answered 2xx, in arrival order."""
        return [r for r in self.received if r.ok and r.path.startswith(path_prefix)]

    async def _handle(self, request: Request) -> Response:
        rec = Received(request.method, request.url.path, {k.lower(): v for k, v in request.headers.items()},
                       await request.body(), time.monotonic())
        self.received.append(rec)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            reply = self.answer(rec, len(self.received))
            if inspect.isawaitable(reply):
                reply = await reply
        finally:
            self.in_flight -= 1
        status, body, headers = reply
        rec.status = status
        content = body if isinstance(body, bytes) else (b"" if body is None else json.dumps(body).encode())
        return Response(content, status, headers=headers, media_type="application/json")

    async def start(self) -> None:
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])])
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        sock = bind("127.0.0.1", 0)
        self.port = sock.getsockname()[1]
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        assert self._server is not None and self._task is not None
        self._server.should_exit = True
        await asyncio.wait_for(self._task, 10)


@pytest.fixture
async def sink_factory() -> AsyncIterator[Callable[[], Awaitable[PartnerSink]]]:
    sinks: list[PartnerSink] = []

    async def make() -> PartnerSink:
        sink = PartnerSink()
        await sink.start()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        await sink.stop()


@pytest.fixture
async def partner_sink(sink_factory: Callable[[], Awaitable[PartnerSink]]) -> PartnerSink:
    """The partner the default config's ``hook`` target (and ``$sink`` in a template) points at."""
    return await sink_factory()


@pytest.fixture
async def other_sink(sink_factory: Callable[[], Awaitable[PartnerSink]]) -> PartnerSink:
    """A second partner (``$other`` in a template)."""
    return await sink_factory()


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
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", *args, "--database-url", settings.database_url, "--config", settings.config,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(REPO), env=dict(os.environ),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    """``eventually`` for a plain (non-async) condition."""

    async def check() -> bool:
        return predicate()

    await eventually(check, timeout=timeout)


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
