"""The Positions contract on both databases: where a pull source stands, and a pull pass's reads."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from relay.store import Store
from relay.store.base import NewRejected, Plan, StateKey, StateWrite, StoredState

T0 = datetime(2024, 3, 5, 8, 0, tzinfo=UTC)



@dataclass
class _Op:
    """Writes states and/or a rejected request, as the ingest path's operations do."""

    states: list[StateWrite] = field(default_factory=list)
    rejected: NewRejected | None = None
    reads: tuple[StateKey, ...] = ()

    def plan(self, states: Mapping[StateKey, StoredState | None]) -> Plan:
        return Plan(states=self.states, rejected=self.rejected)


def _refused(body: bytes, *, source: str = "cpo", module: str = "locations", origin: str = "pull",
             at: datetime = T0) -> NewRejected:
    return NewRejected(received_at=at, subscription=source, origin=origin, method="GET", path="/locations",
                       module=module, http_status=400, status_code=2001, reason="bad", body=body, request_id=None)


async def test_a_good_pass_moves_the_position_and_a_failed_one_keeps_it(store: Store) -> None:
    assert await store.get_positions("cpo") == {}
    assert await store.get_position("cpo", "locations") is None
    await store.set_position("cpo", "locations", position=T0, run_at=T0, status="ok: 3 objects")
    later = T0 + timedelta(hours=1)
    await store.set_position("cpo", "locations", position=None, run_at=later, status="failed: timeout",
                             keep_position=True)
    (kept,) = (await store.get_positions("cpo")).values()
    assert (kept.source, kept.module, kept.position, kept.last_run_at, kept.last_status) == (
        "cpo", "locations", T0, later, "failed: timeout")


async def test_a_first_pass_that_failed_leaves_no_position(store: Store) -> None:
    await store.set_position("cpo", "tariffs", position=T0, run_at=T0, status="failed: 500", keep_position=True)
    failed = await store.get_position("cpo", "tariffs")
    assert failed is not None and failed.position is None and failed.last_status == "failed: 500"
    assert await store.get_position("other", "tariffs") is None


async def test_rejected_hashes_are_the_source_s_refused_pull_bodies_since_a_time(store: Store) -> None:
    for refused in (_refused(b"new"), _refused(b"old", at=T0 - timedelta(days=2)), _refused(b"push", origin="push"),
                    _refused(b"other", source="other"), _refused(b"tariff", module="tariffs")):
        await store.submit(_Op(rejected=refused))
    got = await store.rejected_hashes("cpo", "locations", T0 - timedelta(days=1))
    assert got == {hashlib.sha256(b"new").hexdigest()}


async def test_existing_ids_are_the_live_states_of_a_module_under_any_cpo(store: Store) -> None:
    def state(cc: str, object_id: str, *, deleted: bool = False) -> StateWrite:
        return StateWrite(StateKey("locations", cc, "GFX", object_id), {"id": object_id}, "h", T0, deleted)

    await store.submit(_Op(states=[state("NL", "A"), state("BE", "B"), state("NL", "GONE", deleted=True)]))
    asked = ["A", "B", "GONE", "NEW"] + [f"X{i}" for i in range(600)]  # more than one chunk of ids
    assert await store.existing_ids("locations", asked) == {"A", "B"}
    assert await store.existing_ids("sessions", asked) == set()
