"""Real runs through the runner subprocess into a temporary SQLite file, in both frameworks."""
import math
import os
import signal
import sys
import time

import numpy as np
import psutil
import pytest

from db import queries
from db.models import DIVERGED, FAILED, FINISHED, LOST
from db.session import make_sessionmaker
from engine.launch import launch, reap
from tests.conftest import stop_run
from engine.processes import runner_alive
from engine import kept_weights
from engine.spec import RunSpec
from engine.weights import initial_weights, layer_shapes

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


def ended(run):
    return run.status not in ("queued", "running")


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
    # How busy other processes kept the cores while it ran (the other xdist worker's tests, here): within the machine.
    assert 0 <= run.summary["others_busy_cores"] <= run.summary["host_cores"] == os.cpu_count()
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
    """Both runs were queued at once; with one CPU slot the second was placed after the first had finished."""
    _, runs = pair
    first, second = sorted(runs, key=lambda r: r.started_at)
    assert second.started_at >= first.finished_at
    assert [r.placed_device for r in runs] == ["cpu", "cpu"]
    assert all(r.environment["cuda_visible_devices"] == "" for r in runs)


def test_a_finished_run_keeps_its_trained_weights_in_the_canonical_layout(pair):
    """Issue 17: both frameworks' final weights, every tensor, trained away from the shared start and close to each other."""
    sessions, runs = pair
    kept = []
    with sessions.begin() as s:
        for run in runs:
            row = kept_weights.find(s, run.id)
            assert row is not None and row["name"] == "weights.npz" and row["size_bytes"] == row["stored_bytes"] > 0
            kept.append(kept_weights.load(s, run.id))
    shapes = dict(layer_shapes("mlp", (8, 8, 1), 10))
    start = initial_weights("mlp", (8, 8, 1), 10, seed=7)
    for run, found in zip(runs, kept):
        assert found.meta["run_id"] == run.id and found.meta["framework"] == run.framework
        assert (found.meta["model"], found.input_shape, found.num_outputs) == ("mlp", (8, 8, 1), 10)
        assert {name: w.shape for name, w in found.weights.items()} == shapes
        moved = max(float(np.abs(found.weights[n] - start[n]).max()) for n in shapes)
        assert moved > 1e-3  # 20 Adam steps at lr 1e-3 move weights by about 20 * lr
    # Same start, same batches, same optimizer: the frameworks' weights moved alike. Adam divides by a
    # gradient's running size, so a gradient near zero turns float noise into a step of up to lr: a few 1e-4.
    moved = max(float(np.abs(kept[0].weights[n] - start[n]).max()) for n in shapes)
    apart = max(float(np.abs(kept[0].weights[n] - kept[1].weights[n]).max()) for n in shapes)
    assert apart < moved / 10, (apart, moved)


def test_keep_weights_off_keeps_none(arena_db):
    sessions = make_sessionmaker(arena_db)
    spec = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=1, max_steps_per_epoch=2, warmup_steps=0,
                   keep_weights=False, calibration_steps=0, profile_steps=0, inference_iters=0)
    (run_id,) = launch(sessions, [spec], arena_db)
    run = wait_for(sessions, run_id, done)
    assert run.status == FINISHED, run.error
    with sessions.begin() as s:
        assert kept_weights.find(s, run_id) is None


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_a_diverging_run_ends_as_diverged_at_its_step_and_keeps_its_points(arena_db, framework):
    sessions = make_sessionmaker(arena_db)
    spec = RunSpec(framework=framework, model="mlp", dataset="digits", epochs=3, optimizer="sgd", lr=1e9,
                   max_steps_per_epoch=5)
    (run_id,) = launch(sessions, [spec], arena_db)
    run = wait_for(sessions, run_id, ended)
    assert (run.status, run.reason) == (DIVERGED, "non_finite_loss"), run.error
    assert "Diverged" in run.error and "Traceback" in run.error and "lower lr" in run.error
    with sessions.begin() as s:
        losses = queries.metric_frame(s, [run_id], ["step/train_loss"])
    bad = ~np.isfinite(losses["value"].astype(float))  # SQLite keeps a NaN as NULL (NaN here), inf as inf
    first_bad = int(losses[bad]["step"].min())
    assert run.summary["diverged_at_step"] == first_bad and run.step >= first_bad
    assert not bad[losses["step"] < first_bad].any()


def test_continue_on_divergence_trains_to_the_end_and_still_says_diverged(arena_db):
    sessions = make_sessionmaker(arena_db)
    spec = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=2, optimizer="sgd", lr=1e9,
                   max_steps_per_epoch=5, on_divergence="continue", inference_iters=0)
    (run_id,) = launch(sessions, [spec], arena_db)
    run = wait_for(sessions, run_id, ended)
    assert (run.status, run.reason, run.epoch, run.step) == (DIVERGED, "non_finite_loss", 2, 10), run.error
    assert "on_divergence=continue" in run.error and run.summary["diverged_at_step"] >= 1
    assert "first_step_s" in run.summary and "peak_bytes" in run.summary  # the whole summary is kept


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
    assert run.status == FAILED and run.error == "stopped before it started" and run.pid is None
    assert stop_run(sessions, first)
    wait_for(sessions, first, done, timeout=60)


def test_killed_runner_is_reaped_as_lost_and_keeps_points(arena_db):
    sessions = make_sessionmaker(arena_db)
    spec = RunSpec(framework="torch", model="cnn", dataset="digits", epochs=200)
    (run_id,) = launch(sessions, [spec], arena_db)
    run = _running_with_points(sessions, run_id)
    os.kill(run.pid, signal.SIGKILL)
    psutil.Process(run.pid).wait(timeout=30) if psutil.pid_exists(run.pid) else None
    assert not runner_alive(run.pid)
    reap(sessions)  # (or the scheduler's next pass does it first)
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        points = queries.metric_frame(s, [run_id], ["step/train_loss"])
        samples = queries.sample_frame(s, [run_id], "host", "rss")
    assert (run.status, run.reason) == (LOST, "process_gone") and f"runner process {run.pid}" in run.error
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


def test_a_runner_caught_between_vfork_and_exec_counts_as_alive(monkeypatch):
    """/proc/PID/cmdline is empty for a moment after Popen returns (vfork): that runner must not be reaped as lost."""
    from engine import processes

    class Seen:
        def __init__(self, cmdline):
            self._cmdline = cmdline

        def status(self):
            return psutil.STATUS_RUNNING

        def cmdline(self):
            return self._cmdline

    for cmdline, alive in (([], True), ([sys.executable, "-m", "engine.runner", "3"], True),
                           ([sys.executable, "-m", "http.server"], False)):  # a pid reused by something else
        monkeypatch.setattr(processes.psutil, "Process", lambda pid, c=cmdline: Seen(c))
        assert processes.runner_alive(4242) is alive


@pytest.fixture(scope="module")
def windowed_pair(pair):
    """The same tiny experiment timed in windows (what a GPU gets by default), on this CPU, in both frameworks."""
    sessions, _ = pair
    url = sessions.kw["bind"].url.render_as_string(hide_password=False)
    specs = [RunSpec(framework=fw, model="mlp", dataset="digits", epochs=2, max_steps_per_epoch=40, seed=7,
                     step_timing="windows") for fw in FRAMEWORKS]
    run_ids = launch(sessions, specs, url)
    return sessions, [wait_for(sessions, run_id, done) for run_id in run_ids]


@pytest.mark.parametrize("index", [0, 1], ids=FRAMEWORKS)
def test_a_run_timed_in_windows_records_throughput_and_a_sample_of_step_times(windowed_pair, index):
    sessions, runs = windowed_pair
    run = runs[index]
    assert run.status == FINISHED, run.error
    assert run.summary["step_timing"]["method"] == "windows"
    with sessions.begin() as s:
        losses = queries.metric_frame(s, [run.id], ["step/train_loss"])["step"].tolist()
        timed = queries.metric_frame(s, [run.id], ["step/step_time_ms"])["step"].tolist()
        final = queries.final_metrics(s, [run.id])[run.id]
    assert losses == list(range(1, 81))  # every step's loss
    assert timed[0] == 1 and set(timed) < set(losses) and len(timed) >= 16  # the first step and sampled windows
    assert run.summary["steady_samples_per_s"] > 0 and final["samples_per_s"] > 0
    assert run.summary["steady_steps"] == len([step for step in timed if step > 10])
