"""Pushes that share a group commit never fail each other, and a full write queue answers in time.

GreenFlux never resends a push: a valid push answered 3000 because an odd neighbour broke its batch,
or left waiting until GreenFlux's own timeout, is lost until the next pull.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from relay.settings import Settings
from tests.conftest import Answer, RelayHandle, append_lock_held, example, start_relay, stop_relay

LOCATIONS = [f"BURST-{i}" for i in range(8)]
EVSES = ["NL-GFX-E0873421-1", "NL-GFX-E0873422-1"]


async def _put_locations(relay: RelayHandle) -> None:
    for loc in LOCATIONS:
        body = copy.deepcopy(example("location_full.json"))
        body["id"] = loc
        assert (await relay.put(f"/locations/NL/GFX/{loc}", body)).body["status_code"] == 1000


def _odd_push(relay: RelayHandle, i: int) -> asyncio.Task[Answer]:
    """Pushes a careless or hostile sender makes: ids longer than the columns that hold them, NUL bytes."""
    kind = i % 4
    if kind == 0:  # a notification id of 255 characters (the object_id column holds 64)
        nid = f"{i:03d}" + "n" * 252
        return asyncio.ensure_future(relay.put(f"/ChargeStationNotifications/{nid}", {"id": nid, "level": "Info"}))
    if kind == 1:  # a NUL byte in a path id, percent-encoded
        body = copy.deepcopy(example("location_full.json"))
        body["id"] = f"A\x00B{i}"
        return asyncio.ensure_future(relay.put(f"/locations/NL/GFX/A%00B{i}", body))
    if kind == 2:  # a NUL byte in an EVSE uid
        return asyncio.ensure_future(relay.patch(f"/locations/NL/GFX/{LOCATIONS[0]}/E%00{i}", {"status": "AVAILABLE"}))
    nid = f"{i:03d}" + "c" * 100  # a body notification id within the path limit but past the column
    return asyncio.ensure_future(relay.post("/notifications", {"charge_station_notification_id": nid}))


async def test_a_burst_mixed_with_odd_pushes_answers_every_valid_push_1000(relay: RelayHandle) -> None:
    await _put_locations(relay)
    valid: list[asyncio.Task[Answer]] = []
    odd: list[asyncio.Task[Answer]] = []
    for i in range(400):
        if i % 50 == 49:
            # let the loop run between groups of requests (the 400 still overlap): in
            # asyncio debug mode creating a task records its stack, and 400 at once held the loop 0.1 s
            await asyncio.sleep(0)
        if i % 5 == 4:
            odd.append(_odd_push(relay, i))
        else:
            loc, evse = LOCATIONS[i % len(LOCATIONS)], EVSES[i % 2]
            status = ("AVAILABLE", "CHARGING", "BLOCKED")[i % 3]
            valid.append(asyncio.ensure_future(relay.patch(f"/locations/NL/GFX/{loc}/{evse}", {"status": status})))
    valid_answers = await asyncio.gather(*valid)
    odd_answers = await asyncio.gather(*odd)
    assert len(valid_answers) == 320 and len(odd_answers) == 80
    assert [(a.status, a.body["status_code"]) for a in valid_answers] == [(200, 1000)] * 320
    assert [(a.status, a.body["status_code"]) for a in odd_answers] == [(400, 2001)] * 80, [
        a.body for a in odd_answers if a.body["status_code"] != 2001
    ]
    # every odd push is kept for the operator, with a path the terminal and the database can hold
    rejected = await relay.store.list_rejected(limit=1000)
    assert len(rejected) == 80
    assert all("\x00" not in r.path and "\x00" not in r.reason for r in rejected)
    assert sum("%00" in r.path for r in rejected) == 40


@pytest.fixture
async def small_queue_relay(database_url: str, config_path: Path) -> AsyncIterator[RelayHandle]:
    settings = Settings(database_url=database_url, config=str(config_path), http_port=0, grpc=False, workers=False,
                        max_body_bytes=8192, write_queue_max_bytes=16384, write_queue_timeout=0.5)
    handle = await start_relay(settings)
    try:
        yield handle
    finally:
        await stop_relay(handle)


async def test_a_full_write_queue_answers_3000_within_its_deadline_and_stores_nothing_of_it(
    small_queue_relay: RelayHandle, database_url: str
) -> None:
    relay = small_queue_relay
    base = example("location_full.json")
    size = len(json.dumps(base))
    assert 3000 < size < 8192  # so that about four pushes fill the 16 KiB queue
    pushes: list[asyncio.Task[Answer]] = []
    async with append_lock_held(database_url):  # the database is stuck: the writer waits on its lock
        for i in range(12):
            body = copy.deepcopy(base)
            body["id"] = f"Q-{i}"
            pushes.append(asyncio.ensure_future(relay.put(f"/locations/NL/GFX/Q-{i}", body)))
        # pushes that find no room are answered while the database is still stuck
        done, _ = await asyncio.wait(pushes, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert done, "no push was answered while the write queue stayed full"
        early = [t.result() for t in done]
        assert all((a.status, a.body["status_code"]) == (503, 3000) for a in early), [a.body for a in early]
    answers = await asyncio.gather(*pushes)
    refused = {f"Q-{i}" for i, a in enumerate(answers) if a.body["status_code"] == 3000}
    stored = {f"Q-{i}" for i, a in enumerate(answers) if a.body["status_code"] == 1000}
    assert refused and stored and len(refused) + len(stored) == 12
    ids = {s.key.object_id for s in await relay.store.list_states("locations", None, None, 100)}
    assert ids == stored  # 3000 = nothing stored, 1000 = stored
