"""Size and count bounds of the stream: merged object cap, oversized events, streams per client."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest

from relay.settings import Settings
from relay.stream._pb import relay_pb2 as pb
from relay.stream._pb import relay_pb2_grpc as pb_grpc
from tests.conftest import RelayHandle, eventually
from tests.stream.conftest import (
    BELGIUM_TOKEN,
    bearer,
    grpc_target,
    location,
    put_location,
    read_n,
    subscribe,
)

MIB = 1024 * 1024


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def relay_settings(database_url: str, config_path: Path) -> Settings:
    # bodies and objects far above the defaults: an event (body + merged object) past 4 MiB can exist
    return Settings(database_url=database_url, config=str(config_path), http_port=0, grpc_port=0, grpc=True,
                    workers=False, max_body_bytes=3 * MIB, max_object_bytes=5 * MIB, grpc_max_streams_per_client=3)


async def test_a_patch_that_would_grow_the_merged_object_past_the_cap_is_refused_and_kept(
    relay: RelayHandle,
) -> None:
    body = location()
    await put_location(relay, body)
    path = f"/locations/NL/GFX/{body['id']}"
    for n in (1, 2):  # each PATCH adds a new 2 MiB key: 4 MiB merged, fine
        ans = await relay.patch(path, {f"x_blob_{n}": "a" * (2 * MIB), "last_updated": _now()})
        assert ans.body["status_code"] == 1000, ans.body
    ans = await relay.patch(path, {"x_blob_3": "a" * (2 * MIB), "last_updated": _now()})
    assert ans.status == 400 and ans.body["status_code"] == 2001, ans.body
    message = ans.body["status_message"]
    assert "locations" in message and body["id"] in message and "RELAY_MAX_OBJECT_BYTES" in message
    [rec] = await relay.store.list_rejected()
    assert rec.path == path and rec.method == "PATCH" and rec.status_code == 2001
    got = (await relay.get(path)).body["data"]
    assert "x_blob_2" in got and "x_blob_3" not in got
    assert [e.action for e in await relay.store.read_events(0, 10, applied_only=False)] == ["put", "patch", "patch"]


async def test_a_default_client_reads_past_an_event_larger_than_4_mib(relay: RelayHandle) -> None:
    big = location(name="big")
    await put_location(relay, big)
    ans = await relay.patch(f"/locations/NL/GFX/{big['id']}", {"x_blob": "b" * (2 * MIB + MIB // 2),
                                                               "last_updated": _now()})
    assert ans.body["status_code"] == 1000, ans.body  # body 2.5 MiB + merged object 2.5 MiB: 5 MiB event
    after = location(name="after")
    await put_location(relay, after)
    async with grpc.aio.insecure_channel(grpc_target(relay)) as channel:  # gRPC defaults: 4 MiB to receive
        stub = pb_grpc.RelayStub(channel)
        call = await subscribe(stub, earliest=True)
        put, patch, following = await read_n(call, 3)
        call.cancel()
        assert not put.truncated and json.loads(put.object)["name"] == "big"
        assert (patch.seq, patch.action, patch.object_id, patch.truncated) == (2, "patch", big["id"], True)
        assert patch.body == b"" and patch.object == b""
        assert not following.truncated and json.loads(following.object)["name"] == "after"
        # what the event left out is one GetObject away (the object is under 4 MiB on its own)
        obj = await stub.GetObject(pb.GetObjectRequest(module="locations", country_code="NL", party_id="GFX",
                                                       id=big["id"]), metadata=bearer())
        assert len(json.loads(obj.object)["x_blob"]) == 2 * MIB + MIB // 2


async def _open(stub: pb_grpc.RelayStub, token: str | None = None) -> tuple[object, grpc.StatusCode | None]:
    """A Subscribe call and None when the stream opened, else the status it ended with."""
    call = stub.Subscribe(pb.SubscribeRequest(latest=True), metadata=bearer(token) if token else bearer())
    md = await asyncio.wait_for(call.initial_metadata(), 15)
    if "relay-after-seq" in dict(md or ()):
        return call, None
    return call, await asyncio.wait_for(call.code(), 15)


async def test_streams_per_client_are_capped_and_a_closed_stream_frees_its_place(relay: RelayHandle) -> None:
    async with grpc.aio.insecure_channel(grpc_target(relay)) as channel:
        stub = pb_grpc.RelayStub(channel)
        calls = []
        for _ in range(3):
            call, code = await _open(stub)
            assert code is None
            calls.append(call)
        extra, code = await _open(stub)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "3" in await extra.details() and "billing" in await extra.details()  # type: ignore[attr-defined]
        other, code = await _open(stub, BELGIUM_TOKEN)  # the cap is per client, not per server
        assert code is None
        calls[0].cancel()  # type: ignore[attr-defined]
        reopened: list[object] = []

        async def a_new_stream_opens() -> bool:
            call, code = await _open(stub)
            if code is None:
                reopened.append(call)
            return code is None

        await eventually(a_new_stream_opens)
        for call in [*calls[1:], other, *reopened]:
            call.cancel()  # type: ignore[attr-defined]
