"""Hostile path ids through a real relay: dot segments, empty segments, control characters, bad CPO
codes and letter case, on SQLite and PostgreSQL. Paths are sent exactly as written (no client-side
normalisation of ``..`` or percent escapes), as an attacker would send them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from relay.store.base import EventFilter
from tests.conftest import BASE_CONFIG, GFX_TOKEN, LOC_ID, RelayHandle, example

BASE_CONFIG_WILDCARD = """
  - name: anyone
    token_env: TEST_TOKEN_ANY
    cpos: ["*"]
"""
ANY_TOKEN = "any-cpo-test-token-0d4e"


@pytest.fixture
def config_path(tmp_path: Path, tokens: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Path:
    # a second subscription allowed every CPO: a country code ``..`` is then not refused by the scope
    monkeypatch.setenv("TEST_TOKEN_ANY", ANY_TOKEN)
    path = tmp_path / "forwarding.yaml"
    path.write_text(BASE_CONFIG.rstrip("\n") + "\n" + BASE_CONFIG_WILDCARD.lstrip("\n"))
    return path


async def raw(relay: RelayHandle, method: str, path: str, body: Any = None,
              token: str = GFX_TOKEN) -> tuple[int, dict[str, Any]]:
    """Send ``path`` byte for byte (``encoded=True``: no dot-segment removal, no re-quoting)."""
    url = URL(relay.base + path, encoded=True)
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Token {token}", "Content-Type": "application/json"}
    async with relay.http.request(method, url, data=data, headers=headers, allow_redirects=False) as resp:
        text = await resp.read()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, {"_raw": text.decode("utf-8", "replace")}


def location(loc_id: str = LOC_ID) -> dict[str, Any]:
    return dict(example("location_full.json"), id=loc_id)


EVSE_PATCH = {"status": "CHARGING", "last_updated": "2024-03-05T08:20:00Z"}
NOTIFICATION = example("chargestationnotification_station_fault.json")

BAD = [
    # (method, path, body, token, field)
    ("PUT", "/locations/NL/GFX/..", location(".."), GFX_TOKEN, "location_id"),
    ("PUT", "/locations/NL/GFX/.", location("."), GFX_TOKEN, "location_id"),
    ("PUT", "/locations/NL/GFX/%2E%2E", location(".."), GFX_TOKEN, "location_id"),
    ("PATCH", f"/locations/NL/GFX/{LOC_ID}/..", EVSE_PATCH, GFX_TOKEN, "evse_uid"),
    ("PATCH", f"/locations/NL/GFX/{LOC_ID}/NL-GFX-E0873422-1/.", {"status": "AVAILABLE"}, GFX_TOKEN, "connector_id"),
    ("PUT", "/locations/NL/GFX/", location(""), GFX_TOKEN, "location_id"),
    ("PATCH", "/locations/NL/GFX//NL-GFX-E0873422-1", EVSE_PATCH, GFX_TOKEN, "location_id"),
    ("PATCH", f"/locations/NL/GFX/{LOC_ID}/", EVSE_PATCH, GFX_TOKEN, "evse_uid"),
    ("PUT", "/locations/NL/GFX/A%00B", location("A\x00B"), GFX_TOKEN, "location_id"),
    ("PUT", "/locations/NL/GFX/A%C2%85B", location("A\x85B"), GFX_TOKEN, "location_id"),
    ("PUT", "/locations/NL/GFX/A%7FB", location("A\x7fB"), GFX_TOKEN, "location_id"),
    ("PATCH", "/sessions/NL/GFX/..", {"kwh": 1.0}, GFX_TOKEN, "session_id"),
    ("PATCH", "/sessions/NL/GFX/S%1B1", {"kwh": 1.0}, GFX_TOKEN, "session_id"),
    ("DELETE", "/tariffs/NL/GFX/..", None, GFX_TOKEN, "tariff_id"),
    ("PUT", "/ChargeStationNotifications/..", NOTIFICATION, GFX_TOKEN, "notification_id"),
    ("PUT", "/ChargeStationNotifications/N%00", NOTIFICATION, GFX_TOKEN, "notification_id"),
    ("PUT", "/ChargeStationNotifications/" + "9" * 65, NOTIFICATION, GFX_TOKEN, "notification_id"),
    ("PUT", f"/locations/%2E%2E/GFX/{LOC_ID}", location(), ANY_TOKEN, "country_code"),
    ("PUT", f"/locations/../GFX/{LOC_ID}", location(), ANY_TOKEN, "country_code"),
    ("PUT", f"/locations/NLD/GFX/{LOC_ID}", location(), ANY_TOKEN, "country_code"),
    ("PUT", f"/locations/N1/GFX/{LOC_ID}", location(), ANY_TOKEN, "country_code"),
    ("PUT", f"/locations/NL/G-X/{LOC_ID}", location(), ANY_TOKEN, "party_id"),
    ("PUT", f"/locations/NL/.../{LOC_ID}", location(), ANY_TOKEN, "party_id"),
]


@pytest.mark.parametrize(("method", "path", "body", "token", "field"), BAD,
                         ids=[f"{m} {p[:48]}" for m, p, *_ in BAD])
async def test_an_id_that_could_change_a_url_is_refused_naming_its_segment(
    relay: RelayHandle, method: str, path: str, body: Any, token: str, field: str
) -> None:
    status, answer = await raw(relay, method, path, body, token)
    assert (status, answer.get("status_code")) == (400, 2001), (status, answer)
    assert answer["status_message"].startswith(f"{field}: "), answer["status_message"]
    assert await relay.store.read_events(0, 10, applied_only=False) == []
    # the store is healthy afterwards (a NUL must not have broken a PostgreSQL batch)
    ok = await relay.put(f"/locations/NL/GFX/{LOC_ID}", location())
    assert ok.body["status_code"] == 1000, ok.body


async def test_lower_case_cpo_is_the_same_object_in_upper_case(relay: RelayHandle) -> None:
    first = await relay.put(f"/locations/nl/gfx/{LOC_ID}", location())
    assert first.body["status_code"] == 1000, first.body
    again = await relay.put(f"/locations/NL/GFX/{LOC_ID}", location())
    assert again.body["status_message"].startswith("Success (identical"), again.body
    patched = await relay.patch(f"/locations/Nl/gFx/{LOC_ID}/NL-GFX-E0873422-1", EVSE_PATCH)
    assert patched.body["status_code"] == 1000, patched.body
    states = await relay.store.list_states("locations", None, None, 10)
    assert [(s.key.country_code, s.key.party_id, s.key.object_id) for s in states] == [("NL", "GFX", LOC_ID)]
    events = await relay.store.read_events(0, 10, EventFilter(), applied_only=False)
    assert [(e.country_code, e.party_id, e.action) for e in events] == [("NL", "GFX", "put"), ("NL", "GFX", "patch")]
    got = await relay.get(f"/locations/nl/gfx/{LOC_ID}")
    assert got.status == 200 and got.body["data"]["evses"][1]["status"] == "CHARGING"
