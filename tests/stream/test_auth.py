"""Bearer tokens, client scope and request checks: each refusal has its status code and says why."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from relay.stream._pb import relay_pb2 as pb
from relay.stream._pb import relay_pb2_grpc as pb_grpc
from tests.conftest import RelayHandle
from tests.stream.conftest import BELGIUM_TOKEN, bearer, location, put_location

Code = grpc.StatusCode


async def _status(stub: pb_grpc.RelayStub, method: str, request: Any, metadata: Any = None) -> tuple[Code, str]:
    """Call ``method`` and return the status it fails with (it must fail)."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if method == "Subscribe":
            call = stub.Subscribe(request, metadata=metadata)
            await call.read()
        else:
            await getattr(stub, method)(request, metadata=metadata)
    return info.value.code(), info.value.details() or ""


EVERY_METHOD = [
    ("Subscribe", pb.SubscribeRequest(earliest=True)),
    ("Commit", pb.CommitRequest(consumer="c", seq=0)),
    ("GetObject", pb.GetObjectRequest(module="locations", country_code="NL", party_id="GFX", id="x")),
    ("ListObjects", pb.ListObjectsRequest(module="locations")),
]


@pytest.mark.parametrize(("method", "request_"), EVERY_METHOD, ids=[m for m, _ in EVERY_METHOD])
async def test_every_call_without_a_token_is_unauthenticated(
    relay: RelayHandle, stub: pb_grpc.RelayStub, method: str, request_: Any
) -> None:
    code, details = await _status(stub, method, request_)
    assert code == Code.UNAUTHENTICATED
    assert "authorization" in details


@pytest.mark.parametrize(("method", "request_"), EVERY_METHOD, ids=[m for m, _ in EVERY_METHOD])
async def test_every_call_with_an_unknown_token_is_unauthenticated(
    relay: RelayHandle, stub: pb_grpc.RelayStub, method: str, request_: Any
) -> None:
    code, details = await _status(stub, method, request_, bearer("not-a-stream-token"))
    assert (code, details) == (Code.UNAUTHENTICATED, "unknown stream token")


@pytest.mark.parametrize("header", ["Token x", "Bearer", "Basic abc"])
async def test_an_authorization_that_is_not_bearer_is_unauthenticated(
    relay: RelayHandle, stub: pb_grpc.RelayStub, header: str
) -> None:
    code, _ = await _status(stub, "Subscribe", pb.SubscribeRequest(earliest=True), (("authorization", header),))
    assert code == Code.UNAUTHENTICATED


async def test_a_push_subscription_token_does_not_open_a_stream(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    from tests.conftest import GFX_TOKEN

    code, _ = await _status(stub, "Subscribe", pb.SubscribeRequest(earliest=True), bearer(GFX_TOKEN))
    assert code == Code.UNAUTHENTICATED


OUT_OF_SCOPE = [
    ("Subscribe", pb.SubscribeRequest(earliest=True, modules=["sessions"]), "module 'sessions'"),
    ("Subscribe", pb.SubscribeRequest(earliest=True, cpos=["NL*GFX"]), "CPO 'NL*GFX'"),
    ("Subscribe", pb.SubscribeRequest(earliest=True, cpos=["BE**"]), "CPO 'BE**'"),
    ("Subscribe", pb.SubscribeRequest(earliest=True, cpos=["*"]), "CPO '*'"),
    ("GetObject", pb.GetObjectRequest(module="sessions", country_code="BE", party_id="BEC", id="x"), "module"),
    ("GetObject", pb.GetObjectRequest(module="locations", country_code="NL", party_id="GFX", id="x"), "CPO"),
    ("ListObjects", pb.ListObjectsRequest(module="cdrs"), "module 'cdrs'"),
    ("ListObjects", pb.ListObjectsRequest(module="locations", cpos=["NL*GFX"]), "CPO 'NL*GFX'"),
]


@pytest.mark.parametrize(("method", "request_", "named"), OUT_OF_SCOPE, ids=[str(i) for i in range(len(OUT_OF_SCOPE))])
async def test_modules_or_cpos_outside_the_client_scope_are_permission_denied(
    relay: RelayHandle, stub: pb_grpc.RelayStub, method: str, request_: Any, named: str
) -> None:
    code, details = await _status(stub, method, request_, bearer(BELGIUM_TOKEN))
    assert code == Code.PERMISSION_DENIED
    assert named in details and "belgium" in details


async def test_a_request_inside_the_scope_is_served(relay: RelayHandle, stub: pb_grpc.RelayStub) -> None:
    body = location()
    await put_location(relay, body, cpo="BE*BEC")
    call = stub.Subscribe(pb.SubscribeRequest(earliest=True, modules=["locations"], cpos=["BE*BEC"]),
                          metadata=bearer(BELGIUM_TOKEN))
    assert (await call.read()).object_id == body["id"]
    call.cancel()


INVALID = [
    ("Subscribe", pb.SubscribeRequest(), "start"),
    ("Subscribe", pb.SubscribeRequest(earliest=False), "earliest"),
    ("Subscribe", pb.SubscribeRequest(latest=False), "latest"),
    ("Subscribe", pb.SubscribeRequest(consumer=""), "consumer"),
    ("Subscribe", pb.SubscribeRequest(consumer="has space"), "consumer"),
    ("Subscribe", pb.SubscribeRequest(consumer="x" * 101), "consumer"),
    ("Subscribe", pb.SubscribeRequest(after_seq=2**63), "after_seq"),
    ("Subscribe", pb.SubscribeRequest(after_seq=5), "after_seq: 5 is beyond the newest stored seq 0"),
    ("Subscribe", pb.SubscribeRequest(since={"seconds": 0, "nanos": -1}), "since"),
    ("Subscribe", pb.SubscribeRequest(since={"seconds": 10**12}), "since"),
    ("Subscribe", pb.SubscribeRequest(earliest=True, modules=["location"]), "unknown module 'location'"),
    ("Subscribe", pb.SubscribeRequest(earliest=True, cpos=["NLGFX"]), "malformed CPO"),
    ("Subscribe", pb.SubscribeRequest(earliest=True, cpos=["NL*GF"]), "malformed CPO"),
    ("Subscribe", pb.SubscribeRequest(earliest=True, object_ids=[""]), "object_ids"),
    ("Subscribe", pb.SubscribeRequest(earliest=True, object_ids=["x" * 65]), "object_ids"),
    ("Commit", pb.CommitRequest(consumer="", seq=0), "consumer"),
    ("Commit", pb.CommitRequest(consumer="c", seq=1), "seq: 1 is beyond the newest stored seq 0"),
    ("GetObject", pb.GetObjectRequest(country_code="NL", party_id="GFX", id="x"), "module: required"),
    ("GetObject", pb.GetObjectRequest(module="nope", country_code="NL", party_id="GFX", id="x"), "unknown module"),
    ("GetObject", pb.GetObjectRequest(module="locations", country_code="NLD", party_id="GFX", id="x"), "country_code"),
    ("GetObject", pb.GetObjectRequest(module="locations", country_code="NL", party_id="GFX", id=""), "id"),
    ("ListObjects", pb.ListObjectsRequest(), "module: required"),
    ("ListObjects", pb.ListObjectsRequest(module="locations", page_size=-1), "page_size"),
    ("ListObjects", pb.ListObjectsRequest(module="locations", page_token="garbage!"), "page_token"),
    ("ListObjects", pb.ListObjectsRequest(module="locations", page_token="WzEsMiwzXQ"), "page_token"),  # [1,2,3]
    ("ListObjects", pb.ListObjectsRequest(module="locations", cpos=["*GFX"]), "malformed CPO"),
]


@pytest.mark.parametrize(("method", "request_", "named"), INVALID, ids=[f"{m}-{n}" for m, _, n in INVALID])
async def test_bad_requests_are_invalid_argument_naming_the_field(
    relay: RelayHandle, stub: pb_grpc.RelayStub, method: str, request_: Any, named: str
) -> None:
    code, details = await _status(stub, method, request_, bearer())
    assert code == Code.INVALID_ARGUMENT
    assert named in details, details
