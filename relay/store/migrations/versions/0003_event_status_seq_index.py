"""event (status, seq) index for stream reads

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 09:45:00

Streams read ``status = 'applied' AND seq > :n ORDER BY seq LIMIT 500``. With an index on status
alone SQLite (and PostgreSQL before ANALYZE) fetch every applied event and sort them per page;
(status, seq) returns the page in order.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("event") as batch:
        batch.drop_index("ix_event_status")
        batch.create_index("ix_event_status_seq", ["status", "seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("event") as batch:
        batch.drop_index("ix_event_status_seq")
        batch.create_index("ix_event_status", ["status"], unique=False)
