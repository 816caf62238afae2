"""The Runs table's results on the run row: recomputed from a run's points whenever they change.

Each run's last test accuracy, phi estimate, phi and train loss and its median samples/s over
epochs are columns of the run (db/models.py). queries.add_metric_points refreshes them in the
transaction that writes the points, so a reader sees the points and the results together or
neither; revision 0008 filled them in for older databases. They are computed from the stored
points, not from the points written last, so any change of a run's points ends with refresh().
"""
from __future__ import annotations

import math
import statistics
from typing import Any, Iterable

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from db.models import MetricPoint, Run

# The metrics whose last value a run keeps, and the column that keeps it.
LAST_VALUE_COLUMNS = {"test_accuracy": "last_test_accuracy", "phi_estimate": "last_phi_estimate",
                      "phi_true": "last_phi_true", "train_loss": "last_train_loss"}
# Run.last_values_recorded: a metric's bit is set once it has a point, so its NULL reads as NaN
# (SQLite stores a NaN as NULL), not as never recorded. Stored bits: never renumber them.
RECORDED_BITS = {"test_accuracy": 1, "phi_estimate": 2, "phi_true": 4, "train_loss": 8}
THROUGHPUT = "samples_per_s"  # the metric whose median over epochs a run keeps (median_samples_per_s)
RESULT_METRICS = (*LAST_VALUE_COLUMNS, THROUGHPUT)
RESULT_COLUMNS = (*LAST_VALUE_COLUMNS.values(), "last_values_recorded", "median_samples_per_s")
_CHUNK = 500  # run ids per IN (...): below any database's bound-parameter limit


def runs_with_results(rows: Iterable[dict[str, Any]]) -> list[int]:
    """The runs, in order, that points of some RESULT_METRICS are among these metric point rows for."""
    return list(dict.fromkeys(row["run_id"] for row in rows if row["name"] in RESULT_METRICS))


def refresh(s: Session, run_ids: Iterable[int]) -> None:
    """Recompute these runs' results from their stored points (none left: the columns go back to NULL)."""
    run_ids = list(dict.fromkeys(run_ids))
    for start in range(0, len(run_ids), _CHUNK):
        chunk = run_ids[start:start + _CHUNK]
        last = _last_values(s, chunk)
        medians = _median_throughputs(s, chunk)
        rows = []
        for run_id in chunk:
            values = last.get(run_id, {})
            row = {column: values.get(name) for name, column in LAST_VALUE_COLUMNS.items()}
            # NULL when nothing is recorded, as on a new run.
            row["last_values_recorded"] = sum(RECORDED_BITS[name] for name in values) or None
            row["median_samples_per_s"] = medians.get(run_id)
            rows.append({"run": run_id, **{f"new_{column}": value for column, value in row.items()}})
        runs = Run.__table__
        # Core executemany on the table, as the points are written: no ORM bookkeeping per run. (A
        # parameter may not share its column's name.)
        s.execute(update(runs).where(runs.c.id == bindparam("run"))
                  .values({column: bindparam(f"new_{column}") for column in RESULT_COLUMNS}), rows)


def _last_values(s: Session, run_ids: list[int]) -> dict[int, dict[str, Any]]:
    """{run_id: {name: value}} of each run's last point per LAST_VALUE_COLUMNS metric (None: a NaN in SQLite).

    Last is last written, the highest row id: a run records its epochs in order.
    """
    latest = (select(func.max(MetricPoint.id))
              .where(MetricPoint.run_id.in_(run_ids), MetricPoint.name.in_(list(LAST_VALUE_COLUMNS)))
              .group_by(MetricPoint.run_id, MetricPoint.name))
    last: dict[int, dict[str, Any]] = {}
    query = select(MetricPoint.run_id, MetricPoint.name, MetricPoint.value).where(MetricPoint.id.in_(latest))
    for run_id, name, value in s.execute(query):
        last.setdefault(run_id, {})[name] = value
    return last


def _median_throughputs(s: Session, run_ids: list[int]) -> dict[int, float]:
    """{run_id: median} of each run's finite THROUGHPUT values; runs without one are left out."""
    finite: dict[int, list[float]] = {}
    query = select(MetricPoint.run_id, MetricPoint.value).where(
        MetricPoint.run_id.in_(run_ids), MetricPoint.name == THROUGHPUT)
    for run_id, value in s.execute(query):
        if value is not None and math.isfinite(value):  # NaN (NULL in SQLite) and inf are left out
            finite.setdefault(run_id, []).append(value)
    return {run_id: statistics.median(values) for run_id, values in finite.items()}
