"""The sender-interface client alone: retries, envelopes, and where it refuses to go."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from relay.pull.client import PullAuthError, PullError, RetryPolicy, SenderClient
from relay.routing.model import PullSource
from relay.settings import Secret
from tests.pull.conftest import PULL_TOKEN, FakeSender, at, tariff

FAST = RetryPolicy(attempts=3, base=0.01, cap=0.02)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _client(http: aiohttp.ClientSession, sender: FakeSender, token: str = PULL_TOKEN) -> SenderClient:
    source = PullSource("gfx-pull", sender.url, Secret(token), ("tariffs",), 3600, None, page_limit=2, timeout=5)
    return SenderClient(http, source, retry=FAST)


async def _all(client: SenderClient) -> list[Any]:
    return [o for page in [p async for p in client.pages("tariffs", None)] for o in page.objects]


def _fill(sender: FakeSender, n: int = 5) -> None:
    for i in range(n):
        sender.put("tariffs", tariff(f"T{i}", at(i)))


async def test_pages_follow_link_and_read_the_count_headers(http: aiohttp.ClientSession,
                                                            sender: FakeSender) -> None:
    _fill(sender)
    pages = [p async for p in _client(http, sender).pages("tariffs", None)]
    assert [[o["id"] for o in p.objects] for p in pages] == [["T0", "T1"], ["T2", "T3"], ["T4"]]
    assert [(p.total, p.limit) for p in pages] == [(5, 2)] * 3
    assert [q["offset"] for q in sender.queries("tariffs")] == ["0", "2", "4"]


async def test_429_with_retry_after_is_retried(http: aiohttp.ClientSession, sender: FakeSender) -> None:
    _fill(sender)
    sender.fail(2, 429, {"Retry-After": "0"})
    assert [o["id"] for o in await _all(_client(http, sender))] == ["T0", "T1", "T2", "T3", "T4"]
    assert len(sender.requests) == 4


async def test_transient_failures_give_up_after_the_last_attempt(http: aiohttp.ClientSession,
                                                                 sender: FakeSender) -> None:
    _fill(sender)
    for n in (1, 2, 3):
        sender.fail(n, 502)
    with pytest.raises(PullError, match="HTTP 502") as caught:
        await _all(_client(http, sender))
    assert caught.value.retryable and len(sender.requests) == 3


async def test_a_retry_after_longer_than_the_pass_may_wait_ends_the_pass(http: aiohttp.ClientSession,
                                                                          sender: FakeSender) -> None:
    _fill(sender)
    sender.fail(1, 503, {"Retry-After": "3600"})
    with pytest.raises(PullError, match="HTTP 503"):
        await _all(_client(http, sender))
    assert len(sender.requests) == 1


async def test_an_ocpi_client_error_in_the_envelope_is_not_retried(http: aiohttp.ClientSession,
                                                                   sender: FakeSender) -> None:
    _fill(sender)
    sender.fail(1, 200, ocpi_code=2001)
    with pytest.raises(PullError, match="status_code 2001") as caught:
        await _all(_client(http, sender))
    assert not caught.value.retryable and len(sender.requests) == 1


async def test_403_is_an_auth_error_naming_the_source(http: aiohttp.ClientSession, sender: FakeSender) -> None:
    _fill(sender)
    sender.fail(1, 403, ocpi_code=2000)
    with pytest.raises(PullAuthError, match="pull source gfx-pull: .* HTTP 403") as caught:
        await _all(_client(http, sender))
    assert PULL_TOKEN not in str(caught.value) and len(sender.requests) == 1


async def test_a_link_to_another_server_is_not_followed_with_the_token(http: aiohttp.ClientSession,
                                                                       sender: FakeSender) -> None:
    _fill(sender)
    sender.link_base = "http://198.51.100.7:8080/ocpi/cpo/2.1.1"
    with pytest.raises(PullError, match="another server"):
        await _all(_client(http, sender))
    assert len(sender.requests) == 1
