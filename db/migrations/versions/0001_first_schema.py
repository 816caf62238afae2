"""First schema: runs, their metric points and system samples (the vertical slice, 850a401).

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""
from __future__ import annotations

import sqlalchemy as sa

from db.migrations.legacy import LegacyStep, apply, revert

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

metadata = sa.MetaData()
LEGACY_STEP = LegacyStep(tables=(
    sa.Table(
        "runs", metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("framework", sa.String(32), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("group_tag", sa.String(64)),
        sa.Column("spec", sa.JSON, nullable=False),
        sa.Column("environment", sa.JSON),
        sa.Column("summary", sa.JSON),
        sa.Column("error", sa.Text),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("total_epochs", sa.Integer, nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("total_steps", sa.Integer),
        sa.Column("hostname", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("heartbeat_at", sa.DateTime),
        sa.Column("log_path", sa.Text),
        sa.Index("ix_runs_status", "status"),
        sa.Index("ix_runs_created_at", "created_at"),
    ),
    sa.Table(
        "metric_points", metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("step", sa.Integer, nullable=False),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("wall_time", sa.Float, nullable=False),
        sa.Column("value", sa.Float, nullable=False),  # nullable from 0002 on
        sa.Index("ix_metric_points_run_name_step", "run_id", "name", "step"),
    ),
    sa.Table(
        "system_samples", metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Float, nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Index("ix_system_samples_run_source_name_time", "run_id", "source", "name", "time"),
    ),
))


def upgrade() -> None:
    apply(LEGACY_STEP)


def downgrade() -> None:
    revert(LEGACY_STEP)
