"""gRPC Subscribe client of the benchmark, run as its own process (the same for the raw ceiling and
the relay).

    python bench/subscriber.py rate --target HOST:PORT [--streams 8] [--max-messages N] [--duration S]
    python bench/subscriber.py follow --target HOST:PORT --db-url URL --out FILE [--duration S]
    python bench/subscriber.py slow --target HOST:PORT [--interval 0.01]

- ``rate``: K streams from ``earliest``, one channel (HTTP/2 connection) each, messages left as bytes
  (no client-side parsing, so the client costs as little CPU as possible); each stream ends after
  N messages or S seconds. Result: total messages / wall time.
- ``follow``: one stream from ``latest``; records the arrival time (``time.monotonic``) and seq of
  every event by object id, and once a second (time, newest seq, lag), where lag = the newest seq
  stored (read from the database) minus the last seq received. Runs until SIGTERM or S seconds,
  then writes ``{"arrivals", "samples"}`` to FILE.
- ``slow``: one stream from ``latest`` that reads one event per ``--interval`` seconds.

Prints ``{"event": "ready"}`` once every stream has its initial metadata, then ``{"event": "result", ...}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import STREAM_TOKEN, json_line  # noqa: E402

from relay.stream._pb import relay_pb2 as pb  # noqa: E402

METHOD = "/ocpi_relay.v1.Relay/Subscribe"
METADATA = (("authorization", f"Bearer {STREAM_TOKEN}"),)
OPTIONS = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]


def _call(channel: grpc.aio.Channel, request: pb.SubscribeRequest, *, parse: bool) -> Any:
    method = channel.unary_stream(
        METHOD, request_serializer=pb.SubscribeRequest.SerializeToString,
        response_deserializer=pb.Event.FromString if parse else None,
    )
    return method(request, metadata=METADATA)


async def rate(target: str, streams: int, max_messages: int, duration: float) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(target, options=OPTIONS) for _ in range(streams)]
    for ch in channels:
        await asyncio.wait_for(ch.channel_ready(), 15)
    counts = [0] * streams
    sizes: list[int] = []
    json_line(event="ready")
    t0 = time.monotonic()
    deadline = t0 + duration

    calls = [_call(ch, pb.SubscribeRequest(earliest=True), parse=False) for ch in channels]
    # One timer cancels every call at the deadline: a per-read timeout would cost a task per message.
    timer = asyncio.get_running_loop().call_at(
        asyncio.get_running_loop().time() + duration, lambda: [c.cancel() for c in calls])

    async def one(i: int) -> float:
        call = calls[i]
        try:
            while counts[i] < max_messages:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    break
                if not sizes:
                    sizes.append(len(msg))
                counts[i] += 1
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        finally:
            call.cancel()
        return min(time.monotonic(), deadline)

    ends = await asyncio.gather(*(one(i) for i in range(streams)))
    timer.cancel()
    elapsed = max(ends) - t0
    for ch in channels:
        await ch.close()
    total = sum(counts)
    return {"event": "result", "streams": streams, "counts": counts, "elapsed": elapsed,
            "rate": total / elapsed if elapsed > 0 else 0.0, "message_bytes": sizes[0] if sizes else 0}


class _Head:
    """The newest stored seq, read straight from the database."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._pg: Any = None

    async def get(self) -> int:
        if self.url.startswith("sqlite:///"):
            conn = sqlite3.connect(self.url[len("sqlite:///"):], timeout=5)
            try:
                return int(conn.execute("SELECT coalesce(max(seq), 0) FROM event").fetchone()[0])
            finally:
                conn.close()
        import asyncpg

        if self._pg is None:
            self._pg = await asyncpg.connect(self.url.replace("postgresql+asyncpg://", "postgresql://"))
        return int(await self._pg.fetchval("SELECT coalesce(max(seq), 0) FROM event"))

    async def close(self) -> None:
        if self._pg is not None:
            await self._pg.close()


async def follow(target: str, db_url: str, duration: float) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    head = _Head(db_url)
    arrivals: dict[str, list[Any]] = {}
    samples: list[tuple[float, int, int]] = []
    last_seq = 0
    async with grpc.aio.insecure_channel(target, options=OPTIONS) as channel:
        call = _call(channel, pb.SubscribeRequest(latest=True), parse=True)
        await asyncio.wait_for(call.initial_metadata(), 15)
        json_line(event="ready")
        t0 = time.monotonic()

        async def read() -> None:
            nonlocal last_seq
            while True:
                ev = await call.read()
                if ev is grpc.aio.EOF:
                    return
                now = time.monotonic()
                last_seq = ev.seq
                arrivals.setdefault(ev.object_id, [now, ev.seq])

        async def sample() -> None:
            while True:
                await asyncio.sleep(1.0 - (time.monotonic() - t0) % 1.0)
                newest = await head.get()
                samples.append((time.monotonic(), newest, newest - last_seq))

        tasks = [asyncio.create_task(read()), asyncio.create_task(sample())]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
                await t
        call.cancel()
    await head.close()
    return {"event": "result", "received": len(arrivals), "samples": len(samples), "last_seq": last_seq,
            "_payload": {"arrivals": arrivals, "samples": samples}}


async def slow(target: str, interval: float, duration: float) -> dict[str, Any]:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    received = 0
    async with grpc.aio.insecure_channel(target, options=OPTIONS) as channel:
        call = _call(channel, pb.SubscribeRequest(latest=True), parse=False)
        await asyncio.wait_for(call.initial_metadata(), 15)
        json_line(event="ready")

        async def read() -> None:
            nonlocal received
            while True:
                msg = await call.read()
                if msg is grpc.aio.EOF:
                    return
                received += 1
                await asyncio.sleep(interval)

        task = asyncio.create_task(read())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, grpc.aio.AioRpcError):
            await task
        call.cancel()
    return {"event": "result", "received": received}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("rate")
    p.add_argument("--target", required=True)
    p.add_argument("--streams", type=int, default=1)
    p.add_argument("--max-messages", type=int, default=10**9)
    p.add_argument("--duration", type=float, default=5.0)
    p = sub.add_parser("follow")
    p.add_argument("--target", required=True)
    p.add_argument("--db-url", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--duration", type=float, default=3600.0)
    p = sub.add_parser("slow")
    p.add_argument("--target", required=True)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--duration", type=float, default=3600.0)
    args = parser.parse_args()
    if args.mode == "rate":
        result = asyncio.run(rate(args.target, args.streams, args.max_messages, args.duration))
    elif args.mode == "follow":
        result = asyncio.run(follow(args.target, args.db_url, args.duration))
        Path(args.out).write_text(json.dumps(result.pop("_payload")))
    else:
        result = asyncio.run(slow(args.target, args.interval, args.duration))
    json_line(**result)


if __name__ == "__main__":
    main()
