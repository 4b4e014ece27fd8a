"""Recording delivery outcomes: group-committed, and retried while the rows' leases last.

A chain waits for its outcome and never sends the object's next row before it is committed. A
failed write is tried again (pauses doubling from RECORD_PAUSE up to RECORD_PAUSE_MAX), together
with whatever was queued meanwhile, while the rows' leases last; it is given up LEASE_SAFETY
before a lease may end, and the row is then sent again by whoever claims it next.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from relay.errors import StoreError
from relay.store.batcher import Batcher, Waiter
from relay.store.outbox import Outbox, OutcomeWrite

logger = logging.getLogger(__name__)

RECORD_PAUSE = 0.25
RECORD_PAUSE_MAX = 2.0
# A row is sent only with at least its timeout plus LEASE_SAFETY of lease left, so a send never
# outlives the claim it was made under; an outcome write is given up this long before the lease ends.
LEASE_SAFETY = 5.0


@dataclass(slots=True)
class _Outcome:
    write: OutcomeWrite
    leases: dict[int, float]  # the chain's loop's lease ends (monotonic) by row id


class OutcomeWriter:
    """Group commit for outcomes (relay.store.batcher): whatever finished while the previous write
    ran goes in the next."""

    def __init__(self, outbox: Outbox, owner: str) -> None:
        self.outbox = outbox
        self.owner = owner
        # A chain cut off at shutdown still has its outcome written: its request went out.
        self._batcher: Batcher[_Outcome, bool] = Batcher(self._write, on_error=self._failed, skip_cancelled=False)
        self._closing = asyncio.Event()
        self._failures = 0

    async def record(self, write: OutcomeWrite, leases: dict[int, float]) -> bool:
        """True once the outcome is committed. False when it is not: the row is no longer ours (its
        lease was taken over), or the write kept failing until the lease (``leases[write.id]``,
        monotonic) was about to end. The row then comes back with its lease, to be sent again."""
        return await self._batcher.submit(_Outcome(write, leases))

    def close(self) -> None:
        """Finish what is queued (one try each), then let ``run`` return."""
        self._closing.set()
        self._batcher.close()

    async def run(self) -> None:
        await self._batcher.run()

    async def _write(self, outcomes: list[_Outcome]) -> list[bool]:
        lost = await self.outbox.record([o.write for o in outcomes], self.owner)
        self._failures = 0
        if lost:
            logger.warning("delivery outcomes not recorded: those rows are no longer claimed by this worker",
                           extra={"count": len(lost)})
        return [o.write.id not in lost for o in outcomes]

    async def _failed(self, batch: list[Waiter[_Outcome, bool]], exc: BaseException) -> list[Waiter[_Outcome, bool]]:
        """Log, pause, and keep the writes whose lease outlasts the next try (the senders wait on them)."""
        if not isinstance(exc, Exception):
            return batch  # cancelled: the batcher stops
        self._failures += 1
        if isinstance(exc, StoreError):
            logger.warning("recording delivery outcomes failed",
                           extra={"error": str(exc), "attempt": self._failures, "count": len(batch)})
        else:
            logger.exception("recording delivery outcomes failed",
                             extra={"attempt": self._failures, "count": len(batch)})
        pause = min(RECORD_PAUSE_MAX, RECORD_PAUSE * 2 ** min(self._failures - 1, 8))
        keep = self._give_up_expiring(batch, time.monotonic() + pause)
        if keep:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), pause)
        return keep

    def _give_up_expiring(self, batch: list[Waiter[_Outcome, bool]], next_try: float) -> list[Waiter[_Outcome, bool]]:
        """Resolve (False) the writes whose lease ends before the next try could land; keep the rest."""
        keep: list[Waiter[_Outcome, bool]] = []
        closing = self._closing.is_set()
        for w in batch:
            o = w.item
            if closing or w.future.done() or o.leases.get(o.write.id, 0.0) - LEASE_SAFETY <= next_try:
                if not w.future.done():
                    w.future.set_result(False)
            else:
                keep.append(w)
        if len(keep) < len(batch):
            logger.error("delivery outcomes not recorded; those rows are sent again once their lease ends",
                         extra={"count": len(batch) - len(keep)})
        return keep
