"""Fixtures for the gRPC side: a relay with its gRPC server on, stream clients, a channel and stubs."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from relay.settings import Settings
from relay.stream._pb import relay_pb2 as pb
from relay.stream._pb import relay_pb2_grpc as pb_grpc
from tests.conftest import GFX_TOKEN, LIMITED_TOKEN, RelayHandle, example

BILLING_TOKEN = "stream-billing-token-9d3e"
BELGIUM_TOKEN = "stream-belgium-token-2a7c"

STREAM_CONFIG = """
stream_clients:
  - name: billing
    token_env: TEST_STREAM_TOKEN_BILLING
    cpos: ["*"]
  - name: belgium
    token_env: TEST_STREAM_TOKEN_BELGIUM
    modules: [locations]
    cpos: ["BE*BEC"]
"""

LOCATION = example("location_full.json")


@pytest.fixture
def extra_config(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_STREAM_TOKEN_BILLING", BILLING_TOKEN)
    monkeypatch.setenv("TEST_STREAM_TOKEN_BELGIUM", BELGIUM_TOKEN)
    return STREAM_CONFIG


@pytest.fixture
def relay_settings(database_url: str, config_path: Path) -> Settings:
    return Settings(database_url=database_url, config=str(config_path), http_port=0, grpc_port=0,
                    grpc=True, workers=False)


def grpc_target(relay: RelayHandle) -> str:
    return f"127.0.0.1:{relay.info.ports['grpc']}"


def bearer(token: str = BILLING_TOKEN) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@pytest.fixture
async def grpc_channel(relay: RelayHandle) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(grpc_target(relay)) as channel:
        yield channel


@pytest.fixture
def stub(grpc_channel: grpc.aio.Channel) -> pb_grpc.RelayStub:
    return pb_grpc.RelayStub(grpc_channel)


# -- pushes ----------------------------------------------------------------------------------------


def location(object_id: str | None = None, *, name: str | None = None) -> dict[str, Any]:
    """The location_full example under another id (a distinct object, so each PUT is applied)."""
    body = copy.deepcopy(LOCATION)
    body["id"] = object_id or str(uuid.uuid4())
    if name is not None:
        body["name"] = name
    return body


async def put_location(relay: RelayHandle, body: dict[str, Any], *, cpo: str = "NL*GFX") -> None:
    """PUT a location for ``cpo`` (BE*BEC goes through the `limited` subscription); insist on 1000."""
    cc, party = cpo.split("*")
    token = LIMITED_TOKEN if cpo == "BE*BEC" else GFX_TOKEN
    ans = await relay.put(f"/locations/{cc}/{party}/{body['id']}", body, token=token)
    assert ans.status == 200 and ans.body["status_code"] == 1000, ans.body


async def read_n(call: Any, n: int, timeout: float = 15.0) -> list[pb.Event]:
    """The next ``n`` messages of a Subscribe call (fails instead of hanging)."""
    out: list[pb.Event] = []

    async def _go() -> None:
        while len(out) < n:
            out.append(await call.read())

    await asyncio.wait_for(_go(), timeout)
    return out


async def subscribe(stub: pb_grpc.RelayStub, token: str = BILLING_TOKEN, **fields: Any) -> Any:
    """A Subscribe call whose start position the server has resolved (its initial metadata arrived)."""
    call = stub.Subscribe(pb.SubscribeRequest(**fields), metadata=bearer(token))
    await asyncio.wait_for(call.initial_metadata(), 15)
    return call


def start_seq(metadata: Any) -> int:
    """The ``relay-after-seq`` initial metadata of a Subscribe call."""
    return int(dict(metadata)["relay-after-seq"])


class Collector:
    """Reads a Subscribe call in the background into ``events`` until stopped or the stream ends."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.events: list[pb.Event] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for event in self.call:
                self.events.append(event)
        except grpc.aio.AioRpcError as err:
            self.error = err

    @property
    def seqs(self) -> list[int]:
        return [e.seq for e in self.events]

    async def has(self, n: int) -> bool:
        return len(self.events) >= n

    async def stop(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def object_of(event: pb.Event) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(event.object)
    return parsed


