"""Operator output never carries raw control characters from the wire (terminal injection).

A refused push whose path holds ESC sequences and a partner whose refusal message holds them end up
in `relay rejected list` and `relay dead list`; those tables (and the JSON forms) must show them
escaped, so a hostile sender or partner cannot recolour, clear or retitle the operator's terminal.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from relay.settings import Settings
from relay.store.base import NewRejected, Plan, StateKey, StoredState
from tests.conftest import RelayHandle, eventually
from tests.deliver.conftest import put_session, run_cli
from tests.servers import PartnerSink, Received, Reply, ocpi_envelope

HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\x9b1m\x7f"
# tab and newline are the tables' own separators; everything else below 0x20, DEL and C1 must not appear raw
RAW = {chr(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))} - {"\t", "\n"}


def _raw_controls(text: str) -> set[str]:
    return {c for c in text if c in RAW}


async def test_rejected_and_dead_tables_escape_control_characters(
    relay: RelayHandle, partner_sink: PartnerSink
) -> None:
    def refuse(_rec: Received, _n: int) -> Reply:
        return 400, ocpi_envelope(2001, f"partner says {HOSTILE}"), {}

    partner_sink.answer = refuse
    # a push whose path carries ESC sequences: refused, and kept as a rejected request
    ans = await relay.put("/locations/NL/GFX/%1B%5B2Jevil%1B%5D0%3Bx%07", {"id": "x"})
    assert ans.body.get("status_code") != 1000, ans.body
    await put_session(relay)  # delivered, refused by the partner: a dead letter

    async def dead() -> bool:
        return bool(await relay.store.outbox().list_dead())

    await eventually(dead, timeout=20)
    (letter,) = await relay.store.outbox().list_dead()
    # the relay keeps a refused path's control characters as %XX ...
    assert any("%1B" in r.path and "\x1b" not in r.path for r in await relay.store.list_rejected(10))
    # ... but a record kept by an older version holds them raw: the tables must escape those too
    await relay.store.submit(_RawRejected())
    rejected = await relay.store.list_rejected(10)
    # the hostile bytes really are in the database, or this test proves nothing
    assert letter.last_error is not None and "\x1b" in letter.last_error, letter.last_error
    assert any("\x1b" in r.path or "\x1b" in r.reason for r in rejected), rejected

    settings: Settings = relay.settings
    for args in (["rejected", "list"], ["rejected", "list", "--json"], ["rejected", "show", str(rejected[0].id)],
                 ["dead", "list"], ["dead", "list", "--json"], ["dead", "show", str(letter.id)], ["status"]):
        code, out, err = await run_cli(*args, settings=settings)
        assert code == 0, (args, err)
        assert out.strip(), args
        assert not _raw_controls(out + err), (args, out)
    _, out, _ = await run_cli("dead", "list", settings=settings)
    assert "\\x1b[2J" in out  # shown, escaped: the operator still sees what the partner sent


class _RawRejected:
    """A rejected record as a relay before the %XX escaping stored it: ESC sequences in path and reason."""

    reads: tuple[StateKey, ...] = ()

    def plan(self, states: Mapping[StateKey, StoredState | None]) -> Plan:
        return Plan(rejected=NewRejected(
            received_at=datetime.now(UTC), subscription="greenflux", origin="push", method="PUT",
            path=f"/locations/NL/GFX/{HOSTILE}", module="locations", http_status=400, status_code=2001,
            reason=f"location_id: {HOSTILE}", body=b"{}", request_id=None))

