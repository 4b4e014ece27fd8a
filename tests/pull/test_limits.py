"""Bounds of a pull pass: future last_updated refused like a push, page size and page count capped."""

from __future__ import annotations

from datetime import UTC, datetime

from relay.store.base import StateKey
from tests.conftest import RelayHandle
from tests.pull.conftest import FakeSender, Puller, tariff


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
