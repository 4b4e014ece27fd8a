"""Settings: one frozen, typed object built from RELAY_* env and command-line flags."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.errors import ConfigError


class Secret:
    """A string that cannot print itself (repr and str are masked)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _int(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ConfigError([f"{name}: expected an integer, got {value!r}"]) from None


def _bool(name: str, value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError([f"{name}: expected a boolean, got {value!r}"])


# One line of help per setting: `relay serve --help` shows it with the env name and the real default,
# and every setting is a flag (relay.cli.options builds them from this table and the dataclass).
HELP: dict[str, str] = {
    "database_url": "sqlite:///relative.db, sqlite:////abs/path.db or postgresql://user@host:5432/db",
    "config": "forwarding.yaml path: subscriptions, stream clients, targets, rules, pull sources",
    "http_host": "receiver bind address",
    "http_port": "receiver port, 0 = any free (logged as http_listening)",
    "grpc_host": "gRPC bind address",
    "grpc_port": "gRPC port, 0 = any free (logged as grpc_listening)",
    "base_path": "receiver path prefix, e.g. /ocpi/emsp/2.1.1 (ops endpoints stay at the root)",
    "max_body_bytes": "largest accepted body; larger ones get 413",
    "max_json_depth": "deepest accepted JSON nesting; deeper bodies get 400 / 2001",
    "batch_max": "most requests one group commit carries",
    "db_pool_size": "database connection pool size",
    "db_timeout": "seconds before a database call counts as failed",
    "log_level": "log level of the JSON logs on stderr",
    "http": "run the HTTP receiver",
    "grpc": "run the gRPC stream server",
    "workers": "run delivery workers and pull schedules",
    "migrate": "apply database migrations at start",
    "delivery_concurrency": "deliveries one outbox claim takes at most per target",
    "event_loop": "auto (uvloop when installed), asyncio or uvloop",
    "instance": "this process's name in outbox claims (default: host name and process id)",
    "write_queue_max_bytes": "bytes of pushes waiting for a group commit at most",
    "write_queue_timeout": "seconds a push waits for room in a full write queue, then 503 / 3000",
    "max_clock_skew": "seconds a last_updated may lie ahead of the relay's clock; later ones get 400 / 2001",
    "max_object_bytes": "largest merged object in JSON bytes; a PATCH growing one past it gets 400 / 2001",
    "grpc_max_streams_per_client": "open Subscribe streams per stream client; more get RESOURCE_EXHAUSTED",
    "http_header_timeout": "seconds a client has to send a request's headers, then 408 and close",
    "http_body_timeout": "seconds a client has to send a request's body, then 408 and close",
    "http_keepalive_timeout": "seconds an idle kept-alive receiver connection stays open",
    "http_max_header_bytes": "largest request line + headers; larger get 431 and the connection is closed",
    "http_max_connections": "open receiver connections at most; more are closed at once",
    "session_silence": "seconds an ACTIVE session may go without a PATCH before relay_sessions_silent counts it",
    "location_silence": "hours a location may go without an update before relay_locations_silent counts it",
    "monitor_interval": "seconds between refreshes of the store-derived gauges (silence, database size, lag)",
    "retention": "remove what is older than this in the background, e.g. 30d (s, m, h, d); empty = keep all",
    "retention_interval": "seconds between background retention passes (with RELAY_RETENTION)",
    "rejected_max_per_subscription": "refusals kept per subscription at most; more are answered, counted, not kept",
    "sqlite_wal_max_bytes": "SQLite: the -wal file's size limit; from an eighth of it a checkpoint pauses writes briefly "
                            "and restarts or truncates it",
    "http_tls_cert": "PEM certificate chain: the receiver speaks HTTPS (re-read on SIGHUP)",
    "http_tls_key": "PEM private key of RELAY_HTTP_TLS_CERT",
    "grpc_tls_cert": "PEM certificate chain: the gRPC server speaks TLS (re-read on SIGHUP)",
    "grpc_tls_key": "PEM private key of RELAY_GRPC_TLS_CERT",
    "grpc_tls_client_ca": "PEM CA bundle: gRPC clients must present a certificate it signed (mTLS)",
    "ops_host": "bind address of a separate /metrics /healthz /readyz listener (empty: on the receiver port)",
    "ops_port": "port of the ops listener, 0 = any free (logged as ops_listening)",
    "allow_plaintext": "allow a non-loopback listener without TLS (it is logged as a warning)",
    "trusted_proxies": "comma-separated CIDRs of reverse proxies whose X-Forwarded-For is believed (empty: none)",
}


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def environ() -> Mapping[str, str]:
    """The process environment: the one place the relay reads it (settings, secrets named in
    forwarding.yaml, the CLI's token variables), so tests and callers can hand in their own."""
    return os.environ


@dataclass(frozen=True)
class Settings:
    """Everything `relay serve` needs besides forwarding.yaml. Env names are RELAY_<FIELD>."""

    database_url: str = "sqlite:///relay.db"
    config: str = "forwarding.yaml"
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    base_path: str = ""
    max_body_bytes: int = 1024 * 1024
    max_json_depth: int = 32
    # group commit: how many requests one transaction may carry at most
    batch_max: int = 512
    db_pool_size: int = 10
    db_timeout: float = 10.0
    log_level: str = "INFO"
    http: bool = True
    grpc: bool = True
    workers: bool = True
    migrate: bool = True
    delivery_concurrency: int = 16
    # auto: uvloop when installed (it comes with uvicorn[standard]), else asyncio's own loop
    event_loop: str = "auto"
    instance: str = field(default_factory=lambda: f"{os.uname().nodename}-{os.getpid()}")
    # group-commit queue: bytes of queued pushes at most, and how long a push waits for room (then 503/3000)
    write_queue_max_bytes: int = 64 * 1024 * 1024
    write_queue_timeout: float = 5.0
    # seconds a last_updated may lie ahead of our clock before it is refused (a 2099 date would
    # otherwise make every later, correct push of that object "stale")
    max_clock_skew: int = 300
    # largest merged object (JSON bytes): PATCHes with new keys cannot grow an object without bound,
    # and body (<= max_body_bytes) + object stay under the 4 MiB a default gRPC client accepts
    max_object_bytes: int = 2 * 1024 * 1024
    grpc_max_streams_per_client: int = 16
    # receiver edge limits: seconds a client may take to send its headers, its body; idle keep-alive
    http_header_timeout: float = 10.0
    http_body_timeout: float = 30.0
    # longer than common client pool idle times (60 s), so the client closes first: GreenFlux never
    # retries a push that meets a connection the relay closed at the same moment
    http_keepalive_timeout: int = 75
    http_max_header_bytes: int = 16 * 1024
    http_max_connections: int = 1000
    # monitoring: GreenFlux PATCHes an ACTIVE session at least every 15 min, so 2 x 15 min of silence
    # means lost pushes; quiet locations are normal for hours, a whole network quiet is not
    session_silence: int = 1800
    location_silence: int = 6
    monitor_interval: float = 60.0
    # retention (`relay prune`, README "Run it for months"): off unless a window like 30d is given
    retention: str = ""
    retention_interval: float = 300.0
    rejected_max_per_subscription: int = 10_000
    # SQLite: the WAL file is checkpointed and truncated (writers paused) before it passes this size
    sqlite_wal_max_bytes: int = 256 * 1024 * 1024
    # TLS: PEM paths; empty = plain text. Certificates are re-read on SIGHUP (see relay.tls).
    http_tls_cert: str = ""
    http_tls_key: str = ""
    grpc_tls_cert: str = ""
    grpc_tls_key: str = ""
    grpc_tls_client_ca: str = ""
    # a separate ops listener (metrics, health) when either is set; host defaults to 127.0.0.1
    ops_host: str = ""
    ops_port: int = 0
    # false: `relay serve` refuses a listener on a non-loopback address without TLS (the image's default)
    allow_plaintext: bool = True
    # reverse proxies (CIDRs, comma-separated) whose X-Forwarded-For hops are believed for allow_ips
    trusted_proxies: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then RELAY_* env, then explicit overrides (flags); validated."""
        env = environ() if env is None else env
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f"RELAY_{f.name.upper()}"
            if key not in env:
                continue
            raw = env[key]
            default = f.default if f.default is not dataclasses.MISSING else None
            if isinstance(default, bool):
                values[f.name] = _bool(key, raw)
            elif isinstance(default, int):
                values[f.name] = _int(key, raw)
            elif isinstance(default, float):
                try:
                    values[f.name] = float(raw)
                except ValueError:
                    raise ConfigError([f"{key}: expected a number, got {raw!r}"]) from None
            else:
                values[f.name] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        problems = []
        if self.base_path and (not self.base_path.startswith("/") or self.base_path.endswith("/")):
            problems.append("RELAY_BASE_PATH: must start with '/' and not end with '/' (or be empty)")
        for name in ("http_port", "grpc_port"):
            port = getattr(self, name)
            if not 0 <= port <= 65535:
                problems.append(f"RELAY_{name.upper()}: {port} is not a port number")
        if self.max_body_bytes < 1024:
            problems.append("RELAY_MAX_BODY_BYTES: must be at least 1024")
        if not self.database_url.startswith(("sqlite:", "postgresql:", "postgres:", "postgresql+asyncpg:")):
            problems.append(f"RELAY_DATABASE_URL: unsupported database URL scheme in {self.redacted_url()!r}")
        if self.write_queue_max_bytes < self.max_body_bytes:
            problems.append("RELAY_WRITE_QUEUE_MAX_BYTES: must be at least RELAY_MAX_BODY_BYTES")
        if self.write_queue_timeout <= 0:
            problems.append("RELAY_WRITE_QUEUE_TIMEOUT: must be a positive number of seconds")
        if self.event_loop not in ("auto", "asyncio", "uvloop"):
            problems.append(f"RELAY_EVENT_LOOP: expected auto, asyncio or uvloop, got {self.event_loop!r}")
        if self.max_clock_skew < 0:
            problems.append(f"RELAY_MAX_CLOCK_SKEW: {self.max_clock_skew} is negative")
        if self.max_object_bytes < self.max_body_bytes:
            problems.append(f"RELAY_MAX_OBJECT_BYTES: {self.max_object_bytes} is smaller than RELAY_MAX_BODY_BYTES "
                            f"({self.max_body_bytes}): a PUT the receiver accepts could never be stored")
        if self.grpc_max_streams_per_client < 1:
            problems.append("RELAY_GRPC_MAX_STREAMS_PER_CLIENT: must be at least 1")
        for name in ("http_header_timeout", "http_body_timeout", "http_keepalive_timeout"):
            if not getattr(self, name) > 0:
                problems.append(f"RELAY_{name.upper()}: must be a number of seconds above 0")
        if self.http_max_header_bytes < 1024:
            problems.append("RELAY_HTTP_MAX_HEADER_BYTES: must be at least 1024")
        if self.http_max_connections < 1:
            problems.append("RELAY_HTTP_MAX_CONNECTIONS: must be at least 1")
        for name in ("session_silence", "location_silence", "monitor_interval"):
            if not getattr(self, name) > 0:
                problems.append(f"RELAY_{name.upper()}: must be above 0")
        if self.retention:
            try:
                parse_duration(self.retention)
            except ValueError as exc:
                problems.append(f"RELAY_RETENTION: {exc}")
        if not self.retention_interval > 0:
            problems.append("RELAY_RETENTION_INTERVAL: must be a number of seconds above 0")
        if self.rejected_max_per_subscription < 0:
            problems.append("RELAY_REJECTED_MAX_PER_SUBSCRIPTION: must be 0 or more")
        if self.sqlite_wal_max_bytes < 1024 * 1024:
            problems.append("RELAY_SQLITE_WAL_MAX_BYTES: must be at least 1048576 (1 MiB)")
        problems.extend(self._tls_problems())
        if problems:
            raise ConfigError(problems)

    @property
    def ops_listener(self) -> bool:
        """True when /metrics, /healthz and /readyz have their own listener (RELAY_OPS_HOST / _PORT)."""
        return bool(self.ops_host) or self.ops_port != 0

    def plaintext_listeners(self) -> list[str]:
        """The enabled listeners bound to a non-loopback address without TLS, as ``RELAY_X_HOST=addr``
        (`relay serve` warns about each, or refuses them when ``allow_plaintext`` is false)."""
        out = []
        http_tls = bool(self.http_tls_cert)
        listeners = [("HTTP", self.http, self.http_host, http_tls), ("GRPC", self.grpc, self.grpc_host, bool(self.grpc_tls_cert))]
        if self.ops_listener:  # HTTPS with the receiver's certificate unless on loopback (relay.runtime.ops_part)
            ops_host = self.ops_host or "127.0.0.1"
            listeners.append(("OPS", True, ops_host, http_tls and not is_loopback(ops_host)))
        for name, enabled, host, tls in listeners:
            if enabled and not tls and not is_loopback(host):
                out.append(f"RELAY_{name}_HOST={host}")
        return out

    def _tls_problems(self) -> list[str]:
        problems = []
        for prefix in ("http", "grpc"):
            cert, key = getattr(self, f"{prefix}_tls_cert"), getattr(self, f"{prefix}_tls_key")
            if bool(cert) != bool(key):
                given, missing = (f"{prefix}_tls_cert", f"{prefix}_tls_key") if cert else (f"{prefix}_tls_key", f"{prefix}_tls_cert")
                problems.append(f"RELAY_{missing.upper()}: must be set together with RELAY_{given.upper()}")
        if self.grpc_tls_client_ca and not self.grpc_tls_cert:
            problems.append("RELAY_GRPC_TLS_CLIENT_CA: needs RELAY_GRPC_TLS_CERT and RELAY_GRPC_TLS_KEY (mTLS runs over TLS)")
        if not 0 <= self.ops_port <= 65535:
            problems.append(f"RELAY_OPS_PORT: {self.ops_port} is not a port number")
        return problems
        for item in self.trusted_proxies.split(","):
            try:
                if item.strip():
                    ipaddress.ip_network(item.strip(), strict=True)
            except ValueError as exc:
                problems.append(f"RELAY_TRUSTED_PROXIES: {item.strip()!r} is not a network: {exc}")
        if problems:
            raise ConfigError(problems)

    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        """``trusted_proxies`` parsed (validated by ``validate``)."""
        return tuple(ipaddress.ip_network(i.strip()) for i in self.trusted_proxies.split(",") if i.strip())

    def redacted_url(self) -> str:
        """The database URL with any password masked, for logs and check-config."""
        url = self.database_url
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            creds, host = rest.rsplit("@", 1)
            if ":" in creds:
                user = creds.split(":", 1)[0]
                return f"{scheme}://{user}:***@{host}"
        return url


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds of a duration like ``30d``, ``12h``, ``90m`` or ``45s`` (a positive whole number and a unit)."""
    value = text.strip().lower()
    number, unit = value[:-1], value[-1:]
    if unit not in _UNITS or not number.isdigit() or int(number) == 0:
        raise ValueError(f"expected a positive whole number with a unit s, m, h or d (e.g. 30d), got {text!r}")
    return float(int(number) * _UNITS[unit])
