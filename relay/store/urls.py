"""PostgreSQL over TLS: the libpq TLS parameters of RELAY_DATABASE_URL, handed to each driver.

``RELAY_DATABASE_URL`` takes libpq's own parameters: ``sslmode`` (disable, allow, prefer, require,
verify-ca, verify-full), ``sslrootcert`` (a CA file, or ``system`` for the system's CAs),
``sslcert`` and ``sslkey`` (a client certificate). The relay talks to PostgreSQL through three
connections, and ``driver_args`` is the one place that says what each receives:

- psycopg (the group-commit writer thread) is libpq: the URL goes to it unchanged.
- asyncpg through SQLAlchemy (reads, outbox, migrations) would pass every query parameter to
  ``asyncpg.connect`` as a keyword, which has no ``sslmode``: the parameters are taken out of the
  URL and become one ``ssl`` argument, an ``ssl.SSLContext`` built with libpq's meaning of the mode.
- asyncpg directly (the LISTEN connection): the same DSN and ``ssl`` argument as the pool.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from relay.errors import ConfigError

TLS_PARAMS = ("sslmode", "sslrootcert", "sslcert", "sslkey")
MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_FILES = ("sslrootcert", "sslcert", "sslkey")


@dataclass(frozen=True)
class DriverArgs:
    """What each PostgreSQL driver is given for one database URL."""

    asyncpg_url: str  # SQLAlchemy URL (postgresql+asyncpg://) without the libpq TLS parameters
    asyncpg_connect_args: dict[str, Any] = field(default_factory=dict)  # {"ssl": ...} when the URL asks for TLS
    psycopg_url: str = ""  # SQLAlchemy URL (postgresql+psycopg://) with every parameter as given
    listen_dsn: str = ""  # asyncpg.connect DSN (postgresql://), connected with ``asyncpg_connect_args`` too


def driver_args(async_url: str) -> DriverArgs:
    """The arguments of every driver for ``async_url`` (a ``postgresql+asyncpg://`` URL).
    ConfigError naming the parameter when the TLS parameters are unusable."""
    parts = urlsplit(async_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    tls = {k: v for k, v in query if k in TLS_PARAMS}
    rest = urlencode([(k, v) for k, v in query if k not in TLS_PARAMS])
    stripped = urlunsplit(parts._replace(query=rest))
    connect_args: dict[str, Any] = {}
    if tls:
        connect_args["ssl"] = asyncpg_ssl(tls)
    return DriverArgs(
        asyncpg_url=stripped,
        asyncpg_connect_args=connect_args,
        psycopg_url=async_url.replace("postgresql+asyncpg://", "postgresql+psycopg://", 1),
        listen_dsn=stripped.replace("postgresql+asyncpg://", "postgresql://", 1),
    )


def _problem(message: str) -> ConfigError:
    return ConfigError([f"RELAY_DATABASE_URL: {message}"])


def asyncpg_ssl(tls: dict[str, str]) -> ssl.SSLContext | str | bool:
    """asyncpg's ``ssl`` argument for libpq's TLS parameters.

    ``disable`` is False; ``allow`` and ``prefer`` stay mode names (asyncpg retries without TLS as libpq
    does, and verifies nothing); ``require`` encrypts and, like libpq, also verifies the server's chain
    when ``sslrootcert`` is given; ``verify-ca`` verifies the chain, ``verify-full`` the host name too.
    """
    mode = tls.get("sslmode")
    if mode is None:
        raise _problem(f"{', '.join(k for k in _FILES if k in tls)} given without sslmode "
                       "(require, verify-ca or verify-full)")
    if mode not in MODES:
        raise _problem(f"sslmode {mode!r} is not one of {', '.join(MODES)}")
    files = [k for k in _FILES if k in tls]
    if mode in ("disable", "allow", "prefer"):
        if files:
            raise _problem(f"{files[0]} needs sslmode=require, verify-ca or verify-full (sslmode is {mode})")
        return False if mode == "disable" else mode
    if ("sslkey" in tls) != ("sslcert" in tls):
        raise _problem("sslcert and sslkey go together")
    rootcert = tls.get("sslrootcert")
    if mode != "require" and not rootcert:
        raise _problem(f"sslmode={mode} needs sslrootcert (the server's CA file, or 'system')")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = mode == "verify-full"
    if rootcert:
        ctx.verify_mode = ssl.CERT_REQUIRED
        try:
            if rootcert == "system":
                ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
            else:
                ctx.load_verify_locations(cafile=rootcert)
        except (OSError, ssl.SSLError) as exc:
            raise _problem(f"sslrootcert {rootcert!r} cannot be loaded: {_reason(exc)}") from None
    else:
        ctx.verify_mode = ssl.CERT_NONE  # require without sslrootcert: encrypted, server not verified (libpq's meaning)
    if "sslcert" in tls:
        try:
            ctx.load_cert_chain(tls["sslcert"], tls["sslkey"])
        except (OSError, ssl.SSLError) as exc:
            raise _problem(f"sslcert {tls['sslcert']!r} with sslkey cannot be loaded: {_reason(exc)}") from None
    return ctx


def _reason(exc: Exception) -> str:
    if isinstance(exc, ssl.SSLError):
        return exc.reason or str(exc)
    return getattr(exc, "strerror", None) or type(exc).__name__
