"""Sustained mixed load against an in-process relay (SQLite and PostgreSQL), with a gRPC subscriber
from the earliest event and a webhook target attached: no errors, nothing lost, nothing duplicated,
the outbox drains, and memory stays flat. Run with ``pytest -m slow -s tests/test_load.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import gc
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import psutil
import pytest

from relay.settings import Settings
from relay.stream._pb import relay_pb2 as pb
from relay.stream._pb import relay_pb2_grpc as pb_grpc
from tests.conftest import RelayHandle, eventually, example
from tests.servers import PartnerSink, Received

pytestmark = pytest.mark.slow

DURATION = 20.0
CLIENTS = 12
OBJECTS_PER_CLIENT = 8
STREAM_TOKEN = "load-stream-token-51d0"
HOOK_SECRET = "whsec_bG9hZC10ZXN0LWhvb2stc2VjcmV0LTAxMjM0NQ=="

LOCATION = example("location_full.json")
EVSE_UIDS = [e["uid"] for e in LOCATION["evses"]]
SESSION = example("session_active.json")
CDR = example("cdr_full.json")
T0 = datetime(2025, 1, 1, tzinfo=UTC)


@pytest.fixture
def extra_config(partner_sink: PartnerSink, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_LOAD_STREAM", STREAM_TOKEN)
    monkeypatch.setenv("TEST_LOAD_HOOK", HOOK_SECRET)
    return f"""
stream_clients:
  - name: loadreader
    token_env: TEST_LOAD_STREAM
    cpos: ["*"]
targets:
  - name: hook
    type: webhook
    url: {partner_sink.url}/hook
    secret_env: TEST_LOAD_HOOK
    concurrency: 16
    retry_base: 0.05
    retry_max: 0.5
rules:
  - name: everything
    match: {{modules: [locations, sessions, cdrs, tariffs]}}
    to: [hook]
"""


@pytest.fixture
def relay_settings(database_url: str, config_path: Path) -> Settings:
    return Settings(database_url=database_url, config=str(config_path), http_port=0, grpc_port=0,
                    grpc=True, workers=True, instance="load-relay", log_level="WARNING")


class Clock:
    """Strictly increasing last_updated values shared by all clients."""

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> str:
        self.n += 1
        return (T0 + timedelta(seconds=self.n)).strftime("%Y-%m-%dT%H:%M:%SZ")


class Load:
    def __init__(self, relay: RelayHandle) -> None:
        self.relay = relay
        self.clock = Clock()
        self.sent = 0
        self.acked = 0
        self.errors: list[str] = []
        self.ops: Counter[str] = Counter()
        self.cdr_n = 0

    async def call(self, op: str, method: str, path: str, body: Any) -> None:
        self.sent += 1
        self.ops[op] += 1
        ans = await self.relay.request(method, path, body)
        if ans.status == 200 and ans.body.get("status_code") == 1000:
            self.acked += 1
        else:
            self.errors.append(f"{op} {method} {path} -> {ans.status} {ans.body}")

    async def client(self, w: int, deadline: float) -> None:
        rng = random.Random(w)
        locs = [f"LOAD-LOC-{w}-{i}" for i in range(OBJECTS_PER_CLIENT)]
        sessions = [f"LOAD-SES-{w}-{i}" for i in range(OBJECTS_PER_CLIENT)]
        kwh = dict.fromkeys(sessions, 0.0)
        for loc in locs:
            await self.put_location(loc)
        for ses in sessions:
            await self.put_session(ses, 0.0)
        while time.monotonic() < deadline:
            r = rng.random()
            if r < 0.15:
                await self.put_location(rng.choice(locs))
            elif r < 0.45:
                body: dict[str, Any] = {"status": rng.choice(["AVAILABLE", "CHARGING", "BLOCKED", "OUTOFORDER"])}
                if rng.random() < 0.5:
                    body["last_updated"] = self.clock.next()
                path = f"/locations/NL/GFX/{rng.choice(locs)}/{rng.choice(EVSE_UIDS)}"
                await self.call("patch_evse" + ("" if "last_updated" in body else "_no_ts"), "PATCH", path, body)
            elif r < 0.55:
                ses = rng.choice(sessions)
                await self.put_session(ses, kwh[ses])
            elif r < 0.85:
                ses = rng.choice(sessions)
                kwh[ses] = round(kwh[ses] + 0.5, 3)
                await self.call("patch_session", "PATCH", f"/sessions/NL/GFX/{ses}",
                                {"kwh": kwh[ses], "last_updated": self.clock.next()})
            else:
                self.cdr_n += 1
                cdr = copy.deepcopy(CDR)
                cdr["id"] = f"LOAD-CDR-{w}-{self.cdr_n}"
                cdr["last_updated"] = self.clock.next()
                await self.call("post_cdr", "POST", "/cdrs", cdr)

    async def put_location(self, loc: str) -> None:
        body = copy.deepcopy(LOCATION)
        body["id"] = loc
        body["last_updated"] = self.clock.next()
        await self.call("put_location", "PUT", f"/locations/NL/GFX/{loc}", body)

    async def put_session(self, ses: str, kwh: float) -> None:
        body = copy.deepcopy(SESSION)
        body["id"], body["kwh"], body["last_updated"] = ses, kwh, self.clock.next()
        await self.call("put_session", "PUT", f"/sessions/NL/GFX/{ses}", body)


class SeqsOnly(list[Any]):
    """Keeps only ``data.seq`` and the webhook-id of each request, so the test's own bookkeeping stays
    small and the RSS figures measure the relay, not the sink's record of 10^4 requests."""

    def append(self, rec: Received) -> None:
        super().append((rec.json()["data"]["seq"], rec.headers["webhook-id"]))


def rss_mb() -> float:
    gc.collect()
    return float(psutil.Process().memory_info().rss) / 1e6


async def test_sustained_mixed_load_loses_nothing_duplicates_nothing_drains_and_keeps_memory_flat(
    relay: RelayHandle, partner_sink: PartnerSink
) -> None:
    sink = partner_sink
    sink.received = SeqsOnly()
    received: list[int] = []
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{relay.info.ports['grpc']}")
    call = pb_grpc.RelayStub(channel).Subscribe(pb.SubscribeRequest(earliest=True),
                                                metadata=(("authorization", f"Bearer {STREAM_TOKEN}"),))
    await asyncio.wait_for(call.initial_metadata(), 15)

    async def collect() -> None:
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            async for event in call:
                received.append(event.seq)

    collector = asyncio.create_task(collect())
    load = Load(relay)
    start = time.monotonic()
    deadline = start + DURATION
    clients = [asyncio.create_task(load.client(w, deadline)) for w in range(CLIENTS)]

    await asyncio.sleep(DURATION * 0.25)  # a measuring point in the run, not a synchronisation
    rss_quarter = rss_mb()
    await asyncio.gather(*clients)
    rss_end = rss_mb()
    elapsed = time.monotonic() - start

    try:
        assert load.errors == [], "\n".join(load.errors[:20])
        assert load.acked == load.sent
        events = await relay.store.read_events(0, 10_000_000)
        seqs = [e.seq for e in events]

        async def streamed() -> bool:
            return len(received) >= len(seqs)

        await eventually(streamed, timeout=60)

        async def drained() -> bool:
            t = (await relay.store.stats())["targets"].get("hook", {})
            return t.get("depth", 1) == 0

        await eventually(drained, timeout=120, interval=0.2)
    finally:
        call.cancel()
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
        await channel.close()

    stats = await relay.store.stats()
    got = list(received)
    sink_seqs = Counter(seq for seq, _ in sink.received)
    sink_ids = Counter(webhook_id for _, webhook_id in sink.received)
    duplicates = sum(n - 1 for n in sink_ids.values() if n > 1)
    print(f"\nload: {elapsed:.1f}s, {CLIENTS} clients, requests sent {load.sent}, acknowledged {load.acked} "
          f"({load.sent / elapsed:.0f}/s), by op {dict(load.ops)}")
    print(f"load: events applied {len(seqs)} (last seq {stats['last_seq']}, by status {stats['events_by_status']}), "
          f"streamed {len(received)}, deliveries {len(sink.received)} (duplicate webhook-ids {duplicates}), "
          f"outbox {stats['targets']['hook']}")
    print(f"load: RSS at 25% {rss_quarter:.1f} MB, at 100% {rss_end:.1f} MB, "
          f"growth {100 * (rss_end - rss_quarter) / rss_quarter:.1f}%")

    assert got == seqs, "the subscriber must see every applied event exactly once, in seq order"
    assert len(set(got)) == len(got) and got == sorted(got)
    assert stats["targets"]["hook"]["depth"] == 0 and stats["targets"]["hook"]["dead"] == 0
    assert stats["targets"]["hook"]["done"] == len(seqs)
    assert set(sink_seqs) == set(seqs), "every applied event must reach the webhook sink"
    assert len(sink_ids) == len(seqs)
    assert rss_end < rss_quarter * 1.30, f"RSS grew from {rss_quarter:.1f} MB to {rss_end:.1f} MB"
