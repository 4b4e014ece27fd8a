"""compact events (packed body + object), HOT-friendly state, per-table autovacuum

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 10:00:00

- ``event.packed`` (nullable BLOB): rows written from now on keep their body and merged object there,
  once, zstd-compressed above 512 bytes (format: relay.store.packing), with ``body = ''`` and
  ``object = NULL``. Rows written before keep their text columns and are read from them: nothing is
  rewritten, the upgrade only adds a column (no table copy on SQLite, a catalog change on PostgreSQL).
- ``ix_state_last_seq`` dropped: no query filters or orders state by ``last_seq`` alone (the one
  ``ORDER BY last_seq`` reads one object id's rows through ``ix_state_module_object_id``), and an index
  on a column that changes on every update makes every PostgreSQL update of a state row a non-HOT one
  (a dead row version plus new entries in every index).
- PostgreSQL: ``state`` keeps half of each page free (fillfactor 50) for its HOT updates, and ``state``
  and ``delivery`` are vacuumed and analyzed after 2 % of their rows changed (default 20 % / 10 %), so
  dead rows are reclaimed while the table is small instead of after it doubled. Measured with 1.5 KB
  locations, 100 objects, 1,900 updates: fillfactor 75 made 88 % of them HOT and the table kept growing
  (108 pages), 50 made all of them HOT in 50 pages (two rows a page, room for their next versions).
  Its ``object`` is compressed in the row (STORAGE MAIN) instead of moved to the TOAST table, where a
  3.7 KB location was rewritten on every update: 5.6 MB of dead chunks for 100 rows after 1,900 updates.
  ``delivery`` keeps the default fillfactor: each of its updates (claim, outcome) changes ``state``,
  which the due index holds, so none can be HOT and free room on its pages would only be wasted.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

STATE_PARAMS = ("fillfactor", "autovacuum_vacuum_scale_factor", "autovacuum_analyze_scale_factor")
DELIVERY_PARAMS = ("autovacuum_vacuum_scale_factor", "autovacuum_analyze_scale_factor")


def upgrade() -> None:
    op.add_column("event", sa.Column("packed", sa.LargeBinary(), nullable=True))
    op.drop_index("ix_state_last_seq", table_name="state")
    if op.get_bind().dialect.name == "postgresql":
        # packed is compressed already: no second compression attempt by the TOAST code
        op.execute("ALTER TABLE event ALTER COLUMN packed SET STORAGE EXTERNAL")
        # compressed in the row rather than moved to the TOAST table: a moved value is rewritten there
        # on every update (no HOT for it) and its dead chunks wait for a vacuum
        op.execute("ALTER TABLE state ALTER COLUMN object SET STORAGE MAIN")
        op.execute("ALTER TABLE state SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0.02, "
                   "autovacuum_analyze_scale_factor = 0.02)")
        op.execute("ALTER TABLE delivery SET (autovacuum_vacuum_scale_factor = 0.02, "
                   "autovacuum_analyze_scale_factor = 0.02)")


def downgrade() -> None:
    from relay.store.packing import unpack

    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("ALTER TABLE state ALTER COLUMN object SET STORAGE EXTENDED")
        op.execute(f"ALTER TABLE state RESET ({', '.join(STATE_PARAMS)})")
        op.execute(f"ALTER TABLE delivery RESET ({', '.join(DELIVERY_PARAMS)})")
    # give packed rows their text columns back before the column goes, 1,000 rows at a time
    event = sa.table("event", sa.column("seq", sa.BigInteger), sa.column("body", sa.Text),
                     sa.column("object", sa.Text), sa.column("packed", sa.LargeBinary))
    after = -1
    while True:
        rows = bind.execute(
            sa.select(event.c.seq, event.c.packed).where(event.c.packed.is_not(None), event.c.seq > after)
            .order_by(event.c.seq).limit(1000)
        ).all()
        if not rows:
            break
        params = []
        for seq, packed in rows:
            body, obj = unpack(bytes(packed))
            params.append({"b_seq": seq, "b_body": body, "b_object": obj})
        bind.execute(
            event.update().where(event.c.seq == sa.bindparam("b_seq"))
            .values(body=sa.bindparam("b_body"), object=sa.bindparam("b_object"), packed=None),
            params,
        )
        after = rows[-1][0]
    with op.batch_alter_table("event") as batch:
        batch.drop_column("packed")
    op.create_index("ix_state_last_seq", "state", ["last_seq"], unique=False)
