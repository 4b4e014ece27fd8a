"""PostgreSQL over TLS: libpq's sslmode / sslrootcert / sslcert / sslkey reach every driver the relay uses.

First the translation itself (``relay.store.urls.driver_args``): exactly what psycopg, the asyncpg pool
and the LISTEN connection are given. Then a throwaway PostgreSQL cluster started with ``ssl=on``
that refuses connections without TLS and without a client certificate: a relay whose URL carries
the parameters migrates, stores pushes (psycopg), reads them back (asyncpg) and listens (asyncpg).
"""

from __future__ import annotations

import asyncio
import glob
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import asyncpg
import pytest
import trustme

from relay.errors import ConfigError
from relay.settings import Settings
from relay.store import open_store
from relay.store.urls import driver_args
from tests.conftest import LOC_ID, RelayHandle, eventually, example, start_relay, stop_relay

BASE = "postgresql+asyncpg://relay:s%40cret@db.example:5432/relay"


# -- the translation --------------------------------------------------------------------------------


def test_without_tls_parameters_every_driver_gets_the_url_as_before() -> None:
    args = driver_args(BASE + "?application_name=relay")
    assert args.asyncpg_url == BASE + "?application_name=relay"
    assert args.asyncpg_connect_args == {}
    assert args.psycopg_url == "postgresql+psycopg://relay:s%40cret@db.example:5432/relay?application_name=relay"
    assert args.listen_dsn == "postgresql://relay:s%40cret@db.example:5432/relay?application_name=relay"


def test_verify_full_with_a_client_certificate(tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "root.crt"))
    client = ca.issue_cert("relay", common_name="relay")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.crt"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    query = (f"sslmode=verify-full&sslrootcert={quote(str(tmp_path / 'root.crt'))}&application_name=relay"
             f"&sslcert={quote(str(tmp_path / 'client.crt'))}&sslkey={quote(str(tmp_path / 'client.key'))}")
    args = driver_args(f"{BASE}?{query}")
    # psycopg is libpq: every parameter as given
    assert args.psycopg_url == f"postgresql+psycopg://relay:s%40cret@db.example:5432/relay?{query}"
    # asyncpg: the TLS parameters leave the URL and become one ssl argument
    assert args.asyncpg_url == BASE + "?application_name=relay"
    assert args.listen_dsn == "postgresql://relay:s%40cret@db.example:5432/relay?application_name=relay"
    assert list(args.asyncpg_connect_args) == ["ssl"]
    ctx = args.asyncpg_connect_args["ssl"]
    assert isinstance(ctx, ssl.SSLContext)
    assert (ctx.verify_mode, ctx.check_hostname, ctx.minimum_version) == (ssl.CERT_REQUIRED, True,
                                                                          ssl.TLSVersion.TLSv1_2)
    assert [c["subject"] for c in ctx.get_ca_certs()] == [c["subject"] for c in _ca_certs(ca)]


def _ca_certs(ca: trustme.CA) -> list[dict[str, object]]:
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(probe)
    return probe.get_ca_certs()  # type: ignore[return-value]


@pytest.mark.parametrize(("query", "verify", "hostname"), [
    ("sslmode=require", ssl.CERT_NONE, False),  # encrypted, server not verified (libpq's require)
    ("sslmode=require&sslrootcert={ca}", ssl.CERT_REQUIRED, False),  # libpq: require + root cert = verify-ca
    ("sslmode=verify-ca&sslrootcert={ca}", ssl.CERT_REQUIRED, False),
    ("sslmode=verify-full&sslrootcert={ca}", ssl.CERT_REQUIRED, True),
])
def test_each_verifying_mode_is_an_ssl_context(tmp_path: Path, query: str, verify: ssl.VerifyMode,
                                               hostname: bool) -> None:
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ctx = driver_args(f"{BASE}?{query.format(ca=tmp_path / 'ca.pem')}").asyncpg_connect_args["ssl"]
    assert (ctx.verify_mode, ctx.check_hostname) == (verify, hostname)


@pytest.mark.parametrize(("mode", "ssl_arg"), [("disable", False), ("allow", "allow"), ("prefer", "prefer")])
def test_non_verifying_modes_keep_asyncpg_s_fallback(mode: str, ssl_arg: object) -> None:
    args = driver_args(f"{BASE}?sslmode={mode}")
    assert args.asyncpg_connect_args == {"ssl": ssl_arg}
    assert args.psycopg_url.endswith(f"?sslmode={mode}")


@pytest.mark.parametrize(("query", "problem"), [
    ("sslmode=strict", "sslmode 'strict' is not one of disable, allow, prefer, require, verify-ca, verify-full"),
    ("sslmode=verify-full", "sslmode=verify-full needs sslrootcert (the server's CA file, or 'system')"),
    ("sslrootcert=/x.pem", "sslrootcert given without sslmode (require, verify-ca or verify-full)"),
    ("sslmode=prefer&sslcert=/c.pem&sslkey=/k.pem", "sslcert needs sslmode=require, verify-ca or verify-full "
                                                    "(sslmode is prefer)"),
    ("sslmode=require&sslcert=/c.pem", "sslcert and sslkey go together"),
    ("sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem",
     "sslrootcert '/nonexistent/ca.pem' cannot be loaded: No such file or directory"),
])
def test_unusable_tls_parameters_are_a_config_error_naming_them(query: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        open_store(f"postgresql://relay@db.example/relay?{query}")
    assert err.value.problems == [f"RELAY_DATABASE_URL: {problem}"]


# -- a real cluster with ssl=on ---------------------------------------------------------------------


@dataclass
class TlsCluster:
    port: int
    socket_dir: str
    ca: trustme.CA
    files: Path

    def url(self, **params: str) -> str:
        query = "&".join(f"{k}={quote(v)}" for k, v in params.items())
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres" + (f"?{query}" if query else "")

    def tls_url(self, **extra: str) -> str:
        return self.url(sslmode="verify-full", sslrootcert=str(self.files / "root.crt"),
                        sslcert=str(self.files / "client.crt"), sslkey=str(self.files / "client.key"), **extra)


def _pg_bin() -> str | None:
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    for d in reversed(dirs):
        if os.access(os.path.join(d, "initdb"), os.X_OK):
            return d
    found = shutil.which("initdb")
    return os.path.dirname(found) if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tls_cluster() -> Iterator[TlsCluster]:
    """A PostgreSQL cluster in a temp dir: TLS only (hostnossl rejected), client certificates required."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/*/bin or PATH")
    run_as: list[str] = []
    owner = None
    if os.geteuid() == 0:  # initdb refuses to run as root: run the cluster as the postgres user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to own a throwaway cluster")
        run_as = ["runuser", "-u", "postgres", "--"]
    top = Path(tempfile.mkdtemp(prefix="relay-pg-tls-"))
    data, files = top / "data", top / "files"
    files.mkdir()
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(top / "server.crt"))
    server.private_key_pem.write_to_path(str(top / "server.key"))
    ca.cert_pem.write_to_path(str(top / "root.crt"))
    ca.cert_pem.write_to_path(str(files / "root.crt"))
    client = ca.issue_cert("postgres", common_name="postgres")  # clientcert=verify-full: CN is the user name
    client.cert_chain_pems[0].write_to_path(str(files / "client.crt"))
    client.private_key_pem.write_to_path(str(files / "client.key"))
    os.chmod(files / "client.key", 0o600)
    os.chmod(top / "server.key", 0o600)
    if owner is not None:
        for path in (top, top / "server.crt", top / "server.key", top / "root.crt"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = _free_port()

    def pg(*cmd: str) -> None:
        subprocess.run([*run_as, *cmd], check=True, capture_output=True, timeout=120)

    pg(f"{bindir}/initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    with open(data / "postgresql.conf", "a") as conf:
        conf.write(f"port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{top}'\n"
                   f"ssl = on\nssl_cert_file = '{top}/server.crt'\nssl_key_file = '{top}/server.key'\n"
                   f"ssl_ca_file = '{top}/root.crt'\nfsync = off\nmax_connections = 50\n")
    (data / "pg_hba.conf").write_text("local all all trust\n"
                                      "hostssl all all 127.0.0.1/32 trust clientcert=verify-full\n"
                                      "hostnossl all all 127.0.0.1/32 reject\n")
    pg(f"{bindir}/pg_ctl", "-D", str(data), "-l", str(top / "log"), "-w", "-t", "60", "start")
    try:
        yield TlsCluster(port, str(top), ca, files)
    finally:
        subprocess.run([*run_as, f"{bindir}/pg_ctl", "-D", str(data), "-m", "immediate", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(top, ignore_errors=True)


async def _ssl_backends(cluster: TlsCluster) -> list[asyncpg.Record]:
    """TLS connections of the postgres user (over the local socket, which needs no TLS)."""
    conn = await asyncpg.connect(host=cluster.socket_dir, port=cluster.port, user="postgres", database="postgres")
    try:
        return await conn.fetch("SELECT a.query, s.client_dn FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
                                "WHERE s.ssl AND a.pid <> pg_backend_pid()")
    finally:
        await conn.close()


@pytest.fixture
async def relay_over_tls(tls_cluster: TlsCluster, config_path: Path) -> AsyncIterator[RelayHandle]:
    handle = await start_relay(Settings(database_url=tls_cluster.tls_url(), config=str(config_path), http_port=0,
                                        grpc=False, workers=False))
    try:
        yield handle
    finally:
        await stop_relay(handle)


async def test_a_relay_migrates_writes_reads_and_listens_over_tls(tls_cluster: TlsCluster,
                                                                  relay_over_tls: RelayHandle) -> None:
    relay = relay_over_tls
    put = await relay.put(f"/locations/NL/GFX/{LOC_ID}", example("location_full.json"))  # psycopg writer
    assert put.status == 200 and put.body["status_code"] == 1000
    got = await relay.get(f"/locations/NL/GFX/{LOC_ID}")  # asyncpg pool
    assert got.status == 200 and got.body["data"]["id"] == LOC_ID

    async def listening_over_tls() -> bool:  # the LISTEN connection, with the client certificate
        return any(r["query"].startswith("LISTEN") and "CN=postgres" in (r["client_dn"] or "")
                   for r in await _ssl_backends(tls_cluster))

    await eventually(listening_over_tls)
    assert all("CN=postgres" in (r["client_dn"] or "") for r in await _ssl_backends(tls_cluster))


@pytest.mark.parametrize(("params", "reason"), [
    ({"sslmode": "disable"}, "no encryption"),  # the cluster rejects a connection without TLS
    ({"sslmode": "verify-full", "sslrootcert": "{files}/root.crt"}, "requires a valid client certificate"),
    ({"sslmode": "verify-full", "sslrootcert": "{other_ca}"}, "certificate verify failed"),  # not our CA
])
async def test_connections_the_cluster_or_the_relay_must_refuse(tls_cluster: TlsCluster, tmp_path: Path,
                                                                params: dict[str, str], reason: str) -> None:
    trustme.CA().cert_pem.write_to_path(str(tmp_path / "other.pem"))
    filled = {k: v.format(files=tls_cluster.files, other_ca=tmp_path / "other.pem") for k, v in params.items()}
    store = open_store(tls_cluster.url(**filled), timeout=5)
    with pytest.raises(Exception, match=reason):  # the driver's own error, raised by the migration
        await asyncio.wait_for(store.migrate(), 60)
    await store.close()
