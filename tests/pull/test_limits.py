"""Bounds of a pull pass: future last_updated refused like a push, page size and page count capped."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from relay.ingest import Ingestor
from relay.pull.client import PullLimits
from relay.pull.sync import ModuleSummary, ResumePoint, pull_source
from relay.store.base import StateKey
from tests.conftest import RelayHandle
from tests.pull.conftest import FAST_RETRY, SOURCE, FakeSender, Puller, at, location, tariff


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def test_a_pulled_object_dated_in_the_future_is_refused_and_the_next_correct_one_applied(
    relay: RelayHandle, sender: FakeSender, pull: Puller
) -> None:
    sender.put("tariffs", tariff("T-2099", "2099-01-01T00:00:00Z", price=9.99))
    result = await pull()
    assert (result["tariffs"].fetched, result["tariffs"].rejected, result["tariffs"].ok) == (1, 1, True)
    [rec] = await relay.store.list_rejected()
    assert rec.origin == "pull" and rec.http_status == 400 and rec.status_code == 2001
    assert "last_updated" in rec.reason and "future" in rec.reason
    assert await relay.store.get_state(StateKey("tariffs", "NL", "GFX", "T-2099")) is None

    now = _now()
    sender.put("tariffs", tariff("T-2099", now, price=0.5))
    result = await pull()
    assert (result["tariffs"].new, result["tariffs"].rejected) == (1, 0)
    state = await relay.store.get_state(StateKey("tariffs", "NL", "GFX", "T-2099"))
    assert state is not None and state.object["last_updated"] == now


async def _pull(relay: RelayHandle, limits: PullLimits, resume: dict[str, ResumePoint] | None = None,
                ) -> dict[str, ModuleSummary]:
    holder = relay.info.holder
    assert holder is not None
    source = holder().pull_source(SOURCE)
    assert source is not None
    summaries = await pull_source(relay.store, Ingestor(relay.store, holder), source, retry=FAST_RETRY,
                                  limits=limits, resume=resume)
    return {s.module: s for s in summaries}


def _fill(sender: FakeSender, n: int) -> None:
    for i in range(n):
        sender.put("locations", location(f"LOC-{i:05d}", at(i)))


async def test_a_page_larger_than_the_cap_fails_the_module_without_retrying(
    relay: RelayHandle, sender: FakeSender
) -> None:
    _fill(sender, 30)  # 25 locations of a few KB each on the first page
    result = await _pull(relay, PullLimits(max_page_bytes=20_000))
    loc = result["locations"]
    assert not loc.ok and loc.fetched == 0
    assert loc.error is not None and "more than the 20000 bytes a page may have" in loc.error
    assert len(sender.queries("locations")) == 1  # as large the next time: not retried
    assert result["tariffs"].ok  # the other modules still ran
    assert await relay.store.get_position(SOURCE, "locations") is not None
    assert (await relay.store.get_position(SOURCE, "locations")).position is None  # type: ignore[union-attr]
    result = await _pull(relay, PullLimits(max_page_bytes=1_000_000))
    assert result["locations"].ok and result["locations"].fetched == 30


async def test_a_pass_stops_at_the_page_cap_and_the_next_pass_continues_from_there(
    relay: RelayHandle, sender: FakeSender, caplog: pytest.LogCaptureFixture
) -> None:
    _fill(sender, 60)  # three pages of 25
    resume: dict[str, ResumePoint] = {}
    with caplog.at_level(logging.WARNING, logger="relay.pull.sync"):
        first = await _pull(relay, PullLimits(max_pages=2), resume)
    loc = first["locations"]
    assert (loc.ok, loc.capped, loc.fetched) == (True, True, 50)
    assert any(r.getMessage() == "pull pass stopped at the page cap" for r in caplog.records)
    position = await relay.store.get_position(SOURCE, "locations")
    assert position is not None and position.position is None  # not moved: the rest is unread
    assert await relay.store.get_state(StateKey("locations", "NL", "GFX", "LOC-00055")) is None

    second = await _pull(relay, PullLimits(max_pages=2), resume)
    loc = second["locations"]
    assert (loc.ok, loc.capped, loc.fetched, loc.new) == (True, False, 10, 10)
    assert sender.queries("locations")[2]["offset"] == "50"  # continued, not started over
    assert await relay.store.get_state(StateKey("locations", "NL", "GFX", "LOC-00059")) is not None
    position = await relay.store.get_position(SOURCE, "locations")
    assert position is not None and position.position == datetime.fromisoformat(at(59))
    assert resume == {}
