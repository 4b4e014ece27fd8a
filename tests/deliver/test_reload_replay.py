"""Config reloads while deliveries run, `relay replay` (backfill of a new target), removed rules/targets."""

from __future__ import annotations

import asyncio
import io
import textwrap
from pathlib import Path

import pytest

from relay.cli.dead import replay
from tests.conftest import BASE_CONFIG, SESSION_ID, RelayHandle, eventually
from tests.deliver.conftest import patch_session, put_session, render_forwarding, rows, run_cli
from tests.servers import PartnerSink, Received, Reply

HOOK_TARGET = """
  - name: hook
    type: webhook
    url: $sink/hook
    secret_env: TEST_HOOK_SECRET
    concurrency: $concurrency
    retry_base: 0.05
    retry_max: 0.4
"""
LATE_TARGET = """
  - name: late
    type: webhook
    url: $other/late
    secret_env: TEST_RESEARCH_SECRET
    retry_base: 0.05
    retry_max: 0.4
"""
HOOK_RULE = """
  - name: everything
    match: {modules: [sessions]}
    to: [hook]
"""
LATE_RULE = """
  - name: late-copy
    match: {modules: [sessions]}
    to: [late]
    transform:
      - pseudonymise: {fields: [auth_id], key_env: TEST_PSEUDO_KEY}
"""


def forwarding(targets: list[str], rules: list[str], concurrency: int = 4) -> str:
    text = "targets:" + "".join(targets) + "rules:" + "".join(rules)
    return text.replace("$concurrency", str(concurrency))


HOOK_ONLY = forwarding([HOOK_TARGET], [HOOK_RULE])
HOOK_AND_LATE = forwarding([HOOK_TARGET, LATE_TARGET], [HOOK_RULE, LATE_RULE])


def ok(_rec: Received, _n: int) -> Reply:
    return 200, None, {}


def rewrite(config_path: Path, template: str, sink: PartnerSink, other: PartnerSink | None) -> None:
    config_path.write_text(textwrap.dedent(BASE_CONFIG) + render_forwarding(template, sink, other))


def _sessions(n: int) -> list[str]:
    return [f"{SESSION_ID[:-2]}{i:02d}" for i in range(n)]


@pytest.mark.forwarding(HOOK_ONLY)
async def test_replay_backfills_a_target_added_after_the_events(
    relay: RelayHandle, partner_sink: PartnerSink, other_sink: PartnerSink, config_path: Path
) -> None:
    partner_sink.answer = other_sink.answer = ok
    for sid in _sessions(4):
        await put_session(relay, sid)
    await patch_session(relay, 1, 2.5, session_id=_sessions(4)[0])
    await eventually(lambda: len(partner_sink.accepted()) == 5)
    rewrite(config_path, HOOK_AND_LATE, partner_sink, other_sink)
    assert relay.info.holder is not None and relay.info.holder.reload()

    code, out, err = await run_cli("replay", "--target", "late", settings=relay.settings)
    assert code == 0, err
    assert "queued 5 deliveries to late" in out and "seq 5/5" in err
    await eventually(lambda: len(other_sink.accepted()) == 5)
    got = [r.json()["data"] for r in other_sink.accepted()]
    assert sorted(d["seq"] for d in got) == [1, 2, 3, 4, 5]
    first = [d["object"]["kwh"] for d in got if d["id"] == _sessions(4)[0]]
    assert first == [0.0, 2.5]  # the object's history in order
    assert all(d["object"]["auth_id"].startswith("ps_") for d in got)
    await put_session(relay, _sessions(5)[4])  # and new events now go to both
    await eventually(lambda: len(other_sink.accepted()) == 6 and len(partner_sink.accepted()) == 6)


@pytest.mark.forwarding(HOOK_ONLY)
async def test_replay_skips_events_whose_delivery_is_still_open(relay: RelayHandle, partner_sink: PartnerSink) -> None:
    release = asyncio.Event()

    async def held(_rec: Received, _n: int) -> Reply:
        await release.wait()
        return 200, None, {}

    partner_sink.answer = held
    for sid in _sessions(3):
        await put_session(relay, sid)
    await eventually(lambda: len(partner_sink.received) == 3)  # all three in flight
    out, progress = io.StringIO(), io.StringIO()
    assert await replay(relay.settings, "hook", out=out, progress=progress) == 0
    assert "queued 0" in out.getvalue() and "3 already pending" in out.getvalue()
    release.set()
    await eventually(lambda: len(partner_sink.accepted()) == 3)

    async def all_done() -> bool:
        return [r.state for r in await rows(relay)] == ["done"] * 3

    await eventually(all_done)
    assert await replay(relay.settings, "hook", from_seq=2, to_seq=3, out=out, progress=progress) == 0
    await eventually(lambda: len(partner_sink.accepted()) == 5)
    assert [r.json()["data"]["seq"] for r in partner_sink.accepted()[3:]] == [2, 3]
    out = io.StringIO()
    assert await replay(relay.settings, "nowhere", out=out, progress=progress) == 2


@pytest.mark.forwarding(HOOK_ONLY)
async def test_reload_mid_traffic_loses_nothing_and_sends_nothing_twice(
    relay: RelayHandle, partner_sink: PartnerSink, other_sink: PartnerSink, config_path: Path
) -> None:
    partner_sink.answer = lambda rec, n: (503, None, {}) if n % 4 == 0 else (200, None, {})
    other_sink.answer = ok
    ids = _sessions(4)
    for sid in ids:
        await put_session(relay, sid)
    assert relay.info.holder is not None
    for i in range(1, 37):
        await patch_session(relay, i, kwh=float(i), session_id=ids[i % 4])
        if i == 12:  # fewer slots, one more target and rule
            rewrite(config_path, forwarding([HOOK_TARGET, LATE_TARGET], [HOOK_RULE, LATE_RULE], 1), partner_sink,
                    other_sink)
            assert relay.info.holder.reload()
        if i == 24:  # and back, through the file watcher this time
            rewrite(config_path, forwarding([HOOK_TARGET], [HOOK_RULE], 8), partner_sink, None)
    holder = relay.info.holder
    await eventually(lambda: holder().target("late") is None)  # the watcher saw the file change
    await eventually(lambda: len(partner_sink.accepted()) >= 40, timeout=30)

    async def settled() -> bool:
        return all(r.state == "done" for r in await rows(relay, target="hook"))

    await eventually(settled)
    accepted = partner_sink.accepted()
    assert sorted(r.json()["data"]["seq"] for r in accepted) == list(range(1, 41))
    assert len({r.headers["webhook-id"] for r in accepted}) == 40
    for sid in ids:
        kwh = [r.json()["data"]["object"]["kwh"] for r in accepted if r.json()["data"]["id"] == sid]
        assert kwh == sorted(kwh) and len(kwh) == 10


@pytest.mark.forwarding(HOOK_AND_LATE)
async def test_a_rule_removed_by_reload_sends_nothing_more_and_its_rows_go_dead(
    relay: RelayHandle, partner_sink: PartnerSink, other_sink: PartnerSink, config_path: Path
) -> None:
    partner_sink.answer = ok
    other_sink.answer = lambda rec, n: (503, None, {"Retry-After": "0.3"})  # late keeps failing
    for sid in _sessions(2):
        await put_session(relay, sid)
    await eventually(lambda: len(other_sink.received) >= 2)
    # the late target stays, only its rule goes: its rows must not be sent without their transforms
    late_without_rule = forwarding([HOOK_TARGET, LATE_TARGET], [HOOK_RULE])
    rewrite(config_path, late_without_rule, partner_sink, other_sink)
    assert relay.info.holder is not None and relay.info.holder.reload()

    async def dead() -> bool:
        late = await rows(relay, target="late")
        return len(late) == 2 and all(r.state == "dead" for r in late)

    await eventually(dead)
    for r in await rows(relay, target="late"):
        assert r.last_error == "rule late-copy no longer in config"
    assert not other_sink.accepted()


@pytest.mark.forwarding(HOOK_AND_LATE)
async def test_a_target_removed_by_reload_keeps_its_rows_pending(
    relay: RelayHandle, partner_sink: PartnerSink, other_sink: PartnerSink, config_path: Path
) -> None:
    partner_sink.answer = ok
    other_sink.answer = lambda rec, n: (503, None, {})
    for sid in _sessions(2):
        await put_session(relay, sid)
    await eventually(lambda: len(other_sink.received) >= 2)
    rewrite(config_path, HOOK_ONLY, partner_sink, None)
    assert relay.info.holder is not None and relay.info.holder.reload()
    await put_session(relay, _sessions(3)[2])
    await eventually(lambda: len(partner_sink.accepted()) == 3)

    async def parked() -> bool:
        return [r.state for r in await rows(relay, target="late")] == ["pending", "pending"]

    await eventually(parked)
    stats = await relay.store.stats()
    assert stats["targets"]["late"]["depth"] == 2 and stats["targets"]["late"]["dead"] == 0
