"""Compact events: body and object stored once, packed, and read back byte for byte on every path;
rows of the previous format still read; bytes per event on SQLite; HOT updates of state on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import orjson
import pytest
from alembic import command
from sqlalchemy import create_engine, text

from relay.settings import Settings
from relay.store import SqlStore, async_url, open_store
from relay.store.base import NewDelivery, NewEvent, Plan, StateKey, StateWrite, StoredState
from relay.store.migrate import alembic_config
from relay.stream._pb import relay_pb2 as pb
from relay.stream._pb import relay_pb2_grpc as pb_grpc
from tests.conftest import eventually, example_bytes, start_relay, stop_relay

FULL = example_bytes("location_full.json")  # pretty-printed, as the file is
FULL_COMPACT = json.dumps(json.loads(FULL), separators=(",", ":")).encode()
UNICODE = json.dumps({"id": "LOC-ü", "name": "Zoë's laadplein — €0,35/kWh 🚗", "city": "Zürich"},
                     ensure_ascii=False)

# (name, body, object): object None = a stale event; object == body = the usual location PUT
CASES: list[tuple[str, str, str | None]] = [
    ("small", '{"id":"a","v":1}', '{"id":"a","v":1}'),
    ("small-other-object", '{"v": 1}', '{"id":"b","v":1}'),
    ("large-same", FULL_COMPACT.decode(), FULL_COMPACT.decode()),
    ("large-pretty-body", FULL.decode(), FULL_COMPACT.decode()),
    ("large-no-object", FULL.decode(), None),
    ("unicode", UNICODE + " ", UNICODE),
    ("unicode-same", UNICODE, UNICODE),
    ("empty-body", "", FULL_COMPACT.decode()),
]



class PutOp:
    """Appends one event with the given body and object text; applied ones upsert the state too."""

    def __init__(self, object_id: str, body: str, obj: str | None, targets: tuple[str, ...] = ()) -> None:
        self.key = StateKey("locations", "NL", "GFX", object_id)
        self.reads = (self.key,)
        self.body, self.obj, self.targets = body, obj, targets

    def plan(self, states: Mapping[StateKey, StoredState | None]) -> Plan:
        now = datetime.now(UTC)
        status = "applied" if self.obj is not None else "stale"
        event = NewEvent(
            module="locations", action="put", country_code="NL", party_id="GFX", object_id=self.key.object_id,
            evse_uid=None, connector_id=None, last_updated=now, received_at=now, origin="push", subscription="test",
            request_id="r-1", status=status, body=self.body, body_hash="h", object=self.obj,
        )
        plan = Plan(event=event, result=None)
        if self.obj is not None:
            plan.states.append(StateWrite(self.key, orjson.loads(self.obj), "h", now, False, self.obj))
            plan.deliveries = [NewDelivery(t, "r", self.key.as_str()) for t in self.targets]
        return plan


async def test_body_and_object_read_back_byte_for_byte_on_every_store_path(store: SqlStore) -> None:
    seqs: dict[str, int] = {}
    for name, body, obj in CASES:
        plan = await store.submit(PutOp(name, body, obj, targets=("partner",)))
        assert plan.seq is not None
        seqs[name] = plan.seq

    events = {e.object_id: e for e in await store.read_events(0, 100, applied_only=False)}
    outbox = store.outbox()
    try:
        by_seq = await outbox.events(seqs.values())
        claimed = await outbox.claim("partner", 100, "test-worker", 30.0, with_events=True)
    finally:
        await outbox.close()
    claimed_events = {c.seq: c.event for c in claimed}
    for name, body, obj in CASES:
        for ev in (events[name], by_seq[seqs[name]]):
            assert (ev.body, ev.object) == (body, obj), name
            assert ev.body.encode() == body.encode() and ev.request_id == "r-1" and ev.module == "locations"
        if obj is not None:
            claimed_ev = claimed_events[seqs[name]]
            assert claimed_ev is not None and (claimed_ev.body, claimed_ev.object) == (body, obj), name
            st = await store.get_state(StateKey("locations", "NL", "GFX", name))
            assert st is not None and orjson.dumps(st.object) == orjson.dumps(orjson.loads(obj)), name
    listed = {s.key.object_id: s.object for s in await store.list_states("locations", None, None, 100)}
    assert listed == {name: orjson.loads(obj) for name, _, obj in CASES if obj is not None}


def _insert_old_format_event(sync_url: str, seq: int, body: str, obj: str | None) -> None:
    """An event row as revisions up to 0004 wrote it: body and object as plain text, no packed value
    (received_at naive: UTC as SQLite stores it; PostgreSQL's test server runs in UTC)."""
    engine = create_engine(sync_url)
    try:
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO event (seq, module, action, country_code, party_id, object_id, received_at, origin, "
                "status, body, body_hash, object) VALUES (:seq, 'locations', 'put', 'NL', 'GFX', :oid, "
                ":at, 'push', 'applied', :body, 'h', :obj)"
            ), {"seq": seq, "oid": f"old-{seq}", "at": datetime(2024, 3, 5, 8, 0), "body": body,
                "obj": obj})
    finally:
        engine.dispose()


async def test_rows_written_before_the_packed_column_still_read(database_url: str, tmp_path: Path) -> None:
    if database_url.startswith("sqlite"):
        # the whole path on SQLite: a database at 0004 with old rows, then upgraded to head
        await asyncio.to_thread(command.upgrade, alembic_config(async_url(database_url)), "0004")
    sync_url = database_url.replace("postgresql://", "postgresql+psycopg://", 1)
    await asyncio.to_thread(_insert_old_format_event, sync_url, 1, FULL.decode(), FULL_COMPACT.decode())
    await asyncio.to_thread(_insert_old_format_event, sync_url, 2, UNICODE, None)
    s = open_store(database_url)
    await s.migrate()
    await s.start()
    try:
        plan = await s.submit(PutOp("new", UNICODE, UNICODE))
        assert plan.seq == 3
        got = [(e.seq, e.body, e.object) for e in await s.read_events(0, 10, applied_only=False)]
    finally:
        await s.close()
    assert got == [(1, FULL.decode(), FULL_COMPACT.decode()), (2, UNICODE, None), (3, UNICODE, UNICODE)]


# -- through a running relay -------------------------------------------------------------------------

STREAM_TOKEN = "compact-stream-token-6e1f"


@pytest.fixture
def extra_config(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_COMPACT_STREAM_TOKEN", STREAM_TOKEN)
    return "stream_clients:\n  - name: reader\n    token_env: TEST_COMPACT_STREAM_TOKEN\n    cpos: [\"*\"]\n"


async def _subscribe_all(port: int, n: int) -> list[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.RelayStub(channel)
        call = stub.Subscribe(pb.SubscribeRequest(earliest=True),
                              metadata=(("authorization", f"Bearer {STREAM_TOKEN}"),))
        out: list[Any] = []

        async def read() -> None:
            while len(out) < n:
                out.append(await call.read())

        await asyncio.wait_for(read(), 15)
        call.cancel()
        return out


async def test_subscribers_and_get_see_the_pushed_bytes(database_url: str, config_path: Path) -> None:
    settings = Settings(database_url=database_url, config=str(config_path), http_port=0, grpc_port=0,
                        grpc=True, workers=False)
    relay = await start_relay(settings)
    try:
        loc = json.loads(FULL)
        loc_id = loc["id"]
        unicode_loc = dict(loc, id="LOC-UNICODE", name="Zoë's laadplein — €0,35/kWh 🚗")
        bodies = [
            (loc_id, FULL),  # pretty: the object differs from the body
            ("LOC-COMPACT", json.dumps(dict(loc, id="LOC-COMPACT"), separators=(",", ":")).encode()),
            ("LOC-UNICODE", json.dumps(unicode_loc, ensure_ascii=False, separators=(",", ":")).encode()),
        ]
        for oid, raw in bodies:
            ans = await relay.request("PUT", f"/locations/NL/GFX/{oid}", raw=raw)
            assert ans.status == 200 and ans.body["status_code"] == 1000, ans.body
        events = await _subscribe_all(relay.info.ports["grpc"], len(bodies))
        for (oid, raw), ev in zip(bodies, events, strict=True):
            assert ev.object_id == oid and not ev.truncated
            assert ev.body == raw
            assert ev.object == orjson.dumps(orjson.loads(raw))
            got = await relay.get(f"/locations/NL/GFX/{oid}")
            assert got.body["data"] == json.loads(raw)
    finally:
        await stop_relay(relay)


# -- size and bloat -----------------------------------------------------------------------------------


def _used_bytes(db_file: str) -> int:
    conn = sqlite3.connect(db_file)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, free, size = (conn.execute(f"PRAGMA {p}").fetchone()[0]
                             for p in ("page_count", "freelist_count", "page_size"))
        return int((pages - free) * size)
    finally:
        conn.close()


@pytest.mark.parametrize("body", ["full", "small"])
async def test_an_event_stores_at_most_one_and_a_half_times_its_body_on_sqlite(
    body: str, tmp_path: Path, config_path: Path
) -> None:
    """2,000 location PUTs (20 objects x 100 versions) through the relay into a fresh SQLite file:
    the database grows by at most 1.5 x the bodies' bytes (event rows, their indexes, the states)."""
    db_file = str(tmp_path / "size.db")
    settings = Settings(database_url=f"sqlite:///{db_file}", config=str(config_path), http_port=0, grpc_port=0,
                        grpc=False, workers=False)
    template = json.loads(FULL) if body == "full" else _small_location()
    relay = await start_relay(settings)
    pushed = 0
    try:
        empty = _used_bytes(db_file)
        base = datetime(2024, 3, 5, 9, 0, tzinfo=UTC)

        async def versions(i: int) -> int:
            sent = 0
            for v in range(100):
                loc = dict(template, id=f"LOC-{i:04d}",
                           last_updated=(base + timedelta(seconds=v)).strftime("%Y-%m-%dT%H:%M:%SZ"))
                raw = json.dumps(loc, separators=(",", ":")).encode()
                ans = await relay.request("PUT", f"/locations/NL/GFX/LOC-{i:04d}", raw=raw)
                assert ans.status == 200 and ans.body["status_code"] == 1000, ans.body
                sent += len(raw)
            return sent

        pushed = sum(await asyncio.gather(*(versions(i) for i in range(20))))
        assert await relay.store.max_seq() == 2000
    finally:
        await stop_relay(relay)
    grown = _used_bytes(db_file) - empty
    assert grown <= 1.5 * pushed, f"{grown / 2000:.0f} bytes per event for {pushed / 2000:.0f}-byte bodies"


def _small_location() -> dict[str, Any]:
    """A 1.0 KB location (compact): location_full's address fields and one EVSE with one connector."""
    loc = json.loads(FULL)
    keep = ("id", "type", "name", "address", "city", "postal_code", "country", "coordinates", "operator",
            "time_zone", "last_updated")
    small = {k: loc[k] for k in keep}
    evse = loc["evses"][0]
    small["evses"] = [{k: evse[k] for k in ("uid", "evse_id", "status", "capabilities", "last_updated")}]
    small["evses"][0]["connectors"] = evse["connectors"][:1]
    return small


async def _pg_counts(url: str, table: str) -> tuple[int, int, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT n_tup_upd, n_tup_hot_upd, pg_relation_size(relid) FROM pg_stat_user_tables WHERE relname = $1",
            table,
        )
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])
    finally:
        await conn.close()


async def test_state_updates_are_hot_on_postgresql(database_url: str) -> None:
    """500 updates of 5 location states (1.0 KB): PostgreSQL updates them in place (HOT), the table
    stays at a few pages."""
    if not database_url.startswith("postgresql"):
        pytest.skip("HOT updates are PostgreSQL's")
    body = json.dumps(_small_location(), separators=(",", ":"))
    s = open_store(database_url)
    await s.migrate()
    await s.start()
    try:
        for i in range(5):
            await s.submit(PutOp(f"hot-{i}", body, body))
        upd0, hot0, _ = await _pg_counts(database_url, "state")
        for _ in range(100):
            for i in range(5):
                await s.submit(PutOp(f"hot-{i}", body, body))  # one batch each: 500 row updates
    finally:
        await s.close()
    counts: list[tuple[int, int, int]] = []

    async def flushed() -> bool:
        counts.append(await _pg_counts(database_url, "state"))
        return counts[-1][0] - upd0 >= 500

    await eventually(flushed, timeout=30, interval=0.5)  # a backend reports its counts when idle (<= 10 s)
    upd, hot, size = counts[-1]
    assert (hot - hot0) / (upd - upd0) >= 0.9, f"{hot - hot0} of {upd - upd0} updates were HOT"
    assert size <= 8 * 8192, f"state is {size} bytes for 5 rows after 500 updates"
