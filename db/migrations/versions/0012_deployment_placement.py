"""Deployment jobs are placed by the scheduler like runs (issue 17): the device a job holds.

A job the scheduler placed but whose process has not claimed it yet holds its machine already, as a
placed run does; on a cluster it waits in the executor's own queue ("ray:cpu") with no process.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deployments", sa.Column("placed_device", sa.String(32)))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("placed_device")
