"""PostgreSQL (issue 7): 64-bit row ids for the tables every run keeps adding to; nothing changes in SQLite.

PostgreSQL's INTEGER and the sequence behind a SERIAL id stop at 2^31 - 1: a cluster's runners,
sampling at 10 Hz, reach that many system samples within months. SQLite's INTEGER PRIMARY KEY is
its 64-bit rowid already (and BIGINT would stop it being the rowid). On PostgreSQL the column
change rewrites each table, under the migration lock, once.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

TABLES = ("metric_points", "metric_chunks", "system_samples", "tensor_stats")


def upgrade() -> None:
    _set_id_type(sa.Integer(), sa.BigInteger(), "bigint")


def downgrade() -> None:
    _set_id_type(sa.BigInteger(), sa.Integer(), "integer")


def _set_id_type(old: sa.types.TypeEngine, new: sa.types.TypeEngine, sequence_type: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table in TABLES:
        op.alter_column(table, "id", existing_type=old, type_=new, existing_nullable=False)
        # The id's sequence has a type of its own (PostgreSQL 10+); it would still stop at 2^31 - 1.
        sequence = bind.execute(sa.text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": table}).scalar()
        if sequence is not None:
            op.execute(f"ALTER SEQUENCE {sequence} AS {sequence_type}")
