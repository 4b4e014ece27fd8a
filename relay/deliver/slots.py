"""SendSlots: the bound on a target's requests on the wire, resizable on config reload."""

from __future__ import annotations

import asyncio
from collections import deque


class SendSlots:
    """A FIFO semaphore whose size follows config reloads (``asyncio.Semaphore`` cannot be resized).

    It bounds the requests a target has on the wire to ``concurrency``, independently of how many
    chains are claimed: a chain holds a slot only around one send, never while its outcome commits.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.held = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def resize(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._wake()

    async def acquire(self) -> None:
        if self.held < self.capacity and not self._waiters:
            self.held += 1
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.release()  # handed a slot, then cancelled before using it: pass it on
            raise

    def release(self) -> None:
        self.held -= 1
        self._wake()

    def _wake(self) -> None:
        # a slot is handed over (counted here) rather than freed, so a newcomer cannot jump the queue
        while self._waiters and self.held < self.capacity:
            future = self._waiters.popleft()
            if not future.done():  # a cancelled waiter is skipped
                self.held += 1
                future.set_result(None)
