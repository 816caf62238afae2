"""Compare (issue 5): run names, notes and tags, layer statistics, packed per-step chunks, a covering index.

From c54befb (names, tensor_stats), 0a2c959 (metric_chunks) and d9aa788 (the covering index).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""
from __future__ import annotations

import sqlalchemy as sa

from db.migrations.legacy import LegacyStep, NewColumn, NewIndex, apply, revert

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

metadata = sa.MetaData()
LEGACY_STEP = LegacyStep(
    columns=(
        NewColumn("runs", sa.Column("name", sa.String(200))),
        NewColumn("runs", sa.Column("notes", sa.Text)),
        NewColumn("runs", sa.Column("tags", sa.JSON)),
    ),
    tables=(
        sa.Table(
            "tensor_stats", metadata,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
            sa.Column("epoch", sa.Integer, nullable=False),
            sa.Column("step", sa.Integer, nullable=False),
            sa.Column("layer", sa.String(128), nullable=False),
            sa.Column("kind", sa.String(8), nullable=False),
            sa.Column("numel", sa.Integer, nullable=False),
            sa.Column("norm", sa.Float),
            sa.Column("mean", sa.Float),
            sa.Column("std", sa.Float),
            sa.Column("min", sa.Float),
            sa.Column("max", sa.Float),
            sa.Column("histogram", sa.JSON),
            sa.Index("ix_tensor_stats_run_epoch", "run_id", "epoch"),
        ),
        sa.Table(
            "metric_chunks", metadata,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
            sa.Column("name", sa.String(64), nullable=False),
            sa.Column("first_step", sa.Integer, nullable=False),
            sa.Column("last_step", sa.Integer, nullable=False),
            sa.Column("count", sa.Integer, nullable=False),
            sa.Column("steps", sa.LargeBinary, nullable=False),
            sa.Column("epochs", sa.LargeBinary, nullable=False),
            sa.Column("wall_times", sa.LargeBinary, nullable=False),
            sa.Column("values", sa.LargeBinary, nullable=False),
            sa.Index("ix_metric_chunks_run_name_step", "run_id", "name", "first_step"),
        ),
    ),
    indexes=(
        # Covering: the Runs table reads the last value of a few metrics of every run from the index alone.
        NewIndex("ix_metric_points_name_run_step_value", "metric_points", ("name", "run_id", "step", "value")),
    ),
)


def upgrade() -> None:
    apply(LEGACY_STEP)


def downgrade() -> None:
    revert(LEGACY_STEP)
