"""db/run_table.py: the Runs table's rows from each backend (SQLite file, PostgreSQL), results per run, tags in bulk."""
from __future__ import annotations

import math
from datetime import timedelta

import pandas as pd
import pytest
from sqlalchemy import func, select

from db import queries, run_table
from db.models import DIVERGED, FAILED, FINISHED, NON_FINITE_LOSS, QUEUED, MetricPoint
from db.session import make_sessionmaker
from engine.spec import RunSpec


def spec(framework: str = "torch", model: str = "mlp", dataset: str = "digits", **values) -> dict:
    return RunSpec.with_model_defaults(framework, model, dataset, epochs=3, **values).to_dict()


def points(run_id: int, name: str, values: list) -> list[dict]:
    """One per-epoch point per value, epochs 1.. at steps 10, 20, ... (None stores a NaN)."""
    return [dict(run_id=run_id, name=name, step=10 * epoch, epoch=epoch, wall_time=float(epoch), value=value)
            for epoch, value in enumerate(values, start=1)]


@pytest.fixture
def sessions(db_url):
    made = make_sessionmaker(db_url)
    yield made
    made.kw["bind"].dispose()


@pytest.fixture
def sqlite_sessions(arena_db):
    made = make_sessionmaker(arena_db)
    yield made
    made.kw["bind"].dispose()


def test_one_row_per_run_newest_first_with_its_own_fields(sessions):
    with sessions.begin() as s:
        first = queries.create_run(s, spec(seed=7, device="cuda:1", precision="mixed"), group_tag="pair-1").id
        second = queries.create_run(s, spec("tensorflow"), total_steps=132).id
        queries.annotate_run(s, second, name="baseline <b>", notes="lr 1e-3", tags=["keep", "ablation"])
        queries.update_run(s, second, status=FINISHED, summary={"mode": "graph"}, placed_device="cpu",
                           environment={"device": "cpu"}, started_at=queries.utcnow())
    with sessions.begin() as s:
        frame = run_table.runs_overview(s)

    assert list(frame.columns) == run_table.COLUMNS
    assert frame["id"].tolist() == [second, first]
    newer, older = frame.iloc[0], frame.iloc[1]
    assert (newer["name"], newer["notes"], newer["tags"]) == ("baseline <b>", "lr 1e-3", ["keep", "ablation"])
    assert (newer["spec_mode"], older["spec_mode"], newer["placed_device"]) == ("graph", "eager", "cpu")
    assert newer["summary_mode"] is None  # the spec names the mode the run reports: its summary is not read
    assert newer["total_steps"] == 132 and newer["spec"] is None  # stored steps: no spec needed for progress
    assert older["tags"] == [] and older["name"] is None and older["group_tag"] == "pair-1"
    assert (older["seed"], older["asked_device"], older["precision"]) == (7, "cuda:1", "mixed")
    assert older["spec"]["seed"] == 7  # no stored total: progress derives it from the spec
    assert pd.isna(older["started_at"])
    assert newer["started_at"].year >= 2024 and newer["created_at"] >= older["created_at"]


def test_results_are_the_last_values_and_the_median_throughput(sessions):
    with sessions.begin() as s:
        trained, diverged, phi, fresh = (queries.create_run(s, spec()).id for _ in range(4))
        queries.add_metric_points(s, [
            *points(trained, "test_accuracy", [0.5, 0.8, 0.9]), *points(trained, "train_loss", [2.0, 1.0, 0.5]),
            *points(trained, "samples_per_s", [100.0, 300.0, 200.0, float("inf")]),
            *points(diverged, "train_loss", [1.0, None]), *points(diverged, "samples_per_s", [None, None]),
            *points(phi, "phi_estimate", [1.2, 1.4]), *points(phi, "phi_true", [1.5, 1.5]),
            dict(run_id=trained, name="step/train_loss", step=35, epoch=3, wall_time=0.0, value=9.0),
        ])
    with sessions.begin() as s:
        frame = run_table.runs_overview(s).set_index("id")

    assert frame.loc[trained, "test_accuracy"] == 0.9 and frame.loc[trained, "train_loss"] == 0.5
    assert frame.loc[trained, "samples_per_s"] == 200.0  # inf is left out, as NaN is
    assert math.isnan(frame.loc[diverged, "train_loss"])  # recorded, non-finite: NaN ...
    assert frame.loc[diverged, "test_accuracy"] is None  # ... never recorded: None
    assert math.isnan(frame.loc[diverged, "samples_per_s"])
    assert (frame.loc[phi, "phi_estimate"], frame.loc[phi, "phi_true"]) == (1.4, 1.5)
    assert all(frame.loc[fresh, name] is None for name in run_table.LAST_METRICS)


def test_errors_are_reduced_to_their_last_line(sessions):
    with sessions.begin() as s:
        failed = queries.create_run(s, spec()).id
        queries.fail_run(s, failed, "Traceback (most recent call last):\n  File x\nValueError: boom\n\n  ")
    with sessions.begin() as s:
        assert run_table.runs_overview(s)["error"].tolist() == ["ValueError: boom"]


def test_limit_and_statuses_narrow_the_runs_and_their_results(sessions):
    with sessions.begin() as s:
        ids = [queries.create_run(s, spec()).id for _ in range(4)]
        queries.add_metric_points(s, [point for run_id in ids for point in points(run_id, "train_loss", [1.0])])
        queries.fail_run(s, ids[0], "boom")
        queries.fail_run(s, ids[2], "nan", reason=NON_FINITE_LOSS, status=DIVERGED)
    with sessions.begin() as s:
        newest = run_table.runs_overview(s, limit=2)
        ended = run_table.runs_overview(s, statuses=[FAILED, DIVERGED])
        with pytest.raises(ValueError, match="limit must be a positive number of runs, got 0"):
            run_table.runs_overview(s, limit=0)

    assert newest["id"].tolist() == [ids[3], ids[2]] and newest["train_loss"].tolist() == [1.0, 1.0]
    assert ended["id"].tolist() == [ids[2], ids[0]] and set(ended["status"]) == {FAILED, DIVERGED}


def test_ended_early_gives_the_newest_failures_whole_and_counts_them_all(sessions):
    with sessions.begin() as s:
        ids = [queries.create_run(s, spec()).id for _ in range(4)]
        for run_id in ids[:3]:
            queries.fail_run(s, run_id, f"RuntimeError: run {run_id}")
    with sessions.begin() as s:
        failed, count = run_table.ended_early(s, 2)
        assert [run.id for run in failed] == [ids[2], ids[1]] and count == 3
        assert failed[0].error == f"RuntimeError: run {ids[2]}"


def test_add_tags_tags_every_run_once_and_stores_nothing_when_a_tag_is_bad(sessions):
    with sessions.begin() as s:
        tagged, plain = queries.create_run(s, spec()).id, queries.create_run(s, spec()).id
        queries.annotate_run(s, tagged, tags=["keep"])
    with sessions.begin() as s:
        run_table.add_tags(s, [tagged, plain], [" keep "])
    with sessions.begin() as s:
        run_table.add_tags(s, [tagged, plain], ["sweep", "sweep"])
    for bad, message in ((["ok", "a,b"], "contains a comma"), (["x" * 65], "the limit is 64"),
                         (["  "], "no tag given"), ([f"t{i}" for i in range(31)], "at most 32")):
        with pytest.raises(ValueError, match=message):
            with sessions.begin() as s:
                run_table.add_tags(s, [tagged, plain], bad)
    with sessions.begin() as s:
        assert queries.get_run(s, tagged).tags == ["keep", "sweep"]
        assert queries.get_run(s, plain).tags == ["keep", "sweep"]
        assert run_table.known_tags(s) == ["keep", "sweep"]


def test_three_queries_whatever_the_number_of_runs(sqlite_sessions):
    """No query per run: the statements sent stay the same for 3 runs and for 60.

    Counted through sqlite3's trace callback, which also sees the reads _plain_rows sends past
    SQLAlchemy; the count is the code's, the same on any backend.
    """
    sessions = sqlite_sessions

    def statements_for(count: int) -> int:
        with sessions.begin() as s:
            for _ in range(count):
                run_id = queries.create_run(s, spec(), total_steps=30).id
                queries.add_metric_points(s, points(run_id, "samples_per_s", [1.0, 2.0]))
        sent: list[str] = []
        with sessions.begin() as s:
            sqlite = s.connection().connection.driver_connection  # sees the driver-level reads too
            sqlite.set_trace_callback(sent.append)
            try:
                frame = run_table.runs_overview(s)
            finally:
                sqlite.set_trace_callback(None)
        assert frame["samples_per_s"].eq(1.5).all()
        return len([statement for statement in sent if statement.lstrip().upper().startswith("SELECT")])

    assert statements_for(3) == statements_for(57) == 3
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(MetricPoint)) == 120


def test_queued_runs_keep_their_placement_fields(sessions):
    with sessions.begin() as s:
        waiting = queries.create_run(s, spec(device="cuda:0")).id
        queries.update_run(s, waiting, heartbeat_at=queries.utcnow() - timedelta(seconds=3))
    with sessions.begin() as s:
        row = run_table.runs_overview(s).iloc[0]
    assert (row["status"], row["asked_device"], row["heartbeat_at"] is not None) == (QUEUED, "cuda:0", True)
