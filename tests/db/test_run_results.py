"""db/run_results.py: a run's results recomputed from its stored points, on each backend."""
from __future__ import annotations

import math

import pytest
from sqlalchemy import delete, insert, select

from db import queries, run_results, run_table
from db.models import MetricPoint, Run
from db.session import make_sessionmaker
from engine.spec import RunSpec

SPEC = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=3).to_dict()


@pytest.fixture
def sessions(db_url):
    made = make_sessionmaker(db_url)
    yield made
    made.kw["bind"].dispose()


def point(run_id: int, name: str, epoch: int, value) -> dict:
    return dict(run_id=run_id, name=name, step=10 * epoch, epoch=epoch, wall_time=float(epoch), value=value)


def stored(s, run_id: int) -> tuple:
    return s.execute(select(*(getattr(Run, column) for column in run_results.RESULT_COLUMNS))
                     .where(Run.id == run_id)).one()


def test_every_last_value_metric_has_a_column_and_a_bit_of_its_own():
    assert set(run_results.RECORDED_BITS) == set(run_results.LAST_VALUE_COLUMNS) == set(run_table.LAST_METRICS)
    bits = list(run_results.RECORDED_BITS.values())
    assert all(bit & (bit - 1) == 0 for bit in bits) and len(set(bits)) == len(bits)  # distinct powers of two
    assert all(hasattr(Run, column) for column in run_results.RESULT_COLUMNS)


def test_refresh_recomputes_from_the_points_left_after_some_were_removed(sessions):
    with sessions.begin() as s:
        run_id = queries.create_run(s, SPEC).id
        queries.add_metric_points(s, [point(run_id, "train_loss", 1, 2.0), point(run_id, "train_loss", 2, math.nan),
                                      point(run_id, "test_accuracy", 1, 0.5), point(run_id, "samples_per_s", 1, 10.0),
                                      point(run_id, "samples_per_s", 2, 30.0)])
        accuracy, phi_estimate, phi_true, loss, recorded, median = stored(s, run_id)
        assert (accuracy, phi_estimate, phi_true, recorded, median) == (0.5, None, None, 1 | 8, 20.0)
        assert loss is None or math.isnan(loss)  # the NaN as each backend keeps it: NULL in SQLite
    with sessions.begin() as s:  # a later epoch's points removed (no Arena code does so today; refresh must cope)
        s.execute(delete(MetricPoint).where(MetricPoint.run_id == run_id, MetricPoint.epoch == 2))
        run_results.refresh(s, [run_id])
        assert stored(s, run_id) == (0.5, None, None, 2.0, 1 | 8, 10.0)
    with sessions.begin() as s:
        s.execute(delete(MetricPoint).where(MetricPoint.run_id == run_id))
        run_results.refresh(s, [run_id])
        assert stored(s, run_id) == (None,) * len(run_results.RESULT_COLUMNS)  # as a new run: nothing recorded


def test_one_write_of_many_runs_keeps_the_results_of_each(sessions):
    """More runs than one IN (...) takes (500), written at once as bench/runs_page.py writes them."""
    with sessions.begin() as s:
        s.execute(insert(Run.__table__), [dict(created_at=queries.utcnow(), status="finished", framework="torch",
                                               model="mlp", dataset="digits", spec=SPEC, epoch=3, total_epochs=3,
                                               step=30) for _ in range(1_100)])
        ids = s.scalars(select(Run.id).order_by(Run.id)).all()
        queries.add_metric_points(s, [point(run_id, name, epoch, float(run_id * epoch))
                                      for run_id in ids for epoch in (1, 2, 3)
                                      for name in ("test_accuracy", "samples_per_s")])
    with sessions.begin() as s:
        frame = run_table.runs_overview(s).set_index("id")
    assert frame["test_accuracy"].tolist() == [3.0 * run_id for run_id in frame.index]
    assert frame["samples_per_s"].tolist() == [2.0 * run_id for run_id in frame.index]
