"""Group commit: one writer task commits many operations per transaction, then answers each.

An ORM session per request keeps only 5-7 % of the HTTP ceiling on this machine kind; one writer
that takes whatever is queued, decides every operation against the states it reads once, and writes
the batch as a handful of Core ``executemany`` statements keeps about half of it. Each caller's
future is resolved only after the commit that carries its rows, so "1000 after commit" holds.
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


CommitFn = Callable[[list[Operation]], Awaitable[list[Plan | BaseException]]]


class GroupCommitWriter:
    """Queue of operations drained by one task; ``commit`` runs one transaction per batch."""

    def __init__(self, commit: CommitFn, *, batch_max: int = 512, queue_max: int = 20_000) -> None:
        self._commit = commit
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._queue: deque[_Item] = deque()
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
        while len(self._queue) >= self._queue_max:
            self._space.clear()
            await self._space.wait()
        future: asyncio.Future[Plan] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(op, future))
        self._wakeup.set()
        return await future

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
