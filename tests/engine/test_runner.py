"""Real runs through the runner subprocess into a temporary SQLite file, in both frameworks."""
import math
import os
import signal
import time

import psutil
import pytest

from db import queries
from db.models import FAILED, FINISHED
from db.session import make_sessionmaker
from engine.launch import launch, reap, runner_alive, stop_run
from engine.spec import RunSpec

FRAMEWORKS = ("torch", "tensorflow")


def wait_for(sessions, run_id, condition, timeout=180.0):
    """Poll the run row until condition(run) holds; return the run."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions.begin() as s:
            run = queries.get_run(s, run_id)
            if condition(run):
                return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not reach the condition in {timeout}s (status {run.status})")


def done(run):
    return run.status in (FINISHED, FAILED)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same tiny mlp experiment queued in both frameworks, as the dashboard's "Both" does."""
    home = tmp_path_factory.mktemp("pair")
    os.environ["ARENA_HOME"] = str(home)
    url = f"sqlite:///{home / 'arena.db'}"
    sessions = make_sessionmaker(url)
    specs = [RunSpec(framework=fw, model="mlp", dataset="digits", epochs=2, max_steps_per_epoch=10, seed=7)
             for fw in FRAMEWORKS]
    run_ids = launch(sessions, specs, url)
    runs = [wait_for(sessions, run_id, done) for run_id in run_ids]
    return sessions, runs


@pytest.mark.parametrize("index", [0, 1], ids=FRAMEWORKS)
def test_tiny_run_finishes_with_metrics_samples_and_environment(pair, index):
    sessions, runs = pair
    run = runs[index]
    assert run.status == FINISHED, run.error
    assert run.framework == FRAMEWORKS[index] and run.epoch == 2 and run.step == 20
    assert run.summary["param_count"] == 9610 and run.summary["first_step_s"] > 0
    # Equal defaults, recorded as what the run really used.
    assert run.summary["mode"] == {"torch": "eager", "tensorflow": "graph"}[run.framework]
    assert (run.summary["compute_dtype"], run.summary["tf32"], run.summary["same_init"]) == ("float32", False, True)
    assert run.summary["warmup_steps"] == 10 and run.summary["steady_steps"] == 10
    env = run.environment
    for key in ("python_version", "framework_version", "hostname", "cpu_model", "device", "device_name", "nvml"):
        assert env.get(key), key
    assert env["framework"] == run.framework and env["device"] == "cpu"
    with sessions.begin() as s:
        steps = queries.metric_frame(s, [run.id], ["step/train_loss"])
        times = queries.metric_frame(s, [run.id], ["step/step_time_ms"])
        final = queries.final_metrics(s, [run.id])[run.id]
        rss = queries.sample_frame(s, [run.id], "host", "rss")
        cpu = queries.sample_frame(s, [run.id], "host", "cpu_percent")
    assert steps["step"].tolist() == list(range(1, 21))
    assert all(math.isfinite(v) and v > 0 for v in steps["value"])
    assert times["step"].tolist() == list(range(1, 21)) and (times["value"] > 0).all()
    assert set(final) >= {"train_loss", "test_loss", "test_accuracy", "samples_per_s", "epoch_time_s"}
    assert all(math.isfinite(v) for v in final.values())
    assert 0.0 <= final["test_accuracy"] <= 1.0 and final["samples_per_s"] > 0
    # A TensorFlow mlp trains these 20 steps in well under a second: a few samples, at the rate below.
    assert len(rss) >= 3 and len(cpu) == len(rss)
    span = rss["time"].iloc[-1] - rss["time"].iloc[0]
    assert (len(rss) - 1) / span >= 5.0  # host memory sampled at >= 5 Hz
    assert rss["value"].min() > 50 * 1024**2  # a framework process holds well over 50 MiB


def test_same_initial_weights_and_data_give_the_same_first_loss(pair):
    """Fairness: both frameworks start from one set of weights and see the same first batch."""
    sessions, runs = pair
    with sessions.begin() as s:
        first = [queries.metric_frame(s, [r.id], ["step/train_loss"])["value"].iloc[0] for r in runs]
    assert first[0] == pytest.approx(first[1], abs=1e-5)
    assert runs[0].group_tag and runs[0].group_tag == runs[1].group_tag


def test_runs_on_one_host_take_turns_so_speed_is_not_shared(pair):
    """Both runs were started at once; the second waited until the first had finished."""
    _, runs = pair
    first, second = sorted(runs, key=lambda r: r.started_at)
    assert second.started_at >= first.finished_at


def test_diverging_run_fails_with_traceback_and_keeps_its_points(arena_db):
    sessions = make_sessionmaker(arena_db)
    spec = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=3, optimizer="sgd", lr=1e9,
                   max_steps_per_epoch=5)
    (run_id,) = launch(sessions, [spec], arena_db)
    run = wait_for(sessions, run_id, done)
    assert run.status == FAILED
    assert "FloatingPointError" in run.error and "Traceback" in run.error and "lower lr" in run.error
    with sessions.begin() as s:
        assert len(queries.metric_frame(s, [run_id], ["step/train_loss"])) == 5
        assert "train_loss" in queries.final_metrics(s, [run_id])[run_id]


def _running_with_points(sessions, run_id):
    def condition(run):
        return run.status == "running" and run.step >= 5
    return wait_for(sessions, run_id, condition)


def test_a_waiting_run_can_be_stopped_before_it_starts(arena_db):
    sessions = make_sessionmaker(arena_db)
    long = RunSpec(framework="torch", model="cnn", dataset="digits", epochs=200)
    first, waiting = launch(sessions, [long, long], arena_db)
    _running_with_points(sessions, first)
    with sessions.begin() as s:
        assert queries.get_run(s, waiting).status == "queued"
    assert stop_run(sessions, waiting)
    run = wait_for(sessions, waiting, done, timeout=60)
    assert run.status == FAILED and "before it started" in run.error
    assert stop_run(sessions, first)
    wait_for(sessions, first, done, timeout=60)


def test_killed_runner_is_reaped_as_failed_and_keeps_points(arena_db):
    sessions = make_sessionmaker(arena_db)
    spec = RunSpec(framework="torch", model="cnn", dataset="digits", epochs=200)
    (run_id,) = launch(sessions, [spec], arena_db)
    run = _running_with_points(sessions, run_id)
    os.kill(run.pid, signal.SIGKILL)
    psutil.Process(run.pid).wait(timeout=30) if psutil.pid_exists(run.pid) else None
    assert not runner_alive(run.pid)
    assert run_id in reap(sessions)
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        points = queries.metric_frame(s, [run_id], ["step/train_loss"])
        samples = queries.sample_frame(s, [run_id], "host", "rss")
    assert run.status == FAILED and f"runner process {run.pid}" in run.error
    assert len(points) >= 5 and len(samples) > 0


def test_stopped_run_records_why_and_keeps_points(arena_db):
    sessions = make_sessionmaker(arena_db)
    spec = RunSpec(framework="tensorflow", model="cnn", dataset="digits", epochs=200)
    (run_id,) = launch(sessions, [spec], arena_db)
    _running_with_points(sessions, run_id)
    assert stop_run(sessions, run_id)
    run = wait_for(sessions, run_id, done, timeout=60)
    assert run.status == FAILED and "stopped by signal SIGTERM" in run.error
    with sessions.begin() as s:
        assert len(queries.metric_frame(s, [run_id], ["step/train_loss"])) >= 5
