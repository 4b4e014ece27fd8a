"""The pull part of `relay serve` (and of `relay pull` without ``--once``): every configured pull
source runs on its interval, with jitter.

The first pass of each source starts within a couple of seconds of start-up and is incremental from
the stored position, so whatever pushes were lost while the relay was down are repaired without an
operator. Later passes follow the interval; a pass another replica has completed in the meantime
(same database) pushes ours out by one interval instead of repeating it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime

from relay.errors import StoreError
from relay.ingest import Ingestor
from relay.pull.client import RetryPolicy
from relay.pull.sync import ResumePoint, pull_source, record_pass
from relay.routing.model import PullSource, RoutingConfig
from relay.store import Store

logger = logging.getLogger(__name__)

FIRST_RUN_JITTER = 2.0  # seconds: "promptly", yet replicas started together do not pull in lockstep
INTERVAL_JITTER = 0.1  # each later pass at interval x (1 +- 10 %), as §8 asks ("with jitter")
CONFIG_CHECK = 5.0  # seconds between looks for pull sources added to or removed from forwarding.yaml


async def run_schedule(
    store: Store, ingestor: Ingestor, config: Callable[[], RoutingConfig], stop: asyncio.Event, *,
    only: str | None = None, retry: RetryPolicy | None = None,
) -> None:
    """Run every pull source (or only the one called ``only``) on its interval until ``stop``."""
    # One task per source, owned here rather than by a TaskGroup: a reload cancels one source's task
    # alone, and a crashed one is logged and started again instead of ending every source; the finally
    # below always cancels and awaits them all.
    loops: dict[str, asyncio.Task[None]] = {}
    try:
        while not stop.is_set():
            names = {p.name for p in config().pull if only is None or p.name == only}
            for name, task in list(loops.items()):
                if task.done():  # its source was removed (and may come back), or it crashed
                    loops.pop(name)
                    if not task.cancelled() and task.exception() is not None:
                        logger.error("pull schedule crashed", exc_info=task.exception(), extra={"source": name})
            for name in sorted(names - loops.keys()):
                loops[name] = asyncio.create_task(_source_loop(store, ingestor, config, name, stop, retry),
                                                  name=f"pull-{name}")
            for name in list(loops.keys() - names):
                loops.pop(name).cancel()  # removed from the config by a reload
            await _sleep(stop, CONFIG_CHECK)
    finally:
        for task in loops.values():
            task.cancel()
        await asyncio.gather(*loops.values(), return_exceptions=True)


async def _source_loop(
    store: Store, ingestor: Ingestor, config: Callable[[], RoutingConfig], name: str, stop: asyncio.Event,
    retry: RetryPolicy | None,
) -> None:
    delay = random.uniform(0, FIRST_RUN_JITTER)
    last_end: datetime | None = None  # when our own latest pass (or the one we deferred to) ended
    resume: dict[str, ResumePoint] = {}  # modules whose last pass stopped at the page cap
    while not await _sleep(stop, delay):
        source = config().pull_source(name)
        if source is None:
            return
        if last_end is not None:
            other = await _last_good_run(store, name)
            if other is not None and other > last_end:
                # another replica started a pass after ours ended: wait one interval after it
                last_end = other
                delay = max(0.0, _interval(source.interval) - (datetime.now(UTC) - other).total_seconds())
                continue
        t0 = time.monotonic()
        await _run_pass(store, ingestor, source, stop, retry, resume)
        last_end = datetime.now(UTC)
        delay = max(0.0, _interval(source.interval) - (time.monotonic() - t0))


async def _run_pass(store: Store, ingestor: Ingestor, source: PullSource, stop: asyncio.Event,
                    retry: RetryPolicy | None, resume: dict[str, ResumePoint]) -> None:
    """One pass, abandoned when ``stop`` is set (its position then stays where it was)."""
    work = asyncio.create_task(pull_source(store, ingestor, source, retry=retry, resume=resume))
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not work.done():
            work.cancel()
        results = await asyncio.gather(work, return_exceptions=True)
    result = results[0]
    if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
        # a bug or an unexpected failure must not end the schedule (or the relay's TaskGroup)
        logger.error("pull pass crashed", exc_info=result, extra={"source": source.name})
        record_pass(source.name, False)


async def _last_good_run(store: Store, name: str) -> datetime | None:
    try:
        positions = await store.get_positions(name)
    except StoreError:
        return None
    runs = [p.last_run_at for p in positions.values()
            if p.last_run_at is not None and (p.last_status or "").startswith("ok")]
    return min(runs) if runs else None


def _interval(seconds: float) -> float:
    return seconds * random.uniform(1 - INTERVAL_JITTER, 1 + INTERVAL_JITTER)


async def _sleep(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` or until ``stop``; True when stopping."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), max(seconds, 0.0))
    return stop.is_set()
