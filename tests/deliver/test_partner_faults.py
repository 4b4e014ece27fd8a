"""Faulty partners: real sinks on ephemeral ports that hang, reset, crawl, answer nonsense or redirect.

Every test runs on SQLite and PostgreSQL with the relay's delivery workers on. A raw asyncio TCP
server (``FaultServer``) plays the faulty partner, so it can do what no well-behaved HTTP framework
would (never answer, abort the socket mid-request); a ``PartnerSink`` plays a healthy second target
that must keep flowing while the faulty one fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import string
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.settings import Settings
from relay.store.outbox import DeliveryRecord
from tests.conftest import SESSION_ID, RelayHandle, eventually
from tests.deliver.conftest import HOOK_SECRET, PARTNER_TOKEN, patch_session, put_session, session_path
from tests.servers import PartnerSink

KWHS = [1.5, 3.0, 4.5, 6.0, 7.5]

# A fault mode: "hang" (never answer), "reset" (abort the socket), or (delay, raw HTTP response bytes).
Mode = str | tuple[float, bytes]


def http_response(status: int, body: bytes = b"", headers: dict[str, str] | None = None,
                  reason: str = "Whatever") -> bytes:
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


OK_ENVELOPE = orjson.dumps({"status_code": 1000, "status_message": "Success", "timestamp": "2024-03-05T12:00:00Z"})
OK = http_response(200, OK_ENVELOPE, {"Content-Type": "application/json"}, "OK")


@dataclass
class Hit:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    mode: str


@dataclass
class FaultServer:
    """A raw HTTP/1.1 server; ``mode(n)`` (n counts requests from 1) decides what each request gets."""

    mode: Callable[[int], Mode] = lambda _n: (0.0, OK)
    hits: list[Hit] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answered(self) -> list[Hit]:
        return [h for h in self.hits if h.mode == "answered"]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            mode = self.mode(len(self.hits) + 1)
            hit = Hit(method, path, headers, body, mode if isinstance(mode, str) else "answered")
            self.hits.append(hit)
            if mode == "reset":
                writer.transport.abort()
                return
            if mode == "hang":
                await reader.read()  # until the relay gives up and closes its end
                return
            assert not isinstance(mode, str)
            delay, raw = mode
            if delay:
                await asyncio.sleep(delay)  # the partner is slow: the scenario, not a synchronisation
            writer.write(raw)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)


# -- configs: ``faulty`` points at the FaultServer, ``healthy`` at a PartnerSink ------------------------

HEALTHY = """
  - name: healthy
    type: webhook
    url: $healthy/hook
    secret_env: TEST_HOOK_SECRET
    timeout: 5
    retry_base: 0.01
    retry_max: 0.05
rules:
  - name: sessions
    match: {modules: [sessions]}
    to: [faulty, healthy]
"""


def webhook_target(timeout: float, max_attempts: int) -> str:
    return f"""
targets:
  - name: faulty
    type: webhook
    url: $fault/hook
    secret_env: TEST_HOOK_SECRET
    timeout: {timeout}
    concurrency: 4
    max_attempts: {max_attempts}
    retry_base: 0.01
    retry_max: 0.05
""" + HEALTHY


def ocpi_target(max_attempts: int) -> str:
    return f"""
targets:
  - name: faulty
    type: ocpi
    url: $fault/ocpi/emsp/2.1.1
    token_env: TEST_PARTNER_TOKEN
    timeout: 2
    max_attempts: {max_attempts}
    retry_base: 0.01
    retry_max: 0.05
""" + HEALTHY


@pytest.fixture(autouse=True)
def delivery_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_HOOK_SECRET", HOOK_SECRET)
    monkeypatch.setenv("TEST_PARTNER_TOKEN", PARTNER_TOKEN)


@pytest.fixture
async def fault() -> AsyncIterator[FaultServer]:
    server = FaultServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def healthy(partner_sink: PartnerSink) -> PartnerSink:
    return partner_sink


@pytest.fixture
def template() -> str:
    return webhook_target(timeout=2, max_attempts=5)


@pytest.fixture
def extra_config(template: str, fault: FaultServer, healthy: PartnerSink) -> str:
    return string.Template(template).substitute(fault=fault.url, healthy=healthy.url)


@pytest.fixture
def relay_settings(database_url: str, config_path: Path) -> Settings:
    return Settings(database_url=database_url, config=str(config_path), http_port=0, grpc_port=0,
                    grpc=False, workers=True, instance="fault-relay")


# -- helpers -------------------------------------------------------------------------------------------


async def push_session_updates(relay: RelayHandle) -> None:
    """One session: a PUT (kwh 0) and then PATCHes in rising kwh order."""
    await put_session(relay)
    for i, kwh in enumerate(KWHS, start=1):
        await patch_session(relay, i, kwh)


N_EVENTS = 1 + len(KWHS)


async def outbox(relay: RelayHandle, target: str, state: str | None = None) -> list[DeliveryRecord]:
    return await relay.store.outbox().list_rows(state, target, limit=10_000)


def webhook_kwhs(bodies: list[bytes]) -> list[float]:
    return [orjson.loads(b)["data"]["object"]["kwh"] for b in bodies]


def delivered_kwhs(sink: PartnerSink) -> list[float]:
    return webhook_kwhs([r.body for r in sink.accepted("/hook")])


async def healthy_completes_while_faulty_is_failing(relay: RelayHandle, healthy: PartnerSink) -> None:
    """The healthy target gets everything, in order, while the faulty target still has rows open."""
    await eventually(lambda: len(healthy.accepted()) >= N_EVENTS, timeout=10)
    open_faulty = [r for r in await outbox(relay, "faulty") if r.state in ("pending", "in_flight")]
    assert open_faulty, "the faulty target was already settled: the test proves nothing about isolation"
    assert delivered_kwhs(healthy) == [0.0, *KWHS]


async def all_settled(relay: RelayHandle, target: str, state: str, n: int = N_EVENTS,
                      timeout: float = 20.0) -> list[DeliveryRecord]:
    async def check() -> bool:
        rows = await outbox(relay, target)
        return len(rows) == n and all(r.state == state for r in rows)

    await eventually(check, timeout=timeout)
    return await outbox(relay, target)


async def stats_for(relay: RelayHandle, target: str) -> dict[str, Any]:
    stats = await relay.store.stats()
    result: dict[str, Any] = stats["targets"][target]
    return result


# -- (a) a partner that never answers ------------------------------------------------------------------


@pytest.mark.parametrize("template", [webhook_target(timeout=0.5, max_attempts=2)])
async def test_hanging_partner_times_out_retries_then_dead_letters_while_other_target_flows(
    relay: RelayHandle, fault: FaultServer, healthy: PartnerSink
) -> None:
    fault.mode = lambda _n: "hang"
    await push_session_updates(relay)
    await healthy_completes_while_faulty_is_failing(relay, healthy)

    dead = await all_settled(relay, "faulty", "dead")
    for row in dead:
        assert row.attempts == 2
        assert row.last_error == "timed out after 0.5s (gave up after 2 attempts)", row.last_error
        assert row.last_http_status is None
    assert len(fault.hits) == 2 * N_EVENTS
    stats = await stats_for(relay, "faulty")
    assert (stats["dead"], stats["depth"]) == (N_EVENTS, 0)
    assert (await stats_for(relay, "healthy"))["done"] == N_EVENTS


@pytest.mark.parametrize("template", [webhook_target(timeout=0.5, max_attempts=30)])
async def test_partner_that_hangs_then_recovers_gets_every_patch_once_in_kwh_order(
    relay: RelayHandle, fault: FaultServer, healthy: PartnerSink
) -> None:
    fault.mode = lambda n: "hang" if n <= 3 else (0.0, OK)
    await push_session_updates(relay)
    await healthy_completes_while_faulty_is_failing(relay, healthy)

    done = await all_settled(relay, "faulty", "done")
    assert webhook_kwhs([h.body for h in fault.answered()]) == [0.0, *KWHS]
    assert sorted(r.attempts for r in done) == [1] * (N_EVENTS - 1) + [4]
    assert (await stats_for(relay, "faulty"))["dead"] == 0


# -- (b) a partner that resets the connection -----------------------------------------------------------


@pytest.mark.parametrize("template", [webhook_target(timeout=2, max_attempts=3)])
async def test_connection_reset_is_retried_then_dead_lettered_with_a_network_reason(
    relay: RelayHandle, fault: FaultServer, healthy: PartnerSink
) -> None:
    fault.mode = lambda _n: "reset"
    await push_session_updates(relay)
    await healthy_completes_while_faulty_is_failing(relay, healthy)

    dead = await all_settled(relay, "faulty", "dead")
    for row in dead:
        assert row.attempts == 3 and row.last_http_status is None
        assert row.last_error is not None and row.last_error.endswith("(gave up after 3 attempts)")
        reason = row.last_error.lower()
        assert "disconnect" in reason or "reset" in reason or "connection" in reason, row.last_error
    assert len(fault.hits) == 3 * N_EVENTS
    assert (await stats_for(relay, "faulty"))["dead"] == N_EVENTS


@pytest.mark.parametrize("template", [webhook_target(timeout=2, max_attempts=1000)])
async def test_partner_that_resets_then_recovers_gets_every_patch_once_in_kwh_order(
    relay: RelayHandle, fault: FaultServer, healthy: PartnerSink
) -> None:
    # resets every connection until the test has seen the healthy target complete while the faulty
    # one still fails, then recovers: however fast or slow either side runs (the retries are 10-50 ms
    # apart, so 1000 attempts outlast any healthy delivery time)
    recovered = False
    fault.mode = lambda _n: (0.0, OK) if recovered else "reset"
    await push_session_updates(relay)
    await healthy_completes_while_faulty_is_failing(relay, healthy)
    recovered = True

    await all_settled(relay, "faulty", "done")
    answered = fault.answered()
    assert webhook_kwhs([h.body for h in answered]) == [0.0, *KWHS]
    assert len({h.headers["webhook-id"] for h in answered}) == N_EVENTS
    assert (await stats_for(relay, "faulty"))["dead"] == 0


# -- (c) a partner that answers slowly but successfully ----------------------------------------------------


@pytest.mark.parametrize("template", [webhook_target(timeout=2, max_attempts=3)])
async def test_slow_but_successful_partner_is_delivered_once_each_in_order_without_holding_up_others(
    relay: RelayHandle, fault: FaultServer, healthy: PartnerSink
) -> None:
    fault.mode = lambda _n: (0.4, OK)
    await push_session_updates(relay)
    await healthy_completes_while_faulty_is_failing(relay, healthy)

    done = await all_settled(relay, "faulty", "done")
    assert [r.attempts for r in done] == [1] * N_EVENTS
    assert len(fault.hits) == N_EVENTS
    assert webhook_kwhs([h.body for h in fault.hits]) == [0.0, *KWHS]


# -- (d) an OCPI partner that answers 200 without an OCPI envelope ------------------------------------------


@pytest.mark.parametrize("template", [ocpi_target(max_attempts=5)])
async def test_ocpi_partner_answering_200_with_non_ocpi_body_is_dead_lettered_once_with_reason(
    relay: RelayHandle, fault: FaultServer, healthy: PartnerSink
) -> None:
    fault.mode = lambda _n: (0.0, http_response(200, b"<html>welcome to nginx</html>", {"Content-Type": "text/html"}))
    await put_session(relay)

    (row,) = await all_settled(relay, "faulty", "dead", n=1)
    assert row.attempts == 1 and row.last_http_status == 200
    assert row.last_error is not None and "without an OCPI envelope" in row.last_error, row.last_error
    assert "welcome to nginx" in row.last_error
    (hit,) = fault.hits
    assert (hit.method, hit.path) == ("PUT", "/ocpi/emsp/2.1.1" + session_path())
    assert hit.headers["authorization"] == f"Token {PARTNER_TOKEN}"
    assert orjson.loads(hit.body)["id"] == SESSION_ID
    await eventually(lambda: len(healthy.accepted()) == 1)
    assert (await stats_for(relay, "faulty"))["dead"] == 1


# -- (e) a partner that redirects ------------------------------------------------------------------------


@pytest.mark.parametrize("template", [webhook_target(timeout=2, max_attempts=5)])
async def test_redirect_is_not_followed_and_dead_letters_with_a_fix_the_url_reason(
    relay: RelayHandle, fault: FaultServer, healthy: PartnerSink
) -> None:
    elsewhere = f"{healthy.url}/stolen"
    fault.mode = lambda _n: (0.0, http_response(302, b"", {"Location": elsewhere}, "Found"))
    await push_session_updates(relay)
    await eventually(lambda: len(healthy.accepted("/hook")) >= N_EVENTS)

    dead = await all_settled(relay, "faulty", "dead")
    for row in dead:
        assert row.attempts == 1 and row.last_http_status == 302
        assert row.last_error == f"HTTP 302 redirect to {elsewhere!r} not followed: fix the target url"
    assert len(fault.hits) == N_EVENTS
    assert healthy.accepted("/stolen") == [] and [r for r in healthy.received if r.path == "/stolen"] == []
    assert delivered_kwhs(healthy) == [0.0, *KWHS]
    assert (await stats_for(relay, "faulty"))["dead"] == N_EVENTS
