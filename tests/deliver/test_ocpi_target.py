"""`ocpi` targets mirror the push (method, path, body as received) with the partner's Token header,
and the partner's OCPI envelope decides: 1000 done, 2xxx dead, 3xxx retried, no envelope dead."""

from __future__ import annotations

import json

import pytest

from tests.conftest import LOC_ID, SESSION_ID, RelayHandle, eventually, example_bytes
from tests.deliver.conftest import PARTNER_TOKEN, rows
from tests.servers import PartnerSink, Received, Reply, ocpi_envelope

PARTNER = """
targets:
  - name: partner
    type: ocpi
    url: $sink/ocpi/emsp/2.1.1
    token_env: TEST_PARTNER_TOKEN
    retry_base: 0.05
    retry_max: 0.4
rules:
  - name: mirror
    match: {modules: [locations, sessions, cdrs]}
    to: [partner]
"""
BASE = "/ocpi/emsp/2.1.1"
LOC = f"/locations/NL/GFX/{LOC_ID}"
SESS = f"/sessions/NL/GFX/{SESSION_ID}"
EVSE_PATCH = b'{"status": "CHARGING", "last_updated": "2024-03-05T08:20:00Z"}'
SESSION_PATCH = b'{"kwh": 7.412, "last_updated": "2024-03-05T08:59:02Z"}'


async def _push_all(relay: RelayHandle) -> list[tuple[str, str, bytes]]:
    pushes = [
        ("PUT", LOC, example_bytes("location_full.json")),
        ("PATCH", LOC + "/NL-GFX-E0873422-1", EVSE_PATCH),
        ("PUT", SESS, example_bytes("session_active.json")),
        ("PATCH", SESS, SESSION_PATCH),
        ("POST", "/cdrs", example_bytes("cdr_full.json")),
    ]
    for method, path, body in pushes:
        ans = await relay.request(method, path, raw=body)
        assert ans.body["status_code"] == 1000, ans.body
    return pushes


@pytest.mark.forwarding(PARTNER)
async def test_ocpi_target_mirrors_method_path_body_and_sends_the_partner_token(
    relay: RelayHandle, partner_sink: PartnerSink
) -> None:
    pushes = await _push_all(relay)
    await eventually(lambda: len(partner_sink.accepted()) == 5)
    got = [(r.method, r.path.removeprefix(BASE), r.body) for r in partner_sink.accepted()]
    assert sorted(got) == sorted(pushes)  # the body exactly as received, byte for byte
    assert all(r.headers["authorization"] == f"Token {PARTNER_TOKEN}" for r in partner_sink.received)
    # per object in order: the location PUT before its EVSE PATCH, the session PUT before its PATCH
    order = [p for _, p, _ in got]
    assert order.index(LOC) < order.index(LOC + "/NL-GFX-E0873422-1")
    assert order.index(SESS) < [i for i, p in enumerate(order) if p == SESS][-1]

    async def done() -> bool:
        return [(r.state, r.last_ocpi_status) for r in await rows(relay)] == [("done", 1000)] * 5

    await eventually(done)


@pytest.mark.forwarding(PARTNER)
async def test_the_partner_envelope_decides_done_retry_or_dead(relay: RelayHandle, partner_sink: PartnerSink) -> None:
    def answer(rec: Received, _n: int) -> Reply:
        if rec.path.startswith(BASE + "/sessions"):
            return 200, ocpi_envelope(2001, "Invalid or missing parameters: kwh"), {}
        if rec.path.startswith(BASE + "/cdrs"):
            return 200, b"OK", {}
        tries = sum(1 for r in partner_sink.received if r.path == rec.path)
        return (200, ocpi_envelope(3000, "busy"), {}) if tries == 1 else (200, ocpi_envelope(1000), {})

    partner_sink.answer = answer
    for method, path, body in [("PUT", SESS, example_bytes("session_active.json")),
                               ("POST", "/cdrs", example_bytes("cdr_full.json")),
                               ("PUT", LOC, example_bytes("location_full.json"))]:
        assert (await relay.request(method, path, raw=body)).body["status_code"] == 1000

    async def settled() -> bool:
        return all(r.state in ("done", "dead") for r in await rows(relay))

    await eventually(settled)
    by_module = {r.object_key.split("/")[0]: r for r in await rows(relay)}
    session, cdr, location = by_module["sessions"], by_module["cdrs"], by_module["locations"]
    assert (session.state, session.last_ocpi_status, session.attempts) == ("dead", 2001, 1)
    assert "2001" in (session.last_error or "") and "kwh" in (session.last_error or "")
    assert cdr.state == "dead" and "envelope" in (cdr.last_error or "")
    assert (location.state, location.last_ocpi_status, location.attempts) == ("done", 1000, 2)
    assert sum(1 for r in partner_sink.received if r.path.startswith(BASE + "/sessions")) == 1
    assert json.loads(example_bytes("session_active.json"))["id"] == SESSION_ID
