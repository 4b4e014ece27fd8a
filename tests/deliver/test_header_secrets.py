"""A header whose value comes from the env (``headers_env``) is sent to the partner on every delivery."""

from __future__ import annotations

import pytest

from relay.routing.describe import describe
from tests.conftest import RelayHandle, eventually
from tests.deliver.conftest import put_session
from tests.servers import PartnerSink

HEADER_VALUE = "partner-api-key-from-env-5d4c"

WITH_HEADERS = """
targets:
  - name: hook
    type: webhook
    url: $sink/hook?tenant=relay-test-tenant
    secret_env: TEST_HOOK_SECRET
    timeout: 5
    retry_base: 0.05
    retry_max: 0.4
    headers: {X-Static: plain-value}
    headers_env: {X-Api-Key: TEST_PARTNER_HEADER}
rules:
  - name: everything
    match: {modules: [sessions]}
    to: [hook]
"""


@pytest.fixture(autouse=True)
def header_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_PARTNER_HEADER", HEADER_VALUE)


@pytest.mark.forwarding(WITH_HEADERS)
async def test_headers_from_the_env_reach_the_partner_and_stay_out_of_describe(
    relay: RelayHandle, partner_sink: PartnerSink
) -> None:
    await put_session(relay)
    await eventually(lambda: len(partner_sink.accepted()) == 1)
    (rec,) = partner_sink.accepted()
    assert rec.headers["x-api-key"] == HEADER_VALUE
    assert rec.headers["x-static"] == "plain-value"
    assert rec.path == "/hook"
    holder = relay.info.holder
    assert holder is not None
    shown = str(describe(holder()))
    assert HEADER_VALUE not in shown and "plain-value" not in shown and "relay-test-tenant" not in shown
