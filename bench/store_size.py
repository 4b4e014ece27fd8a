"""Stored bytes per event: what one location PUT costs on disk, on SQLite and PostgreSQL.

    .venv/bin/python bench/store_size.py [--db sqlite,postgres] [--events 4000] [--objects 100]
                                         [--pg-url URL] [--json]

Builds location PUT operations exactly as the receiver does (as bench/commit_cost.py) for two bodies,
the benchmark's compact location (bench/common.py, about 1.5 KB) and tests/fixtures/ocpi/
location_full.json sent compact (3.7 KB), ``--events`` versions spread over ``--objects`` objects
(each version newer, so every push is applied: an event, a state update), committed in batches of 32
into a fresh database. Prints per event: the database's growth (SQLite: used pages; PostgreSQL: every
relation of the relay's tables, TOAST and indexes included) and the event table with its indexes alone,
each also as a multiple of the body's size.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sqlite3
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import LOCATION_PATH, PUSH_TOKEN, REPO, location_body, relay_config  # noqa: E402

FULL = REPO / "tests" / "fixtures" / "ocpi" / "location_full.json"
TABLES = ("event", "state", "delivery", "consumer", "rejected", "pull_position")
BATCH = 32


def bodies() -> dict[str, Any]:
    """name -> function(object id, version) -> the pushed body."""
    full = json.loads(FULL.read_text())

    def full_body(oid: str, version: int) -> bytes:
        lu = datetime.fromtimestamp(1_709_625_600 + version, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return json.dumps(dict(full, id=oid, last_updated=lu), separators=(",", ":")).encode()

    return {"bench location": location_body, "location_full": full_body}


async def build_ops(config_path: Path, make_body: Any, events: int, objects: int) -> tuple[list[Any], int]:
    """The operations and the pushed bytes, in push order (version by version over the objects),
    each prepared by the receiver's ``Ingestor.prepare`` (a location PUT never reads the store)."""
    from relay.ingest import Ingestor, Push, Source
    from relay.ocpi.paths import resolve
    from relay.routing.loader import load_config

    cfg = load_config(config_path, {"BENCH_PUSH_TOKEN": PUSH_TOKEN})
    sub = cfg.subscription_for_token(PUSH_TOKEN)
    assert sub is not None
    ingestor = Ingestor(None, lambda: cfg)  # type: ignore[arg-type]  # prepare() of a location PUT reads no store
    ops, pushed = [], 0
    for i in range(events):
        oid = f"size-{i % objects:05d}"
        body = make_body(oid, 1 + i // objects)
        pushed += len(body)
        path = LOCATION_PATH + oid
        push = Push(method="PUT", path=path, address=resolve("PUT", path), body=body, source=Source.of(sub),
                    request_id=f"r-{i}", received_at=datetime.now(UTC))
        ops.append(await ingestor.prepare(push))
    return ops, pushed


def sqlite_sizes(path: Path) -> tuple[int, int]:
    """(used bytes of the whole file, bytes of the event table and its indexes) after a checkpoint."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))
        event = conn.execute(
            "SELECT sum(pgsize) FROM dbstat WHERE name = 'event' OR name IN "
            "(SELECT name FROM sqlite_master WHERE tbl_name = 'event' AND type = 'index')"
        ).fetchone()[0]
        return (pages - free) * size, int(event or 0)
    finally:
        conn.close()


async def pg_sizes(url: str) -> tuple[int, int]:
    """(bytes of every relay table with TOAST and indexes, bytes of the event table with them)."""
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CHECKPOINT")
        sizes = {t: int(await conn.fetchval("SELECT pg_total_relation_size($1::regclass)", t)) for t in TABLES}
        return sum(sizes.values()), sizes["event"]
    finally:
        await conn.close()


async def measure(db: Any, cfg: Path, make_body: Any, events: int, objects: int) -> dict[str, float]:
    from relay.store import async_url, open_store
    from relay.store.migrate import upgrade_to_head

    await asyncio.to_thread(upgrade_to_head, async_url(db.url))
    ops, pushed = await build_ops(cfg, make_body, events, objects)
    sqlite_file = Path(db.url.split(":///", 1)[1]) if db.url.startswith("sqlite") else None
    before = sqlite_sizes(sqlite_file) if sqlite_file else await pg_sizes(db.url)
    store = open_store(db.url)
    await store.start()
    try:
        for i in range(0, len(ops), BATCH):
            await asyncio.gather(*(store.submit(op) for op in ops[i:i + BATCH]))
    finally:
        await store.close()
    after = sqlite_sizes(sqlite_file) if sqlite_file else await pg_sizes(db.url)
    body = pushed / events
    return {"body_bytes": round(body), "db_bytes_per_event": round((after[0] - before[0]) / events),
            "event_bytes_per_event": round((after[1] - before[1]) / events),
            "db_ratio": round((after[0] - before[0]) / events / body, 2),
            "event_ratio": round((after[1] - before[1]) / events / body, 2)}


def run(dbs: list[str], events: int, objects: int, pg_url: str) -> dict[str, dict[str, dict[str, float]]]:
    from common import Database

    out: dict[str, dict[str, dict[str, float]]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="relay-size-"))
    try:
        cfg = relay_config(workdir / "s.yaml")
        for kind in dbs:
            for name, make_body in bodies().items():
                db = Database.sqlite(workdir / f"s-{len(out)}-{name[:5]}.db") if kind == "sqlite" \
                    else Database.postgres(pg_url)
                try:
                    out.setdefault(kind, {})[name] = asyncio.run(measure(db, cfg, make_body, events, objects))
                finally:
                    db.drop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--db", default="sqlite,postgres")
    p.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/test")
    p.add_argument("--events", type=int, default=4000)
    p.add_argument("--objects", type=int, default=100)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = run([d.strip() for d in args.db.split(",") if d.strip()], args.events, args.objects, args.pg_url)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"stored bytes per event: {args.events} location PUTs over {args.objects} objects, fresh database")
    print(f"{'db':9s} {'body':15s} {'body B':>7s} {'db B/ev':>8s} {'x body':>7s} {'event B/ev':>11s} {'x body':>7s}")
    for kind, rows in result.items():
        for name, r in rows.items():
            print(f"{kind:9s} {name:15s} {r['body_bytes']:7.0f} {r['db_bytes_per_event']:8.0f} {r['db_ratio']:7.2f} "
                  f"{r['event_bytes_per_event']:11.0f} {r['event_ratio']:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
