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


def test_one_query_whatever_the_number_of_runs_and_no_metric_point_read(sqlite_sessions):
    """No query per run: one statement for 3 runs and for 60, and the results come from the run rows.

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
        assert not [statement for statement in sent if "metric_points" in statement]
        return len([statement for statement in sent if statement.lstrip().upper().startswith("SELECT")])

    assert statements_for(3) == statements_for(57) == 1
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(MetricPoint)) == 120


def test_queued_runs_keep_their_placement_fields(sessions):
    with sessions.begin() as s:
        waiting = queries.create_run(s, spec(device="cuda:0")).id
        queries.update_run(s, waiting, heartbeat_at=queries.utcnow() - timedelta(seconds=3))
    with sessions.begin() as s:
        row = run_table.runs_overview(s).iloc[0]
    assert (row["status"], row["asked_device"], row["heartbeat_at"] is not None) == (QUEUED, "cuda:0", True)


def expected_results(s, run_ids: list[int]) -> dict[int, dict]:
    """What runs_overview must show, from the stored points: last value per metric, median of finite samples/s."""
    frame = queries.metric_frame(s, run_ids)
    results = {}
    for run_id in run_ids:
        points_of = frame[frame["run_id"] == run_id]
        row = {}
        for name in run_table.LAST_METRICS:
            values = points_of.loc[points_of["name"] == name, "value"]
            row[name] = None if values.empty else values.iloc[-1]
        throughput = points_of.loc[points_of["name"] == "samples_per_s", "value"]
        finite = throughput[throughput.abs() < math.inf]
        row["samples_per_s"] = finite.median() if len(finite) else math.nan
        results[run_id] = row
    return results


def shown_results(frame: pd.DataFrame, run_ids: list[int]) -> dict[int, dict]:
    frame = frame.set_index("id")
    return {run_id: {name: frame.loc[run_id, name] for name in [*run_table.LAST_METRICS, "samples_per_s"]}
            for run_id in run_ids}


def same(shown: dict, expected: dict) -> bool:
    """Equal, NaN equal to NaN, and None (never recorded) only equal to None."""
    def one(a, b):
        if a is None or b is None:
            return a is b
        return (math.isnan(a) and math.isnan(b)) or a == b
    return shown.keys() == expected.keys() and all(
        one(shown[run][name], expected[run][name]) for run in shown for name in shown[run])


def test_results_follow_the_points_flush_by_flush(sessions):
    """As a runner records them, an epoch per transaction: NaN, then a finite value again, an even count of epochs."""
    nan, inf = math.nan, math.inf
    epochs = {  # per run: (name, value) pairs of one flush each
        "trained": [[("test_accuracy", 0.5), ("samples_per_s", 100.0)], [("test_accuracy", 0.7)],
                    [("test_accuracy", 0.9), ("samples_per_s", 300.0), ("samples_per_s", 250.0)],
                    [("samples_per_s", inf), ("train_loss", 0.25)]],
        "diverged": [[("train_loss", 1.0), ("samples_per_s", 10.0)], [("train_loss", nan), ("samples_per_s", nan)]],
        "recovered": [[("phi_estimate", nan)], [("phi_estimate", 1.25), ("phi_true", 1.5)]],
        "unrelated": [[("test_loss", 0.3), ("step/train_loss", 9.0)]],
    }
    with sessions.begin() as s:
        ids = {label: queries.create_run(s, spec()).id for label in epochs}
    for epoch in range(max(len(flushes) for flushes in epochs.values())):
        with sessions.begin() as s:
            queries.add_metric_points(s, [
                dict(run_id=ids[label], name=name, step=10 * (epoch + 1), epoch=epoch + 1, wall_time=float(epoch),
                     value=value)
                for label, flushes in epochs.items() if epoch < len(flushes) for name, value in flushes[epoch]])
        with sessions.begin() as s:
            run_ids = list(ids.values())
            assert same(shown_results(run_table.runs_overview(s), run_ids), expected_results(s, run_ids)), epoch

    with sessions.begin() as s:
        shown = shown_results(run_table.runs_overview(s), list(ids.values()))
    assert shown[ids["trained"]] == {"test_accuracy": 0.9, "phi_estimate": None, "phi_true": None,
                                     "train_loss": 0.25, "samples_per_s": 250.0}  # median of 100, 250, 300
    assert math.isnan(shown[ids["diverged"]]["train_loss"]) and shown[ids["diverged"]]["samples_per_s"] == 10.0
    assert (shown[ids["recovered"]]["phi_estimate"], shown[ids["recovered"]]["phi_true"]) == (1.25, 1.5)
    assert all(shown[ids["unrelated"]][name] is None for name in run_table.LAST_METRICS)
    assert math.isnan(shown[ids["unrelated"]]["samples_per_s"])


def test_a_run_made_after_a_deleted_one_shows_no_results_of_it(sessions):
    """SQLite gives the newest run's id to the next run once that run is deleted: its results must not stay."""
    with sessions.begin() as s:
        kept, doomed = queries.create_run(s, spec()).id, queries.create_run(s, spec()).id
        queries.add_metric_points(s, [*points(kept, "train_loss", [2.0]), *points(doomed, "train_loss", [None]),
                                      *points(doomed, "samples_per_s", [50.0])])
    with sessions.begin() as s:
        queries.delete_run(s, doomed)
        fresh = queries.create_run(s, spec()).id
    assert fresh == doomed or sessions.kw["bind"].dialect.name == "postgresql"  # PostgreSQL's sequence moves on
    with sessions.begin() as s:
        frame = run_table.runs_overview(s).set_index("id")

    assert sorted(frame.index) == sorted({kept, fresh}) and frame.loc[kept, "train_loss"] == 2.0
    assert all(frame.loc[fresh, name] is None for name in run_table.LAST_METRICS)
    assert math.isnan(frame.loc[fresh, "samples_per_s"])


def test_the_compare_pickers_lookups_count_find_and_order_runs(sessions):
    """What the Compare page reads while its picker is closed: the count, which asked-for ids exist, the newest."""
    with sessions.begin() as s:
        assert run_table.count_runs(s) == 0 and run_table.existing_run_ids(s, [1, 2]) == set()
        ids = [queries.create_run(s, spec(seed=seed), group_tag="g" if seed else None).id for seed in range(3)]
    with sessions.begin() as s:
        assert run_table.count_runs(s) == 3
        assert run_table.existing_run_ids(s, [ids[0], ids[2], 10_000, ids[0]]) == {ids[0], ids[2]}
        assert run_table.existing_run_ids(s, []) == set()
        newest = run_table.newest_runs(s)
    assert newest["id"].tolist() == ids[::-1] and newest["group_tag"].tolist() == ["g", "g", None]


def test_a_runs_kept_weights_size_is_a_column_and_none_without(sessions):
    with sessions.begin() as s:
        kept, bare = (queries.create_run(s, spec(seed=seed)).id for seed in (1, 2))
        queries.add_artifact(s, kept, "weights", "weights.npz", "application/x-npz", b"\0" * 4321, 4321)
        queries.add_artifact(s, bare, "trace", "trace.json.gz", "application/gzip", b"\0" * 99, 500)
    with sessions.begin() as s:
        frame = run_table.runs_overview(s).set_index("id")
    assert frame.loc[kept, "weights_bytes"] == 4321
    assert frame.loc[bare, "weights_bytes"] is None or math.isnan(frame.loc[bare, "weights_bytes"])
