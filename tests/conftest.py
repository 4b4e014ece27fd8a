"""Shared fixtures: real databases (SQLite file, PostgreSQL), a real relay on ephemeral ports."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import inspect
import json
import logging
import os
import secrets
import sqlite3
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from relay.runtime import RunInfo, run, tune_gc
from relay.settings import Settings
from relay.store import SqlStore, async_url
from relay.store.migrate import upgrade_to_head
from tests.servers import PartnerSink

EXAMPLES = Path(__file__).resolve().parent / "fixtures" / "ocpi"
PG_ADMIN_URL = os.environ.get("RELAY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
GFX_TOKEN = "gfx-test-token-4f1c9a"
LIMITED_TOKEN = "limited-test-token-77b2"
LOC_ID = "3f9c1e72-8a4d-4b6e-9d21-5c7a0e4b18f6"
SESSION_ID = "NLGFX638452100421337012-4c1e9"

BASE_CONFIG = """
subscriptions:
  - name: greenflux
    token_env: TEST_TOKEN_GFX
    cpos: ["NL*GFX"]
    default_cpo: "NL*GFX"
  - name: limited
    token_env: TEST_TOKEN_LIMITED
    cpos: ["BE*BEC"]
    modules: [locations]
"""


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / name).read_text())


def example_bytes(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = 20.0,
                     interval: float = 0.05) -> None:
    """Poll ``check`` (a plain or an async predicate) until it is true; fail after ``timeout`` seconds.
    The one way a test waits for something to happen: never a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


# -- databases ---------------------------------------------------------------------------------


def _pg_required() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head, dropped at the end."""
    import asyncpg

    name = f"relay_test_{secrets.token_hex(4)}"
    admin = PG_ADMIN_URL

    async def _admin(sql: str) -> None:
        conn = await asyncpg.connect(admin, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    try:
        asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        if _pg_required():
            pytest.fail(f"PostgreSQL is required in CI but not reachable at {admin}: {exc}")
        pytest.skip(f"PostgreSQL not reachable at {admin} ({exc}); set RELAY_TEST_PG_URL or start it")
    url = admin.rsplit("/", 1)[0] + "/" + name
    upgrade_to_head(async_url(url))
    yield url
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _truncate_pg(url: str) -> None:
    import asyncpg

    async def _go() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute("TRUNCATE event, state, delivery, consumer, rejected, pull_position RESTART IDENTITY")
        finally:
            await conn.close()

    asyncio.run(_go())


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Every test that uses it runs twice: on a real SQLite file and on a real PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'relay.db'}"
    url: str = request.getfixturevalue("pg_database")
    _truncate_pg(url)
    return url


# -- config ----------------------------------------------------------------------------------------


@pytest.fixture
def tokens(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv("TEST_TOKEN_GFX", GFX_TOKEN)
    monkeypatch.setenv("TEST_TOKEN_LIMITED", LIMITED_TOKEN)
    return {"greenflux": GFX_TOKEN, "limited": LIMITED_TOKEN}


@pytest.fixture
def extra_config() -> str:
    """Override in a test module to add targets, rules, stream clients or pull sources."""
    return ""


@pytest.fixture
def config_path(tmp_path: Path, tokens: dict[str, str], extra_config: str) -> Path:
    path = tmp_path / "forwarding.yaml"
    path.write_text(textwrap.dedent(BASE_CONFIG) + textwrap.dedent(extra_config))
    return path


# -- a running relay -------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: dict[str, Any]
    headers: Any


@dataclass
class RelayHandle:
    settings: Settings
    info: RunInfo
    http: aiohttp.ClientSession
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.info.ports['http']}"

    @property
    def base(self) -> str:
        return self.url + self.settings.base_path

    @property
    def store(self) -> SqlStore:
        assert self.info.store is not None
        return self.info.store

    async def request(self, method: str, path: str, body: Any = None, *, token: str | None = GFX_TOKEN,
                      raw: bytes | None = None, headers: dict[str, str] | None = None) -> Answer:
        hdrs = dict(headers or {})
        if token is not None:
            hdrs["Authorization"] = f"Token {token}"
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            hdrs.setdefault("Content-Type", "application/json")
        async with self.http.request(method, self.base + path, data=data, headers=hdrs) as resp:
            text = await resp.read()
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = {"_raw": text.decode("utf-8", "replace")}
            return Answer(resp.status, parsed, resp.headers)

    async def put(self, path: str, body: Any, **kw: Any) -> Answer:
        return await self.request("PUT", path, body, **kw)

    async def patch(self, path: str, body: Any, **kw: Any) -> Answer:
        return await self.request("PATCH", path, body, **kw)

    async def post(self, path: str, body: Any, **kw: Any) -> Answer:
        return await self.request("POST", path, body, **kw)

    async def get(self, path: str, **kw: Any) -> Answer:
        return await self.request("GET", path, **kw)


async def start_relay(settings: Settings) -> RelayHandle:
    info = RunInfo()
    stop = asyncio.Event()
    task = asyncio.create_task(run(settings, stop=stop, info=info))
    ready = asyncio.create_task(info.ready.wait())
    await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises the start-up error
    assert info.ready.is_set(), "relay did not become ready in 30 s"
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    return RelayHandle(settings, info, http, stop, task)


async def stop_relay(handle: RelayHandle) -> None:
    await handle.http.close()
    handle.stop.set()
    await asyncio.wait_for(handle.task, 30)


@pytest.fixture
def relay_settings(database_url: str, config_path: Path) -> Settings:
    return Settings(database_url=database_url, config=str(config_path), http_port=0, grpc_port=0,
                    grpc=False, workers=False)


@pytest.fixture
async def relay(relay_settings: Settings) -> AsyncIterator[RelayHandle]:
    """A relay running in this event loop: uvicorn on an ephemeral port, a real database."""
    handle = await start_relay(relay_settings)
    try:
        yield handle
    finally:
        await stop_relay(handle)


# -- a relay as a separate process (crash, replica and CLI tests) ------------------------------------


@dataclass
class RelayProcess:
    proc: asyncio.subprocess.Process
    ports: dict[str, int]
    log: list[str]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as in a power cut or an OOM kill."""
        if self.proc.returncode is None:
            self.proc.kill()

    async def stop(self, timeout: float = 30) -> int:
        if self.proc.returncode is None:
            self.proc.terminate()
        return await asyncio.wait_for(self.proc.wait(), timeout)


async def spawn_relay(env: dict[str, str], *args: str, want: tuple[str, ...] = ("http",)) -> RelayProcess:
    """Start `relay serve` on ephemeral ports and wait for its ``*_listening`` log lines."""
    import sys

    full_env = {**os.environ, "RELAY_HTTP_PORT": "0", "RELAY_GRPC_PORT": "0", **env}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "relay", "serve", *args, env=full_env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )
    handle = RelayProcess(proc, {}, [])

    async def read_ports() -> None:
        assert proc.stderr is not None
        while not set(want) <= handle.ports.keys():
            line = await proc.stderr.readline()
            if not line:
                raise AssertionError("relay exited before listening:\n" + "".join(handle.log))
            text = line.decode(errors="replace")
            handle.log.append(text)
            try:
                rec = json.loads(text)
            except ValueError:
                continue
            if rec.get("event") in ("http_listening", "grpc_listening"):
                handle.ports[rec["event"].split("_")[0]] = int(rec["port"])

    try:
        await asyncio.wait_for(read_ports(), 60)
    except BaseException:
        handle.kill()  # never leave a half-started relay behind
        raise

    async def drain() -> None:  # keep reading so the pipe never fills up
        assert proc.stderr is not None
        while line := await proc.stderr.readline():
            handle.log.append(line.decode(errors="replace"))

    asyncio.get_running_loop().create_task(drain())
    return handle


# -- partners that record what they receive (tests/servers.py) --------------------------------------


@pytest.fixture
async def sink_factory() -> AsyncIterator[Callable[[], Awaitable[PartnerSink]]]:
    """``await sink_factory()``: one more PartnerSink on port 0, stopped when the test ends."""
    async with contextlib.AsyncExitStack() as stack:

        async def make() -> PartnerSink:
            return await stack.enter_async_context(PartnerSink.running())

        yield make


@pytest.fixture
async def partner_sink(sink_factory: Callable[[], Awaitable[PartnerSink]]) -> PartnerSink:
    """The partner a test's target points at (``$sink`` in a delivery test's forwarding template)."""
    return await sink_factory()


@pytest.fixture
async def other_sink(sink_factory: Callable[[], Awaitable[PartnerSink]]) -> PartnerSink:
    """A second partner (``$other`` in a delivery test's forwarding template)."""
    return await sink_factory()


# -- relay processes with a stream client and a webhook target (crash and replica tests) ------------

PROCESS_STREAM_TOKEN = "process-stream-token-5b1e"
PROCESS_HOOK_SECRET = "whsec_" + base64.b64encode(b"process-hook-secret-0123456789").decode()


def process_config(tmp_path: Path, sink: PartnerSink, *, timeout: float) -> Path:
    """forwarding.yaml for relay subprocesses: the greenflux subscription, a stream client, a webhook."""
    path = tmp_path / "process.yaml"
    path.write_text(textwrap.dedent(f"""
        subscriptions:
          - name: greenflux
            token_env: TEST_TOKEN_GFX
            cpos: ["NL*GFX"]
        stream_clients:
          - name: monitor
            token_env: TEST_STREAM_TOKEN
            cpos: ["*"]
        targets:
          - name: hook
            type: webhook
            url: {sink.url}/hook
            secret_env: TEST_HOOK_SECRET
            timeout: {timeout}
            concurrency: 8
            retry_base: 0.05
            retry_max: 0.5
        rules:
          - name: all
            match: {{modules: [locations]}}
            to: [hook]
    """))
    return path


def process_env(database_url: str, config: Path, **extra: str) -> dict[str, str]:
    return {"RELAY_DATABASE_URL": database_url, "RELAY_CONFIG": str(config), "TEST_TOKEN_GFX": GFX_TOKEN,
            "TEST_TOKEN_LIMITED": LIMITED_TOKEN, "TEST_STREAM_TOKEN": PROCESS_STREAM_TOKEN,
            "TEST_HOOK_SECRET": PROCESS_HOOK_SECRET, "RELAY_LOG_LEVEL": "WARNING", **extra}


async def stream_from_earliest(port: int, until_seq: int) -> list[Any]:
    """Every event a Subscribe(earliest) on ``port`` delivers, up to ``until_seq``."""
    import grpc

    from relay.stream._pb import relay_pb2 as pb
    from relay.stream._pb import relay_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RelayStub(channel)
        events: list[Any] = []
        call = stub.Subscribe(pb.SubscribeRequest(earliest=True),
                              metadata=(("authorization", f"Bearer {PROCESS_STREAM_TOKEN}"),))
        async for ev in call:
            events.append(ev)
            if ev.seq >= until_seq:
                call.cancel()
                break
        return events


async def pg_allow_connections(database_url: str, allowed: bool) -> None:
    """Make a PostgreSQL database unreachable (and drop its connections) or reachable again."""
    import asyncpg

    name = database_url.rsplit("/", 1)[1]
    conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {"true" if allowed else "false"}')
        if not allowed:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
    finally:
        await conn.close()


async def put_location_acked(session: aiohttp.ClientSession, url: str, loc_id: str, acked: set[str]) -> None:
    """PUT a copy of the example location under ``loc_id``; record it in ``acked`` when answered 1000.
    Connection errors propagate: crash tests decide what a dead relay means for them."""
    body = example("location_full.json")
    body["id"] = loc_id
    async with session.put(f"{url}/locations/NL/GFX/{loc_id}", json=body,
                           headers={"Authorization": f"Token {GFX_TOKEN}"}) as resp:
        data = await resp.json(content_type=None)
        if resp.status == 200 and data.get("status_code") == 1000:
            acked.add(loc_id)


@contextlib.asynccontextmanager
async def append_lock_held(database_url: str) -> AsyncIterator[None]:
    """Hold the lock every group commit takes first, from another connection, until the block ends
    (SQLite's write lock; PostgreSQL's append advisory lock): the relay's writes queue up behind it."""
    if database_url.startswith("sqlite"):
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
        return
    import asyncpg

    from relay.store.postgres import APPEND_LOCK

    pg = await asyncpg.connect(database_url, timeout=5)
    await pg.execute("SELECT pg_advisory_lock($1)", APPEND_LOCK)
    try:
        yield
    finally:
        await pg.execute("SELECT pg_advisory_unlock($1)", APPEND_LOCK)
        await pg.close()


# -- the garbage collector as `relay serve` sets it ---------------------------------------------------

@pytest.fixture(autouse=True)
def production_gc() -> Iterator[None]:
    """Tests start the relay in this process, so it runs under the test process's collector: `relay
    serve` calls ``tune_gc`` (what is alive at start-up frozen out of the collector's sight, a larger
    young generation). Here the same settings, with what earlier tests left alive frozen before each
    test, so that a full collection walks only this test's objects. Without it a full collection walked
    the whole session's heap (130,000-240,000 objects, 90-250 ms here) while the loop waited; in asyncio
    debug mode 75 of 78 "slow callbacks" were such a collection, not the callback."""
    tune_gc()
    yield


# -- asyncio debug mode: a callback that holds the loop fails the test ---------------------------------

class SlowCallbacks(logging.Handler):
    """Collects asyncio's "Executing <handle> took 0.xxx seconds" warnings (debug mode only)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing "):
            self.messages.append(message)


@pytest.fixture(autouse=True)
def no_slow_callbacks(request: pytest.FixtureRequest) -> Iterator[None]:
    """Under ``pytest --asyncio-debug`` every test's event loop runs in asyncio debug mode, and a
    callback that keeps the loop longer than ``slow_callback_duration`` (0.1 s), that is a blocking
    call, fails the test."""
    if not (request.config.getoption("asyncio_debug") or request.config.getini("asyncio_debug")):
        yield
        return
    handler = SlowCallbacks()
    logger = logging.getLogger("asyncio")
    level = logger.level
    logger.setLevel(logging.WARNING)  # whatever level the relay's log set-up gave the root logger
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    if handler.messages:
        pytest.fail("slow callbacks in asyncio debug mode:\n" + "\n".join(handler.messages), pytrace=False)
