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
from collections.abc import Callable, Mapping, Sequence
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


@dataclass(frozen=True, slots=True)
class Monitoring:
    """What ``Store.monitoring`` counts for the gauges an on-call person is alerted by (README "Alerts")."""

    silent_sessions: int  # ACTIVE sessions not updated since the session cutoff
    silent_locations: int  # live locations not updated since the location cutoff
    locations: int  # live (not deleted) locations
    oldest_open: dict[str, datetime]  # target -> created_at of its oldest pending/in-flight delivery
    consumer_lag: dict[str, int]  # durable consumer -> events after its committed seq
    database_bytes: int | None  # None when the size cannot be read


@dataclass(frozen=True, slots=True)
class RetentionHold:
    """Something that still needs events, so retention cannot remove them (`relay status`).

    ``kind`` is ``consumer`` (a durable cursor: it needs every event after ``seq - 1``) or ``outbox``
    (a target with pending, in-flight or dead deliveries: it needs the event ``seq`` and later ones of
    its own). ``since`` is when the first needed event was received (None when it is not stored)."""

    kind: str
    name: str
    seq: int
    since: datetime | None


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What one retention pass removed (or, ``dry_run``, would remove) and what it had to keep.

    ``events_kept`` counts the events received before ``cutoff`` still stored afterwards: the latest
    event of an object, events a durable consumer has not passed yet (``held_by_consumer``: events
    per consumer), events with an open delivery (``held_by_outbox``: events per target) and events a
    kept refusal was replayed as. ``pages_freed``: database pages given back to the file system
    (SQLite with ``auto_vacuum=INCREMENTAL``; 0 elsewhere)."""

    cutoff: datetime
    dry_run: bool
    events: int = 0
    deliveries: int = 0
    rejected: int = 0
    events_kept: int = 0
    held_by_consumer: dict[str, int] = field(default_factory=dict)
    held_by_outbox: dict[str, int] = field(default_factory=dict)
    pages_freed: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The documented JSON shape of `relay prune --json`."""
        return {
            "cutoff": self.cutoff.isoformat().replace("+00:00", "Z"),
            "dry_run": self.dry_run,
            "removed": {"event": self.events, "delivery": self.deliveries, "rejected": self.rejected},
            "events_kept": self.events_kept,
            "held_by_consumer": dict(self.held_by_consumer),
            "held_by_outbox": dict(self.held_by_outbox),
            "pages_freed": self.pages_freed,
        }


PruneProgress = Callable[[str, int], None]  # (table, rows removed from it so far)
PRUNE_CHUNK = 100  # rows per prune transaction by default: ~3 ms of DELETE on SQLite (bench/prune.py)


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """What ``Store.backup`` wrote: a consistent copy holding every event up to ``last_seq``."""

    path: str
    pages: int
    bytes: int
    last_seq: int


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

    @abc.abstractmethod
    async def monitoring(self, *, sessions_before: datetime, locations_before: datetime) -> Monitoring:
        """The periodic monitoring counts (cheap: run every minute or so): ACTIVE sessions last updated
        before ``sessions_before``, live locations last updated before ``locations_before`` (an EVSE
        update updates its location), the oldest open delivery per target, each durable consumer's lag,
        and the database's size on disk."""

    # -- retention -------------------------------------------------------------------------------
    @abc.abstractmethod
    async def prune(self, cutoff: datetime, *, dry_run: bool = False, chunk: int = PRUNE_CHUNK,
                    progress: PruneProgress | None = None) -> PruneReport:
        """Remove what is older than ``cutoff`` and no longer needed, in transactions of at most
        ``chunk`` rows each (ingest goes first between them), and report the counts per table.

        Removed: refusals received before ``cutoff`` (replayed ones only once their replay is older
        than ``cutoff`` too); delivered (``done``) outbox rows last updated before ``cutoff``; events
        received before ``cutoff`` that every durable consumer's cursor has passed, that no pending,
        in-flight or dead delivery and no kept refusal's ``replay_seq`` refers to, and that are not
        the latest event of their object nor the one a current state's ``last_seq`` points to. Current
        states are never touched. ``dry_run`` counts the same rows and removes nothing. ``progress``
        is called after each chunk. SQLite then gives freed pages back (``incremental_vacuum``)."""

    @abc.abstractmethod
    async def retention_holds(self) -> list[RetentionHold]:
        """Durable consumers and outbox targets that still need events, oldest need first."""

    @abc.abstractmethod
    async def rejected_counts(self) -> dict[str | None, int]:
        """Stored refusals per subscription (or pull source): seeds the bound on `rejected`."""

    @abc.abstractmethod
    async def backup(self, path: str, progress: Callable[[int, int], None] | None = None) -> BackupInfo:
        """Write a consistent copy of the database to the new file ``path`` while writers go on.

        ``progress(done, total)`` (pages) is called from a worker thread as the copy proceeds. A
        backend whose copies are made by the database's own tools raises ``relay.errors.ConfigError``
        saying which."""
