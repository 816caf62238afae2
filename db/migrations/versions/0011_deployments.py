"""Deployment (issue 17): deployment jobs and, per format, their export, parity, load, latency and serving figures.

Both tables hang off the run (deployments.run_id, ON DELETE CASCADE; results off their job), so
deleting a run deletes its deployments, their figures and their exported files. The exported
files are kept in the database, as traces are, so any machine of a cluster can offer them.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("formats", sa.JSON, nullable=False),
        sa.Column("settings", sa.JSON, nullable=False),
        sa.Column("environment", sa.JSON),
        sa.Column("steps_done", sa.Integer, nullable=False),
        sa.Column("steps_total", sa.Integer, nullable=False),
        sa.Column("current", sa.String(255)),
        sa.Column("error", sa.Text),
        sa.Column("hostname", sa.String(255)),
        sa.Column("pid", sa.Integer),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("started_at", sa.DateTime),
        sa.Column("finished_at", sa.DateTime),
        sa.Column("heartbeat_at", sa.DateTime),
        sa.Column("cancel_requested_at", sa.DateTime),
    )
    op.create_index("ix_deployments_run_id", "deployments", ["run_id"])
    op.create_index("ix_deployments_status", "deployments", ["status"])
    op.create_table(
        "deployment_results",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("deployment_id", sa.Integer, sa.ForeignKey("deployments.id", ondelete="CASCADE"), nullable=False),
        sa.Column("framework", sa.String(32), nullable=False),
        sa.Column("format", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("export_s", sa.Float),
        sa.Column("size_bytes", sa.BigInteger),
        sa.Column("figures", sa.JSON),
        sa.Column("serving", sa.JSON),
        sa.Column("artifact_name", sa.String(255)),
        sa.Column("artifact", sa.LargeBinary),
        sa.Column("created_at", sa.DateTime, nullable=False),
    )
    op.create_index("ix_deployment_results_deployment_id", "deployment_results", ["deployment_id"])


def downgrade() -> None:
    op.drop_index("ix_deployment_results_deployment_id", table_name="deployment_results")
    op.drop_table("deployment_results")
    op.drop_index("ix_deployments_status", table_name="deployments")
    op.drop_index("ix_deployments_run_id", table_name="deployments")
    op.drop_table("deployments")
