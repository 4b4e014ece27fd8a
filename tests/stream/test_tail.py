"""`relay tail` as a real subprocess against a relay running in this test."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from tests.conftest import SESSION_ID, RelayHandle, example
from tests.stream.conftest import BILLING_TOKEN, grpc_target, location, put_location

RELAY = str(Path(sys.executable).with_name("relay"))
FIELDS = {"seq", "module", "action", "country_code", "party_id", "object_id", "evse_uid", "connector_id",
          "last_updated", "received_at", "object"}


class Tail:
    """A running `relay tail` with its stdout read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, relay: RelayHandle, *args: str, token: str | None = BILLING_TOKEN) -> Tail:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
        if token is not None:
            env["RELAY_STREAM_TOKEN"] = token
        proc = await asyncio.create_subprocess_exec(
            RELAY, "tail", "--target", grpc_target(relay), *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def lines(self, n: int, timeout: float = 20.0) -> list[dict[str, Any]]:
        assert self.proc.stdout is not None
        out = []
        for _ in range(n):
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
            assert line, "relay tail ended early"
            out.append(json.loads(line))
        return out

    async def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return await asyncio.wait_for(self.proc.wait(), 20)

    async def finish(self) -> tuple[int, str]:
        _, err = await asyncio.wait_for(self.proc.communicate(), 20)
        assert self.proc.returncode is not None
        return self.proc.returncode, err.decode()


async def test_tail_prints_each_event_as_one_json_line_and_exits_0_on_ctrl_c(relay: RelayHandle) -> None:
    first, second, third = location(), location(), location()
    await put_location(relay, first)
    await put_location(relay, second)
    tail = await Tail.start(relay, "--earliest")
    try:
        got = await tail.lines(2)
        await put_location(relay, third)
        got += await tail.lines(1)
    finally:
        code = await tail.interrupt()
    assert code == 0
    assert [g["object_id"] for g in got] == [first["id"], second["id"], third["id"]]
    assert [g["seq"] for g in got] == [1, 2, 3]
    assert set(got[0]) == FIELDS
    assert (got[0]["module"], got[0]["action"], got[0]["country_code"], got[0]["party_id"]) == (
        "locations", "put", "NL", "GFX")
    assert got[0]["evse_uid"] is None and got[0]["received_at"].endswith("Z")
    assert got[0]["object"]["name"] == first["name"]


async def test_tail_filters_by_module(relay: RelayHandle) -> None:
    await put_location(relay, location())
    session = example("session_active.json")
    assert (await relay.put(f"/sessions/NL/GFX/{SESSION_ID}", session)).body["status_code"] == 1000
    tail = await Tail.start(relay, "--earliest", "--modules", "sessions", "--cpos", "NL*GFX")
    try:
        (got,) = await tail.lines(1)
    finally:
        assert await tail.interrupt() == 0
    assert (got["seq"], got["module"], got["object_id"]) == (2, "sessions", SESSION_ID)
    assert got["last_updated"] == session["last_updated"]


async def test_tail_with_a_committing_consumer_resumes_where_it_stopped(relay: RelayHandle) -> None:
    ids = [location()["id"] for _ in range(3)]
    for object_id in ids[:2]:
        await put_location(relay, location(object_id))
    tail = await Tail.start(relay, "--consumer", "ops", "--commit")
    try:
        assert [g["object_id"] for g in await tail.lines(2)] == ids[:2]
    finally:
        assert await tail.interrupt() == 0
    assert await relay.store.get_cursor("billing/ops") == 2
    await put_location(relay, location(ids[2]))
    tail = await Tail.start(relay, "--consumer", "ops")
    try:
        (got,) = await tail.lines(1)
    finally:
        assert await tail.interrupt() == 0
    assert (got["seq"], got["object_id"]) == (3, ids[2])


async def test_tail_without_a_token_exits_2_and_says_which_variable(relay: RelayHandle) -> None:
    code, err = await (await Tail.start(relay, "--earliest", token=None)).finish()
    assert code == 2 and "RELAY_STREAM_TOKEN" in err


async def test_tail_with_an_unknown_token_exits_2_with_the_status(relay: RelayHandle) -> None:
    code, err = await (await Tail.start(relay, "--earliest", token="wrong")).finish()
    assert code == 2 and "UNAUTHENTICATED" in err
