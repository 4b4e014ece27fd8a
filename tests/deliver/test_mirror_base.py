"""An `ocpi` mirror never sends a request outside its target's base url: an event whose ids would
make the path climb out (stored before the receiver refused dot segments) becomes a dead letter with
the reason, and the partner receives nothing. Real relay with workers, real partner sink, both databases."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime

import pytest

from relay.store.base import NewDelivery, NewEvent, Plan, StateKey, StoredState
from tests.conftest import RelayHandle, eventually
from tests.deliver.conftest import rows
from tests.servers import PartnerSink

MIRROR = """
targets:
  - name: partner
    type: ocpi
    url: $sink/ocpi/emsp/2.1.1
    token_env: TEST_PARTNER_TOKEN
    retry_base: 0.05
    retry_max: 0.4
rules:
  - name: mirror
    match: {modules: [sessions, locations]}
    to: [partner]
"""


class _StoredBefore:
    """An event and its outbox row as an older relay, which took ``..`` as an id, stored them."""

    reads: tuple[StateKey, ...] = ()

    def __init__(self, module: str, object_id: str, evse_uid: str | None) -> None:
        self.module, self.object_id, self.evse_uid = module, object_id, evse_uid

    def plan(self, states: Mapping[StateKey, StoredState | None]) -> Plan:
        body = '{"kwh": 1.5, "last_updated": "2024-03-05T08:59:02Z"}'
        event = NewEvent(
            module=self.module, action="patch", country_code="NL", party_id="GFX", object_id=self.object_id,
            evse_uid=self.evse_uid, connector_id=None, last_updated=datetime(2024, 3, 5, 8, 59, 2, tzinfo=UTC),
            received_at=datetime.now(UTC), origin="push", subscription="greenflux", request_id=None,
            status="applied", body=body, body_hash=hashlib.sha256(body.encode()).hexdigest(), object=body,
        )
        key = f"{self.module}/NL/GFX/{self.object_id}"
        return Plan(event=event, deliveries=[NewDelivery("partner", "mirror", key)], result=None)


@pytest.mark.forwarding(MIRROR)
@pytest.mark.parametrize(("module", "object_id", "evse_uid"),
                         [("sessions", "..", None), ("locations", "L1", ".."), ("locations", ".", None)])
async def test_a_mirrored_url_outside_the_target_base_is_never_sent(
    relay: RelayHandle, partner_sink: PartnerSink, module: str, object_id: str, evse_uid: str | None
) -> None:
    await relay.store.submit(_StoredBefore(module, object_id, evse_uid))

    async def dead() -> bool:
        return [r.state for r in await rows(relay)] == ["dead"]

    await eventually(dead)
    (row,) = await rows(relay)
    assert "nothing was sent" in (row.last_error or "") and "dot segment" in (row.last_error or ""), row.last_error
    assert partner_sink.received == []
