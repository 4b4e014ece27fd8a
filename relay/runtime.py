"""run(): one process, one TaskGroup: HTTP receiver, gRPC stream, delivery workers, pull schedule.

Each part is an async callable ``part(stop) -> None`` that serves until ``stop`` is set and then
drains; the store is closed last, after its writer has committed everything queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import uvicorn

from relay import metrics
from relay.deliver.worker import run_workers
from relay.errors import ConfigError, StoreError
from relay.http.app import create_app
from relay.http.ops import create_ops_app
from relay.http.protocol import EdgeLimitedHttpToolsProtocol
from relay.ingest import Ingestor
from relay.log import ports_logger
from relay.pull.scheduler import run_schedule
from relay.routing.holder import ConfigHolder
from relay.settings import Settings, is_loopback
from relay.store import Store, open_store
from relay.store.retention import run_retention
from relay.stream.server import ServerTls, serve_grpc
from relay.tls import ReloadableCert

logger = logging.getLogger(__name__)
GC_THRESHOLD = 20_000  # young-generation allocations between collections (default 700)

Part = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


class RunInfo:
    """What a running relay tells its embedder (tests, bench): bound ports, readiness, the store."""

    def __init__(self) -> None:
        self.ports: dict[str, int] = {}
        self.expected: set[str] = set()  # ports the parts will bind before the relay counts as ready
        self.ready = asyncio.Event()
        self.store: Store | None = None
        self.holder: ConfigHolder | None = None
        self.tls_reloads: list[Callable[[], bool]] = []  # certificate reloads SIGHUP runs (relay.tls)

    def reload_tls(self) -> bool:
        """Re-read every listener's certificate (what SIGHUP does besides the config reload); True if all loaded."""
        return all([reload() for reload in self.tls_reloads])


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: ``run`` owns SIGTERM/SIGINT for every part."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop for `relay serve`: uvloop (measured faster for the HTTP receiver) when asked
    for or when ``auto`` finds it installed, else asyncio's default."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise
        return None
    return uvloop.new_event_loop


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets whose proto is IPPROTO_TCP,
    # and without it Nagle + delayed ACK cap a keep-alive client at ~25 requests/s per connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def http_tls(settings: Settings, info: RunInfo) -> ReloadableCert | None:
    """The receiver's certificate (shared by the ops listener), reloaded on SIGHUP; None without TLS."""
    if not settings.http_tls_cert:
        return None
    cert = ReloadableCert("http", settings.http_tls_cert, settings.http_tls_key, "RELAY_HTTP_TLS_CERT")
    info.tls_reloads.append(cert.reload)
    return cert


def http_part(settings: Settings, store: Store, holder: ConfigHolder, info: RunInfo,
              tls: ReloadableCert | None = None) -> Part:
    info.expected.add("http")

    async def serve(stop: asyncio.Event) -> None:
        app = create_app(settings, store, holder)
        await _serve_uvicorn("http", app, settings, settings.http_host, settings.http_port, tls, info, stop)

    return serve


def ops_part(settings: Settings, store: Store, info: RunInfo, tls: ReloadableCert | None = None) -> Part:
    """/metrics, /healthz and /readyz on a listener of their own (RELAY_OPS_HOST / RELAY_OPS_PORT)."""
    info.expected.add("ops")

    host = settings.ops_host or "127.0.0.1"
    if is_loopback(host):
        tls = None  # only this host reaches it: plain HTTP for local health checks and a sidecar scraper

    async def serve(stop: asyncio.Event) -> None:
        app = create_ops_app(store)
        await _serve_uvicorn("ops", app, settings, host, settings.ops_port, tls, info, stop)

    return serve


async def _serve_uvicorn(name: str, app: Any, settings: Settings, host: str, port: int, tls: ReloadableCert | None,
                         info: RunInfo, stop: asyncio.Event) -> None:
    """One uvicorn server on ``host:port`` (TLS with ``tls``'s context) until ``stop``; logs ``<name>_listening``."""
    protocol = EdgeLimitedHttpToolsProtocol.with_limits(
        header_timeout=settings.http_header_timeout, body_timeout=settings.http_body_timeout,
        max_header_bytes=settings.http_max_header_bytes, max_connections=settings.http_max_connections)
    # uvicorn would build its own context from files; ours is the one SIGHUP reloads in place.
    factory = (lambda _config, _default: tls.context) if tls is not None else None
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                            timeout_graceful_shutdown=10, server_header=False, http=protocol,
                            timeout_keep_alive=settings.http_keepalive_timeout, ssl_context_factory=factory,
                            # uvicorn would believe X-Forwarded-For from 127.0.0.1 (or FORWARDED_ALLOW_IPS);
                            # the receiver decides by RELAY_TRUSTED_PROXIES instead
                            proxy_headers=False)
    # config.load() imports the protocol and wraps the app (~0.1 s): off the event loop, so the other
    # parts (and, in tests, other servers) are not held up; serve() skips it once loaded
    await asyncio.to_thread(config.load)
    server = _Server(config)
    sock = bind(host, port)
    info.ports[name] = sock.getsockname()[1]
    ports_logger.info(f"{name}_listening", extra={"host": host, "port": info.ports[name], "tls": tls is not None})
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    await stop.wait()
    server.should_exit = True
    await task


async def _watch_config(holder: ConfigHolder, info: RunInfo, hangup: asyncio.Event, stop: asyncio.Event,
                        interval: float = 2.0) -> None:
    """Reload forwarding.yaml when the file or a secret file it names (``*_file``) changes, and at
    once on SIGHUP (``hangup``), which also reloads the certificates. The files are stat'ed and read
    off the event loop: a secret may sit on a slow mount."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_first(stop, hangup), interval)
        if stop.is_set():
            return
        if hangup.is_set():
            hangup.clear()
            await holder.reload_async()
            info.reload_tls()
        elif await asyncio.to_thread(holder.changed_on_disk):
            await holder.reload_async()


async def _first(*events: asyncio.Event) -> None:
    """Return when any of ``events`` is set."""
    waits = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def run(settings: Settings, *, extra_parts: list[Part] | None = None,
              stop: asyncio.Event | None = None, info: RunInfo | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then drain every part and close the store."""
    # The group-commit writer thread and the event loop share the GIL: with the default 5 ms switch
    # interval one waits up to 5 ms each time the other runs Python after a syscall.
    sys.setswitchinterval(0.001)
    plaintext = settings.plaintext_listeners()
    if plaintext and not settings.allow_plaintext:
        raise ConfigError([f"{listener}: a non-loopback listener without TLS; set its TLS certificate and key, "
                           "bind 127.0.0.1, or set RELAY_ALLOW_PLAINTEXT=true" for listener in plaintext])
    # Start-up's file and library work (the YAML and its secret files, certificates, the engines)
    # runs on worker threads: other tasks of the loop (in tests, other servers) go on meanwhile.
    holder = await asyncio.to_thread(ConfigHolder, settings.config)
    info = info or RunInfo()
    # unusable certificate files stop the start here, before the store opens
    tls = await asyncio.to_thread(http_tls, settings, info)
    grpc_tls = await asyncio.to_thread(ServerTls, settings) if settings.grpc and settings.grpc_tls_cert else None
    if grpc_tls is not None:
        info.tls_reloads.append(grpc_tls.reload)
    store = await asyncio.to_thread(
        open_store, settings.database_url, batch_max=settings.batch_max, pool_size=settings.db_pool_size,
        timeout=settings.db_timeout, queue_max_bytes=settings.write_queue_max_bytes,
        queue_timeout=settings.write_queue_timeout, sqlite_wal_max_bytes=settings.sqlite_wal_max_bytes)
    if settings.migrate:
        await store.migrate()
    await store.start()
    info.store, info.holder = store, holder
    stop = stop or asyncio.Event()
    for listener in plaintext:
        logger.warning("plaintext_listener", extra={"listener": listener, "hint": "reachable beyond this host "
                       "without TLS: set its TLS certificate and key, or keep it behind a TLS proxy"})

    hangup = asyncio.Event()  # SIGHUP: forwarding.yaml and the certificates, both re-read (_watch_config)
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, hangup.set)
    parts: list[Part] = []
    if settings.http:
        parts.append(http_part(settings, store, holder, info, tls))
    if settings.ops_listener:
        parts.append(ops_part(settings, store, info, tls))
    parts.extend(optional_parts(settings, store, holder, info, grpc_tls))
    parts.extend(extra_parts or [])
    logger.info("relay starting", extra={"database": settings.redacted_url(), "config": settings.config,
                                         "parts": len(parts)})
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_watch_config(holder, info, hangup, stop))
            for part in parts:
                tg.create_task(part(stop))
            tg.create_task(_announce_ready(info))
    finally:
        await store.close()
        logger.info("relay stopped")


def tune_gc() -> None:
    """Garbage-collector settings for the long-running server process.

    Every push allocates a few hundred dicts and lists (parsed JSON, the validated copy) that
    reference counting frees; with the default threshold of 700 the cyclic collector still runs every
    few pushes, and its full collections walk every object the imported libraries hold (tens of ms,
    seen as batch-time spikes under load). Objects alive at start-up are moved out of the collector's
    sight (``gc.freeze``) and the young generation is collected less often.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


async def _announce_ready(info: RunInfo) -> None:
    while not info.expected <= info.ports.keys():
        await asyncio.sleep(0.01)
    info.ready.set()


def optional_parts(settings: Settings, store: Store, holder: ConfigHolder, info: RunInfo,
                   grpc_tls: ServerTls | None = None) -> list[Part]:
    """gRPC stream, delivery workers and pull schedule, each switchable by a flag. The packages know
    nothing of the runtime: each offers one coroutine that serves until ``stop``, wired here."""
    parts: list[Part] = []
    if settings.grpc:
        info.expected.add("grpc")

        def grpc_bound(port: int) -> None:
            info.ports["grpc"] = port

        parts.append(lambda stop: serve_grpc(settings, store, holder, stop, bound=grpc_bound, tls=grpc_tls))
    if settings.workers:
        parts.append(lambda stop: run_workers(settings, store, holder, stop))
        ingestor = Ingestor.from_settings(store, holder, settings)
        parts.append(lambda stop: run_schedule(store, ingestor, holder, stop))
    parts.append(lambda stop: monitor(settings, store, holder, stop))
    if settings.retention:
        parts.append(lambda stop: run_retention(store, settings, stop))
    return parts


async def monitor(settings: Settings, store: Store, holder: ConfigHolder, stop: asyncio.Event) -> None:
    """Every ``monitor_interval``: the gauges read from the database (silent sessions and locations,
    oldest open delivery per target, consumer lag, database size). A failed read keeps the old values;
    relay_monitor_refresh_timestamp_seconds then stops moving.

    A configured subscription's modules that got no push since start count as last pushed when the
    relay first saw them in the config: a relay restarted while GreenFlux is silent still alerts."""
    targets: set[str] = set()
    consumers: set[str] = set()
    seeded: set[tuple[str, str]] = set()
    while not stop.is_set():
        unseeded = {(sub.name, module) for sub in holder().subscriptions for module in sub.modules} - seeded
        if unseeded:
            # the gauge's own samples (REGISTRY.get_sample_value would collect every metric, per pair)
            pushed = {(s.labels["subscription"], s.labels["module"])
                      for family in metrics.LAST_PUSH.collect() for s in family.samples}
            for name, module in sorted(unseeded - pushed):  # no push yet: silence counts from now
                metrics.labelled(metrics.LAST_PUSH, name, module).set(time.time())
            seeded |= unseeded
        now = datetime.now(UTC)
        try:
            seen = await store.monitoring(sessions_before=now - timedelta(seconds=settings.session_silence),
                                          locations_before=now - timedelta(hours=settings.location_silence))
        except StoreError as exc:
            logger.warning("monitoring gauges not refreshed", extra={"error": str(exc)})
        else:
            metrics.SILENT_SESSIONS.set(seen.silent_sessions)
            metrics.SILENT_LOCATIONS.set(seen.silent_locations)
            metrics.LOCATIONS.set(seen.locations)
            if seen.database_bytes is not None:
                metrics.DATABASE_SIZE.set(seen.database_bytes)
            for name in targets - seen.oldest_open.keys():
                metrics.OLDEST_PENDING.labels(name).set(0)
            for name, created in seen.oldest_open.items():
                metrics.OLDEST_PENDING.labels(name).set(max(0.0, (now - created).total_seconds()))
            targets |= seen.oldest_open.keys()
            for name in consumers - seen.consumer_lag.keys():
                metrics.forget(metrics.CONSUMER_LAG, name)
            for name, lag in seen.consumer_lag.items():
                metrics.CONSUMER_LAG.labels(name).set(lag)
            consumers = set(seen.consumer_lag)
            metrics.MONITOR_REFRESHED.set(time.time())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), settings.monitor_interval)
