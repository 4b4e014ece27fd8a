"""One target's delivery loop: claim due rows, send each object's rows in order, record each outcome.

Per target: at most ``concurrency`` requests on the wire (SendSlots; more chains than that may be
claimed, so that sends go on while other chains wait for their outcomes' commits), ``rate_limit``
requests/s (token bucket), and a circuit breaker that pauses a failing target and lets one probe
through. Each outcome is recorded (relay.deliver.outcomes) before the object's next row goes out; if
it never lands, or the row is no longer ours, the chain stops there and hands the row back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from relay import metrics
from relay.deliver import senders
from relay.deliver.backoff import (
    CircuitBreaker,
    Deferred,
    Delivered,
    Outcome,
    Permanent,
    Retryable,
    Settlement,
    TokenBucket,
    settle,
)
from relay.deliver.outcomes import LEASE_SAFETY
from relay.deliver.slots import SendSlots
from relay.errors import StoreError
from relay.routing.model import Target
from relay.store.base import EventRecord
from relay.store.outbox import ClaimedDelivery, OutcomeWrite

if TYPE_CHECKING:
    from relay.deliver.dispatcher import Dispatcher

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.25  # longest a due row waits when no wake-up arrives
LEASE_MARGIN = 30.0  # lease = target.timeout + this, renewed by the dispatcher while a row is held
CHAIN_MAX = 16  # rows of one object one claim may take (sent one after another)
# Chains per target = concurrency * CHAIN_OVERLAP; requests on the wire stay <= concurrency. A chain
# spends most of its time waiting for the commit of its last outcome (it must be durable before the
# object's next row goes out), so with one chain per wire slot the slots sit idle during commits.
CHAIN_OVERLAP = 4
MAX_CLAIM_ROWS = 256
EVENT_CLAIM_GAP = 0.05  # new events trigger at most one claim per this many seconds
DRAIN_GRACE = 10.0  # on stop, sends on the wire get this long to finish
PAUSE_AFTER_ERROR = 1.0

Chain = list[tuple[ClaimedDelivery, "EventRecord | None"]]


class TargetLoop:
    """Claims and sends for one target; ``target`` is swapped on reload, read again for every claim.

    A claim takes up to CHAIN_MAX rows per object; each object's rows go out one after another in
    one task (a *chain*), so a busy object costs one claim per chain instead of one per row. A chain
    stops at a row that must wait (retry), and hands the rest back to ``pending`` untouched.

    Up to ``concurrency * CHAIN_OVERLAP`` chains run at once, but a send needs one of the target's
    ``concurrency`` SendSlots: while one chain waits for its outcome to commit (before its object's
    next row may go out) another chain's request uses the slot. Order per object is unaffected (one
    chain per object, and a claim never takes the head of an object that has a row in flight).
    """

    def __init__(self, target: Target, dispatcher: Dispatcher) -> None:
        self.target = target
        self.d = dispatcher
        self.kick = asyncio.Event()
        self.retired = False
        self.stopping = False
        self.ready: deque[Chain] = deque()  # claimed, not started
        self.chains: set[asyncio.Task[None]] = set()
        # claimed and not settled, with the monotonic time their lease ends; their leases are renewed
        self.held: dict[int, float] = {}
        self.sending = 0  # requests on the wire right now
        self.slots = SendSlots(target.concurrency)  # sending <= slots.held <= concurrency
        self.breaker = CircuitBreaker(target.retry_base, target.retry_max)
        self.bucket = TokenBucket(target.rate_limit, time.monotonic()) if target.rate_limit else None
        # earliest retry this loop scheduled itself: wake for it rather than waiting for the next poll
        self.retry_at: float | None = None
        self.unblocked = False  # a chain finished since the last claim
        self.full_claim = False  # the last claim got all the heads it asked for: more are likely due
        self.last_claim = float("-inf")

    def update(self, target: Target) -> None:
        if target.rate_limit != self.target.rate_limit:
            self.bucket = TokenBucket(target.rate_limit, time.monotonic()) if target.rate_limit else None
        self.breaker.base, self.breaker.cap = target.retry_base, target.retry_max
        self.slots.resize(target.concurrency)
        self.target = target
        self.kick.set()

    def retire(self) -> None:
        """Stop claiming (the target left the config); sends on the wire still finish."""
        self.retired = True
        self.kick.set()

    async def renew(self) -> None:
        """Lease heartbeat for every row this loop holds (queued, paced or being sent)."""
        ids, lease, start = sorted(self.held), self.target.timeout + LEASE_MARGIN, time.monotonic()
        kept = await self.d.outbox.extend(ids, self.d.owner, lease)
        for i in ids:
            if i in self.held:
                # a row whose claim is gone (lease over, taken back) must not be sent on that claim
                self.held[i] = max(self.held[i], start + lease) if i in kept else 0.0

    def breaker_state(self, now: float) -> int:
        """For the gauge: 0 closed, 1 half-open (a probe may go), 2 open (sends paused)."""
        if not self.breaker.is_open:
            return 0
        return 2 if self.breaker.wait(now) > 0 else 1

    def max_chains(self) -> int:
        return self.target.concurrency * CHAIN_OVERLAP

    async def run(self, stop: asyncio.Event) -> None:
        polled = True
        try:
            while not (stop.is_set() or self.retired):
                self.kick.clear()
                try:
                    wait = await self._step(polled)
                except StoreError as exc:
                    logger.warning("claiming deliveries failed", extra={"target": self.target.name, "error": str(exc)})
                    wait = PAUSE_AFTER_ERROR
                except Exception:  # noqa: BLE001 - a bug here must not take the receiver down with it
                    logger.exception("delivery loop failed", extra={"target": self.target.name})
                    wait = PAUSE_AFTER_ERROR
                if self.retry_at is not None:
                    wait = min(wait, max(0.0, self.retry_at - time.monotonic()))
                polled = True
                if wait > 0 and not (stop.is_set() or self.retired):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.kick.wait(), wait)
                        polled = False
        finally:
            self.stopping = True
            await self._shutdown()

    async def _step(self, polled: bool) -> float:
        """Start what may start, claim more when the local queue runs low; returns how long to wait."""
        target, now = self.target, time.monotonic()
        if self.retry_at is not None and self.retry_at <= now:
            self.retry_at = None
        self._start_chains()
        allowance = self.breaker.allowance(now, self.sending)
        if allowance == 0 or len(self.ready) >= self.max_chains():
            # a finishing chain kicks us; an open breaker says when it lets a probe through
            return self.breaker.wait(now) or POLL_INTERVAL
        # A timer poll first asks cheaply (a read) whether anything is due. A kick for new events goes
        # straight on, at most every EVENT_CLAIM_GAP: under steady ingest the new rows mostly belong
        # to objects already in flight, and a claim per commit would only find them blocked. A chain
        # that finished unblocks its object, so that kick claims at once.
        # After a full claim neither applies: more is due, and the check would cost a read per claim.
        if polled and not self.full_claim and not await self.d.outbox.has_due(target.name):
            return POLL_INTERVAL
        if (not polled and not self.unblocked and not self.full_claim
                and now - self.last_claim < EVENT_CLAIM_GAP):
            return EVENT_CLAIM_GAP - (now - self.last_claim)
        self.unblocked, self.full_claim, self.last_claim = False, False, now
        room = 2 * self.max_chains() - len(self.ready) - len(self.chains)
        heads = 1 if allowance == 1 else max(1, min(self.d.claim_max, room))
        lease = target.timeout + LEASE_MARGIN
        lease_end = time.monotonic() + lease  # taken before the claim: never later than the database's
        rows = await self.d.outbox.claim(target.name, heads, self.d.owner, lease,
                                         chain=CHAIN_MAX, max_rows=MAX_CLAIM_ROWS, with_events=True)
        # a row of ours whose lease ran out (a stalled renewal) may come back: it is already in hand
        rows = [r for r in rows if r.id not in self.held]
        if not rows:
            return POLL_INTERVAL
        self.held.update((r.id, lease_end) for r in rows)
        chains: dict[str, Chain] = {}
        for row in rows:  # claim() sorts by (object, seq)
            chains.setdefault(row.object_key, []).append((row, row.event))
        self.ready.extend(chains.values())
        self._start_chains()
        self.full_claim = len(chains) >= heads
        return 0.0 if self.full_claim else POLL_INTERVAL

    def _start_chains(self) -> None:
        while self.ready and len(self.chains) < self.max_chains():
            allowance = self.breaker.allowance(time.monotonic(), self.sending)
            if allowance == 0 or (allowance == 1 and self.chains):
                return  # open, or half-open with its one probe already under way
            chain = self.ready.popleft()
            # Owned by this loop: run()'s finally (_shutdown) waits DRAIN_GRACE for them, then cancels
            # and awaits the rest; a TaskGroup would let one chain's failure cancel the target's others.
            task = asyncio.create_task(self._run_chain(chain), name=f"deliver-{self.target.name}-{chain[0][0].id}")
            self.chains.add(task)

    async def _run_chain(self, chain: Chain) -> None:
        settled_upto = 0
        try:
            for row, event in chain:
                await self.slots.acquire()
                try:
                    if self.stopping or self.retired or not await self._pace() or not self._lease_left(row):
                        break
                    self.sending += 1
                    try:
                        outcome, sent = await self._attempt(row, event)
                    except Exception as exc:  # noqa: BLE001 - a bug here must not lose the row: retry it later
                        logger.exception("delivery attempt failed unexpectedly",
                                         extra={"target": row.target, "seq": row.seq})
                        outcome, sent = Retryable(f"internal error: {type(exc).__name__}"), False
                    finally:
                        self.sending -= 1
                finally:
                    self.slots.release()
                settled = self._settle(row, event, outcome, sent)
                recorded = await self.d.writer.record(OutcomeWrite(
                    row.id, settled.state, settled.attempts, settled.next_attempt_at, settled.http_status,
                    settled.ocpi_status, settled.error,
                ), self.held)
                if not recorded:
                    # The outcome is not in the database, so this row is still open there: the
                    # object's next row must not go out. The row and the rest of the chain are handed
                    # back (or, if that fails too, come back when their lease ends); this row heads
                    # the object again and is sent again first.
                    break
                self.held.pop(row.id, None)
                settled_upto += 1
                if settled.state == "pending":
                    break  # this row waits for its retry: the object's later rows wait behind it
        finally:
            rest = [row.id for row, _ in chain[settled_upto:]]
            if rest:
                await self._release(rest)
            task = asyncio.current_task()
            if task is not None:
                self.chains.discard(task)
            self.unblocked = True
            self.kick.set()

    def _lease_left(self, row: ClaimedDelivery) -> bool:
        """Whether the row's lease outlasts a send of it (its timeout) with LEASE_SAFETY to spare."""
        if self.held.get(row.id, 0.0) - time.monotonic() >= self.target.timeout + LEASE_SAFETY:
            return True
        logger.warning("a claimed delivery's lease is nearly over (renewals failing?); it is handed back unsent",
                       extra={"target": row.target, "delivery_id": row.id, "seq": row.seq})
        return False

    async def _pace(self) -> bool:
        """Wait for the rate limit; False when the breaker says no (the chain hands its rest back)."""
        while True:
            now = time.monotonic()
            if self.breaker.allowance(now, self.sending) == 0:
                return False
            if self.bucket is None or self.bucket.take(1, now):
                return True
            await asyncio.sleep(self.bucket.wait(now))
            if self.stopping or self.retired:
                return False

    async def _release(self, ids: list[int]) -> None:
        for i in ids:
            self.held.pop(i, None)
        try:
            await self.d.outbox.release(ids, self.d.owner)
        except StoreError as exc:
            logger.warning("handing back claimed deliveries failed; their lease will expire",
                           extra={"target": self.target.name, "count": len(ids), "error": str(exc)})

    async def _attempt(self, row: ClaimedDelivery, event: EventRecord | None) -> tuple[Outcome, bool]:
        """(outcome, whether a request went out), under the config as it is now."""
        cfg = self.d.config()
        target = cfg.target(row.target)
        if target is None:
            # its rules went with it (a rule cannot name a missing target): wait for the target
            return Deferred(f"target {row.target} is no longer in config"), False
        rule = self.d.rule(cfg, row.rule)
        if rule is None:
            return Permanent(f"rule {row.rule} no longer in config"), False
        if row.target not in rule.to:
            return Permanent(f"rule {row.rule} no longer routes to target {row.target}"), False
        if event is None:
            return Permanent(f"event seq {row.seq} is no longer in the log"), False
        return await senders.attempt(self.d.session, target, rule, row.id, event)

    def _settle(self, row: ClaimedDelivery, event: EventRecord | None, outcome: Outcome, sent: bool) -> Settlement:
        """The row's next state, plus the breaker, metrics and log lines that go with it."""
        target, now = self.target, datetime.now(UTC)
        settled = settle(outcome, row.attempts, sent, target.max_attempts, target.retry_base, target.retry_max, now)
        fields = {"target": row.target, "delivery_id": row.id, "seq": row.seq, "attempt": settled.attempts}
        if isinstance(outcome, Delivered):
            self.breaker.success()
            if event is not None:
                metrics.DELIVERY_LATENCY.labels(row.target).observe(max(0.0, (now - event.received_at).total_seconds()))
        elif isinstance(outcome, Retryable) and sent and self.breaker.failure(time.monotonic()):
            logger.warning("target paused after repeated failures; a probe follows",
                           extra={**fields, "pause_s": round(self.breaker.interval(), 3), "reason": outcome.reason})
        elif isinstance(outcome, Permanent) and sent:
            self.breaker.success()  # a definite refusal still proves the partner is up
        if settled.state == "pending" and not isinstance(outcome, Deferred):
            due = time.monotonic() + (settled.next_attempt_at - now).total_seconds()
            self.retry_at = due if self.retry_at is None else min(self.retry_at, due)
            logger.debug("delivery will be retried", extra={**fields, "reason": settled.error})
        if settled.state == "dead":
            logger.warning("delivery is dead", extra={**fields, "rule": row.rule, "reason": settled.error,
                                                      "http_status": settled.http_status,
                                                      "ocpi_status": settled.ocpi_status})
        outcome_label = {"done": "delivered", "dead": "dead"}.get(settled.state, "retry")
        if not isinstance(outcome, Deferred):
            metrics.DELIVERIES.labels(row.target, outcome_label).inc()
        return settled

    async def _shutdown(self) -> None:
        # chains not started go back to pending now: a restart or another replica takes them at once
        queued = [row.id for chain in self.ready for row, _ in chain]
        self.ready.clear()
        if queued:
            await self._release(queued)
        if not self.chains:
            return
        # running chains stop after their current send; a send still out after the grace is cut off
        # and its row handed back (the partner may then get it twice: at-least-once)
        _, pending = await asyncio.wait(list(self.chains), timeout=DRAIN_GRACE)
        if pending:
            logger.warning("sends still running at shutdown were cut off; they will be sent again",
                           extra={"target": self.target.name, "count": len(pending)})
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
