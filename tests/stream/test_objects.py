"""GetObject and ListObjects: the merged current state, scoped, paginated in (cc, party, id) order."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from relay.stream._pb import relay_pb2 as pb
from relay.stream._pb import relay_pb2_grpc as pb_grpc
from tests.conftest import RelayHandle, example
from tests.stream.conftest import BELGIUM_TOKEN, bearer, location, put_location


async def test_get_object_returns_the_merged_current_state(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    body = location()
    await put_location(relay, body)
    ans = await relay.patch(f"/locations/NL/GFX/{body['id']}/NL-GFX-E0873421-1",
                            {"status": "OUTOFORDER", "last_updated": "2025-05-01T10:00:00Z"})
    assert ans.body["status_code"] == 1000
    obj = await stub.GetObject(
        pb.GetObjectRequest(module="locations", country_code="NL", party_id="GFX", id=body["id"]), metadata=bearer())
    assert (obj.module, obj.country_code, obj.party_id, obj.id, obj.last_seq) == (
        "locations", "NL", "GFX", body["id"], 2)
    merged = json.loads(obj.object)
    assert merged["name"] == body["name"]
    assert {e["uid"]: e["status"] for e in merged["evses"]}["NL-GFX-E0873421-1"] == "OUTOFORDER"
    assert obj.last_updated.ToJsonString() == "2025-05-01T10:00:00Z"
    http = await relay.get(f"/locations/NL/GFX/{body['id']}")
    assert http.body["data"] == merged


async def test_get_object_of_an_unknown_object_is_not_found(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetObject(pb.GetObjectRequest(module="locations", country_code="NL", party_id="GFX", id="nope"),
                             metadata=bearer())
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_get_object_of_a_deleted_tariff_is_not_found(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    tariff = example("cdr_full.json")["tariffs"][0]
    path = f"/tariffs/NL/GFX/{tariff['id']}"
    assert (await relay.put(path, tariff)).body["status_code"] == 1000
    request = pb.GetObjectRequest(module="tariffs", country_code="NL", party_id="GFX", id=tariff["id"])
    assert json.loads((await stub.GetObject(request, metadata=bearer())).object)["id"] == tariff["id"]
    assert (await relay.request("DELETE", path)).body["status_code"] == 1000
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.GetObject(request, metadata=bearer())
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListObjects(pb.ListObjectsRequest(module="tariffs"), metadata=bearer())
    assert list(listed.objects) == []


async def _push_many(relay: RelayHandle, ids: list[str], cpo: str = "NL*GFX") -> None:
    todo = iter(ids)

    async def client() -> None:  # 24 clients (not a task per id: 1,000 tasks at once stall a debug-mode loop)
        for object_id in todo:
            await put_location(relay, location(object_id), cpo=cpo)

    await asyncio.gather(*(client() for _ in range(24)))


async def test_list_objects_pages_through_every_object_in_key_order(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    nl = [f"loc-{i:02d}" for i in range(5)]
    be = [f"be-{i:02d}" for i in range(2)]
    await _push_many(relay, nl[::-1])
    await _push_many(relay, be, cpo="BE*BEC")
    seen: list[tuple[str, str, str]] = []
    token = ""
    pages = 0
    while True:
        resp = await stub.ListObjects(pb.ListObjectsRequest(module="locations", page_size=3, page_token=token),
                                      metadata=bearer())
        pages += 1
        seen += [(o.country_code, o.party_id, o.id) for o in resp.objects]
        assert all(json.loads(o.object)["id"] == o.id for o in resp.objects)
        token = resp.next_page_token
        if not token:
            break
    assert pages == 3
    assert seen == [("BE", "BEC", i) for i in be] + [("NL", "GFX", i) for i in nl]


async def test_list_objects_filters_by_cpo_and_by_the_client_scope(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    await _push_many(relay, ["n1", "n2"])
    await _push_many(relay, ["b1"], cpo="BE*BEC")
    resp = await stub.ListObjects(pb.ListObjectsRequest(module="locations", cpos=["NL*GFX"]), metadata=bearer())
    assert [o.id for o in resp.objects] == ["n1", "n2"]
    resp = await stub.ListObjects(pb.ListObjectsRequest(module="locations"), metadata=bearer(BELGIUM_TOKEN))
    assert [o.id for o in resp.objects] == ["b1"]
    assert resp.next_page_token == ""


async def test_list_objects_page_size_defaults_to_100_and_is_capped_at_1000(
    relay: RelayHandle, stub: pb_grpc.RelayStub
) -> None:
    await _push_many(relay, [f"l{i:04d}" for i in range(1001)])
    first = await stub.ListObjects(pb.ListObjectsRequest(module="locations"), metadata=bearer())
    assert len(first.objects) == 100 and first.next_page_token
    big = await stub.ListObjects(pb.ListObjectsRequest(module="locations", page_size=5000), metadata=bearer())
    assert len(big.objects) == 1000 and big.next_page_token
    last = await stub.ListObjects(
        pb.ListObjectsRequest(module="locations", page_size=5000, page_token=big.next_page_token), metadata=bearer())
    assert [o.id for o in last.objects] == ["l1000"] and last.next_page_token == ""


async def test_a_page_token_of_another_module_is_invalid(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    await _push_many(relay, ["a", "b"])
    resp = await stub.ListObjects(pb.ListObjectsRequest(module="locations", page_size=1), metadata=bearer())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListObjects(pb.ListObjectsRequest(module="sessions", page_token=resp.next_page_token),
                               metadata=bearer())
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "issued for module 'locations'" in (info.value.details() or "")
