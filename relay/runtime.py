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
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import uvicorn

from relay.deliver.worker import run_workers
from relay.http.app import create_app
from relay.http.protocol import EdgeLimitedHttpToolsProtocol
from relay.ingest import Ingestor
from relay.log import ports_logger
from relay.pull.scheduler import run_schedule
from relay.routing.holder import ConfigHolder
from relay.settings import Settings
from relay.store import Store, open_store
from relay.stream.server import serve_grpc

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


def http_part(settings: Settings, store: Store, holder: ConfigHolder, info: RunInfo) -> Part:
    info.expected.add("http")

    async def serve(stop: asyncio.Event) -> None:
        app = create_app(settings, store, holder)
        protocol = EdgeLimitedHttpToolsProtocol.with_limits(
            header_timeout=settings.http_header_timeout, body_timeout=settings.http_body_timeout,
            max_header_bytes=settings.http_max_header_bytes, max_connections=settings.http_max_connections)
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=10, server_header=False, http=protocol,
                                timeout_keep_alive=settings.http_keepalive_timeout,
                                # uvicorn would believe X-Forwarded-For from 127.0.0.1 (or
                                # FORWARDED_ALLOW_IPS); the receiver decides by RELAY_TRUSTED_PROXIES
                                proxy_headers=False)
        server = _Server(config)
        sock = bind(settings.http_host, settings.http_port)
        info.ports["http"] = sock.getsockname()[1]
        ports_logger.info("http_listening", extra={"host": settings.http_host, "port": info.ports["http"]})
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():
            await asyncio.sleep(0.01)
        await stop.wait()
        server.should_exit = True
        await task

    return serve


async def _watch_config(holder: ConfigHolder, stop: asyncio.Event, interval: float = 2.0) -> None:
    """Reload forwarding.yaml when the file or a secret file it names (``*_file``) changes (SIGHUP
    does the same at once). The stats run off the event loop: a secret may sit on a slow mount."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
        if not stop.is_set() and await asyncio.to_thread(holder.changed_on_disk):
            holder.reload()


async def run(settings: Settings, *, extra_parts: list[Part] | None = None,
              stop: asyncio.Event | None = None, info: RunInfo | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or ``stop``), then drain every part and close the store."""
    # The group-commit writer thread and the event loop share the GIL: with the default 5 ms switch
    # interval one waits up to 5 ms each time the other runs Python after a syscall.
    sys.setswitchinterval(0.001)
    holder = ConfigHolder(settings.config)
    store = open_store(settings.database_url, batch_max=settings.batch_max, pool_size=settings.db_pool_size,
                       timeout=settings.db_timeout, queue_max_bytes=settings.write_queue_max_bytes,
                       queue_timeout=settings.write_queue_timeout)
    if settings.migrate:
        await store.migrate()
    await store.start()
    info = info or RunInfo()
    info.store, info.holder = store, holder
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGHUP, holder.reload)
    parts: list[Part] = []
    if settings.http:
        parts.append(http_part(settings, store, holder, info))
    parts.extend(optional_parts(settings, store, holder, info))
    parts.extend(extra_parts or [])
    logger.info("relay starting", extra={"database": settings.redacted_url(), "config": settings.config,
                                         "parts": len(parts)})
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_watch_config(holder, stop))
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


def optional_parts(settings: Settings, store: Store, holder: ConfigHolder, info: RunInfo) -> list[Part]:
    """gRPC stream, delivery workers and pull schedule, each switchable by a flag. The packages know
    nothing of the runtime: each offers one coroutine that serves until ``stop``, wired here."""
    parts: list[Part] = []
    if settings.grpc:
        info.expected.add("grpc")

        def grpc_bound(port: int) -> None:
            info.ports["grpc"] = port

        parts.append(lambda stop: serve_grpc(settings, store, holder, stop, bound=grpc_bound))
    if settings.workers:
        parts.append(lambda stop: run_workers(settings, store, holder, stop))
        ingestor = Ingestor.from_settings(store, holder, settings)
        parts.append(lambda stop: run_schedule(store, ingestor, holder, stop))
    return parts
