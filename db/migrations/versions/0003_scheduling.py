"""Scheduling and memory (issue 4): where a run was placed, why it failed, the scheduler lease (5cc286c).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""
from __future__ import annotations

import sqlalchemy as sa

from db.migrations.legacy import LegacyStep, NewColumn, apply, revert

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

metadata = sa.MetaData()
LEGACY_STEP = LegacyStep(
    columns=(
        NewColumn("runs", sa.Column("placed_device", sa.String(32))),
        NewColumn("runs", sa.Column("reason", sa.String(32))),
    ),
    tables=(
        sa.Table(
            "scheduler_lease", metadata,
            sa.Column("name", sa.String(32), primary_key=True),
            sa.Column("holder", sa.String(64), nullable=False),
            sa.Column("hostname", sa.String(255), nullable=False),
            sa.Column("pid", sa.Integer, nullable=False),
            sa.Column("acquired_at", sa.DateTime, nullable=False),
            sa.Column("expires_at", sa.DateTime, nullable=False),
        ),
    ),
)


def upgrade() -> None:
    apply(LEGACY_STEP)


def downgrade() -> None:
    revert(LEGACY_STEP)
