"""Per-step series stored as packed chunks: every point back, in order, with NaN, beside older row storage."""
import math

from sqlalchemy import func, insert, select

from db import queries
from db.models import MetricChunk, MetricPoint, SystemSample
from db.session import make_sessionmaker
from engine.spec import RunSpec

SPEC = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=3).to_dict()


def _points(run_id, name, steps, value=lambda step: step / 10):
    return [dict(run_id=run_id, name=name, step=step, epoch=1 + step // 100, wall_time=1e9 + step, value=value(step))
            for step in steps]


def test_step_series_round_trip_through_chunks_with_every_point_and_nan(db_url):
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        a, b = queries.create_run(s, SPEC).id, queries.create_run(s, SPEC).id
    # Three flushes for run a (the recorder writes one chunk per series per flush), one for b.
    for steps in (range(0, 400), range(400, 401), range(401, 1000)):
        with sessions.begin() as s:
            queries.add_metric_points(s, _points(a, "step/train_loss", steps,
                                                 lambda step: math.nan if step == 400 else step / 10))
            queries.add_metric_points(s, _points(a, "step/step_time_ms", steps))
    with sessions.begin() as s:
        queries.add_metric_points(s, _points(b, "step/train_loss", range(0, 50)) + _points(b, "test_loss", [50]))
    with sessions.begin() as s:
        assert s.scalar(select(func.count()).select_from(MetricChunk)) == 7
        assert s.scalar(select(func.count()).select_from(MetricPoint)) == 1  # the per-epoch value
        frame = queries.metric_frame(s, [a, b], ["step/train_loss"])
        every = queries.metric_frame(s, [a, b])
        names = queries.metric_names(s, [a, b])
    losses_a = frame[frame["run_id"] == a]
    assert losses_a["step"].tolist() == list(range(1000))
    assert math.isnan(losses_a["value"].iloc[400]) and losses_a["value"].iloc[999] == 99.9
    assert losses_a["epoch"].iloc[250] == 3 and losses_a["wall_time"].iloc[7] == 1e9 + 7
    assert len(frame[frame["run_id"] == b]) == 50
    assert len(every) == 1000 + 1000 + 50 + 1
    assert every[["run_id", "name", "step"]].equals(
        every.sort_values(["run_id", "name", "step"], kind="stable")[["run_id", "name", "step"]])
    assert names == ["step/step_time_ms", "step/train_loss", "test_loss"]


def test_points_stored_as_rows_by_older_versions_read_together_with_chunks(db_url):
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        run_id = queries.create_run(s, SPEC).id
        # An older Arena wrote per-step points as rows (a NaN became NULL): steps 0-9 as rows, 10-19 as a chunk.
        s.execute(insert(MetricPoint.__table__), _points(run_id, "step/train_loss", range(10),
                                                         lambda step: None if step == 3 else step / 10))
        queries.add_metric_points(s, _points(run_id, "step/train_loss", range(10, 20)))
    with sessions.begin() as s:
        frame = queries.metric_frame(s, [run_id], ["step/train_loss"])
    assert frame["step"].tolist() == list(range(20))
    assert math.isnan(frame["value"].iloc[3]) and frame["value"].iloc[15] == 1.5


def test_deleting_a_run_deletes_its_chunks_and_no_other_run_s(db_url):
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        gone, kept = queries.create_run(s, SPEC).id, queries.create_run(s, SPEC).id
        queries.add_metric_points(s, _points(gone, "step/train_loss", range(5)) + _points(kept, "step/train_loss",
                                                                                          range(5)))
        queries.add_system_samples(s, [dict(run_id=gone, time=1.0, source="host", name="rss", value=1.0, unit="B")])
    with sessions.begin() as s:
        queries.delete_run(s, gone)
    with sessions.begin() as s:
        assert s.scalars(select(MetricChunk.run_id)).all() == [kept]
        assert s.scalar(select(func.count()).select_from(SystemSample)) == 0
        assert queries.metric_frame(s, [gone]).empty


def test_an_empty_selection_gives_an_empty_frame_with_the_columns(db_url):
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        frame = queries.metric_frame(s, [])
    assert frame.empty and list(frame.columns) == ["run_id", "name", "step", "epoch", "wall_time", "value"]
