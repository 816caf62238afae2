"""Metric values may be NULL: SQLite stores a NaN as NULL, and a diverged loss is a point worth keeping (07b8bbf).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""
from __future__ import annotations

import sqlalchemy as sa

from db.migrations.legacy import LegacyStep, Relaxed, apply, revert

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Only databases created by 850a401 itself have the NOT NULL; create_all never relaxed it later.
LEGACY_STEP = LegacyStep(relaxed=(Relaxed("metric_points", "value", sa.Float()),))


def upgrade() -> None:
    apply(LEGACY_STEP)


def downgrade() -> None:
    revert(LEGACY_STEP)
