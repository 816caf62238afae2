"""Where the time goes (issue 15): files a run produced, kept with it: its profiler trace, gzip-compressed.

In the database, not on a runner's disk, so that every machine of a cluster can offer any run's
trace for download; deleted with the run (ON DELETE CASCADE, as every per-run table).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_artifacts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("media_type", sa.String(64), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("size_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_run_artifacts_run_kind", "run_artifacts", ["run_id", "kind"])


def downgrade() -> None:
    op.drop_index("ix_run_artifacts_run_kind", table_name="run_artifacts")
    op.drop_table("run_artifacts")
