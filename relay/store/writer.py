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
from collections.abc import Awaitable, Callable

from relay import metrics
from relay.errors import StoreError
from relay.store.base import Operation, Plan
from relay.store.batcher import Batcher, Waiter

logger = logging.getLogger(__name__)


def _size(op: Operation) -> int:
    """Bytes an operation holds while queued (``size`` when it declares one, e.g. a push's body)."""
    return int(getattr(op, "size", 0))


CommitFn = Callable[[list[Operation]], Awaitable[list[Plan | BaseException]]]


class GroupCommitWriter:
    """Queue of operations drained by one task; ``commit`` runs one transaction per batch."""

    def __init__(self, commit: CommitFn, *, batch_max: int = 512, queue_max: int = 20_000,
                 queue_max_bytes: int = 64 * 1024 * 1024, queue_timeout: float = 5.0) -> None:
        self._commit = commit
        self._queue_timeout = queue_timeout
        self._batcher: Batcher[Operation, Plan] = Batcher(
            self._commit_batch, on_error=self._failed, batch_max=batch_max, queue_max=queue_max,
            queue_max_bytes=queue_max_bytes,
        )
        # Owned here: started by start() and awaited by close(), which the store's close() calls.
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0
        self.operations = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._batcher.run(), name="store-writer")

    async def submit(self, op: Operation) -> Plan:
        if self._closing:
            raise StoreError("store is shutting down")
        size = _size(op)
        if self._batcher.full(size):
            await self._wait_for_room(size)
        return await self._batcher.submit(op, size)

    async def _wait_for_room(self, size: int) -> None:
        metrics.STORE_QUEUE_FULL.inc()
        try:
            async with asyncio.timeout(self._queue_timeout):
                await self._batcher.wait_for_room(size)
        except TimeoutError:
            queued, queued_bytes = self._batcher.queued, self._batcher.queued_bytes
            metrics.STORE_QUEUE_REFUSED.inc()
            logger.warning("write queue full, push refused", extra={
                "queued": queued, "queued_bytes": queued_bytes, "timeout_s": self._queue_timeout})
            raise StoreError(f"write queue full for {self._queue_timeout:g}s "
                             f"({queued} operations, {queued_bytes} bytes queued)") from None

    async def close(self) -> None:
        """Finish what is queued, then stop."""
        self._closing = True
        self._batcher.close()
        if self._task is not None:
            await self._task

    async def _commit_batch(self, ops: list[Operation]) -> list[Plan | BaseException]:
        results = await self._commit(ops)
        self.batches += 1
        self.operations += len(ops)
        metrics.STORE_BATCH.observe(len(ops))
        return results

    async def _failed(self, batch: list[Waiter[Operation, Plan]], exc: BaseException) -> list[Waiter[Operation, Plan]]:
        """Every caller of a failed batch gets a StoreError; nothing is retried (the push is answered 503)."""
        err = exc if isinstance(exc, StoreError) else StoreError(f"commit failed: {exc!r}")
        if not isinstance(exc, StoreError | asyncio.CancelledError):
            logger.exception("group commit failed", extra={"batch": len(batch)}, exc_info=exc)
        for w in batch:
            if not w.future.done():
                w.future.set_exception(err)
        return []
