"""A research copy carries nothing the rule removed: every byte a webhook and an ocpi target receive
(request line, headers, body) is scanned for raw ids, personal values and the exact receive time.
A real relay with its workers, a partner sink that records each request's line, headers and body,
both databases."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest

from relay.store.base import EventFilter
from tests.conftest import LOC_ID, SESSION_ID, RelayHandle, eventually, example
from tests.deliver.conftest import rows
from tests.servers import PartnerSink

RULE = """
targets:
  - name: research
    type: webhook
    url: $sink/hook
    secret_env: TEST_RESEARCH_SECRET
    retry_base: 0.05
    retry_max: 0.4
  - name: partner
    type: ocpi
    url: $sink/ocpi/emsp/2.1.1
    token_env: TEST_PARTNER_TOKEN
    retry_base: 0.05
    retry_max: 0.4
rules:
  - name: research-copy
    match: {modules: [locations, sessions, cdrs, tariffs, chargestationnotifications, notifications]}
    to: [research, partner]
    transform:
      - drop: [meter_id, charge_station_message_payload, tariff_alt_url, tariffs.*.tariff_alt_url]
      - pseudonymise:
          key_env: TEST_PSEUDO_KEY
          fields: [id, uid, evses.*.uid, evses.*.connectors.*.id, evses.*.connectors.*.tariff_id, auth_id,
                   location.id, location.evses.*.uid, location.evses.*.connectors.*.id,
                   location.evses.*.connectors.*.tariff_id, tariffs.*.id, location_id,
                   charge_station_notification_id, charge_station_id]
      - coarsen_time:
          unit: hour
          fields: [last_updated, evses.*.last_updated, evses.*.connectors.*.last_updated, location.last_updated,
                   location.evses.*.last_updated, location.evses.*.connectors.*.last_updated, created]
"""


@pytest.fixture
def extra_config(partner_sink: PartnerSink) -> str:
    return RULE.replace("$sink", partner_sink.url)


EVSE = "NL-GFX-E0873422-1"
CONNECTOR = "CONN-91x7a"
CDR_ID = "NLGFX-CDR-20240305-000417"
TARIFF_ID = "GFX-AC-0.45"
CSN_ID = "CSN-4471x"
RAW = [LOC_ID, EVSE, "NL-GFX-E0873421-1", CONNECTOR, SESSION_ID, CDR_ID, TARIFF_ID, CSN_ID, "918255",
       "4a91c7e8-0b2d-4f36-a5e1-9c8d7b6a5f40", "NL-EMP-C04817263-K", "EMH-eHZ-1ESY1160928417", "04A7C2E9B15D80",
       "GFX0873421", "GFX0873422"]


def pushes() -> list[tuple[str, str, Any]]:
    loc = example("location_full.json")
    loc["evses"][1]["connectors"][0]["id"] = CONNECTOR
    csn = dict(example("chargestationnotification_station_fault.json"), charge_station_notification_id=CSN_ID)
    tariff = example("cdr_full.json")["tariffs"][0]
    assert tariff["id"] == TARIFF_ID
    return [
        ("PUT", f"/locations/NL/GFX/{LOC_ID}", loc),
        ("PATCH", f"/locations/NL/GFX/{LOC_ID}/{EVSE}", {"status": "BLOCKED"}),  # GreenFlux: no last_updated
        ("PATCH", f"/locations/NL/GFX/{LOC_ID}/{EVSE}/{CONNECTOR}",
         {"voltage": 400}),
        ("PUT", f"/sessions/NL/GFX/{SESSION_ID}", example("session_active.json")),
        ("PATCH", f"/sessions/NL/GFX/{SESSION_ID}", {"kwh": 7.412, "last_updated": "2024-03-05T08:59:02Z"}),
        ("POST", "/cdrs", example("cdr_full.json")),
        ("PUT", f"/ChargeStationNotifications/{CSN_ID}", csn),
        ("POST", "/notifications", example("chargestationnotification_authorize_idtag.json")),
        ("PUT", f"/tariffs/NL/GFX/{TARIFF_ID}", tariff),
        ("DELETE", f"/tariffs/NL/GFX/{TARIFF_ID}", None),
    ]


async def test_no_raw_id_personal_value_or_receive_time_reaches_a_research_target(
    relay: RelayHandle, partner_sink: PartnerSink
) -> None:
    sink = partner_sink
    sent = pushes()
    for method, path, body in sent:
        ans = await relay.request(method, path, body)
        assert ans.body.get("status_code") == 1000, (method, path, ans.body)

    async def settled() -> bool:
        got = await rows(relay)
        return len(got) == 2 * len(sent) and all(r.state in ("done", "dead") for r in got)

    await eventually(settled)
    assert [(r.target, r.object_key, r.last_error) for r in await rows(relay) if r.state != "done"] == []
    assert len(sink.received) == 2 * len(sent)
    requests = [r.wire() for r in sink.received]
    wire = b"\n".join(requests)
    leaks = [v for v in RAW if v.encode() in wire or quote(v, safe="").encode() in wire]
    assert leaks == [], [r.split(b"\r\n", 1)[0] for r in requests]
    # the exact receive time: the rule coarsens times to the hour, so no event's second may appear
    for ev in await relay.store.read_events(0, 100, EventFilter(), applied_only=False):
        if ev.received_at.minute or ev.received_at.second:
            stamp = ev.received_at.strftime("%Y-%m-%dT%H:%M:%S")
            assert stamp.encode() not in wire, (stamp, ev.module, ev.action)
    lines = sorted(r.split(b"\r\n", 1)[0].decode() for r in requests)
    assert sum(1 for line in lines if line.startswith("PATCH /ocpi/emsp/2.1.1/locations/NL/GFX/ps_")) == 2
    assert any(line.startswith("DELETE /ocpi/emsp/2.1.1/tariffs/NL/GFX/ps_") for line in lines), lines
    assert any(line.startswith("PUT /ocpi/emsp/2.1.1/ChargeStationNotifications/ps_") for line in lines), lines
