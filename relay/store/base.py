"""The Store interface and the records it returns.

Everything above ``relay.store`` talks to the database through these names only; rows never leave
the package as driver or SQLModel objects (the way eventsourcing's recorders return ``Notification``).

``Store`` is composed of one interface per concern, the way eventsourcing splits its recorders:
``EventLog`` here (events, states, cursors, rejected requests), ``Positions`` (relay.store.positions:
where each pull source stands) and ``Outbox`` (relay.store.outbox: the delivery queue, made by
``Store.outbox``). Each is implemented once on SQLAlchemy (relay.store.sql, relay.store.sql_outbox)
with the dialect's parts in relay.store.sqlite and relay.store.postgres.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from relay.store.positions import Positions

if TYPE_CHECKING:
    from relay.store.outbox import Outbox


@dataclass(frozen=True, slots=True)
class StateKey:
    module: str
    country_code: str
    party_id: str
    object_id: str

    def as_str(self) -> str:
        return f"{self.module}/{self.country_code}/{self.party_id}/{self.object_id}"


@dataclass(frozen=True, slots=True)
class StoredState:
    key: StateKey
    object: dict[str, Any]
    object_hash: str
    last_updated: datetime | None
    last_seq: int
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class EventRecord:
    seq: int
    module: str
    action: str
    country_code: str
    party_id: str
    object_id: str
    evse_uid: str | None
    connector_id: str | None
    last_updated: datetime | None
    received_at: datetime
    origin: str
    subscription: str | None
    request_id: str | None
    status: str
    body: str
    object: str | None


@dataclass(slots=True)
class NewEvent:
    """An event an operation wants appended; the writer gives it its ``seq``."""

    module: str
    action: str
    country_code: str
    party_id: str
    object_id: str
    evse_uid: str | None
    connector_id: str | None
    last_updated: datetime | None
    received_at: datetime
    origin: str
    subscription: str | None
    request_id: str | None
    status: str
    body: str
    body_hash: str
    object: str | None


@dataclass(frozen=True, slots=True)
class NewDelivery:
    target: str
    rule: str
    object_key: str


@dataclass(slots=True)
class NewRejected:
    received_at: datetime
    subscription: str | None
    origin: str
    method: str
    path: str
    module: str | None
    http_status: int
    status_code: int
    reason: str
    body: bytes
    request_id: str | None


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    id: int
    received_at: datetime
    subscription: str | None
    origin: str
    method: str
    path: str
    module: str | None
    http_status: int
    status_code: int
    reason: str
    body: bytes
    request_id: str | None
    replayed_at: datetime | None
    replay_seq: int | None

    def summary(self) -> dict[str, Any]:
        """The documented JSON shape of a `relay rejected list --json` entry."""
        return {
            "id": self.id,
            "received_at": self.received_at.isoformat().replace("+00:00", "Z"),
            "subscription": self.subscription,
            "method": self.method,
            "path": self.path,
            "module": self.module,
            "http_status": self.http_status,
            "status_code": self.status_code,
            "reason": self.reason,
            "replayed_at": self.replayed_at.isoformat().replace("+00:00", "Z") if self.replayed_at else None,
        }


@dataclass(slots=True)
class StateWrite:
    key: StateKey
    object: dict[str, Any]
    object_hash: str
    last_updated: datetime | None
    deleted: bool = False
    text: str | None = None  # ``object`` as JSON when the operation already serialised it


@dataclass(slots=True)
class Plan:
    """What one operation decided, given the current states it asked for.

    ``event`` is appended (and gets a seq), ``states`` are upserted with ``last_seq`` = that seq,
    ``deliveries`` reference the event, ``rejected`` is kept, ``result`` goes back to the caller
    unchanged, and ``seq`` is filled in once the event is numbered.
    """

    event: NewEvent | None = None
    states: list[StateWrite] = field(default_factory=list)
    deliveries: list[NewDelivery] = field(default_factory=list)
    rejected: NewRejected | None = None
    result: Any = None
    rejected_replay: tuple[int, datetime] | None = None  # (rejected id, replayed_at): mark it replayed
    seq: int | None = None  # filled in by the writer when ``event`` is appended


class Operation(Protocol):
    """A unit of work for the group-commit writer: which states it reads and how it decides.

    ``plan`` may run more than once: when the database refuses some row of a batch, the batch is
    retried in smaller transactions to isolate the operation at fault, so ``plan`` must decide from
    ``states`` alone. An operation may also carry ``size``: the bytes it holds while queued (the
    queue is bounded in bytes).
    """

    @property
    def reads(self) -> Sequence[StateKey]: ...

    def plan(self, states: Mapping[StateKey, StoredState | None]) -> Plan: ...


@dataclass(frozen=True, slots=True)
class EventFilter:
    modules: frozenset[str] | None = None
    cpos: tuple[tuple[str, str], ...] | None = None  # (cc, party) with "*" wildcards
    object_ids: frozenset[str] | None = None
    subscriptions: frozenset[str] | None = None  # names of the subscriptions / pull sources events came by


@dataclass(frozen=True, slots=True)
class CommitTiming:
    """How one group commit went, for ``relay.store.observe_commits`` (bench/relay_wrapper.py).

    ``commit_ms`` is the event loop's wait (hand-off to the writer thread, transaction, hand-back);
    ``hop_in_ms`` / ``hop_out_ms`` the waits for the thread to start and for the loop to resume
    (GIL and loop contention); ``thread_ms`` / ``thread_cpu_ms`` the writer thread's wall and CPU
    time; ``apply_ms`` / ``apply_cpu_ms`` the part of it before COMMIT (lock, max(seq), state reads,
    planning, executemany)."""

    ops: int
    commit_ms: float
    hop_in_ms: float
    thread_ms: float
    thread_cpu_ms: float
    apply_ms: float
    apply_cpu_ms: float
    hop_out_ms: float


class EventLog(abc.ABC):
    """The event log with the current state of every object, consumers' cursors and refused requests."""

    # -- writes ----------------------------------------------------------------------------------
    @abc.abstractmethod
    async def submit(self, op: Operation) -> Plan:
        """Queue ``op`` for the next group commit; returns its plan once it is durably committed."""

    # -- states ----------------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_state(self, key: StateKey) -> StoredState | None:
        """Current state of one object (deleted ones included, flagged)."""

    @abc.abstractmethod
    async def find_states(self, module: str, object_id: str, *, case_insensitive: bool = False) -> list[StoredState]:
        """All states of ``module`` with this id, under any CPO (CDR attribution, immutability)."""

    @abc.abstractmethod
    async def list_states(
        self, module: str, cpos: Sequence[tuple[str, str]] | None, after: tuple[str, str, str] | None, limit: int
    ) -> list[StoredState]:
        """States ordered by (country_code, party_id, object_id), strictly after ``after``."""

    # -- events ----------------------------------------------------------------------------------
    @abc.abstractmethod
    async def read_events(
        self, after_seq: int, limit: int, flt: EventFilter | None = None, *, applied_only: bool = True
    ) -> list[EventRecord]:
        """Events with seq > ``after_seq`` in seq order, at most ``limit``."""

    @abc.abstractmethod
    async def max_seq(self) -> int:
        """Highest committed seq (0 when the log is empty)."""

    @property
    @abc.abstractmethod
    def latest_seq(self) -> int:
        """The highest seq this process knows of (no database round trip; see ``wait_for_events``)."""

    @abc.abstractmethod
    async def first_seq_since(self, since: datetime) -> int:
        """The seq just before the first event received at or after ``since``."""

    @abc.abstractmethod
    async def wait_for_events(self, after_seq: int, timeout: float) -> int:
        """Wait until an event with seq > ``after_seq`` may exist (or timeout); returns the last known seq."""

    # -- cursors ---------------------------------------------------------------------------------
    @abc.abstractmethod
    async def get_cursor(self, name: str) -> int | None:
        """Committed seq of a durable consumer."""

    @abc.abstractmethod
    async def commit_cursor(self, name: str, seq: int) -> None:
        """Store a durable consumer's cursor (never moves backwards)."""

    # -- rejected requests -----------------------------------------------------------------------
    @abc.abstractmethod
    async def list_rejected(self, limit: int = 1000, *, only_open: bool = False) -> list[RejectedRecord]:
        """Refused requests, newest last."""

    @abc.abstractmethod
    async def get_rejected(self, rejected_id: int) -> RejectedRecord | None:
        """One refused request, or None."""

    @abc.abstractmethod
    async def update_rejected_reason(self, rejected_id: int, http_status: int, status_code: int, reason: str) -> None:
        """A replay failed again: keep the record with the new reason."""


class Store(EventLog, Positions):
    """Durable storage of the relay; one implementation per database family (``open_store`` picks it).

    Every method raises ``relay.errors.StoreError`` when the database fails; driver errors never
    leave the package.
    """

    dialect: str

    # -- lifecycle -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def start(self) -> None:
        """Open connections and start the group-commit writer."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Drain queued operations, stop the writer and close connections."""

    @abc.abstractmethod
    async def migrate(self) -> None:
        """Bring the schema to the newest revision."""

    # -- the outbox ------------------------------------------------------------------------------
    @abc.abstractmethod
    def outbox(self, *, own_thread: bool = False) -> Outbox:
        """The delivery queue on this store (see relay.store.outbox); close it with ``Outbox.close``.

        ``own_thread=True`` (what the delivery workers use) lets the backend run the outbox's write
        transactions on a thread and connection of their own where that is faster (SQLite)."""

    # -- operations ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the database answers."""

    @abc.abstractmethod
    async def schema_revision(self) -> str | None:
        """The Alembic revision the database is at (None when it cannot be read)."""

    @abc.abstractmethod
    async def stats(self) -> dict[str, Any]:
        """Counts for `relay status`: events, last seq, unmatched, rejected, outbox per target, consumers."""
