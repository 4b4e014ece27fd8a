"""Two `relay serve` processes on one PostgreSQL database keep every single-process guarantee."""

from __future__ import annotations

import asyncio
import copy
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from relay.store import open_store
from tests.conftest import (
    GFX_TOKEN,
    RelayProcess,
    eventually,
    example,
    pg_allow_connections,
    process_config,
    process_env,
    put_location_acked,
    spawn_relay,
    stream_from_earliest,
)
from tests.servers import PartnerSink

pytestmark = [pytest.mark.parametrize("database_url", ["postgres"], indirect=True), pytest.mark.slow]


def webhook_ids(sink: PartnerSink) -> Counter[str]:
    """How often each webhook-id arrived (a redelivery repeats its id)."""
    return Counter(r.headers["webhook-id"] for r in sink.received)


async def _push_all(replicas: list[RelayProcess], n: int, prefix: str, acked: set[str],
                    stop_after: asyncio.Event | None = None) -> None:
    sem = asyncio.Semaphore(32)

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        target = replicas[i % len(replicas)]
        async with sem:
            try:
                await put_location_acked(session, target.url, f"{prefix}-{i}", acked)
            except (TimeoutError, aiohttp.ClientError, ValueError):
                pass  # a killed replica: this push was not acknowledged

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(one(i, session) for i in range(n)))


async def test_two_replicas_share_one_gapless_log_and_deliver_each_event_once(
    database_url: str, tmp_path: Path, partner_sink: PartnerSink
) -> None:
    sink = partner_sink
    env = process_env(database_url, process_config(tmp_path, sink, timeout=2))
    replicas = [await spawn_relay(env, want=("http", "grpc")) for _ in range(2)]
    try:
        acked: set[str] = set()
        # subscribers on both replicas, started before the pushes: catch-up then live across replicas
        n = 400
        subs = [asyncio.create_task(stream_from_earliest(r.ports["grpc"], n)) for r in replicas]
        await _push_all(replicas, n, "rep", acked)
        assert len(acked) == n
        seen_a, seen_b = await asyncio.wait_for(asyncio.gather(*subs), 60)
        assert [e.seq for e in seen_a] == [e.seq for e in seen_b] == list(range(1, n + 1))

        async def delivered() -> bool:
            return len(webhook_ids(sink)) >= n

        await eventually(delivered, timeout=60)
        # An absence check has no event to wait for: this quiet second is the window in which a
        # duplicate (two replicas sending one row) would show up, not a synchronisation.
        await asyncio.sleep(1.0)
        ids = webhook_ids(sink)
        assert all(c == 1 for c in ids.values()), [k for k, c in ids.items() if c > 1][:5]
        assert sorted(r.json()["data"]["seq"] for r in sink.received) == list(range(1, n + 1))

        # kill one replica mid-traffic: nothing acknowledged is lost, every acknowledged push is delivered
        more: set[str] = set()
        pushing = asyncio.create_task(_push_all(replicas, 400, "kill", more))
        await eventually(lambda: len(more) >= 50)  # mid-traffic: some acknowledged, most still to come
        replicas[0].kill()
        await pushing
        store = open_store(database_url)
        await store.start()
        try:
            events = await store.read_events(0, 100_000)
            stored = {e.object_id for e in events}
            assert more <= stored and acked <= stored
            assert [e.seq for e in events] == list(range(1, len(events) + 1))
            # the surviving replica takes over the killed one's claims after their lease (timeout + 30 s)
            async def all_delivered() -> bool:
                return {r.json()["data"]["id"] for r in sink.received} >= more

            await eventually(all_delivered, timeout=90, interval=0.5)
        finally:
            await store.close()
    finally:
        for r in replicas:
            r.kill()
            await r.proc.wait()
    print(f"replicas: first phase {n} acked/delivered; kill phase acked {len(more)} of 400")


async def test_database_outage_gives_3000_on_every_replica_then_both_recover(
    database_url: str, tmp_path: Path, partner_sink: PartnerSink
) -> None:
    sink = partner_sink
    env = process_env(database_url, process_config(tmp_path, sink, timeout=2), RELAY_DB_TIMEOUT="2")
    replicas = [await spawn_relay(env, "--no-grpc") for _ in range(2)]
    template = example("location_full.json")

    async def put(r: RelayProcess, loc_id: str, session: aiohttp.ClientSession) -> int:
        body = copy.deepcopy(template)
        body["id"] = loc_id
        async with session.put(f"{r.url}/locations/NL/GFX/{loc_id}", json=body,
                               headers={"Authorization": f"Token {GFX_TOKEN}"}) as resp:
            return int((await resp.json(content_type=None))["status_code"])

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            assert [await put(r, f"before-{i}", session) for i, r in enumerate(replicas)] == [1000, 1000]
            await pg_allow_connections(database_url, False)
            try:
                codes = [await put(r, f"down-{i}-{j}", session) for j in range(3) for i, r in enumerate(replicas)]
                assert set(codes) == {3000}, codes
            finally:
                await pg_allow_connections(database_url, True)

            async def both_recovered() -> bool:
                return [await put(r, f"after-{i}", session) for i, r in enumerate(replicas)] == [1000, 1000]

            await eventually(both_recovered, timeout=60, interval=1.0)
        store = open_store(database_url)
        try:
            ids = {s.key.object_id for s in await store.list_states("locations", None, None, 100)}
        finally:
            await store.close()
        assert ids == {"before-0", "before-1", "after-0", "after-1"}  # nothing answered 3000 was stored
    finally:
        for r in replicas:
            r.kill()
            await r.proc.wait()
