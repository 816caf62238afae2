"""Data-parallel runs for real: 2 worker processes, PyTorch DDP over gloo and TensorFlow's MultiWorkerMirroredStrategy
over its CPU collectives, against one worker with the same global batch; a killed worker, a killed rank 0, a cancel.

The runners are started directly (engine.processes.start_runner), as the scheduler starts them; rank 0
starts the other worker itself.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import psutil
import pytest

from db import queries
from db.models import CANCELLED, FAILED, FINISHED, LOST
from db.session import make_sessionmaker
from engine.launch import cancel_runs
from engine.processes import reap, start_runner
from engine.spec import RunSpec
from tests.conftest import wait_until

STEPS = 20  # the issue's: the first 20 steps match to 1e-5
EXACT = 1e-5
LOST_DEADLINE_S = 15.0  # the issue's: a killed worker ends the run within this


def spec(framework: str, workers: int, **overrides) -> RunSpec:
    """A model without dropout or batch norm, deterministic kernels, the global batch 64 in both runs."""
    values = dict(framework=framework, model="mlp", dataset="digits", epochs=1, batch_size=64, max_steps_per_epoch=STEPS,
                  warmup_steps=2, deterministic=True, optimizer="sgd", lr=0.05, inference_iters=0,
                  calibration_steps=0, profile_steps=0, layer_stats=False, keep_weights=False, workers=workers)
    values.update(overrides)
    return RunSpec(**values)


def queue(sessions, run_spec: RunSpec) -> int:
    with sessions.begin() as s:
        return queries.create_run(s, run_spec.to_dict()).id


def run_to_end(sessions, url: str, run_id: int, timeout_s: float = 240):
    process = start_runner(sessions, run_id, url, {"CUDA_VISIBLE_DEVICES": "", "ARENA_DEVICE": "cpu"})
    process.wait(timeout_s)
    with sessions.begin() as s:
        return queries.get_run(s, run_id)


def losses(sessions, run_id: int) -> np.ndarray:
    with sessions.begin() as s:
        return queries.metric_frame(s, [run_id], ["step/train_loss"])["value"].to_numpy()


def log_of(run) -> str:
    return open(run.log_path).read()[-3000:] if run.log_path else ""


@pytest.fixture
def sessions(arena_db):
    return make_sessionmaker(arena_db)


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_two_workers_take_the_steps_one_worker_takes_on_the_same_global_batch(framework, arena_db, sessions):
    one = run_to_end(sessions, arena_db, queue(sessions, spec(framework, 1)))
    two = run_to_end(sessions, arena_db, queue(sessions, spec(framework, 2)))
    assert one.status == FINISHED, log_of(one)
    assert two.status == FINISHED, log_of(two)
    single, double = losses(sessions, one.id), losses(sessions, two.id)
    assert len(single) == len(double) == STEPS
    relative = np.abs(double - single) / np.abs(single)
    assert relative.max() <= EXACT, relative
    assert single[-1] < single[0] - 0.1  # it learned: the match is not of two flat lines

    summary = two.summary
    assert summary["workers"] == 2 and summary["per_worker_batch"] == 32
    assert summary["strategy"] == {"torch": "DistributedDataParallel (gloo)",
                                   "tensorflow": "MultiWorkerMirroredStrategy (ring)"}[framework]
    assert summary["sync_batchnorm"] == "no batch norm"
    assert summary["threads_per_worker"] >= 1
    ranks = summary["ranks"]
    assert [entry["rank"] for entry in ranks] == [0, 1]
    for entry in ranks:  # every worker recorded its own steady step times and memory
        assert entry["steps"] == STEPS - 2 and entry["step_time_p50_ms"] > 0 and entry["peak_rss_bytes"] > 0
    assert summary["straggling"] >= 1.0
    assert summary["calibration_skipped"]
    communication = summary["communication"]  # the gradients' exchange, measured apart after training
    assert communication["all_reduce_ms"] > 0 and 0 < communication["share"]
    assert f"{summary['param_count']:,} float32 values all-reduced" in communication["method"]
    with sessions.begin() as s:
        names = queries.metric_names(s, [two.id])
        rank1 = queries.metric_frame(s, [two.id], ["rank1/step/step_time_ms"])
        sources = set(queries.sample_frame(s, [two.id])["source"])
    assert "step/train_loss" in names and not any(name.startswith("rank") for name in names)
    assert len(rank1) == STEPS
    assert {"host", "rank1/host"} <= sources
    assert one.summary["workers"] == 1 and "ranks" not in one.summary


def _worker_of(run_id_pid: int) -> psutil.Process:
    """Rank 1: the runner's child process running `engine.runner ... --rank 1`."""
    def found():
        for child in psutil.Process(run_id_pid).children(recursive=True):
            try:
                if "--rank" in child.cmdline():
                    return child
            except psutil.Error:
                continue
        return None
    return wait_until(found, 60, "rank 1 started")


def _steps(sessions, run_id: int) -> int:
    with sessions.begin() as s:
        return queries.get_run(s, run_id).step


def test_a_killed_worker_fails_the_run_within_15_s_and_keeps_its_points(arena_db, sessions):
    run_id = queue(sessions, spec("torch", 2, epochs=1000, max_steps_per_epoch=None))
    runner = start_runner(sessions, run_id, arena_db, {"CUDA_VISIBLE_DEVICES": "", "ARENA_DEVICE": "cpu"})
    worker = _worker_of(runner.pid)
    wait_until(lambda: _steps(sessions, run_id) >= 20, 120, "training under way")
    worker.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    runner.wait(LOST_DEADLINE_S + 5)
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
    assert run.status == FAILED, log_of(run)
    assert time.monotonic() - killed_at <= LOST_DEADLINE_S
    assert "worker rank 1 was killed by SIGKILL" in run.error
    assert len(losses(sessions, run_id)) >= 20  # what was recorded up to then is kept
    assert not psutil.pid_exists(worker.pid) or worker.status() == psutil.STATUS_ZOMBIE


def test_a_killed_rank_0_takes_its_worker_with_it_and_the_run_reads_as_lost(arena_db, sessions):
    run_id = queue(sessions, spec("torch", 2, epochs=1000, max_steps_per_epoch=None))
    runner = start_runner(sessions, run_id, arena_db, {"CUDA_VISIBLE_DEVICES": "", "ARENA_DEVICE": "cpu"})
    worker = _worker_of(runner.pid)
    wait_until(lambda: _steps(sessions, run_id) >= 10, 120, "training under way")
    os.kill(runner.pid, signal.SIGKILL)
    runner.wait(5)
    wait_until(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, LOST_DEADLINE_S,
               "the orphaned worker exits")
    reap(sessions)
    with sessions.begin() as s:
        assert queries.get_run(s, run_id).status == LOST


def test_cancel_stops_every_worker(arena_db, sessions):
    run_id = queue(sessions, spec("tensorflow", 2, epochs=1000, max_steps_per_epoch=None))
    runner = start_runner(sessions, run_id, arena_db, {"CUDA_VISIBLE_DEVICES": "", "ARENA_DEVICE": "cpu"})
    worker = _worker_of(runner.pid)
    wait_until(lambda: _steps(sessions, run_id) >= 5, 180, "training under way")
    cancel_runs(sessions, [run_id])
    runner.wait(15)
    wait_until(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, 15, "the worker ends")
    with sessions.begin() as s:
        assert queries.get_run(s, run_id).status == CANCELLED


def test_a_spec_the_workers_cannot_split_is_refused_with_the_numbers():
    with pytest.raises(ValueError, match=r"batch_size=32: the global batch must split evenly between 3 workers"):
        spec("torch", 3, batch_size=32)
    with pytest.raises(ValueError, match=r"workers=9: must be <= 8"):
        spec("torch", 9)


def test_tensorflow_mirrored_strategy_takes_the_same_steps_in_one_process_over_logical_cpu_devices(arena_db, sessions):
    one = run_to_end(sessions, arena_db, queue(sessions, spec("tensorflow", 1)))
    mirrored = run_to_end(sessions, arena_db, queue(sessions, spec("tensorflow", 2, tf_strategy="mirrored")))
    assert one.status == FINISHED, log_of(one)
    assert mirrored.status == FINISHED, log_of(mirrored)
    single, replicated = losses(sessions, one.id), losses(sessions, mirrored.id)
    assert len(single) == len(replicated) == STEPS
    relative = np.abs(replicated - single) / np.abs(single)
    assert relative.max() <= EXACT, relative
    assert single[-1] < single[0] - 0.1

    summary = mirrored.summary
    assert summary["strategy"] == ("MirroredStrategy over 2 logical CPU devices in one process "
                                   "(ReductionToOneDevice): a functional check, not a speed figure")
    assert summary["workers"] == 2 and summary["per_worker_batch"] == 32
    assert summary["communication"]["all_reduce_ms"] > 0 and summary["calibration_skipped"]
    assert "ranks" not in summary and "straggling" not in summary  # one process: no rank of its own to record
    with sessions.begin() as s:
        names = queries.metric_names(s, [mirrored.id])
        sources = set(queries.sample_frame(s, [mirrored.id])["source"])
    assert not any(name.startswith("rank") for name in names) and "rank1/host" not in sources
    # Both workers' CPU shares (cores // 2 each) in the one process.
    assert mirrored.environment["intra_op_threads"] == 2 * max(1, (os.cpu_count() or 1) // 2)
