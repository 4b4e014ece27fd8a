"""SQLModel tables: event log, current state, outbox, consumers, rejected requests.

The schema lives here and in the Alembic revisions; the hot path writes these tables with batched
Core statements (``store/writer.py``), never with an ORM session per request.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, LargeBinary, String, Text
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite keeps no zone, so it stores naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _ts(nullable: bool = False, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UtcDateTime(), nullable=nullable, index=index))


class Event(SQLModel, table=True):
    """Append-only log of everything accepted. ``seq`` is assigned under the append lock."""

    __tablename__ = "event"
    __table_args__ = (
        Index("ix_event_object", "module", "country_code", "party_id", "object_id", "seq"),
        Index("ix_event_received_at", "received_at"),
        # streams read "status = 'applied' AND seq > N ORDER BY seq": (status, seq) serves it in order
        Index("ix_event_status_seq", "status", "seq"),
    )

    seq: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    module: str = Field(sa_column=Column(String(32), nullable=False))
    action: str = Field(sa_column=Column(String(16), nullable=False))
    country_code: str = Field(sa_column=Column(String(2), nullable=False))
    party_id: str = Field(sa_column=Column(String(3), nullable=False))
    object_id: str = Field(sa_column=Column(String(64), nullable=False))
    evse_uid: str | None = Field(default=None, sa_column=Column(String(64)))
    connector_id: str | None = Field(default=None, sa_column=Column(String(64)))
    last_updated: datetime | None = _ts(nullable=True)
    received_at: datetime = _ts()
    origin: str = Field(sa_column=Column(String(16), nullable=False))  # push | pull | replay
    subscription: str | None = Field(default=None, sa_column=Column(String(100)))
    request_id: str | None = Field(default=None, sa_column=Column(String(64)))
    # applied: changed the state and is streamed/forwarded; stale: older than the state, kept only;
    # unmatched: an EVSE/connector push whose parent could not be found (surfaced by `relay status`)
    status: str = Field(sa_column=Column(String(16), nullable=False))
    # body and object as they were written before revision 0005; rows written since keep body = '' and
    # object = NULL and hold both in ``packed`` (format: relay.store.packing; the store's reads decode it)
    body: str = Field(sa_column=Column(Text, nullable=False))
    body_hash: str = Field(sa_column=Column(String(64), nullable=False))
    object: str | None = Field(default=None, sa_column=Column(Text))
    packed: bytes | None = Field(default=None, sa_column=Column(LargeBinary))


class State(SQLModel, table=True):
    """Merged current state of every object, one row per (module, CPO, id); locations nest EVSEs."""

    __tablename__ = "state"
    # No index on a column every update changes (last_seq, object, ...): PostgreSQL then updates rows
    # in place on their page (HOT) instead of leaving a dead row and new index entries per push.
    __table_args__ = (Index("ix_state_module_object_id", "module", "object_id"),)

    module: str = Field(sa_column=Column(String(32), primary_key=True))
    country_code: str = Field(sa_column=Column(String(2), primary_key=True))
    party_id: str = Field(sa_column=Column(String(3), primary_key=True))
    object_id: str = Field(sa_column=Column(String(64), primary_key=True))
    object: str = Field(sa_column=Column(Text, nullable=False))
    object_hash: str = Field(sa_column=Column(String(64), nullable=False))
    last_updated: datetime | None = _ts(nullable=True)
    last_seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    deleted: bool = Field(default=False, nullable=False)
    updated_at: datetime = _ts()


class Delivery(SQLModel, table=True):
    """Outbox: one row per (event, rule, target), written in the event's transaction."""

    __tablename__ = "delivery"
    __table_args__ = (
        Index("ix_delivery_due", "state", "target", "next_attempt_at"),
        Index("ix_delivery_order", "target", "object_key", "seq"),
        Index("ix_delivery_seq", "seq"),
    )

    id: int | None = Field(default=None, sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    target: str = Field(sa_column=Column(String(100), nullable=False))
    rule: str = Field(sa_column=Column(String(100), nullable=False))
    object_key: str = Field(sa_column=Column(String(200), nullable=False))
    state: str = Field(sa_column=Column(String(16), nullable=False))  # pending|in_flight|done|dead
    attempts: int = Field(default=0, nullable=False)
    next_attempt_at: datetime = _ts()
    claimed_by: str | None = Field(default=None, sa_column=Column(String(100)))
    claimed_until: datetime | None = _ts(nullable=True)
    last_http_status: int | None = Field(default=None)
    last_ocpi_status: int | None = Field(default=None)
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class Consumer(SQLModel, table=True):
    """Durable gRPC cursor: the last seq a named consumer committed."""

    __tablename__ = "consumer"

    name: str = Field(sa_column=Column(String(200), primary_key=True))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    updated_at: datetime = _ts()


class Rejected(SQLModel, table=True):
    """A refused request, kept as received (minus credentials) so it can be inspected and replayed."""

    __tablename__ = "rejected"
    __table_args__ = (Index("ix_rejected_received_at", "received_at"),)

    id: int | None = Field(default=None, sa_column=Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True))
    received_at: datetime = _ts()
    subscription: str | None = Field(default=None, sa_column=Column(String(100)))
    origin: str = Field(default="push", sa_column=Column(String(16), nullable=False))
    method: str = Field(sa_column=Column(String(10), nullable=False))
    path: str = Field(sa_column=Column(Text, nullable=False))
    module: str | None = Field(default=None, sa_column=Column(String(32)))
    http_status: int = Field(nullable=False)
    status_code: int = Field(nullable=False)
    reason: str = Field(sa_column=Column(Text, nullable=False))
    body: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    request_id: str | None = Field(default=None, sa_column=Column(String(64)))
    replayed_at: datetime | None = _ts(nullable=True)
    replay_seq: int | None = Field(default=None, sa_column=Column(BigInteger))


metadata = SQLModel.metadata
EVENT = Event.__table__  # type: ignore[attr-defined]
STATE = State.__table__  # type: ignore[attr-defined]
DELIVERY = Delivery.__table__  # type: ignore[attr-defined]
CONSUMER = Consumer.__table__  # type: ignore[attr-defined]
REJECTED = Rejected.__table__  # type: ignore[attr-defined]


class PullPosition(SQLModel, table=True):
    """Where each pull source stands per module: the next incremental pull asks ``date_from=position``."""

    __tablename__ = "pull_position"

    source: str = Field(sa_column=Column(String(100), primary_key=True))
    module: str = Field(sa_column=Column(String(32), primary_key=True))
    position: datetime | None = _ts(nullable=True)
    last_run_at: datetime | None = _ts(nullable=True)
    last_status: str | None = Field(default=None, sa_column=Column(Text))
    updated_at: datetime = _ts()


PULL_POSITION = PullPosition.__table__  # type: ignore[attr-defined]
