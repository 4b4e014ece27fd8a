"""The gRPC part of `relay serve`: health, reflection, switched off, and a clean shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import aiohttp
import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from relay.settings import Settings
from relay.stream import fanout
from relay.stream._pb import relay_pb2 as pb
from relay.stream._pb import relay_pb2_grpc as pb_grpc
from tests.conftest import (
    GFX_TOKEN,
    PG_ADMIN_URL,
    RelayHandle,
    eventually,
    spawn_relay,
    start_relay,
    stop_relay,
)
from tests.stream.conftest import Collector, grpc_target, location, put_location, read_n, subscribe

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _health(channel: grpc.aio.Channel, service: str = "ocpi_relay.v1.Relay") -> int:
    resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
    return int(resp.status)


async def test_health_reports_serving_for_the_server_and_the_relay_service(
    relay: RelayHandle, grpc_channel: grpc.aio.Channel
) -> None:
    assert await _health(grpc_channel) == SERVING
    assert await _health(grpc_channel, "") == SERVING


async def test_reflection_lists_the_relay_service_and_serves_its_proto(
    relay: RelayHandle, grpc_channel: grpc.aio.Channel
) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(grpc_channel)
    requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                reflection_pb2.ServerReflectionRequest(file_containing_symbol="ocpi_relay.v1.Relay")]
    responses = [r async for r in stub.ServerReflectionInfo(iter(requests))]
    names = {s.name for s in responses[0].list_services_response.service}
    assert {"ocpi_relay.v1.Relay", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    from google.protobuf import descriptor_pb2

    files = [descriptor_pb2.FileDescriptorProto.FromString(b)
             for b in responses[1].file_descriptor_response.file_descriptor_proto]
    assert "ocpi_relay/v1/relay.proto" in {f.name for f in files}


async def test_shutdown_ends_open_streams_with_unavailable_and_leaves_no_task(relay_settings: Settings) -> None:
    relay = await start_relay(relay_settings)
    before = {t for t in asyncio.all_tasks() if not t.done()}
    async with grpc.aio.insecure_channel(grpc_target(relay)) as channel:
        stub = pb_grpc.RelayStub(channel)
        await put_location(relay, location())
        collectors = [Collector(await subscribe(stub, earliest=True)) for _ in range(3)]
        for c in collectors:
            await eventually(lambda c=c: c.has(1))
        await asyncio.wait_for(stop_relay(relay), 30)
        await asyncio.wait_for(asyncio.gather(*(c.task for c in collectors)), 10)
    for c in collectors:
        assert c.error is not None and c.error.code() == grpc.StatusCode.UNAVAILABLE
        assert "shutting down" in (c.error.details() or "")
    leftover = {t for t in asyncio.all_tasks() if not t.done()} - before - {asyncio.current_task()}
    assert not [t.get_name() for t in leftover if t.get_name().startswith("grpc-")]
    assert all(not hub.cursors for hub in fanout.live_hubs())


async def test_no_grpc_runs_the_relay_without_a_grpc_port(relay_settings: Settings) -> None:
    relay = await start_relay(dataclasses.replace(relay_settings, grpc=False))
    try:
        assert "grpc" not in relay.info.ports
        await put_location(relay, location())
    finally:
        await stop_relay(relay)


async def test_grpc_only_serves_streams_without_the_http_receiver(relay_settings: Settings) -> None:
    relay = await start_relay(dataclasses.replace(relay_settings, http=False))
    try:
        assert set(relay.info.ports) == {"grpc"}
        async with grpc.aio.insecure_channel(grpc_target(relay)) as channel:
            call = await subscribe(pb_grpc.RelayStub(channel), latest=True)
            call.cancel()
    finally:
        await stop_relay(relay)


async def test_health_is_not_serving_while_postgresql_refuses_connections(
    pg_database: str, config_path: Path
) -> None:
    # A real outage: the database stops accepting connections and the relay's are terminated.
    # (Only PostgreSQL: on an open SQLite file the ping never touches the disk, so it cannot fail.)
    name = pg_database.rsplit("/", 1)[1]
    conn = await asyncpg.connect(pg_database, timeout=5)
    await conn.execute("TRUNCATE event, state, delivery, consumer, rejected RESTART IDENTITY")
    await conn.close()
    settings = Settings(database_url=pg_database, config=str(config_path), http_port=0, grpc_port=0,
                        workers=False, db_timeout=2.0)
    relay = await start_relay(settings)
    admin = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    try:
        async with grpc.aio.insecure_channel(grpc_target(relay)) as channel:
            assert await _health(channel) == SERVING
            await put_location(relay, location())
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
            await eventually(lambda: _is(channel, NOT_SERVING), timeout=20)
            call = pb_grpc.RelayStub(channel).Subscribe(pb.SubscribeRequest(earliest=True),
                                                        metadata=(("authorization", "Bearer stream-billing-token-9d3e"),))
            try:
                await asyncio.wait_for(call.read(), 15)
                raise AssertionError("a subscribe during the outage must fail")
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE
            await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            await eventually(lambda: _is(channel, SERVING), timeout=20)
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
        await stop_relay(relay)


async def _is(channel: grpc.aio.Channel, status: int) -> bool:
    return await _health(channel) == status


async def test_relay_serve_runs_grpc_beside_http_in_one_process(database_url: str, config_path: Path) -> None:
    proc = await spawn_relay({"RELAY_DATABASE_URL": database_url, "RELAY_CONFIG": str(config_path)},
                             "--no-workers", want=("http", "grpc"))
    try:
        assert any('"grpc_listening"' in line for line in proc.log)
        async with aiohttp.ClientSession() as http:
            body = location()
            async with http.put(f"{proc.url}/locations/NL/GFX/{body['id']}", json=body,
                                headers={"Authorization": f"Token {GFX_TOKEN}"}) as resp:
                assert resp.status == 200
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proc.ports['grpc']}") as channel:
            call = await subscribe(pb_grpc.RelayStub(channel), earliest=True)
            (event,) = await read_n(call, 1)
            call.cancel()
        assert event.object_id == body["id"]
    finally:
        assert await proc.stop() == 0
