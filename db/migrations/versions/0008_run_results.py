"""Runs page (issue 14): each run's results on its row, filled in from the points already stored.

The Runs table read every run's last test accuracy, phi estimate, phi and train loss and its
median samples/s from metric_points on each refresh (a third of its time at 10,000 runs). Since
this revision they are columns of the run, which queries.add_metric_points keeps up to date
(db/run_results.py); this fills them in for the runs already stored, computed as that module
computes them: the last value is the highest row id's, the median that of the finite values.
Its constants are copies, frozen here: a later change to that module must not change this revision.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""
from __future__ import annotations

import math
import statistics

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# metric -> (its column, its bit in last_values_recorded), as db/run_results.py had them.
LAST_VALUES = {"test_accuracy": ("last_test_accuracy", 1), "phi_estimate": ("last_phi_estimate", 2),
               "phi_true": ("last_phi_true", 4), "train_loss": ("last_train_loss", 8)}
THROUGHPUT = "samples_per_s"
COLUMNS = (*(column for column, _ in LAST_VALUES.values()), "last_values_recorded", "median_samples_per_s")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("runs", sa.Column(name, sa.Integer if name == "last_values_recorded" else sa.Float))
    bind = op.get_bind()
    for metric, (column, bit) in LAST_VALUES.items():
        # A NaN point (NULL in SQLite) is copied as it is; the bit says the metric was recorded.
        bind.execute(sa.text(
            f"UPDATE runs SET {column} = (SELECT value FROM metric_points WHERE id = "
            "(SELECT max(id) FROM metric_points WHERE run_id = runs.id AND name = :metric)), "
            f"last_values_recorded = COALESCE(last_values_recorded, 0) + {bit} "
            "WHERE EXISTS (SELECT 1 FROM metric_points WHERE run_id = runs.id AND name = :metric)"),
            {"metric": metric})
    finite: dict[int, list[float]] = {}
    for run_id, value in bind.execute(sa.text("SELECT run_id, value FROM metric_points WHERE name = :metric"),
                                      {"metric": THROUGHPUT}):
        if value is not None and math.isfinite(value):  # NaN (NULL in SQLite) and inf are left out
            finite.setdefault(run_id, []).append(value)
    if finite:
        bind.execute(sa.text("UPDATE runs SET median_samples_per_s = :median WHERE id = :run_id"),
                     [{"run_id": run_id, "median": statistics.median(values)} for run_id, values in finite.items()])


def downgrade() -> None:
    # SQLite drops a column by copying the table: batch mode does that there, ALTER TABLE elsewhere.
    with op.batch_alter_table("runs") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
