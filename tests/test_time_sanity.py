"""A last_updated far in the future is refused (pushes), and a stored one never freezes an object."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from relay.ingest import Ingestor, Push, Source
from relay.ocpi.paths import resolve
from relay.store.base import StateKey
from tests.conftest import GFX_TOKEN, RelayHandle, example

TARIFF = example("cdr_full.json")["tariffs"][0]
TARIFF_PATH = f"/tariffs/NL/GFX/{TARIFF['id']}"
LOC = example("location_full.json")
LOC_PATH = f"/locations/NL/GFX/{LOC['id']}"
EVSE_UID = LOC["evses"][0]["uid"]
FAR_FUTURE = "2099-01-01T00:00:00Z"


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _tariff(lu: str, price: float) -> dict[str, Any]:
    body = json.loads(json.dumps(TARIFF))
    body["last_updated"] = lu
    body["elements"][0]["price_components"][1]["price"] = price
    return body


async def _store_as_before_the_fix(relay: RelayHandle, path: str, body: dict[str, Any]) -> None:
    """Write a state the way the relay did before future dates were refused: no clock margin at all."""
    holder = relay.info.holder
    assert holder is not None
    sub = holder().subscription_for_token(GFX_TOKEN)
    assert sub is not None
    old_ingest = Ingestor(relay.store, holder, max_clock_skew=10**10)
    outcome = await old_ingest.handle(Push("PUT", path, resolve("PUT", path), json.dumps(body).encode(),
                                           Source.of(sub)))
    assert outcome.status == "applied", outcome


async def test_future_last_updated_is_refused_kept_and_a_correct_put_is_applied(relay: RelayHandle) -> None:
    ans = await relay.put(TARIFF_PATH, _tariff(FAR_FUTURE, 9.99))
    assert ans.status == 400 and ans.body["status_code"] == 2001, ans.body
    assert "last_updated" in ans.body["status_message"] and "future" in ans.body["status_message"]
    rejected = await relay.store.list_rejected()
    assert [(r.path, r.http_status, r.status_code) for r in rejected] == [(TARIFF_PATH, 400, 2001)]
    assert "last_updated" in rejected[0].reason
    assert await relay.store.read_events(0, 10, applied_only=False) == []

    now = _ts(datetime.now(UTC))
    ans = await relay.put(TARIFF_PATH, _tariff(now, 0.5))
    assert ans.status == 200 and ans.body["status_code"] == 1000 and ans.body["status_message"] == "Success"
    got = (await relay.get(TARIFF_PATH)).body["data"]
    assert got["last_updated"] == now and got["elements"][0]["price_components"][1]["price"] == 0.5


async def test_a_last_updated_within_the_clock_margin_is_accepted(relay: RelayHandle) -> None:
    soon = _ts(datetime.now(UTC) + timedelta(seconds=60))  # a sender clock a minute ahead of ours
    ans = await relay.put(TARIFF_PATH, _tariff(soon, 0.5))
    assert ans.status == 200 and ans.body["status_code"] == 1000, ans.body


async def test_nested_evse_and_connector_last_updated_in_the_future_are_refused_naming_the_field(
    relay: RelayHandle,
) -> None:
    body = json.loads(json.dumps(LOC))
    body["evses"][0]["last_updated"] = FAR_FUTURE
    ans = await relay.put(LOC_PATH, body)
    assert ans.status == 400 and ans.body["status_code"] == 2001
    assert "evses[0].last_updated" in ans.body["status_message"], ans.body
    body = json.loads(json.dumps(LOC))
    body["evses"][1]["connectors"][0]["last_updated"] = FAR_FUTURE
    ans = await relay.put(LOC_PATH, body)
    assert ans.status == 400 and "evses[1].connectors[0].last_updated" in ans.body["status_message"], ans.body
    evse = json.loads(json.dumps(LOC["evses"][0]))
    evse["connectors"][0]["last_updated"] = FAR_FUTURE
    ans = await relay.put(f"{LOC_PATH}/{EVSE_UID}", evse)
    assert ans.status == 400 and "connectors[0].last_updated" in ans.body["status_message"], ans.body
    ans = await relay.patch(f"{LOC_PATH}/{EVSE_UID}", {"status": "CHARGING", "last_updated": FAR_FUTURE})
    assert ans.status == 400 and "last_updated" in ans.body["status_message"], ans.body
    assert len(await relay.store.list_rejected()) == 4


async def test_a_state_frozen_in_the_future_before_the_fix_is_repaired_by_the_next_valid_push(
    relay: RelayHandle,
) -> None:
    await _store_as_before_the_fix(relay, TARIFF_PATH, _tariff(FAR_FUTURE, 9.99))
    now = _ts(datetime.now(UTC))
    ans = await relay.put(TARIFF_PATH, _tariff(now, 0.5))
    assert ans.body["status_code"] == 1000 and ans.body["status_message"] == "Success", ans.body
    state = await relay.store.get_state(StateKey("tariffs", "NL", "GFX", TARIFF["id"]))
    assert state is not None and state.object["last_updated"] == now
    assert state.object["elements"][0]["price_components"][1]["price"] == 0.5


async def test_a_location_whose_evse_is_frozen_in_the_future_takes_the_next_evse_patch(relay: RelayHandle) -> None:
    frozen = json.loads(json.dumps(LOC))
    frozen["last_updated"] = FAR_FUTURE
    frozen["evses"][0]["last_updated"] = FAR_FUTURE
    await _store_as_before_the_fix(relay, LOC_PATH, frozen)
    now = _ts(datetime.now(UTC))
    ans = await relay.patch(f"{LOC_PATH}/{EVSE_UID}", {"status": "CHARGING", "last_updated": now})
    assert ans.body["status_code"] == 1000 and ans.body["status_message"] == "Success", ans.body
    got = (await relay.get(LOC_PATH)).body["data"]
    assert got["evses"][0]["status"] == "CHARGING" and got["evses"][0]["last_updated"] == now
    # the location's own version no longer claims 2099 either: a later location PUT is not "stale"
    assert got["last_updated"] == now
