"""The receiver over HTTPS, certificate renewal by SIGHUP, the separate ops listener, plaintext warnings.

Certificates come from a throwaway CA made in each test (trustme); clients verify the relay's
certificate against that CA exactly as a partner's HTTPS client would.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import trustme
from cryptography import x509

from relay.errors import ConfigError
from relay.settings import Settings
from tests.conftest import (
    GFX_TOKEN,
    LOC_ID,
    RelayHandle,
    eventually,
    example,
    spawn_relay,
    start_relay,
    stop_relay,
)

LOCATION_PATH = f"/locations/NL/GFX/{LOC_ID}"


def issue(ca: trustme.CA, directory: Path) -> tuple[Path, Path, int]:
    """A leaf certificate for 127.0.0.1 / localhost written as PEM files; (cert, key, serial).
    Written beside and renamed into place, as certbot's deploy does: a reader never sees half a file."""
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = directory / "cert.pem", directory / "key.pem"
    for blob, path in ((leaf.private_key_pem, key), (leaf.cert_chain_pems[0], cert)):
        tmp = path.with_suffix(".new")
        blob.write_to_path(str(tmp))
        os.replace(tmp, path)
    serial = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number
    return cert, key, serial


def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A verifying client that trusts the test CA only (not the system's bundle, whose loading, for
    each context, held the loop over 0.1 s in asyncio debug mode)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # hostname check and certificate required
    ca.configure_trust(ctx)
    return ctx


async def peer_serial(port: int, ctx: ssl.SSLContext) -> int:
    """The serial of the certificate a new TLS connection to ``port`` is shown (verified against the CA)."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    try:
        cert = writer.get_extra_info("peercert")
        return int(cert["serialNumber"], 16)
    finally:
        writer.close()
        await writer.wait_closed()


async def raw_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """One keep-alive GET of the location (not stored: 404) on an open connection; the answer's head."""
    writer.write(f"GET {LOCATION_PATH} HTTP/1.1\r\nHost: relay\r\nAuthorization: Token {GFX_TOKEN}\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
    length = next(int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
    await asyncio.wait_for(reader.readexactly(length), 15)
    return head


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_relay(relay_settings: Settings, ca: trustme.CA, tmp_path: Path) -> AsyncIterator[RelayHandle]:
    cert, key, _ = issue(ca, tmp_path)
    handle = await start_relay(Settings(**{**vars(relay_settings), "http_tls_cert": str(cert),
                                           "http_tls_key": str(key)}))
    try:
        yield handle
    finally:
        await stop_relay(handle)


async def test_https_push_is_verified_against_the_ca_and_stored(tls_relay: RelayHandle, ca: trustme.CA) -> None:
    port = tls_relay.info.ports["http"]
    url = f"https://127.0.0.1:{port}{LOCATION_PATH}"
    headers = {"Authorization": f"Token {GFX_TOKEN}"}
    async with aiohttp.ClientSession() as session:
        async with session.put(url, json=example("location_full.json"), headers=headers,
                               ssl=client_context(ca)) as resp:
            assert resp.status == 200
            assert (await resp.json())["status_code"] == 1000
        async with session.get(url, headers=headers, ssl=client_context(ca)) as resp:
            assert resp.status == 200
            assert (await resp.json())["data"]["id"] == LOC_ID
        # a client that trusts only the public CAs refuses the certificate: verification is real
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(url, headers=headers, ssl=ssl.create_default_context())


async def test_plain_http_to_the_tls_port_gets_no_answer(tls_relay: RelayHandle) -> None:
    port = tls_relay.info.ports["http"]
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await session.put(f"http://127.0.0.1:{port}{LOCATION_PATH}", json=example("location_full.json"),
                              headers={"Authorization": f"Token {GFX_TOKEN}"})
    assert await tls_relay.store.max_seq() == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_old_protocols_and_weak_ciphers_are_refused(tls_relay: RelayHandle, ca: trustme.CA) -> None:
    port = tls_relay.info.ports["http"]
    tls11 = client_context(ca)  # an old client, on purpose: Python warns about making one
    tls11.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        tls11.minimum_version = ssl.TLSVersion.TLSv1
        tls11.maximum_version = ssl.TLSVersion.TLSv1_1
    cbc = client_context(ca)  # TLS 1.2 without forward secrecy or AEAD
    cbc.maximum_version = ssl.TLSVersion.TLSv1_2
    cbc.set_ciphers("ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:AES128-SHA:AES128-SHA256")
    for ctx in (tls11, cbc):
        with pytest.raises((ssl.SSLError, ConnectionResetError)):  # the alert, or the close right after it
            await peer_serial(port, ctx)
    modern = client_context(ca)
    modern.maximum_version = ssl.TLSVersion.TLSv1_2
    assert await peer_serial(port, modern) > 0


async def test_sighup_renews_the_certificate_without_dropping_connections(
        database_url: str, config_path: Path, ca: trustme.CA, tmp_path: Path) -> None:
    cert, key, first = issue(ca, tmp_path)
    proc = await spawn_relay({"RELAY_DATABASE_URL": database_url, "RELAY_CONFIG": str(config_path),
                              "RELAY_LOG_LEVEL": "INFO", "RELAY_HTTP_TLS_CERT": str(cert),
                              "RELAY_HTTP_TLS_KEY": str(key)}, "--no-grpc", "--no-workers")
    try:
        port = proc.ports["http"]
        ctx = client_context(ca)
        assert await peer_serial(port, ctx) == first
        # a kept-alive connection opened (and used) before the renewal
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        assert (await raw_get(reader, writer)).startswith(b"HTTP/1.1 404 ")
        _, _, second = issue(ca, tmp_path)
        assert second != first
        os.kill(proc.proc.pid, signal.SIGHUP)

        async def renewed() -> bool:
            return await peer_serial(port, ctx) == second

        await eventually(renewed)
        # the old connection still carries requests, with the certificate it was opened with
        assert (await raw_get(reader, writer)).startswith(b"HTTP/1.1 404 ")
        assert int(writer.get_extra_info("peercert")["serialNumber"], 16) == first
        writer.close()
        log = "".join(proc.log)
        assert '"tls_reloaded"' in log and '"config reloaded"' in log  # SIGHUP does both
    finally:
        assert await proc.stop() == 0


async def test_a_bad_renewal_keeps_the_old_certificate(tls_relay: RelayHandle, ca: trustme.CA,
                                                       tmp_path: Path) -> None:
    port = tls_relay.info.ports["http"]
    serial = await peer_serial(port, client_context(ca))
    # a renewal caught half way: the new key next to the old certificate
    other = trustme.CA().issue_cert("localhost")
    other.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    assert tls_relay.info.reload_tls() is False
    assert await peer_serial(port, client_context(ca)) == serial


async def test_ops_endpoints_move_to_their_own_listener(relay_settings: Settings) -> None:
    handle = await start_relay(Settings(**{**vars(relay_settings), "ops_host": "127.0.0.1", "ops_port": 0}))
    try:
        ops = f"http://127.0.0.1:{handle.info.ports['ops']}"
        async with aiohttp.ClientSession() as session:
            for path in ("/healthz", "/readyz", "/metrics"):
                async with session.get(ops + path) as resp:
                    assert resp.status == 200, path
                async with session.get(handle.url + path) as resp:
                    assert resp.status == 404, path
            async with session.get(ops + LOCATION_PATH) as resp:
                assert resp.status == 404
        ans = await handle.put(LOCATION_PATH, example("location_full.json"))
        assert ans.status == 200 and ans.body["status_code"] == 1000
    finally:
        await stop_relay(handle)


async def test_ops_listening_is_logged_by_relay_serve(database_url: str, config_path: Path) -> None:
    proc = await spawn_relay({"RELAY_DATABASE_URL": database_url, "RELAY_CONFIG": str(config_path),
                              "RELAY_OPS_HOST": "127.0.0.1"}, "--no-grpc", "--no-workers")
    try:
        async def logged() -> bool:
            return any('"ops_listening"' in line for line in proc.log)

        await eventually(logged)
    finally:
        await proc.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_public_plaintext_listener_is_a_warning(relay_settings: Settings,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="relay.runtime")
    handle = await start_relay(Settings(**{**vars(relay_settings), "http_host": "0.0.0.0"}))
    await stop_relay(handle)
    warned = [r for r in caplog.records if r.getMessage() == "plaintext_listener"]
    assert [r.__dict__["listener"] for r in warned] == ["RELAY_HTTP_HOST=0.0.0.0"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_without_allow_plaintext_a_public_listener_needs_tls(relay_settings: Settings, ca: trustme.CA,
                                                                   tmp_path: Path) -> None:
    public = {**vars(relay_settings), "http_host": "0.0.0.0", "allow_plaintext": False}
    with pytest.raises(ConfigError) as err:
        await start_relay(Settings(**public))
    assert err.value.problems == ["RELAY_HTTP_HOST=0.0.0.0: a non-loopback listener without TLS; set its TLS "
                                  "certificate and key, bind 127.0.0.1, or set RELAY_ALLOW_PLAINTEXT=true"]
    cert, key, _ = issue(ca, tmp_path)
    # with TLS it starts; the ops listener on loopback stays plain HTTP for local health checks
    handle = await start_relay(Settings(**{**public, "http_tls_cert": str(cert), "http_tls_key": str(key),
                                           "ops_port": 0, "ops_host": "127.0.0.1"}))
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{handle.info.ports['ops']}/healthz") as resp:
                assert resp.status == 200
    finally:
        await stop_relay(handle)
    with pytest.raises(ConfigError) as err:
        Settings.from_env({"RELAY_HTTP_TLS_CERT": str(cert)})
    assert err.value.problems == ["RELAY_HTTP_TLS_KEY: must be set together with RELAY_HTTP_TLS_CERT"]


def test_serve_refuses_a_key_that_does_not_match(ca: trustme.CA, tmp_path: Path, config_path: Path) -> None:
    cert, _, _ = issue(ca, tmp_path)
    stray = tmp_path / "stray.pem"
    trustme.CA().issue_cert("localhost").private_key_pem.write_to_path(str(stray))
    env = {**os.environ, "RELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'r.db'}", "RELAY_CONFIG": str(config_path),
           "RELAY_HTTP_PORT": "0", "RELAY_HTTP_TLS_CERT": str(cert), "RELAY_HTTP_TLS_KEY": str(stray)}
    done = subprocess.run([sys.executable, "-m", "relay", "serve", "--no-grpc", "--no-workers"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(f"RELAY_HTTP_TLS_CERT: cannot load certificate {str(cert)!r} with its key")
