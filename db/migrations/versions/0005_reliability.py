"""Reliability (issue 6): when someone asked a run to stop, for its runner on any machine to see (c219c72).

The last revision from before Arena tracked revisions: every database past it is stamped.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""
from __future__ import annotations

import sqlalchemy as sa

from db.migrations.legacy import LegacyStep, NewColumn, apply, revert

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

LEGACY_STEP = LegacyStep(columns=(NewColumn("runs", sa.Column("cancel_requested_at", sa.DateTime)),))


def upgrade() -> None:
    apply(LEGACY_STEP)


def downgrade() -> None:
    revert(LEGACY_STEP)
