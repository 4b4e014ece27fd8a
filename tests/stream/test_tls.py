"""The gRPC stream over TLS and mTLS: verified channels, client certificates, cert_subject, renewal, relay tail.

Certificates come from throwaway CAs made in each test (trustme): one for the server, one that
signs client certificates (RELAY_GRPC_TLS_CLIENT_CA).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import trustme
from cryptography import x509

from relay.settings import Settings
from relay.stream._pb import relay_pb2 as pb
from relay.stream._pb import relay_pb2_grpc as pb_grpc
from tests.conftest import RelayHandle, start_relay, stop_relay
from tests.stream.conftest import (
    BELGIUM_TOKEN,
    BILLING_TOKEN,
    bearer,
    location,
    put_location,
    read_n,
    subscribe,
)

RELAY = str(Path(sys.executable).with_name("relay"))


class Pki:
    """A server CA with the relay's certificate on disk, and a CA for client certificates."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.server_ca = trustme.CA()
        self.client_ca = trustme.CA()
        self.cert, self.key = directory / "server.pem", directory / "server.key"
        self.client_ca_file = directory / "clients-ca.pem"
        self.client_ca.cert_pem.write_to_path(str(self.client_ca_file))
        self.server_serial = self.issue_server()

    def issue_server(self) -> int:
        """A (new) server certificate for 127.0.0.1 / localhost, renamed into place; its serial."""
        leaf = self.server_ca.issue_cert("127.0.0.1", "localhost")
        for blob, path in ((leaf.private_key_pem, self.key), (leaf.cert_chain_pems[0], self.cert)):
            blob.write_to_path(str(path.with_suffix(".new")))
            os.replace(path.with_suffix(".new"), path)
        return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number

    def client(self, common_name: str, ca: trustme.CA | None = None) -> tuple[bytes, bytes]:
        """(key, certificate) PEM of a client certificate with subject CN=``common_name``."""
        leaf = (ca or self.client_ca).issue_cert(f"{common_name}.clients.example", common_name=common_name)
        return leaf.private_key_pem.bytes(), leaf.cert_chain_pems[0].bytes()

    def client_files(self, common_name: str) -> tuple[Path, Path]:
        key, cert = self.client(common_name)
        (self.dir / f"{common_name}.key").write_bytes(key)
        (self.dir / f"{common_name}.pem").write_bytes(cert)
        return self.dir / f"{common_name}.pem", self.dir / f"{common_name}.key"

    def credentials(self, client: tuple[bytes, bytes] | None = None) -> grpc.ChannelCredentials:
        key, cert = client or (None, None)
        return grpc.ssl_channel_credentials(root_certificates=self.server_ca.cert_pem.bytes(), private_key=key,
                                            certificate_chain=cert)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def extra_config(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_STREAM_TOKEN_BILLING", BILLING_TOKEN)
    monkeypatch.setenv("TEST_STREAM_TOKEN_BELGIUM", BELGIUM_TOKEN)
    return """
stream_clients:
  - name: billing
    token_env: TEST_STREAM_TOKEN_BILLING
    cpos: ["*"]
    cert_subject: "CN=billing"
  - name: belgium
    token_env: TEST_STREAM_TOKEN_BELGIUM
    modules: [locations]
    cpos: ["BE*BEC"]
"""


async def start(relay_settings: Settings, pki: Pki, *, mtls: bool) -> RelayHandle:
    return await start_relay(Settings(**{
        **vars(relay_settings), "grpc": True, "grpc_tls_cert": str(pki.cert), "grpc_tls_key": str(pki.key),
        "grpc_tls_client_ca": str(pki.client_ca_file) if mtls else ""}))


@pytest.fixture
async def tls_relay(relay_settings: Settings, pki: Pki) -> AsyncIterator[RelayHandle]:
    handle = await start(relay_settings, pki, mtls=False)
    try:
        yield handle
    finally:
        await stop_relay(handle)


@pytest.fixture
async def mtls_relay(relay_settings: Settings, pki: Pki) -> AsyncIterator[RelayHandle]:
    handle = await start(relay_settings, pki, mtls=True)
    try:
        yield handle
    finally:
        await stop_relay(handle)


def target(relay: RelayHandle) -> str:
    return f"127.0.0.1:{relay.info.ports['grpc']}"


async def latest_seq(channel: grpc.aio.Channel, token: str = BELGIUM_TOKEN) -> int:
    """One authenticated call over ``channel``: the head seq Subscribe(latest) starts after."""
    call = await subscribe(pb_grpc.RelayStub(channel), token, latest=True)
    try:
        return int(dict(await call.initial_metadata())["relay-after-seq"])
    finally:
        call.cancel()


async def refused(channel: grpc.aio.Channel, token: str = BELGIUM_TOKEN) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await pb_grpc.RelayStub(channel).GetObject(
            pb.GetObjectRequest(module="locations", country_code="BE", party_id="BEC", id="x"),
            metadata=bearer(token), timeout=10)
    return err.value


async def server_serial(port: int, pki: Pki) -> int:
    """The serial of the certificate a new TLS handshake with the gRPC port presents."""
    ctx = ssl.create_default_context()
    pki.server_ca.configure_trust(ctx)
    ctx.set_alpn_protocols(["h2"])
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        return int(writer.get_extra_info("peercert")["serialNumber"], 16)
    finally:
        writer.transport.abort()  # the server's HTTP/2 preface may be in flight: no TLS shutdown exchange


async def test_a_tls_channel_verified_against_the_ca_streams_events(tls_relay: RelayHandle, pki: Pki) -> None:
    async with grpc.aio.secure_channel(target(tls_relay), pki.credentials()) as channel:
        call = await subscribe(pb_grpc.RelayStub(channel), BELGIUM_TOKEN, latest=True)
        body = location()
        await put_location(tls_relay, body, cpo="BE*BEC")
        (event,) = await read_n(call, 1)
        assert event.object_id == body["id"]
        call.cancel()
    async with grpc.aio.insecure_channel(target(tls_relay)) as plain:
        assert (await refused(plain)).code() == grpc.StatusCode.UNAVAILABLE
    # a channel that trusts another CA does not accept the relay's certificate
    other = grpc.ssl_channel_credentials(root_certificates=trustme.CA().cert_pem.bytes())
    async with grpc.aio.secure_channel(target(tls_relay), other) as channel:
        assert (await refused(channel)).code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_refuses_a_client_without_a_certificate_signed_by_the_client_ca(
        mtls_relay: RelayHandle, pki: Pki) -> None:
    async with grpc.aio.secure_channel(target(mtls_relay), pki.credentials()) as channel:
        assert (await refused(channel)).code() == grpc.StatusCode.UNAVAILABLE
    stranger = pki.client("belgium", ca=trustme.CA())
    async with grpc.aio.secure_channel(target(mtls_relay), pki.credentials(stranger)) as channel:
        assert (await refused(channel)).code() == grpc.StatusCode.UNAVAILABLE
    async with grpc.aio.secure_channel(target(mtls_relay), pki.credentials(pki.client("belgium"))) as channel:
        assert await latest_seq(channel) >= 0


async def test_cert_subject_ties_a_stream_client_to_its_certificate(mtls_relay: RelayHandle, pki: Pki) -> None:
    async with grpc.aio.secure_channel(target(mtls_relay), pki.credentials(pki.client("billing"))) as channel:
        assert await latest_seq(channel, BILLING_TOKEN) >= 0
    # billing's token from a certificate of another subject: refused, whatever the token
    async with grpc.aio.secure_channel(target(mtls_relay), pki.credentials(pki.client("belgium"))) as channel:
        err = await refused(channel, BILLING_TOKEN)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert err.details() == ("stream client 'billing' must present a TLS client certificate with subject "
                                 "CN=billing (RELAY_GRPC_TLS_CLIENT_CA signed)")
        call = pb_grpc.RelayStub(channel).Subscribe(pb.SubscribeRequest(latest=True), metadata=bearer(BILLING_TOKEN))
        with pytest.raises(grpc.aio.AioRpcError) as sub_err:
            await asyncio.wait_for(call.read(), 15)
        assert sub_err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # belgium has no cert_subject: any certificate the client CA signed will do
        assert await latest_seq(channel, BELGIUM_TOKEN) >= 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_cert_subject_without_client_certificates_refuses_the_client(tls_relay: RelayHandle, pki: Pki) -> None:
    async with grpc.aio.secure_channel(target(tls_relay), pki.credentials()) as channel:
        assert (await refused(channel, BILLING_TOKEN)).code() == grpc.StatusCode.UNAUTHENTICATED
        assert await latest_seq(channel, BELGIUM_TOKEN) >= 0


async def test_a_reload_renews_the_grpc_certificate(tls_relay: RelayHandle, pki: Pki) -> None:
    port = tls_relay.info.ports["grpc"]
    assert await server_serial(port, pki) == pki.server_serial
    async with grpc.aio.secure_channel(target(tls_relay), pki.credentials()) as old:
        assert await latest_seq(old) >= 0
        renewed = pki.issue_server()
        assert tls_relay.info.reload_tls() is True
        assert await server_serial(port, pki) == renewed
        assert await latest_seq(old) >= 0  # the channel opened before still works
    async with grpc.aio.secure_channel(target(tls_relay), pki.credentials()) as new:
        assert await latest_seq(new) >= 0


async def test_relay_tail_over_mtls(mtls_relay: RelayHandle, pki: Pki) -> None:
    cert, key = pki.client_files("billing")
    ca = pki.dir / "server-ca.pem"
    pki.server_ca.cert_pem.write_to_path(str(ca))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env["RELAY_STREAM_TOKEN"] = BILLING_TOKEN
    proc = await asyncio.create_subprocess_exec(
        RELAY, "tail", "--target", target(mtls_relay), "--earliest", "--tls-ca", str(ca), "--tls-cert", str(cert),
        "--tls-key", str(key), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        body = location()
        await put_location(mtls_relay, body)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert b'"object_id":"' + body["id"].encode() + b'"' in line
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)
    # without a client certificate the handshake fails: exit 1, the reason on stderr
    plain = await asyncio.create_subprocess_exec(
        RELAY, "tail", "--target", target(mtls_relay), "--tls-ca", str(ca), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(plain.communicate(), 30)
    assert plain.returncode == 1
    assert err.decode().startswith("relay tail: UNAVAILABLE: ")


async def test_relay_tail_needs_tls_key_with_tls_cert(pki: Pki) -> None:
    cert, _ = pki.client_files("billing")
    env = {**os.environ, "RELAY_STREAM_TOKEN": BILLING_TOKEN}
    proc = await asyncio.create_subprocess_exec(RELAY, "tail", "--tls-cert", str(cert), env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert err.decode() == "relay tail: --tls-cert and --tls-key go together\n"
