"""Test and production side by side: events carry their subscription, gRPC filters by it, rules
route by it, and a stream client's allow_ips is checked against its gRPC peer address."""

from __future__ import annotations

import grpc
import pytest

from relay.stream._pb import relay_pb2 as pb
from relay.stream._pb import relay_pb2_grpc as pb_grpc
from tests.conftest import RelayHandle
from tests.stream.conftest import (
    BILLING_TOKEN,
    STREAM_CONFIG,
    bearer,
    location,
    put_location,
    read_n,
    subscribe,
)

INSIDE_TOKEN = "stream-inside-token-6b1f"
OUTSIDE_TOKEN = "stream-outside-token-0c4d"


@pytest.fixture
def extra_config(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_STREAM_TOKEN_BILLING", BILLING_TOKEN)
    monkeypatch.setenv("TEST_STREAM_TOKEN_BELGIUM", "unused-belgium-token-8e2a")
    monkeypatch.setenv("TEST_STREAM_INSIDE", INSIDE_TOKEN)
    monkeypatch.setenv("TEST_STREAM_OUTSIDE", OUTSIDE_TOKEN)
    monkeypatch.setenv("TEST_PARTNER_TOKEN", "partner-token-for-rules-1")
    return STREAM_CONFIG + """
  - {name: inside, token_env: TEST_STREAM_INSIDE, cpos: ["*"], allow_ips: ["127.0.0.0/8", "::1/128"]}
  - {name: outside, token_env: TEST_STREAM_OUTSIDE, cpos: ["*"], allow_ips: ["198.51.100.0/24"]}
targets:
  - {name: partner, type: ocpi, url: "http://127.0.0.1:9/ocpi/2.1.1", token_env: TEST_PARTNER_TOKEN}
rules:
  - {name: production-only, match: {subscriptions: [greenflux]}, to: [partner]}
"""


async def test_events_carry_their_subscription_and_subscribe_filters_by_it(
    relay: RelayHandle, stub: pb_grpc.RelayStub
) -> None:
    await put_location(relay, location(), cpo="NL*GFX")  # subscription greenflux
    await put_location(relay, location(), cpo="BE*BEC")  # subscription limited
    await put_location(relay, location(), cpo="NL*GFX")
    every = await subscribe(stub, earliest=True)
    assert [e.subscription for e in await read_n(every, 3)] == ["greenflux", "limited", "greenflux"]
    every.cancel()
    only = await subscribe(stub, earliest=True, subscriptions=["limited"])
    (event,) = await read_n(only, 1)
    assert (event.seq, event.subscription, event.country_code) == (2, "limited", "BE")
    await put_location(relay, location(), cpo="NL*GFX")
    await put_location(relay, location(), cpo="BE*BEC")
    (live,) = await read_n(only, 1)  # the greenflux push in between is skipped
    assert (live.seq, live.subscription) == (5, "limited")
    only.cancel()


async def test_rules_route_only_the_production_subscription(relay: RelayHandle) -> None:
    await put_location(relay, location(), cpo="BE*BEC")
    await put_location(relay, location(), cpo="NL*GFX")
    rows = await relay.store.outbox().list_rows(None, None, limit=100)
    assert [(r.seq, r.target, r.rule) for r in rows] == [(2, "partner", "production-only")]


async def test_stream_client_allow_ips_checks_the_grpc_peer(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    await put_location(relay, location(), cpo="NL*GFX")
    inside = await subscribe(stub, INSIDE_TOKEN, earliest=True)
    (event,) = await read_n(inside, 1)
    assert event.subscription == "greenflux"
    inside.cancel()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListObjects(pb.ListObjectsRequest(module="locations"), metadata=bearer(OUTSIDE_TOKEN))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "outside" in (err.value.details() or "") and OUTSIDE_TOKEN not in (err.value.details() or "")
    call = stub.Subscribe(pb.SubscribeRequest(earliest=True), metadata=bearer(OUTSIDE_TOKEN))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
