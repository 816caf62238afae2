"""Runs page (issue 14): the spec fields the Runs table shows (mode, precision, seed) as columns of the run.

The table read them out of each run's JSON spec in SQL, which parses the whole document once per
field and row: a third of its query at 10,000 runs. queries.create_run writes them with the row
now; this copies them from the specs already stored. A spec without one (older runs had no mode)
leaves NULL, as readers expect.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

COLUMNS = {"mode": sa.String(16), "precision": sa.String(16), "seed": sa.Integer()}


def upgrade() -> None:
    for name, type_ in COLUMNS.items():
        op.add_column("runs", sa.Column(name, type_))
    runs = sa.table("runs", sa.column("spec", sa.JSON), *(sa.column(name, type_) for name, type_ in COLUMNS.items()))
    op.get_bind().execute(runs.update().values(
        mode=runs.c.spec["mode"].as_string(), precision=runs.c.spec["precision"].as_string(),
        seed=runs.c.spec["seed"].as_integer()))


def downgrade() -> None:
    # SQLite drops a column by copying the table: batch mode does that there, ALTER TABLE elsewhere.
    with op.batch_alter_table("runs") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
