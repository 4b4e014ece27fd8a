"""Graceful shutdown: SIGTERM to `relay serve` under load, with deliveries on the wire and streams open.

Every push either got 1000 and is stored, or got no answer; no push answered otherwise is stored;
no delivery is left claimed; open Subscribe streams end with UNAVAILABLE; the process exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
import pytest
from sqlalchemy import text

from relay.store import SqlStore, open_store
from relay.stream._pb import relay_pb2 as pb
from relay.stream._pb import relay_pb2_grpc as pb_grpc
from tests.conftest import (
    GFX_TOKEN,
    PROCESS_STREAM_TOKEN,
    eventually,
    example,
    process_config,
    process_env,
    spawn_relay,
)
from tests.servers import PartnerSink, Received, Reply, ocpi_envelope

pytestmark = pytest.mark.slow

CLIENTS = 32


@dataclass
class HeldSink:
    """A partner that takes deliveries and never answers them: they are on the wire at SIGTERM."""

    sink: PartnerSink
    release: asyncio.Event

    @property
    def url(self) -> str:
        return self.sink.url

    @property
    def waiting(self) -> int:
        return self.sink.in_flight


@pytest.fixture
async def held_sink(partner_sink: PartnerSink) -> AsyncIterator[HeldSink]:
    release = asyncio.Event()

    async def hold(_rec: Received, _n: int) -> Reply:
        await release.wait()
        return 200, ocpi_envelope(), {}

    partner_sink.answer = hold
    yield HeldSink(partner_sink, release)
    release.set()


async def _push_until_gone(url: str, outcomes: dict[str, str]) -> None:
    """Concurrent clients PUT unique locations until the relay stops answering; each id's outcome is
    '1000', 'status <http>/<ocpi>' or 'no answer'."""
    body = example("location_full.json")
    counter = iter(range(10**9))

    async def client(session: aiohttp.ClientSession) -> None:
        for i in counter:
            loc_id = f"term-{i}"
            body_i = {**body, "id": loc_id}
            try:
                async with session.put(f"{url}/locations/NL/GFX/{loc_id}", json=body_i,
                                       headers={"Authorization": f"Token {GFX_TOKEN}"}) as resp:
                    data = await resp.json(content_type=None)
                code = data.get("status_code") if isinstance(data, dict) else None
                outcomes[loc_id] = "1000" if resp.status == 200 and code == 1000 else f"status {resp.status}/{code}"
            except (aiohttp.ClientError, TimeoutError, ValueError):
                outcomes[loc_id] = "no answer"
                return

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        await asyncio.gather(*(client(session) for _ in range(CLIENTS)))


async def _subscribe(port: int, ended: list[grpc.StatusCode | None]) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.RelayStub(channel).Subscribe(
            pb.SubscribeRequest(earliest=True), metadata=(("authorization", f"Bearer {PROCESS_STREAM_TOKEN}"),))
        try:
            async for _ev in call:
                pass
            ended.append(await call.code())
        except grpc.aio.AioRpcError as exc:
            ended.append(exc.code())


async def _stored(database_url: str) -> tuple[set[str], Counter[str]]:
    store = open_store(database_url, pool_size=1)
    assert isinstance(store, SqlStore)
    try:
        async with store.engine.connect() as conn:
            ids = {r[0] for r in await conn.execute(text("SELECT object_id FROM event"))}
            claims = Counter[str]()
            for state, claimed in await conn.execute(text("SELECT state, claimed_by FROM delivery")):
                claims[state] += 1
                if claimed is not None:
                    claims["claimed"] += 1
    finally:
        await store.close()
    return ids, claims


async def test_sigterm_under_load_answers_or_drops_each_push_and_releases_deliveries(
        database_url: str, tmp_path: Path, held_sink: HeldSink) -> None:
    env = process_env(database_url, process_config(tmp_path, held_sink, timeout=60))
    relay = await spawn_relay(env, want=("http", "grpc"))
    outcomes: dict[str, str] = {}
    ended: list[grpc.StatusCode | None] = []
    streams = [asyncio.create_task(_subscribe(relay.ports["grpc"], ended)) for _ in range(2)]
    load = asyncio.create_task(_push_until_gone(relay.url, outcomes))
    try:
        async def busy() -> bool:
            return held_sink.waiting >= 8 and sum(o == "1000" for o in outcomes.values()) >= 300
        await eventually(busy, timeout=60)
        terminated = time.monotonic()
        relay.proc.terminate()
        code = await asyncio.wait_for(relay.proc.wait(), 60)
        exit_s = time.monotonic() - terminated
        await asyncio.wait_for(load, 60)
        await asyncio.wait_for(asyncio.gather(*streams), 60)
    finally:
        relay.kill()
        load.cancel()
        for s in streams:
            s.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.gather(load, *streams, return_exceptions=True)
    stored, claims = await _stored(database_url)
    kinds = Counter(o if o in ("1000", "no answer") else "other" for o in outcomes.values())
    print(f"SIGTERM: exit {code} after {exit_s:.1f} s; pushes {dict(kinds)}; outbox {dict(claims)}; "
          f"deliveries held on the wire {held_sink.waiting}; streams ended {ended}")
    assert code == 0, "".join(relay.log[-20:])
    acked = {i for i, o in outcomes.items() if o == "1000"}
    assert acked <= stored, f"{len(acked - stored)} pushes answered 1000 are not stored"
    refused = {i for i, o in outcomes.items() if o not in ("1000", "no answer")}
    assert not refused & stored, f"pushes answered otherwise are stored: {sorted(refused & stored)[:5]}"
    assert claims["in_flight"] == 0 and claims["claimed"] == 0, claims
    assert claims["pending"] > 0
    assert ended == [grpc.StatusCode.UNAVAILABLE] * 2
