"""Group commit: one writer task commits many operations per transaction, then answers each.

An ORM session per request keeps only 5-7 % of the HTTP ceiling on this machine kind; one writer
that takes whatever is queued, decides every operation against the states it reads once, and writes
the batch as a handful of Core ``executemany`` statements keeps about half of it. Each caller's
future is resolved only after the commit that carries its rows, so "1000 after commit" holds.

The queue is bounded twice: in operations and in bytes (an operation's ``size``, the pushed body's
length). A caller that finds it full waits at most ``queue_timeout`` seconds for room and then gets
``StoreError`` (answered 503/3000: nothing was stored), instead of waiting without end while
GreenFlux's request times out.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from relay import metrics
from relay.errors import StoreError
from relay.store.base import Operation, Plan

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Item:
    op: Operation
    future: asyncio.Future[Plan]
    size: int


def _size(op: Operation) -> int:
    """Bytes an operation holds while queued (``size`` when it declares one, e.g. a push's body)."""
    return int(getattr(op, "size", 0))


CommitFn = Callable[[list[Operation]], Awaitable[list[Plan | BaseException]]]


class GroupCommitWriter:
    """Queue of operations drained by one task; ``commit`` runs one transaction per batch."""

    def __init__(self, commit: CommitFn, *, batch_max: int = 512, queue_max: int = 20_000,
                 queue_max_bytes: int = 64 * 1024 * 1024, queue_timeout: float = 5.0) -> None:
        self._commit = commit
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._queue_max_bytes = queue_max_bytes
        self._queue_timeout = queue_timeout
        self._queue: deque[_Item] = deque()
        self._queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0
        self.operations = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="store-writer")

    async def submit(self, op: Operation) -> Plan:
        if self._closing:
            raise StoreError("store is shutting down")
        size = _size(op)
        if self._full(size):
            await self._wait_for_room(size)
        future: asyncio.Future[Plan] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(op, future, size))
        self._queued_bytes += size
        self._wakeup.set()
        return await future

    def _full(self, size: int) -> bool:
        # An operation larger than the whole byte bound still goes in alone, into an empty queue.
        return len(self._queue) >= self._queue_max or (
            self._queued_bytes > 0 and self._queued_bytes + size > self._queue_max_bytes
        )

    async def _wait_for_room(self, size: int) -> None:
        metrics.STORE_QUEUE_FULL.inc()
        try:
            async with asyncio.timeout(self._queue_timeout):
                while self._full(size):
                    self._space.clear()
                    await self._space.wait()
        except TimeoutError:
            metrics.STORE_QUEUE_REFUSED.inc()
            logger.warning("write queue full, push refused", extra={
                "queued": len(self._queue), "queued_bytes": self._queued_bytes, "timeout_s": self._queue_timeout})
            raise StoreError(f"write queue full for {self._queue_timeout:g}s "
                             f"({len(self._queue)} operations, {self._queued_bytes} bytes queued)") from None

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Everything that queued up while the previous commit ran forms the next batch.
            n = min(len(self._queue), self._batch_max)
            items = [self._queue.popleft() for _ in range(n)]
            self._queued_bytes -= sum(i.size for i in items)
            self._space.set()
            live = [i for i in items if not i.future.cancelled()]
            if not live:
                continue
            try:
                results = await self._commit([i.op for i in live])
            except BaseException as exc:  # noqa: BLE001 - every caller must hear about it
                err = exc if isinstance(exc, StoreError) else StoreError(f"commit failed: {exc!r}")
                if not isinstance(exc, StoreError | asyncio.CancelledError):
                    logger.exception("group commit failed", extra={"batch": len(live)})
                for i in live:
                    if not i.future.done():
                        i.future.set_exception(err)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                continue
            self.batches += 1
            self.operations += len(live)
            metrics.STORE_BATCH.observe(len(live))
            for i, res in zip(live, results, strict=True):
                if i.future.done():
                    continue
                if isinstance(res, BaseException):
                    i.future.set_exception(res)
                else:
                    i.future.set_result(res)
