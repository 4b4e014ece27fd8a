"""Delivery ceiling: raw aiohttp ``ClientSession`` POSTs of webhook-sized bodies to the sink at a fixed
concurrency, with nothing else around them (no outbox, no signing, no bookkeeping).

The session is built as the relay's delivery part builds it (``TCPConnector(limit=0)``, a dummy
cookie jar) and runs on the default asyncio loop, as ``relay serve`` does. Each body is a Standard
Webhooks-shaped event with a unique ``data.id`` (so the sink's order check sees no repeats).

    python bench/poster.py --url http://127.0.0.1:P/hook --duration 5 [--concurrency 16] [--body-bytes 3200]

Prints ``{"event": "result", "ok", "sent", "first", "last", "rate", "p50_ms", "p99_ms"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import location_body, percentile  # noqa: E402


def _template(pad_to: int) -> list[bytes]:
    """The body split around its two numbers (``data.seq`` and the number in ``data.id``)."""
    obj = orjson.loads(location_body("poster-@N@"))
    event = {"type": "locations.put", "timestamp": "2024-03-05T08:00:00Z", "data": {
        "seq": "@N@", "module": "locations", "action": "put", "country_code": "NL", "party_id": "GFX",
        "id": "poster-@N@", "evse_uid": None, "connector_id": None, "last_updated": "2024-03-05T08:00:00Z",
        "object": obj}}
    raw = orjson.dumps(event)
    if len(raw) < pad_to:
        event["data"]["object"]["_pad"] = "x" * (pad_to - len(raw) - 10)  # type: ignore[index]
        raw = orjson.dumps(event)
    return raw.replace(b'"seq":"@N@"', b'"seq":@N@').split(b"@N@")


async def post_loop(url: str, duration: float, concurrency: int, body_bytes: int) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
    headers = {"Content-Type": "application/json", "User-Agent": "bench-poster", "webhook-id": "msg_0",
               "webhook-timestamp": "0", "webhook-signature": "v1," + "A" * 44}
    latencies: list[float] = []
    counts = {"sent": 0, "ok": 0, "errors": 0}
    next_n = 0
    first = last = 0.0
    parts = _template(body_bytes)
    async with aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar()) as session:
        deadline = time.monotonic() + duration

        async def worker() -> None:
            nonlocal next_n, first, last
            while time.monotonic() < deadline:
                n = next_n
                next_n += 1
                body = str(n).encode().join(parts)
                t0 = time.monotonic()
                if not first:
                    first = t0
                counts["sent"] += 1
                try:
                    async with session.post(url, data=body, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=10)) as resp:
                        await resp.read()
                        ok = resp.status == 200
                except (aiohttp.ClientError, TimeoutError):
                    counts["errors"] += 1
                    continue
                last = time.monotonic()
                counts["ok"] += ok
                latencies.append((last - t0) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {"event": "result", **counts, "first": first, "last": last,
            "rate": counts["ok"] / (last - first) if last > first else 0.0,
            "p50_ms": percentile(latencies, 50), "p99_ms": percentile(latencies, 99),
            "body_bytes": len(b"0".join(parts))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--body-bytes", type=int, default=0, help="pad bodies to about this size")
    args = parser.parse_args()
    result = asyncio.run(post_loop(args.url, args.duration, args.concurrency, args.body_bytes))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
