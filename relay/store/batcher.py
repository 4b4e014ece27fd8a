"""Group commit for any writer: callers queue items, one task takes everything queued, makes one call
for the lot, then resolves each caller with its own result.

Both the store's write path (relay.store.writer) and the delivery outcomes (relay.deliver.outcomes)
commit this way: whatever queued up while the previous call ran forms the next batch, so the number
of transactions follows the database's speed rather than the callers' number. It lives in the store
package because group commit is a store idea and every layer that writes may import the store; it
imports nothing from relay.

The queue may be bounded in items and in bytes (``size`` per item); a caller checks ``full`` and
waits for room with ``wait_for_room`` under its own deadline. A failed call goes to ``on_error``,
which resolves the callers it gives up on and returns those to try again with the next batch.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True)
class Waiter(Generic[T, R]):
    """One queued item and the future its caller awaits."""

    item: T
    future: asyncio.Future[R]
    size: int = 0


BatchCall = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]
OnError = Callable[[list["Waiter[T, R]"], BaseException], Awaitable[list["Waiter[T, R]"]]]


class Batcher(Generic[T, R]):
    """A queue drained by ``run``: one ``call`` per batch, one result (or exception) per item.

    ``batch_max`` (0: no limit) caps the items of one call. ``queue_max`` and ``queue_max_bytes``
    (0: no limit) are what ``full`` compares against. ``skip_cancelled``: an item whose caller
    stopped waiting before its batch was taken is left out of the call.
    """

    def __init__(self, call: BatchCall[T, R], *, on_error: OnError[T, R], batch_max: int = 0,
                 queue_max: int = 0, queue_max_bytes: int = 0, skip_cancelled: bool = True) -> None:
        self._call = call
        self._on_error = on_error
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._queue_max_bytes = queue_max_bytes
        self._skip_cancelled = skip_cancelled
        self._queue: deque[Waiter[T, R]] = deque()
        self.queued_bytes = 0
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self._closing = False

    @property
    def queued(self) -> int:
        return len(self._queue)

    def full(self, size: int = 0) -> bool:
        """Whether an item of ``size`` bytes would overflow a bound now."""
        # An item larger than the whole byte bound still goes in alone, into an empty queue.
        return (0 < self._queue_max <= len(self._queue)) or (
            self._queue_max_bytes > 0 and self.queued_bytes > 0 and self.queued_bytes + size > self._queue_max_bytes
        )

    async def wait_for_room(self, size: int = 0) -> None:
        """Wait until an item of ``size`` bytes fits; the caller puts a deadline around this."""
        while self.full(size):
            self._space.clear()
            await self._space.wait()

    async def submit(self, item: T, size: int = 0) -> R:
        """Queue ``item`` and wait for its result (the bounds are the caller's to check first)."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append(Waiter(item, future, size))
        self.queued_bytes += size
        self._wakeup.set()
        return await future

    def close(self) -> None:
        """Let ``run`` return once the queue is empty (what is queued still gets its call)."""
        self._closing = True
        self._wakeup.set()

    async def run(self) -> None:
        """Drain the queue until ``close``; a cancellation stops it after ``on_error`` saw the batch."""
        retry: list[Waiter[T, R]] = []
        while True:
            batch = retry + self._take(len(retry))
            retry = []
            if not batch:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            live = [w for w in batch if not w.future.cancelled()] if self._skip_cancelled else batch
            if not live:
                continue
            try:
                results = await self._call([w.item for w in live])
            except BaseException as exc:  # noqa: BLE001 - every caller must hear about it
                retry = await self._on_error(live, exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for w, result in zip(live, results, strict=True):
                if w.future.done():
                    continue
                if isinstance(result, BaseException):
                    w.future.set_exception(result)
                else:
                    w.future.set_result(result)

    def _take(self, already: int) -> list[Waiter[T, R]]:
        """Everything queued (up to ``batch_max`` with the ``already`` held items)."""
        n = len(self._queue) if not self._batch_max else max(0, min(len(self._queue), self._batch_max - already))
        if n == 0:
            return []
        items = [self._queue.popleft() for _ in range(n)]
        self.queued_bytes -= sum(w.size for w in items)
        self._space.set()
        return items

