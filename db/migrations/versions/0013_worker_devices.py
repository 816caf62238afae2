"""A multi-worker run (issue 18) is placed on several devices at once: runs.placed_device lists them all.

"cuda:0,cuda:1,...,cuda:7" (8 workers, the most a run has) is 55 characters; the column held 32.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("placed_device", type_=sa.String(64), existing_type=sa.String(32))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.alter_column("placed_device", type_=sa.String(32), existing_type=sa.String(64))
