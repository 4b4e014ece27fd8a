"""The SQLite WAL stays bounded under sustained load with readers attached (RELAY_SQLITE_WAL_MAX_BYTES).

A `relay serve` subprocess on a SQLite file takes pushes from concurrent clients while a webhook
target is delivered to and two gRPC subscribers follow the stream; the test samples the size of the
``-wal`` file itself the whole time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

import aiohttp
import grpc
import pytest

from relay.stream._pb import relay_pb2 as pb
from relay.stream._pb import relay_pb2_grpc as pb_grpc
from tests.conftest import (
    PROCESS_STREAM_TOKEN,
    process_config,
    process_env,
    put_location_acked,
    spawn_relay,
)
from tests.servers import PartnerSink

pytestmark = pytest.mark.slow

WAL_LIMIT = 4 * 1024 * 1024
MARGIN = 1.5  # the WAL may overshoot the limit by half of it (a group commit landing during a check)
PUSHES = 8_000
CLIENTS = 32


async def _follow(port: int, seen: list[int], stop: asyncio.Event) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = pb_grpc.RelayStub(channel).Subscribe(
            pb.SubscribeRequest(earliest=True), metadata=(("authorization", f"Bearer {PROCESS_STREAM_TOKEN}"),))
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            async for ev in call:
                seen[0] = ev.seq
                if stop.is_set():
                    break
        call.cancel()


async def _push_all(url: str, acked: set[str]) -> None:
    ids = iter(range(PUSHES))

    async def client(session: aiohttp.ClientSession) -> None:
        for i in ids:
            await put_location_acked(session, url, f"wal-{i}", acked)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        await asyncio.gather(*(client(session) for _ in range(CLIENTS)))


async def test_wal_stays_under_its_limit_under_load_with_readers(tmp_path: Path, partner_sink: PartnerSink) -> None:
    db = tmp_path / "relay.db"
    wal = Path(f"{db}-wal")
    env = process_env(f"sqlite:///{db}", process_config(tmp_path, partner_sink, timeout=5),
                      RELAY_SQLITE_WAL_MAX_BYTES=str(WAL_LIMIT), RELAY_LOG_LEVEL="INFO")
    proc = await spawn_relay(env, want=("http", "grpc"))
    stop = asyncio.Event()
    sizes: list[int] = []

    async def sample() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                sizes.append(os.stat(wal).st_size)
            await asyncio.sleep(0.01)

    seen = [[0], [0]]
    followers = [asyncio.create_task(_follow(proc.ports["grpc"], s, stop)) for s in seen]
    sampler = asyncio.create_task(sample())
    acked: set[str] = set()
    try:
        await _push_all(proc.url, acked)
    finally:
        stop.set()
        await sampler
        for f in followers:
            f.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        assert await proc.stop() == 0
    biggest = max(sizes)
    pauses = sorted(json.loads(line)["pause_ms"] for line in proc.log if "sqlite_wal_truncated" in line)
    if pauses:
        print(f"{len(pauses)} truncating checkpoints, writers paused {pauses[len(pauses) // 2]} ms (median), "
              f"{pauses[-1]} ms (longest)")
    print(f"WAL: {len(sizes)} samples, largest {biggest / 2**20:.1f} MiB (limit {WAL_LIMIT / 2**20:.1f} MiB); "
          f"{len(acked)} pushes acknowledged; subscribers at seq {seen[0][0]}, {seen[1][0]}; "
          f"sink received {len(partner_sink.received)}")
    assert len(acked) == PUSHES
    assert min(s[0] for s in seen) > 0, "the subscribers read nothing: the test did not load the WAL with readers"
    assert biggest <= WAL_LIMIT * MARGIN, f"the WAL reached {biggest} bytes, limit {WAL_LIMIT}"
