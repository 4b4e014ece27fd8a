"""The Dispatcher: one TargetLoop per configured target, the outcome writer, wake-ups and housekeeping.

Wake-ups: new events committed by this process (or announced by PostgreSQL NOTIFY) kick every loop;
otherwise each loop polls every POLL_INTERVAL, which also picks up rows that `relay dead retry` or
`relay replay` added from another process. A config reload takes effect for new claims: a row whose
rule is gone goes dead (it is never sent untransformed); a removed target's rows stay pending.
Held rows have their lease renewed; rows of a dead worker are taken over once their lease ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import aiohttp

from relay import metrics
from relay.deliver.outcomes import OutcomeWriter
from relay.deliver.target_loop import PAUSE_AFTER_ERROR, TargetLoop
from relay.errors import StoreError
from relay.routing.model import RoutingConfig, Rule
from relay.store.outbox import Outbox

logger = logging.getLogger(__name__)

LEASE_RENEW = 10.0  # held rows' leases are renewed this often
HOUSEKEEPING_INTERVAL = 2.0  # expired-lease takeover
GAUGE_INTERVAL = 2.0  # outbox depth / dead letter gauges (a grouped count over open and dead rows)


class Dispatcher:
    """Owns the target loops, the outcome writer, the wake-ups and the housekeeping."""

    def __init__(self, outbox: Outbox, config: Callable[[], RoutingConfig], session: aiohttp.ClientSession, *,
                 owner: str, claim_max: int = 16) -> None:
        self.outbox = outbox
        self.config = config
        self.session = session
        self.owner = owner
        self.claim_max = max(1, claim_max)
        self.writer = OutcomeWriter(outbox, owner)
        self.loops: dict[str, TargetLoop] = {}
        self._running: set[TargetLoop] = set()
        self._reconfigured = asyncio.Event()
        self._rules: tuple[RoutingConfig | None, dict[str, Rule]] = (None, {})
        self._gauged: set[str] = set()
        self._warned: set[tuple[int, str]] = set()
        self._breakers: set[str] = set()  # targets with a breaker gauge

    def reconfigure(self) -> None:
        """Called by the config holder after a reload (SIGHUP or file change)."""
        self._reconfigured.set()

    def rule(self, cfg: RoutingConfig, name: str) -> Rule | None:
        if self._rules[0] is not cfg:
            self._rules = (cfg, {r.name: r for r in cfg.rules})
        return self._rules[1].get(name)

    def kick_all(self) -> None:
        for loop in self._running:
            loop.kick.set()

    async def run(self, stop: asyncio.Event) -> None:
        # Outside the TaskGroup on purpose: chains record outcomes while the loops drain, so the writer
        # must outlive the group; the finally below always closes it and awaits its end.
        writer = asyncio.create_task(self.writer.run(), name="deliver-outcomes")
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._follow_events(stop), name="deliver-wakeup")
                tg.create_task(self._housekeeping(stop), name="deliver-housekeeping")
                self._reconcile(tg, stop)
                while not stop.is_set():
                    await _either(stop, self._reconfigured)
                    self._reconfigured.clear()
                    if not stop.is_set():
                        self._reconcile(tg, stop)
                self.kick_all()  # loops notice ``stop`` and drain
        finally:
            self.writer.close()
            await writer

    def _reconcile(self, tg: asyncio.TaskGroup, stop: asyncio.Event) -> None:
        cfg = self.config()
        names = {t.name for t in cfg.targets}
        for target in cfg.targets:
            loop = self.loops.get(target.name)
            if loop is None:
                loop = self.loops[target.name] = TargetLoop(target, self)
                tg.create_task(self._run_loop(loop, stop), name=f"deliver-{target.name}")
            else:
                loop.update(target)
        for name in [n for n in self.loops if n not in names]:
            self.loops.pop(name).retire()
            logger.warning("target removed from the config: its deliveries stay pending in the outbox",
                           extra={"target": name})

    async def _run_loop(self, loop: TargetLoop, stop: asyncio.Event) -> None:
        self._running.add(loop)
        try:
            await loop.run(stop)
        finally:
            self._running.discard(loop)

    async def _follow_events(self, stop: asyncio.Event) -> None:
        """Kick every loop when new events (and with them new outbox rows) are committed."""
        store = self.outbox.store
        seen = store.latest_seq
        stopped = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                waiting = asyncio.create_task(store.wait_for_events(seen, 1.0))
                await asyncio.wait({waiting, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not waiting.done():
                    waiting.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await waiting
                    return
                try:
                    latest = waiting.result()
                except StoreError:
                    await _sleep_unless(stop, PAUSE_AFTER_ERROR)
                    continue
                if latest > seen:
                    seen = latest
                    self.kick_all()
        finally:
            stopped.cancel()

    async def _housekeeping(self, stop: asyncio.Event) -> None:
        """Renew our leases, take over rows whose claimer died (lease over), refresh the gauges."""
        last_gauges = last_renew = time.monotonic()
        last_gauges -= GAUGE_INTERVAL
        while not stop.is_set():
            try:
                if time.monotonic() - last_renew >= LEASE_RENEW:
                    last_renew = time.monotonic()
                    for loop in list(self._running):
                        await loop.renew()
                taken = await self.outbox.reap_expired()
                if taken:
                    logger.warning("deliveries with an expired lease are pending again", extra={"count": taken})
                    self.kick_all()
                if time.monotonic() - last_gauges >= GAUGE_INTERVAL:
                    last_gauges = time.monotonic()
                    await self._refresh_gauges()
            except StoreError as exc:
                logger.warning("outbox housekeeping failed", extra={"error": str(exc)})
            except Exception:  # noqa: BLE001 - keep the housekeeping alive whatever happens
                logger.exception("outbox housekeeping failed")
            await _sleep_unless(stop, HOUSEKEEPING_INTERVAL)

    async def _refresh_gauges(self) -> None:
        counts = await self.outbox.counts()
        cfg = self.config()
        for name in self._gauged - counts.keys():
            metrics.OUTBOX_DEPTH.labels(name).set(0)
            metrics.DEAD_LETTERS.labels(name).set(0)
        for name, (depth, dead) in counts.items():
            metrics.OUTBOX_DEPTH.labels(name).set(depth)
            metrics.DEAD_LETTERS.labels(name).set(dead)
            if depth and cfg.target(name) is None and (id(cfg), name) not in self._warned:
                self._warned.add((id(cfg), name))
                logger.warning("outbox holds deliveries for a target that is not in the config; they stay pending",
                               extra={"target": name, "depth": depth})
        self._gauged = set(counts)
        now = time.monotonic()
        for name, loop in list(self.loops.items()):
            metrics.labelled(metrics.BREAKER_STATE, name).set(loop.breaker_state(now))
        for name in self._breakers - self.loops.keys():
            metrics.forget(metrics.BREAKER_STATE, name)
        self._breakers = set(self.loops)


async def _either(a: asyncio.Event, b: asyncio.Event) -> None:
    waits = [asyncio.create_task(a.wait()), asyncio.create_task(b.wait())]
    try:
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
