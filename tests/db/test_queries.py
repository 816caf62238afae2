"""db/: lifecycle transitions, reaping and concurrent access on each backend (SQLite, PostgreSQL); SQLite's settings."""
import math
import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import text

from db import queries
from db import run_table
from db.models import DIVERGED, FAILED, FINISHED, LOST, NON_FINITE_LOSS, QUEUED, RUNNING
from db.session import default_db_url, make_sessionmaker, resolve_db_url
from engine.spec import RunSpec

SPEC = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=3).to_dict()


def test_url_resolution_order(monkeypatch, tmp_path):
    monkeypatch.delenv("ARENA_DB_URL", raising=False)
    monkeypatch.setenv("ARENA_HOME", str(tmp_path))
    assert default_db_url() == f"sqlite:///{tmp_path / 'arena.db'}"
    assert resolve_db_url() == default_db_url()
    monkeypatch.setenv("ARENA_DB_URL", "sqlite:///elsewhere.db")
    assert resolve_db_url() == "sqlite:///elsewhere.db"
    assert resolve_db_url("sqlite:///explicit.db") == "sqlite:///explicit.db"


def test_sqlite_runs_in_wal_with_foreign_keys_and_busy_timeout(arena_db):  # pragmas: SQLite only
    sessions = make_sessionmaker(arena_db)
    with sessions.begin() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert s.execute(text("PRAGMA busy_timeout")).scalar() >= 5000


def test_lifecycle_queued_running_finished(db_url):
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        run_id = queries.create_run(s, SPEC).id
    with sessions.begin() as s:
        assert queries.get_run(s, run_id).status == QUEUED
        assert queries.claim_run(s, run_id, pid=42, hostname="h")
        assert not queries.claim_run(s, run_id, pid=43, hostname="h")  # only one runner gets it
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        assert (run.status, run.pid, run.total_epochs) == (RUNNING, 42, 3)
        queries.add_metric_points(s, [
            dict(run_id=run_id, name=name, step=step, epoch=epoch, wall_time=0.0, value=value)
            for name, step, epoch, value in [("train_loss", 10, 1, 2.0), ("train_loss", 20, 2, 1.0),
                                             ("step/train_loss", 1, 1, 9.0)]
        ])
        queries.finish_run(s, run_id, {"param_count": 9610})
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        assert run.status == FINISHED and run.finished_at >= run.started_at
        assert queries.final_metrics(s, [run_id]) == {run_id: {"train_loss": 1.0}}
        frame = queries.metric_frame(s, [run_id], ["step/train_loss"])
        assert frame["value"].tolist() == [9.0]


def test_fail_keeps_points_and_does_not_overwrite_a_finished_run(db_url):
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        a, b = queries.create_run(s, SPEC).id, queries.create_run(s, SPEC).id
        queries.add_system_samples(s, [dict(run_id=a, time=1.0, source="host", name="rss", value=1.0, unit="bytes")])
        queries.finish_run(s, b, {})
    with sessions.begin() as s:
        queries.fail_run(s, a, "Traceback ...\nValueError: boom")
        queries.fail_run(s, b, "late failure")
    with sessions.begin() as s:
        assert queries.get_run(s, a).status == FAILED and "boom" in queries.get_run(s, a).error
        assert len(queries.sample_frame(s, [a])) == 1
        assert queries.get_run(s, b).status == FINISHED and queries.get_run(s, b).error is None


def test_a_summary_with_non_finite_values_is_stored_with_them_as_null(db_url):
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        run_id = queries.create_run(s, SPEC).id
        summary = {"diverged_at_step": 7, "final_loss": math.nan, "peaks": [1.0, math.inf], "energy_j": -math.inf}
        assert queries.fail_run(s, run_id, "nan", summary, reason=NON_FINITE_LOSS, status=DIVERGED)
    with sessions.begin() as s:
        assert queries.get_run(s, run_id).summary == {"diverged_at_step": 7, "final_loss": None, "peaks": [1.0, None],
                                                       "energy_j": None}
        assert run_table.runs_overview(s)["diverged_at_step"].tolist() == [7]  # read by the database's JSON functions


def test_text_with_nul_characters_is_refused_from_users_and_kept_visible_from_runners(db_url, tmp_path):
    sessions = make_sessionmaker(db_url)
    log = tmp_path / "run.log"
    log.write_bytes(b"epoch 1\nKilled\n" + b"\0" * 16)  # a log cut short by a crash
    with sessions.begin() as s:
        failed, reaped = queries.create_run(s, SPEC).id, queries.create_run(s, SPEC).id
        queries.claim_run(s, reaped, pid=111, hostname="here")
        queries.update_run(s, reaped, log_path=str(log))
        for values in ({"name": "a\x00b"}, {"notes": "x\x00"}, {"tags": ["ok", "t\x00"]}):
            with pytest.raises(ValueError, match=r"contains a NUL character"):
                queries.annotate_run(s, failed, **values)
        queries.fail_run(s, failed, "ValueError: header b'\x00\x01'")
    with sessions.begin() as s:
        assert queries.reap_orphans(s, "here", is_alive=lambda pid: False) == [reaped]
    with sessions.begin() as s:
        assert queries.get_run(s, failed).error == "ValueError: header b'\ufffd\x01'"
        run = queries.get_run(s, reaped)
        assert run.status == LOST and run.error.endswith("Killed\n" + "\ufffd" * 16)


def test_points_come_ordered_by_name_in_code_point_order_on_every_backend(db_url):
    """As SQLite and pandas sort: PostgreSQL's en_US collation alone would put loss_b before loss/a."""
    sessions = make_sessionmaker(db_url)
    names = ["lossa", "loss_b", "Loss", "loss1", "loss/a", "lossC"]
    with sessions.begin() as s:
        run_id = queries.create_run(s, SPEC).id
        queries.add_metric_points(s, [dict(run_id=run_id, name=prefix + name, step=1, epoch=1, wall_time=0.0,
                                           value=1.0) for prefix in ("", "step/") for name in names])
    with sessions.begin() as s:
        per_epoch = queries.metric_frame(s, [run_id], names)["name"].tolist()
        per_step = queries.metric_frame(s, [run_id], [f"step/{name}" for name in names])["name"].tolist()
    assert per_epoch == sorted(names) == ["Loss", "loss/a", "loss1", "lossC", "loss_b", "lossa"]
    assert per_step == [f"step/{name}" for name in sorted(names)]


def test_reaper_fails_runs_whose_runner_is_gone(db_url, tmp_path):
    sessions = make_sessionmaker(db_url)
    log = tmp_path / "run.log"
    log.write_text("epoch 1\nSegmentation fault\n")
    with sessions.begin() as s:
        dead = queries.create_run(s, SPEC).id
        alive = queries.create_run(s, SPEC).id
        remote_stale = queries.create_run(s, SPEC).id
        never_started = queries.create_run(s, SPEC).id
        queries.claim_run(s, dead, pid=111, hostname="here")
        queries.update_run(s, dead, log_path=str(log))
        queries.claim_run(s, alive, pid=222, hostname="here")
        queries.claim_run(s, remote_stale, pid=333, hostname="elsewhere")
        queries.update_run(s, remote_stale, heartbeat_at=queries.utcnow() - timedelta(minutes=10))
    with sessions.begin() as s:
        reaped = queries.reap_orphans(s, "here", is_alive=lambda pid: pid == 222)
    assert sorted(reaped) == sorted([dead, remote_stale])
    with sessions.begin() as s:
        assert "runner process 111" in queries.get_run(s, dead).error
        assert "Segmentation fault" in queries.get_run(s, dead).error
        assert "no heartbeat" in queries.get_run(s, remote_stale).error
        assert queries.get_run(s, alive).status == RUNNING
        assert queries.get_run(s, never_started).status == QUEUED


def test_concurrent_writer_and_reader_never_fail_and_every_point_arrives(db_url):
    """A runner-like writer commits small batches while a dashboard-like reader polls."""
    writer_sessions, reader_sessions = make_sessionmaker(db_url), make_sessionmaker(db_url)
    with writer_sessions.begin() as s:
        run_id = queries.create_run(s, SPEC).id
    errors, stop = [], threading.Event()

    def write():
        try:
            for step in range(300):
                with writer_sessions.begin() as s:
                    queries.add_metric_points(s, [dict(run_id=run_id, name="step/train_loss", step=step, epoch=1,
                                                       wall_time=time.time(), value=1.0)])
                    queries.update_run(s, run_id, step=step)
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)
        finally:
            stop.set()

    thread = threading.Thread(target=write)
    thread.start()
    reads = 0
    while not stop.is_set():
        with reader_sessions.begin() as s:
            queries.metric_frame(s, [run_id])
            queries.list_runs(s)
        reads += 1
    thread.join()
    assert errors == [] and reads > 0
    with reader_sessions.begin() as s:
        assert len(queries.metric_frame(s, [run_id])) == 300


def test_a_reader_sees_a_runs_points_and_its_results_together_or_neither(db_url):
    """Results live on the run row (db/run_results.py), written in the points' transaction.

    Each read is one statement, so it sees one snapshot on both backends: the run's last test
    accuracy and median samples/s always match the points it counts, never a flush behind or ahead.
    """
    writer_sessions, reader_sessions = make_sessionmaker(db_url), make_sessionmaker(db_url)
    with writer_sessions.begin() as s:
        run_id = queries.create_run(s, SPEC).id
    epochs, errors, stop = 60, [], threading.Event()

    def write():
        try:
            for epoch in range(1, epochs + 1):
                with writer_sessions.begin() as s:
                    queries.add_metric_points(s, [
                        dict(run_id=run_id, name=name, step=epoch, epoch=epoch, wall_time=time.time(), value=value)
                        for name, value in (("test_accuracy", float(epoch)), ("samples_per_s", 10.0 * epoch))])
        except Exception as exc:  # pragma: no cover - the assertion below reports it
            errors.append(exc)
        finally:
            stop.set()

    read = text("SELECT last_test_accuracy, median_samples_per_s, last_values_recorded, "
                "(SELECT count(*) FROM metric_points WHERE run_id = runs.id AND name = 'test_accuracy'), "
                "(SELECT count(*) FROM metric_points WHERE run_id = runs.id AND name = 'samples_per_s') "
                "FROM runs WHERE id = :run_id")
    seen = set()
    thread = threading.Thread(target=write)
    thread.start()
    while not stop.is_set():
        with reader_sessions.begin() as s:
            last, median, recorded, accuracies, throughputs = s.execute(read, {"run_id": run_id}).one()
        assert accuracies == throughputs  # a flush's points arrive together
        if accuracies == 0:
            assert (last, median, recorded) == (None, None, None)
        else:
            assert (last, median, recorded) == (float(accuracies), 10.0 * (accuracies + 1) / 2, 1)
        seen.add(accuracies)
    thread.join()
    assert errors == [] and len(seen) > 1
    with reader_sessions.begin() as s:
        assert s.execute(read, {"run_id": run_id}).one() == (float(epochs), 10.0 * (epochs + 1) / 2, 1, epochs, epochs)


def test_points_rolled_back_take_their_results_with_them(db_url):
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        run_id = queries.create_run(s, SPEC).id
        queries.add_metric_points(s, [dict(run_id=run_id, name="train_loss", step=1, epoch=1, wall_time=0.0,
                                           value=2.0)])
    with pytest.raises(RuntimeError, match="flush failed"):
        with sessions.begin() as s:
            queries.add_metric_points(s, [dict(run_id=run_id, name="train_loss", step=2, epoch=2, wall_time=1.0,
                                               value=1.0)])
            assert run_table.runs_overview(s)["train_loss"].tolist() == [1.0]  # in the writing transaction
            raise RuntimeError("flush failed")
    with sessions.begin() as s:
        assert run_table.runs_overview(s)["train_loss"].tolist() == [2.0]
        assert queries.metric_frame(s, [run_id])["value"].tolist() == [2.0]
