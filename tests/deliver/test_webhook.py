"""Webhook delivery through a real relay to real HTTP sinks, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from relay.cli.dead import dead_list, dead_retry, dead_show
from relay.metrics import REGISTRY
from tests.conftest import SESSION_ID, RelayHandle, eventually, example_bytes
from tests.deliver.conftest import HOOK_SECRET, RESEARCH_SECRET, patch_session, put_session, rows, run_cli
from tests.servers import PartnerSink, Received, Reply

RESEARCH = """
targets:
  - name: research
    type: webhook
    url: $sink/research
    secret_env: TEST_RESEARCH_SECRET
    retry_base: 0.05
    retry_max: 0.4
  - name: partner
    type: ocpi
    url: $other/ocpi/emsp/2.1.1
    token_env: TEST_PARTNER_TOKEN
    retry_base: 0.05
    retry_max: 0.4
rules:
  - name: research-copy
    match: {modules: [sessions, cdrs], cpos: ["NL*GFX"]}
    to: [research, partner]
    transform:
      - drop: [meter_id]
      - pseudonymise: {fields: [auth_id], key_env: TEST_PSEUDO_KEY}
      - round: {fields: [location.coordinates.latitude, location.coordinates.longitude], decimals: 2}
"""

SLOW_AND_FAST = """
targets:
  - name: slow
    type: webhook
    url: $sink/slow
    secret_env: TEST_HOOK_SECRET
    concurrency: 2
  - name: fast
    type: webhook
    url: $other/fast
    secret_env: TEST_HOOK_SECRET
    concurrency: 4
rules:
  - name: both
    match: {modules: [sessions]}
    to: [slow, fast]
"""

# Retry-After is honoured up to 2 x retry_max (svix's clamp): 1 s fits here.
PATIENT = """
targets:
  - name: hook
    type: webhook
    url: $sink/hook
    secret_env: TEST_HOOK_SECRET
    retry_base: 0.05
    retry_max: 2
rules:
  - name: everything
    to: [hook]
"""

RATE_LIMITED = """
targets:
  - name: hook
    type: webhook
    url: $sink/hook
    secret_env: TEST_HOOK_SECRET
    concurrency: 8
    rate_limit: 10
rules:
  - name: everything
    to: [hook]
"""


def ok(_rec: Received, _n: int) -> Reply:
    return 200, None, {}


def _everything(sinks: list[PartnerSink]) -> bytes:
    """Every forwarded byte: paths, headers and bodies of every request every sink saw."""
    parts = []
    for sink in sinks:
        for r in sink.received:
            parts += [r.method.encode(), r.path.encode(), r.body]
            parts += [f"{k}: {v}".encode() for k, v in r.headers.items()]
    return b"\n".join(parts)


async def test_webhook_is_signed_verifiable_and_retries_keep_the_message_id(
    relay: RelayHandle, partner_sink: PartnerSink
) -> None:
    partner_sink.answer = lambda rec, n: (503, None, {}) if n == 1 else (200, None, {})
    await put_session(relay)
    await eventually(lambda: len(partner_sink.accepted()) == 1)
    first, second = partner_sink.received[:2]
    (row,) = await rows(relay)
    assert first.status == 503 and second.path == "/hook" and second.method == "POST"
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == f"msg_{row.id}"
    assert first.body == second.body
    payload = Webhook(HOOK_SECRET).verify(second.body, second.headers)
    assert payload["type"] == "sessions.put" and payload["timestamp"].endswith("Z")
    data = payload["data"]
    assert (data["seq"], data["module"], data["action"]) == (1, "sessions", "put")
    assert (data["country_code"], data["party_id"], data["id"]) == ("NL", "GFX", SESSION_ID)
    assert data["last_updated"] == "2024-03-05T08:14:06Z" and data["object"]["kwh"] == 0.0
    with pytest.raises(WebhookVerificationError):
        Webhook(RESEARCH_SECRET).verify(second.body, second.headers)
    tampered = second.body.replace(b'"kwh":0.0', b'"kwh":9.0')
    with pytest.raises(WebhookVerificationError):
        Webhook(HOOK_SECRET).verify(tampered, second.headers)

    async def done() -> bool:
        return [(r.state, r.attempts, r.last_http_status) for r in await rows(relay)] == [("done", 2, 200)]

    await eventually(done)


@pytest.mark.forwarding(RESEARCH)
async def test_research_copies_are_pseudonymised_stably_and_never_carry_the_originals(
    relay: RelayHandle, partner_sink: PartnerSink, other_sink: PartnerSink
) -> None:
    assert (await relay.request("PUT", f"/sessions/NL/GFX/{SESSION_ID}",
                                raw=example_bytes("session_completed.json"))).body["status_code"] == 1000
    assert (await relay.request("POST", "/cdrs", raw=example_bytes("cdr_full.json"))).body["status_code"] == 1000
    await eventually(lambda: len(partner_sink.accepted()) == 2 and len(other_sink.accepted()) == 2)
    forwarded = _everything([partner_sink, other_sink])
    for original in (b"NL-EMP-C04817263-K", b"EMH-eHZ-1ESY1160928417", b"52.160418", b"5.381967"):
        assert original not in forwarded, original
    for r in partner_sink.received:
        Webhook(RESEARCH_SECRET).verify(r.body, r.headers)
    hooks = {r.json()["type"]: r.json()["data"] for r in partner_sink.accepted()}
    session, cdr = hooks["sessions.put"], hooks["cdrs.post"]
    assert session["object"]["auth_id"].startswith("ps_")
    assert session["object"]["auth_id"] == cdr["object"]["auth_id"]  # stable across events and modules
    assert "meter_id" not in session["object"] and "meter_id" not in cdr["object"]
    assert session["object"]["location"]["coordinates"] == {"latitude": "52.16", "longitude": "5.38"}
    assert session["id"] == SESSION_ID and session["evse_uid"] is None and session["connector_id"] is None
    mirrored = {r.method: r.json() for r in other_sink.accepted()}
    assert mirrored["PUT"]["auth_id"] == mirrored["POST"]["auth_id"]
    assert mirrored["PUT"]["auth_id"] != session["object"]["auth_id"]  # salted per target: no joins


async def test_order_per_object_holds_while_the_sink_fails_intermittently(
    relay: RelayHandle, partner_sink: PartnerSink
) -> None:
    partner_sink.answer = lambda rec, n: (503, b"busy", {}) if n % 3 == 0 else (200, None, {})
    await put_session(relay)
    for i in range(1, 31):
        await patch_session(relay, i, kwh=i * 0.5)
    await eventually(lambda: len(partner_sink.accepted()) >= 31)
    accepted = partner_sink.accepted()
    assert [r.json()["data"]["object"]["kwh"] for r in accepted] == [0.0] + [i * 0.5 for i in range(1, 31)]
    assert [r.json()["data"]["seq"] for r in accepted] == list(range(1, 32))
    assert len({r.headers["webhook-id"] for r in accepted}) == 31  # nothing twice
    assert any(r.status == 503 for r in partner_sink.received)


async def test_a_sink_that_is_down_then_recovers_gets_everything_once(
    relay: RelayHandle, partner_sink: PartnerSink
) -> None:
    partner_sink.answer = lambda rec, n: (503, None, {}) if n <= 15 else (200, None, {})
    ids = [f"{SESSION_ID[:-2]}{i:02d}" for i in range(8)]
    for sid in ids:
        await put_session(relay, sid)
    await eventually(lambda: len(partner_sink.accepted()) >= 8)
    assert sorted(r.json()["data"]["id"] for r in partner_sink.accepted()) == sorted(ids)
    assert len({r.headers["webhook-id"] for r in partner_sink.accepted()}) == 8

    async def all_done() -> bool:
        return [r.state for r in await rows(relay)] == ["done"] * 8

    await eventually(all_done)


@pytest.mark.forwarding(PATIENT)
async def test_429_with_retry_after_waits_that_long(relay: RelayHandle, partner_sink: PartnerSink) -> None:
    partner_sink.answer = lambda rec, n: (429, None, {"Retry-After": "1"}) if n == 1 else (200, None, {})
    await put_session(relay)
    await eventually(lambda: len(partner_sink.accepted()) == 1)
    first, second = partner_sink.received
    assert first.status == 429
    assert second.at - first.at >= 1.0


async def test_400_goes_dead_and_dead_retry_delivers_once_the_partner_is_fixed(
    relay: RelayHandle, partner_sink: PartnerSink
) -> None:
    broken = True
    partner_sink.answer = lambda rec, n: (400, {"error": "unknown field kwh"}, {}) if broken else (200, None, {})
    await put_session(relay)

    async def dead() -> bool:
        return len(await rows(relay, "dead")) == 1

    await eventually(lambda: len(partner_sink.received) == 1)
    await eventually(dead)
    assert len(partner_sink.received) == 1  # a 400 is not retried
    await eventually(lambda: REGISTRY.get_sample_value("relay_dead_letters", {"target": "hook"}) == 1)
    code, out, err = await run_cli("dead", "list", "--json", settings=relay.settings)
    assert code == 0, err
    (listed,) = json.loads(out)
    assert set(listed) == {"id", "seq", "target", "rule", "object_key", "attempts", "last_http_status",
                           "last_ocpi_status", "last_error", "updated_at"}
    assert (listed["target"], listed["rule"], listed["seq"], listed["last_http_status"]) == ("hook", "everything", 1, 400)
    assert "unknown field kwh" in listed["last_error"]
    out_io = io.StringIO()
    assert await dead_list(relay.settings, target="hook", as_json=False, out=out_io) == 0
    line = out_io.getvalue()
    assert line.startswith(f"{listed['id']}\thook\tseq 1\t") and "\t400\t" in line and "unknown field kwh" in line
    out_io = io.StringIO()
    assert await dead_show(relay.settings, listed["id"], out=out_io) == 0
    shown = json.loads(out_io.getvalue())
    assert shown["state"] == "dead" and shown["event"]["object_id"] == SESSION_ID
    assert shown["event"]["body"]["kwh"] == 0.0

    broken = False
    code, out, err = await run_cli("dead", "retry", "--all", settings=relay.settings)
    assert code == 0 and "1 dead" in out, (out, err)
    await eventually(lambda: len(partner_sink.accepted()) == 1)
    assert partner_sink.accepted()[0].headers["webhook-id"] == partner_sink.received[0].headers["webhook-id"]

    async def done() -> bool:
        return [r.state for r in await rows(relay)] == ["done"]

    await eventually(done)
    out_io = io.StringIO()
    assert await dead_list(relay.settings, target=None, as_json=True, out=out_io) == 0
    assert json.loads(out_io.getvalue()) == []
    out_io = io.StringIO()
    assert await dead_retry(relay.settings, [999], as_json=True, out=out_io) == 1
    assert json.loads(out_io.getvalue()) == [{"id": 999, "retried": False}]


@pytest.mark.forwarding(SLOW_AND_FAST)
async def test_a_slow_target_keeps_its_concurrency_and_does_not_slow_another(
    relay: RelayHandle, partner_sink: PartnerSink, other_sink: PartnerSink
) -> None:
    release = asyncio.Event()

    async def stuck(_rec: Received, _n: int) -> Reply:
        await release.wait()  # the slow partner answers nothing until the fast one has had everything
        return 200, None, {}

    partner_sink.answer = stuck
    other_sink.answer = ok
    for i in range(12):
        await put_session(relay, f"{SESSION_ID[:-2]}{i:02d}")
    await eventually(lambda: len(other_sink.accepted()) == 12)
    await eventually(lambda: partner_sink.in_flight == 2)  # its concurrency, all held
    assert partner_sink.accepted() == []
    release.set()
    await eventually(lambda: len(partner_sink.accepted()) == 12)
    assert partner_sink.max_in_flight == 2


@pytest.mark.forwarding(RATE_LIMITED)
async def test_rate_limit_spaces_the_requests(relay: RelayHandle, partner_sink: PartnerSink) -> None:
    partner_sink.answer = ok
    for i in range(20):
        await put_session(relay, f"{SESSION_ID[:-2]}{i:02d}")
    await eventually(lambda: len(partner_sink.accepted()) == 20)
    times = [r.at for r in partner_sink.received]
    # a burst of 10, then 10 per second: the last request cannot come before ~1 s after the first
    assert times[-1] - times[0] >= 0.9


async def test_outbox_depth_gauge_and_status_follow_the_outbox(relay: RelayHandle, partner_sink: PartnerSink) -> None:
    release = asyncio.Event()

    async def held(_rec: Received, _n: int) -> Reply:
        await release.wait()
        return 200, None, {}

    partner_sink.answer = held
    for i in range(3):
        await put_session(relay, f"{SESSION_ID[:-2]}{i:02d}")
    await eventually(lambda: REGISTRY.get_sample_value("relay_outbox_depth", {"target": "hook"}) == 3)
    assert (await relay.store.stats())["targets"]["hook"]["depth"] == 3
    release.set()
    await eventually(lambda: REGISTRY.get_sample_value("relay_outbox_depth", {"target": "hook"}) == 0)
    assert (await relay.store.stats())["targets"]["hook"]["done"] == 3
    assert await relay.store.outbox().counts() == {}
