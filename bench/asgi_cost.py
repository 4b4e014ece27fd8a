"""CPU per request of the receiver's ASGI app, layer by layer, without sockets or a database.

    .venv/bin/python bench/asgi_cost.py [--requests 20000]

Calls the ASGI apps directly on one asyncio loop with the benchmark's location PUT (unique id per
request) and measures CPU time per request for:

- the bare ceiling app (bench/bare_app.py), as the reference;
- the relay's app (``relay.http.app.create_app``) with a store whose ``submit`` answers at once (no
  group commit: what the event-loop thread spends per request besides uvicorn and the store);
- the same with pushes routed through Starlette instead of relay.http.fastpath (what the fast
  path saves);
- the pieces of a request on their own, each called the way the app calls it with the same
  bodies (Prometheus metrics, ``validate_object``, ``check_path_ids``, the token lookup), so
  that each row is that piece's share of the app's figure. Only public functions are called;
  nothing of the relay is replaced.

uvicorn's own part (HTTP parsing, two transport writes per answer) is the same for both apps and is
not included: bench/profile_ingest.py measures it under load (about 30 us per request here).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LOCATION_PATH, PUSH_TOKEN, location_body, relay_config  # noqa: E402


class InstantStore:
    """Answers every operation at once as applied, like a commit that costs nothing."""

    def __init__(self) -> None:
        from relay.ingest import Outcome
        from relay.store.base import Plan

        self._plan = Plan(result=Outcome(200, 1000, "Success", "applied"))
        self._plan.seq = 1

    async def submit(self, op: Any) -> Any:
        return self._plan


async def drive(app: Any, n: int, prefix: str) -> float:
    """CPU seconds per request for ``n`` sequential PUTs through ``app``."""
    answers: list[int] = []

    async def one(i: int) -> None:
        oid = f"{prefix}{i}"
        body = location_body(oid)
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answers.append(message["status"])

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "PUT", "scheme": "http",
            "path": LOCATION_PATH + oid, "raw_path": (LOCATION_PATH + oid).encode(), "query_string": b"",
            "root_path": "", "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 50000),
            "headers": [(b"host", b"127.0.0.1:8080"), (b"authorization", f"Token {PUSH_TOKEN}".encode()),
                        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
        await app(scope, receive, send)

    for i in range(min(500, n)):  # warm-up
        await one(i)
    answers.clear()
    c0 = time.thread_time()
    for i in range(n):
        await one(10**6 + i)
    cpu = time.thread_time() - c0
    bad = [a for a in answers if a != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} answers were not 200 (first: {bad[0]})")
    return cpu / n


def piece_cost(n: int, call: Callable[[int], Any]) -> float:
    """CPU microseconds per call of ``call(i)`` for ``i`` in range(n) (after a warm-up)."""
    for i in range(min(500, n)):
        call(i)
    c0 = time.thread_time()
    for i in range(n):
        call(i)
    return (time.thread_time() - c0) / n * 1e6


def pieces(cfg_path: Path, n: int) -> list[tuple[str, float]]:
    """What the app spends in each piece per request, each measured alone on the benchmark's PUT."""
    import orjson

    from relay import metrics
    from relay.http.auth import authenticate_header
    from relay.ocpi.paths import resolve
    from relay.ocpi.validate import check_path_ids, validate_object
    from relay.routing.loader import load_config

    cfg = load_config(cfg_path, {"BENCH_PUSH_TOKEN": PUSH_TOKEN, "BENCH_STREAM_TOKEN": "x"})
    bodies = [orjson.loads(location_body(f"m-{i}")) for i in range(n)]
    addr = resolve("PUT", LOCATION_PATH + "m-0")
    header = f"Token {PUSH_TOKEN}"

    def record(i: int) -> None:  # what relay.http.fastpath and relay.ingest record per applied push
        metrics.labelled(metrics.INGEST_REQUESTS, "locations", "200", "1000").inc()
        metrics.labelled(metrics.INGEST_LATENCY, "locations").observe(0.001)
        metrics.labelled(metrics.EVENTS, "locations", "applied", "push").inc()
        metrics.labelled(metrics.LAST_PUSH, "bench", "locations").set(time.time())

    return [
        ("  Prometheus metrics", piece_cost(n, record)),
        ("  validate_object", piece_cost(n, lambda i: validate_object(
            "locations", addr.level, "PUT", bodies[i], {"id": f"m-{i}", "country_code": "NL", "party_id": "GFX"}))),
        ("  check_path_ids", piece_cost(n, lambda i: check_path_ids("locations", "NL", "GFX", [f"m-{i}"]))),
        ("  token lookup", piece_cost(n, lambda i: authenticate_header(header, cfg))),
    ]


def relay_app(config_path: Path, *, fast: bool = True) -> Any:
    from relay.http.app import create_app
    from relay.routing.loader import load_config
    from relay.settings import Settings

    cfg = load_config(config_path, {"BENCH_PUSH_TOKEN": PUSH_TOKEN, "BENCH_STREAM_TOKEN": "x"})
    app = create_app(Settings(), InstantStore(), lambda: cfg)  # type: ignore[arg-type]
    return app if fast else app.app  # app.app: the Starlette app behind the push fast path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=20_000)
    args = p.parse_args()
    import tempfile

    import bare_app


    cfg_path = relay_config(Path(tempfile.mkdtemp(prefix="relay-asgi-")) / "f.yaml", stream=True)
    loop = asyncio.new_event_loop()
    n = args.requests

    def run(app: Any, prefix: str) -> float:
        return loop.run_until_complete(drive(app, n, prefix)) * 1e6

    rows: list[tuple[str, float]] = []
    rows.append(("bare app (orjson.loads + envelope)", run(bare_app.create_app(), "b-")))
    full = run(relay_app(cfg_path), "r-")
    rows.append(("relay app, store answering at once", full))
    starlette = run(relay_app(cfg_path, fast=False), "s-")
    rows.append(("  pushes through Starlette instead", starlette))
    rows += pieces(cfg_path, n)
    loop.close()
    print(f"CPU per request through the ASGI app, {n:,} sequential PUTs (no sockets, no uvicorn, no database)")
    for label, us in rows:
        share = f"   ({us / full:5.1%} of the relay app)" if label.startswith("  ") and label != rows[2][0] else ""
        print(f"  {label:42s} {us:7.1f} us{share}")
    print(f"  (the fast path saves {starlette - full:.1f} us per push against Starlette's routing)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
