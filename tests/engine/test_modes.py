"""Execution modes, precision, layout, determinism and timing, through real runs of the real CLI."""
import json

import pytest

from db import queries
from db.session import make_sessionmaker
from tests.conftest import NO_CALIBRATION_FLAGS, run_cli

TINY = ["--model", "mlp", "--dataset", "digits", "--epochs", "1", "--max-steps-per-epoch", "6",
        "--warmup-steps", "2", "--inference-iters", "3", *NO_CALIBRATION_FLAGS]
TIMING_KEYS = {"first_step_s", "compile_s", "warmup_steps", "steady_samples_per_s", "step_time_p50_ms",
               "step_time_p95_ms", "step_time_p99_ms", "inference_bs1_p50_ms", "inference_bs1_p95_ms",
               "inference_bsN_p50_ms", "inference_bsN_p95_ms", "inference_bsN_samples_per_s", "inference_compile_s"}


def last_json(stdout: str):
    return json.loads(stdout.strip().splitlines()[-1])


def step_times(url, run_id):
    with make_sessionmaker(url).begin() as s:
        return queries.metric_frame(s, [run_id], ["step/step_time_ms"])


@pytest.mark.parametrize("framework, mode", [("torch", "compiled"), ("tensorflow", "xla"), ("tensorflow", "eager")])
def test_each_mode_trains_and_keeps_compile_time_apart(arena_db, framework, mode):
    result = run_cli("run", "--framework", framework, "--mode", mode, *TINY, "--json", timeout=600)
    assert result.returncode == 0, result.stderr
    record = last_json(result.stdout)
    summary = record["summary"]
    assert record["mode"] == summary["mode"] == mode
    assert TIMING_KEYS <= set(summary), TIMING_KEYS - set(summary)
    times = step_times(arena_db, record["run_id"])
    assert times["step"].tolist() == list(range(1, 7))  # every step timed and stored
    steady = times["value"].iloc[2:]
    assert summary["step_time_p50_ms"] == pytest.approx(steady.median(), rel=1e-6)
    assert summary["first_step_s"] * 1e3 == pytest.approx(times["value"].iloc[0], rel=1e-6)
    if mode != "eager":
        # Tracing/compiling makes the first step far slower than a steady one, and it is not in throughput.
        assert summary["compile_s"] > 5 * summary["step_time_p50_ms"] / 1e3
    assert 0 < summary["inference_bs1_p50_ms"] <= summary["inference_bs1_p95_ms"]


def test_matrix_launch_queues_one_group_and_each_run_keeps_its_settings(arena_db):
    result = run_cli("run", "--framework", "both", "--precision", "fp32", "mixed", "--seeds", "3-4", *TINY,
                     "--json", timeout=600)
    assert result.returncode == 0, result.stderr
    group = last_json(result.stdout)
    runs = group["runs"]
    assert len(runs) == 8 and len({r["group_tag"] for r in runs}) == 1 and group["group_tag"]
    combos = {(r["framework"], r["mode"], r["precision"], r["seed"]) for r in runs}
    assert combos == {(fw, mode, p, seed) for fw, mode in (("torch", "eager"), ("tensorflow", "graph"))
                      for p in ("fp32", "mixed") for seed in (3, 4)}
    for r in runs:
        assert r["status"] == "finished"
        assert r["summary"]["compute_dtype"] == ("bfloat16" if r["precision"] == "mixed" else "float32")
        assert r["summary"]["tf32"] is False and r["summary"]["same_init"] is True
    # Same seed and settings, same initial weights and data: both frameworks start at the same loss.
    with make_sessionmaker(arena_db).begin() as s:
        first = {(r["framework"], r["seed"]): queries.metric_frame(s, [r["run_id"]], ["step/train_loss"])
                 ["value"].iloc[0] for r in runs if r["precision"] == "fp32"}
    assert first[("torch", 3)] == pytest.approx(first[("tensorflow", 3)], abs=1e-5)
    assert first[("torch", 3)] != pytest.approx(first[("torch", 4)], abs=1e-5)


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_deterministic_runs_repeat_exactly(arena_db, framework):
    losses = []
    for _ in range(2):
        result = run_cli("run", "--framework", framework, "--deterministic", *TINY, "--json")
        assert result.returncode == 0, result.stderr
        record = last_json(result.stdout)
        assert record["summary"]["deterministic"] is True
        with make_sessionmaker(arena_db).begin() as s:
            losses.append(queries.metric_frame(s, [record["run_id"]], ["step/train_loss"])["value"].tolist())
    assert losses[0] == losses[1]


def test_framework_initialisers_start_elsewhere_but_build_the_same_model(arena_db):
    records = []
    for framework in ("torch", "tensorflow"):
        result = run_cli("run", "--framework", framework, "--framework-init", *TINY, "--json")
        assert result.returncode == 0, result.stderr
        records.append(last_json(result.stdout))
    assert [r["summary"]["same_init"] for r in records] == [False, False]
    assert records[0]["summary"]["param_count"] == records[1]["summary"]["param_count"] == 9610
    with make_sessionmaker(arena_db).begin() as s:
        first = [queries.metric_frame(s, [r["run_id"]], ["step/train_loss"])["value"].iloc[0] for r in records]
    assert first[0] != pytest.approx(first[1], abs=1e-4)


def test_time_to_target_accuracy_is_the_training_time_of_the_first_epoch_that_reaches_it(arena_db):
    result = run_cli("run", "--framework", "tensorflow", "--model", "mlp", "--dataset", "digits", "--epochs", "3",
                     "--target-accuracy", "0.5", "--inference-iters", "0", "--json")
    assert result.returncode == 0, result.stderr
    record = last_json(result.stdout)
    summary = record["summary"]
    with make_sessionmaker(arena_db).begin() as s:
        frame = queries.metric_frame(s, [record["run_id"]], ["epoch_time_s", "test_accuracy"])
    accuracy = frame[frame["name"] == "test_accuracy"]["value"].tolist()
    epoch_times = frame[frame["name"] == "epoch_time_s"]["value"].tolist()
    reached = next(i for i, a in enumerate(accuracy) if a >= 0.5)
    assert summary["epochs_to_target"] == reached + 1
    assert summary["time_to_target_s"] == pytest.approx(sum(epoch_times[:reached + 1]), rel=1e-6)
    assert "inference_bs1_p50_ms" not in summary  # --inference-iters 0 skips the benchmark


@pytest.mark.parametrize("device", ["cpu", "auto"])  # auto: this machine has no GPU
def test_channels_first_on_a_cpu_in_tensorflow_is_refused_before_anything_is_stored(arena_db, device):
    result = run_cli("run", "--framework", "both", "--model", "cnn", "--dataset", "digits", "--layout",
                     "channels_first", "--device", device, "--epochs", "1", "--json")
    assert result.returncode == 2
    assert "layout='channels_first': TensorFlow runs NCHW convolutions only on a GPU" in result.stderr
    with make_sessionmaker(arena_db).begin() as s:
        assert queries.list_runs(s) == []


@pytest.mark.parametrize("framework, mode", [("torch", "eager"), ("tensorflow", "xla")])
def test_channels_first_runs_in_pytorch_and_in_xla_on_the_cpu(arena_db, framework, mode):
    result = run_cli("run", "--framework", framework, "--mode", mode, "--model", "cnn", "--dataset", "digits",
                     "--layout", "channels_first", "--epochs", "1", "--max-steps-per-epoch", "3",
                     "--inference-iters", "2", "--json")
    assert result.returncode == 0, result.stderr
    assert last_json(result.stdout)["summary"]["layout"] == "channels_first"
