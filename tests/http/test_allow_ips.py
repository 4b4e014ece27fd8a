"""Source allow-lists: a push from outside a subscription's allow_ips is refused 403, never stored,
counted and logged without its token; X-Forwarded-For counts only through RELAY_TRUSTED_PROXIES."""

from __future__ import annotations

import logging
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from relay.metrics import REGISTRY
from relay.settings import Settings
from tests.conftest import GFX_TOKEN, LOC_ID, RelayHandle, example, start_relay, stop_relay

LOC_PATH = f"/locations/NL/GFX/{LOC_ID}"


def allow_config(tmp_path: Path, networks: str) -> Path:
    path = tmp_path / "allow.yaml"
    path.write_text(textwrap.dedent(f"""
        subscriptions:
          - name: greenflux
            token_env: TEST_TOKEN_GFX
            cpos: ["NL*GFX"]
            allow_ips: {networks}
          - name: limited
            token_env: TEST_TOKEN_LIMITED
            cpos: ["BE*BEC"]
            modules: [locations]
    """))
    return path


def refused_count(subscription: str = "greenflux") -> float:
    return REGISTRY.get_sample_value("relay_ip_refused_total", {"subscription": subscription}) or 0.0


Make = Callable[..., Awaitable[RelayHandle]]


@pytest.fixture
async def relay_with(database_url: str, tmp_path: Path, tokens: dict[str, str]) -> AsyncIterator[Make]:
    """``await relay_with(networks, trusted="")``: a relay whose greenflux subscription has those allow_ips."""
    handles: list[RelayHandle] = []

    async def make(networks: str, trusted: str = "") -> RelayHandle:
        settings = Settings(database_url=database_url, config=str(allow_config(tmp_path, networks)), http_port=0,
                            grpc_port=0, grpc=False, workers=False, trusted_proxies=trusted)
        handle = await start_relay(settings)
        handles.append(handle)
        return handle

    try:
        yield make
    finally:
        for h in handles:
            await stop_relay(h)


async def nothing_stored(relay: RelayHandle) -> None:
    assert await relay.store.read_events(0, 10, applied_only=False) == []
    assert await relay.store.list_rejected() == []


async def test_push_from_an_allowed_network_is_stored(relay_with: Make) -> None:
    relay = await relay_with("[\"198.51.100.0/24\", \"127.0.0.0/8\", \"2001:db8::/32\"]")
    ans = await relay.put(LOC_PATH, example("location_full.json"))
    assert (ans.status, ans.body["status_code"]) == (200, 1000)
    assert len(await relay.store.read_events(0, 10)) == 1


async def test_push_from_outside_is_refused_never_stored_counted_and_logged_without_token(
    relay_with: Make, caplog: pytest.LogCaptureFixture
) -> None:
    relay = await relay_with("[\"198.51.100.0/24\", \"2001:db8::/32\"]")
    before = refused_count()
    with caplog.at_level(logging.WARNING, logger="relay.http.auth"):
        ans = await relay.put(LOC_PATH, example("location_full.json"))
        get = await relay.get(LOC_PATH)
    assert (ans.status, ans.body["status_code"]) == (403, 2000)
    assert "127.0.0.1" in ans.body["status_message"] and "greenflux" in ans.body["status_message"]
    assert (get.status, get.body["status_code"]) == (403, 2000)  # the Starlette routes apply it too
    await nothing_stored(relay)
    assert refused_count() == before + 2
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "allow_ips" in r.getMessage()]
    assert len(warnings) == 2
    for rec in warnings:
        assert rec.__dict__["subscription"] == "greenflux" and rec.__dict__["address"] == "127.0.0.1"
    assert GFX_TOKEN not in caplog.text
    # a subscription without allow_ips is not affected; a wrong token is still 401 (not 403)
    assert (await relay.put(LOC_PATH, example("location_full.json"), token="nope")).status == 401


async def test_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing(relay_with: Make) -> None:
    relay = await relay_with("[\"198.51.100.0/24\"]")
    for spoof in ("198.51.100.7", "198.51.100.7, 198.51.100.8", "10.0.0.1, 198.51.100.7"):
        ans = await relay.put(LOC_PATH, example("location_full.json"), headers={"X-Forwarded-For": spoof})
        assert (ans.status, ans.body["status_code"]) == (403, 2000), spoof
    await nothing_stored(relay)


async def test_forwarded_for_through_a_trusted_proxy(relay_with: Make) -> None:
    # The test client's socket peer (127.0.0.1) plays the reverse proxy.
    relay = await relay_with("[\"198.51.100.0/24\"]", "127.0.0.1/32, 10.0.0.0/8")
    body = example("location_full.json")
    # the client is the rightmost hop that is not a trusted proxy
    ok = await relay.put(LOC_PATH, body, headers={"X-Forwarded-For": "198.51.100.7"})
    assert (ok.status, ok.body["status_code"]) == (200, 1000)
    via_inner_proxy = await relay.put(LOC_PATH, body, headers={"X-Forwarded-For": "198.51.100.7, 10.1.2.3"})
    assert via_inner_proxy.status == 200
    # what a client writes on the left of its own hop is not believed
    left_spoof = await relay.put(LOC_PATH, body, headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.5"})
    assert (left_spoof.status, left_spoof.body["status_code"]) == (403, 2000)
    assert "203.0.113.5" in left_spoof.body["status_message"]
    junk = await relay.put(LOC_PATH, body, headers={"X-Forwarded-For": "198.51.100.7, not-an-ip"})
    assert junk.status == 403
    # no header at all: the proxy itself is the client, and it is not in allow_ips
    assert (await relay.put(LOC_PATH, body)).status == 403
    assert await relay.store.list_rejected() == []  # refused ones are never kept
