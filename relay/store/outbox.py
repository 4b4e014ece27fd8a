"""The outbox: claim due deliveries in per-object order, record outcomes, dead letters, replays.

Order per (target, object): a row can head a claim only while no other row of the same (target,
object_key) is ``in_flight`` and no row before it in (seq, id) order is ``pending``; the same claim
may take the object's next due rows behind it (a chain, sent one after another by one worker). A
``dead`` row does not block: later changes of that object go on (a partner that refuses one version
still gets the newer ones; the operator sees the dead one in `relay dead list` and can retry it).
Expired leases are turned back into ``pending`` by ``reap_expired``, so claims only look at
``pending`` rows.

PostgreSQL claims heads with ``FOR UPDATE SKIP LOCKED`` so replicas never take the same row: a
concurrent claim whose snapshot predates ours still sees our head as ``pending`` (so it keeps
blocking the object's later rows), and once our claim commits it re-checks the head as
``in_flight`` and skips it. Only the owner of an object's head ever locks that object's other rows.
SQLite serialises write transactions (the write engine begins IMMEDIATE), so a claim is atomic
there. Claims and outcomes are separate, short transactions: nothing is held across a send.

This module declares the interface and its records; the SQL is in relay.store.sql_outbox, the
dialects' parts (row locks, the SQLite workers' own thread) in relay.store.sqlite / postgres.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from relay.store.base import EventRecord

if TYPE_CHECKING:
    from relay.store.base import Store

OPEN_STATES = ("pending", "in_flight")


def _iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A row this worker now owns until ``claimed_until``; ``attempts`` counts earlier attempts."""

    id: int
    seq: int
    target: str
    rule: str
    object_key: str
    attempts: int
    created_at: datetime
    claimed_until: datetime
    event: EventRecord | None = field(default=None, compare=False)  # claim(with_events=True) only


@dataclass(frozen=True, slots=True)
class OutcomeWrite:
    """The new state of one claimed row after an attempt (``done``, ``pending`` again, or ``dead``)."""

    id: int
    state: str
    attempts: int
    next_attempt_at: datetime
    http_status: int | None = None
    ocpi_status: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One outbox row as the operator commands show it."""

    id: int
    seq: int
    target: str
    rule: str
    object_key: str
    state: str
    attempts: int
    next_attempt_at: datetime
    claimed_by: str | None
    last_http_status: int | None
    last_ocpi_status: int | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime

    def summary(self) -> dict[str, Any]:
        """The documented JSON shape of a `relay dead list --json` entry."""
        return {
            "id": self.id,
            "seq": self.seq,
            "target": self.target,
            "rule": self.rule,
            "object_key": self.object_key,
            "attempts": self.attempts,
            "last_http_status": self.last_http_status,
            "last_ocpi_status": self.last_ocpi_status,
            "last_error": self.last_error,
            "updated_at": _iso(self.updated_at),
        }


@dataclass(frozen=True, slots=True)
class NewOutboxRow:
    """A delivery that `relay replay` adds for an event already in the log."""

    seq: int
    target: str
    rule: str
    object_key: str


class Outbox(abc.ABC):
    """The delivery queue: the workers' claims and outcomes, and the operator's dead letters and replays.

    Made by ``Store.outbox``; every method raises ``relay.errors.StoreError`` when the database fails.
    """

    store: Store  # the store it belongs to (the workers follow its events)

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what the outbox holds of its own (the workers' thread and connection, if any)."""

    # -- the worker's side ------------------------------------------------------------------------
    @abc.abstractmethod
    async def has_due(self, target: str, now: datetime | None = None) -> bool:
        """Cheap read-only check before a claim (which is a write transaction)."""

    @abc.abstractmethod
    async def claim(self, target: str, limit: int, owner: str, lease: float, *,
                    chain: int = 1, max_rows: int = 256, with_events: bool = False) -> list[ClaimedDelivery]:
        """Take due rows of ``target`` for ``lease`` seconds: the oldest open row of up to ``limit``
        objects, each followed by up to ``chain - 1`` later due rows of the same object (in seq
        order, with no open row skipped), at most ``max_rows`` in all. Sorted by (object, seq).

        ``with_events`` reads each row's event in the same transaction (``ClaimedDelivery.event``,
        None when the event is gone): one round trip less than a separate ``events`` call."""

    @abc.abstractmethod
    async def release(self, ids: Sequence[int], owner: str) -> None:
        """Claimed rows that were not attempted go back to ``pending`` untouched (no attempt counted)."""

    @abc.abstractmethod
    async def extend(self, ids: Sequence[int], owner: str, lease: float) -> set[int]:
        """Heartbeat: keep the lease of rows this worker still holds (queued or being sent).

        Returns the ids whose lease was extended; a missing one is no longer this owner's claim."""

    @abc.abstractmethod
    async def events(self, seqs: Iterable[int]) -> dict[int, EventRecord]:
        """The events the claimed rows refer to, by seq (missing ones are left out)."""

    @abc.abstractmethod
    async def record(self, outcomes: Sequence[OutcomeWrite], owner: str) -> set[int]:
        """Store attempt outcomes in one transaction, fenced: only rows still claimed by ``owner``.

        Returns the ids that were not written because the row is no longer this owner's claim (its
        lease ended and it was taken back or over): that attempt's outcome is void, and the caller
        must not treat the row as settled (the object's next row must not follow it)."""

    @abc.abstractmethod
    async def reap_expired(self) -> int:
        """Rows whose claimer vanished (lease over) become ``pending`` again; no attempt is counted."""

    @abc.abstractmethod
    async def counts(self) -> dict[str, tuple[int, int]]:
        """(pending + in_flight, dead) per target, for the gauges; done rows are not scanned."""

    # -- the operator's side ----------------------------------------------------------------------
    @abc.abstractmethod
    async def list_rows(self, state: str | None = None, target: str | None = None,
                        limit: int = 1000) -> list[DeliveryRecord]:
        """Outbox rows (of one state and/or target), oldest first."""

    async def list_dead(self, target: str | None = None, limit: int = 1000) -> list[DeliveryRecord]:
        """Dead deliveries, oldest first."""
        return await self.list_rows("dead", target, limit)

    @abc.abstractmethod
    async def get(self, delivery_id: int) -> tuple[DeliveryRecord, EventRecord | None] | None:
        """One delivery row (any state) with its event."""

    @abc.abstractmethod
    async def retry_dead(self, ids: Sequence[int] | None, target: str | None = None) -> list[int]:
        """Dead rows (the given ids, or all) back to ``pending`` now, with the attempt count reset."""

    @abc.abstractmethod
    async def enqueue_missing(self, rows: Sequence[NewOutboxRow]) -> int:
        """Insert the rows that have no ``pending``/``in_flight`` twin (same seq, target, rule) yet
        (`relay replay`); returns how many were inserted."""


__all__ = ["OPEN_STATES", "ClaimedDelivery", "DeliveryRecord", "NewOutboxRow", "Outbox", "OutcomeWrite"]
