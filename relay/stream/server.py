"""The gRPC part of `relay serve`: grpc.aio server with the Relay service, health and reflection.

Auth is checked by the service itself (``service.py``) because every call needs the resolved client's
scope, which an interceptor could only hand over through a context variable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from relay.errors import ConfigError
from relay.log import ports_logger
from relay.settings import Settings
from relay.store.base import Store
from relay.stream._pb import relay_pb2_grpc as pb_grpc
from relay.stream.fanout import Hub
from relay.stream.service import CLIENT_DEFAULT_LIMIT, SERVICE_NAME, RelayService, to_event
from relay.tls import probe_cert, read_pem

if TYPE_CHECKING:
    from relay.routing.holder import ConfigHolder

logger = logging.getLogger(__name__)

HEALTH_INTERVAL = 2.0  # seconds between database pings behind the health status
SHUTDOWN_GRACE = 5.0  # seconds in-flight calls get to finish before they are cancelled
_OPTIONS = [
    # Streams are long-lived and often idle: ping to find subscribers that vanished behind a NAT or a
    # load balancer, and accept the clients' own keepalive pings down to every 10 s.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
]


def _options(settings: Settings) -> list[tuple[str, int]]:
    """Message limits: requests are small, so a large one is refused early; an answer may carry one
    whole object (GetObject), never more than the object cap allows. Events and ListObjects pages are
    kept under the 4 MiB every default client accepts (``service.MESSAGE_BUDGET``)."""
    send = max(CLIENT_DEFAULT_LIMIT, settings.max_object_bytes + 64 * 1024)
    return [*_OPTIONS, ("grpc.max_receive_message_length", 1024 * 1024), ("grpc.max_send_message_length", send)]


_SEND_FAILED = f"ExecuteBatchError raised in core by servicer method [/{SERVICE_NAME}/Subscribe]"


class _DisconnectNoise(logging.Filter):
    """Drops grpc's ERROR for a Subscribe send that failed because the subscriber had just gone away.

    grpc.aio logs "ExecuteBatchError raised in core" when a pending write fails before it has noticed
    the client's cancellation (grpc/grpc#32551): for a stream that is the normal end of a disconnect
    during a burst, not a server fault, and it would put a traceback in the log for every one.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_SEND_FAILED)


_DISCONNECT_NOISE = _DisconnectNoise()


async def _check_database(store: Store, servicer: health.aio.HealthServicer, last: int | None) -> int:
    """Set the health status from one database ping; return it."""
    ok = await store.ping()
    status = health_pb2.HealthCheckResponse.SERVING if ok else health_pb2.HealthCheckResponse.NOT_SERVING
    if status != last:
        for name in ("", SERVICE_NAME):
            await servicer.set(name, status)
        if last is not None:
            logger.warning("grpc health changed", extra={"serving": ok})
    return int(status)


async def _watch_database(store: Store, servicer: health.aio.HealthServicer, last: int, interval: float) -> None:
    """NOT_SERVING while the database does not answer, SERVING again when it does."""
    while True:
        await asyncio.sleep(interval)
        last = await _check_database(store, servicer, last)


class ServerTls:
    """The gRPC server's TLS credentials (mTLS with RELAY_GRPC_TLS_CLIENT_CA); ``reload`` re-reads
    the files (SIGHUP) and grpc uses them from the next handshake on: gRPC core asks ``_fetch``
    for a new configuration on every new connection."""

    def __init__(self, settings: Settings) -> None:
        self.cert, self.key, self.client_ca = settings.grpc_tls_cert, settings.grpc_tls_key, settings.grpc_tls_client_ca
        self._pending: grpc.ServerCertificateConfiguration | None = None
        self.credentials = grpc.dynamic_ssl_server_credentials(
            self._configuration(), self._fetch, require_client_authentication=bool(self.client_ca))

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        probe_cert(self.cert, self.key, "RELAY_GRPC_TLS_CERT")  # a key that does not match fails here, not per handshake
        pair = (read_pem(self.key, "RELAY_GRPC_TLS_KEY"), read_pem(self.cert, "RELAY_GRPC_TLS_CERT"))
        ca = read_pem(self.client_ca, "RELAY_GRPC_TLS_CLIENT_CA") if self.client_ca else None
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=ca)

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        config, self._pending = self._pending, None
        return config

    def reload(self) -> bool:
        """Read the certificate, key and client CA again; on failure log it and keep the old ones."""
        try:
            self._pending = self._configuration()
        except ConfigError as err:
            logger.warning("tls_reload_failed", extra={"listener": "grpc", "error": err.problems[0]})
            return False
        logger.info("tls_reloaded", extra={"listener": "grpc", "cert": self.cert})
        return True


async def serve_grpc(settings: Settings, store: Store, holder: ConfigHolder, stop: asyncio.Event, *,
                     bound: Callable[[int], None], tls: ServerTls | None = None) -> None:
    """The gRPC server, a part of `relay serve`: binds (``bound(port)`` once listening), serves until
    ``stop``, then ends every stream. With RELAY_GRPC_TLS_* it listens over TLS with ``tls`` (made
    here when not given; the caller keeps it to call ``tls.reload()`` on SIGHUP)."""
    hub = Hub(store, to_event)
    await hub.start()
    logging.getLogger("grpc._cython.cygrpc").addFilter(_DISCONNECT_NOISE)  # once: the same object
    server = grpc.aio.server(options=_options(settings))
    service = RelayService(store, holder, hub, max_streams_per_client=settings.grpc_max_streams_per_client)
    pb_grpc.add_RelayServicer_to_server(service, server)  # type: ignore[no-untyped-call]  # generated code
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    # A reload may narrow a client's scope: wake idle subscribers so they re-check it now.
    holder.on_change(lambda _cfg: hub.poke())
    address = f"{settings.grpc_host}:{settings.grpc_port}"
    if settings.grpc_tls_cert:
        port = server.add_secure_port(address, (tls or ServerTls(settings)).credentials)
    else:
        port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot bind gRPC to {settings.grpc_host}:{settings.grpc_port}")
    status = await _check_database(store, health_servicer, None)  # answered from the first Check on
    await server.start()
    background = [
        asyncio.create_task(hub.run(), name="grpc-hub"),
        asyncio.create_task(_watch_database(store, health_servicer, status, HEALTH_INTERVAL), name="grpc-health"),
    ]
    bound(port)
    ports_logger.info("grpc_listening", extra={"host": settings.grpc_host, "port": port,
                                               "tls": bool(settings.grpc_tls_cert),
                                               "client_certificates": bool(settings.grpc_tls_client_ca)})
    try:
        await stop.wait()
    finally:
        await health_servicer.enter_graceful_shutdown()
        hub.close()  # open streams end with UNAVAILABLE ("resubscribe after your last seq")
        await server.stop(SHUTDOWN_GRACE)
        await hub.drain()
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        logger.info("grpc stopped")
