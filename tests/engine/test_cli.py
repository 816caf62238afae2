"""`python -m engine`: run/runs/models through the real runner path and database."""
import json
import subprocess
import sys

import pytest

from db import queries
from db.session import make_sessionmaker
from tests.conftest import NO_CALIBRATION_FLAGS, run_cli

TINY = ["--epochs", "1", "--max-steps-per-epoch", "3", "--warmup-steps", "1", "--inference-iters", "2", *NO_CALIBRATION_FLAGS]


def last_json(stdout: str):
    return json.loads(stdout.strip().splitlines()[-1])


def test_run_json_contract_and_runs_listing(arena_db):
    result = run_cli("run", "--framework", "torch", "--model", "mlp", "--dataset", "digits", *TINY,
                     "--db", arena_db, "--json")
    assert result.returncode == 0, result.stderr
    record = last_json(result.stdout)
    assert {"run_id", "status", "framework", "model", "dataset", "metrics"} <= set(record)
    assert (record["status"], record["framework"], record["model"], record["dataset"]) == (
        "finished", "torch", "mlp", "digits")
    assert {"train_loss", "test_loss", "test_accuracy", "samples_per_s"} <= set(record["metrics"])
    assert "epoch 1/1" in result.stderr  # progress was shown

    listing = run_cli("runs", "--json", "--db", arena_db)
    assert listing.returncode == 0
    runs = last_json(listing.stdout)
    assert [r["run_id"] for r in runs] == [record["run_id"]]
    assert runs[0]["metrics"]["test_accuracy"] == pytest.approx(record["metrics"]["test_accuracy"])


def test_db_defaults_to_arena_db_url(arena_db):
    result = run_cli("run", "--framework", "tensorflow", "--model", "powerlaw", "--dataset", "powerlaw", *TINY,
                     "--json")
    assert result.returncode == 0, result.stderr
    sessions = make_sessionmaker(arena_db)
    with sessions.begin() as s:
        assert [r.framework for r in queries.list_runs(s)] == ["tensorflow"]


@pytest.mark.parametrize("args, message", [
    (["--framework", "mxnet", "--model", "mlp", "--dataset", "digits"], "frameworks='mxnet'"),
    (["--framework", "torch", "--model", "mlp", "--dataset", "digits", "--lr", "-0.1"], "lr=-0.1: must be > 0"),
    (["--framework", "torch", "--model", "mlp", "--dataset", "digits", "--epochs", "0"], "epochs=0"),
    (["--framework", "torch", "--model", "mlp", "--dataset", "digits", "--batch-size", "5000"], "batch_size=5000"),
    (["--framework", "torch", "--model", "cnn", "--dataset", "powerlaw"], "dataset='powerlaw'"),
    (["--framework", "torch", "--model", "mlp", "--dataset", "digits", "--device", "cuda:0"], "device='cuda:0'"),
    (["--framework", "torch", "--model", "mlp", "--dataset", "digits", "--mode", "xla"],
     "modes=['xla']: none is a torch mode"),
    (["--framework", "both", "--model", "mlp", "--dataset", "digits", "--seeds", "0-x"], "seeds='0-x'"),
    (["--framework", "torch", "--model", "mlp", "--dataset", "digits", "--seed", "1", "--seeds", "0-4"],
     "give --seed or --seeds, not both"),
    (["--framework", "torch", "--model", "resnet", "--dataset", "synthetic_images", "--synthetic-shape", "32x32"],
     "synthetic_shape='32x32'"),
    (["--framework", "torch", "--model", "lstm", "--dataset", "synthetic_text", "--precision", "fp16"],
     "precisions='fp16'"),
    (["--framework", "torch", "--model", "mnist_cnn", "--dataset", "mnist"],
     "dataset='mnist': mnist: missing train-images-idx3-ubyte.gz"),
])
def test_bad_input_exits_2_names_the_value_and_stores_nothing(arena_db, args, message, tmp_path):
    result = run_cli("run", *args, "--db", arena_db, "--json", env={"ARENA_DATA_DIR": str(tmp_path / "no-data")})
    assert result.returncode == 2
    assert message in result.stderr
    with make_sessionmaker(arena_db).begin() as s:
        assert queries.list_runs(s) == []


@pytest.mark.parametrize("limit", ["0", "-3", "many"])
def test_runs_limit_must_be_a_positive_count(arena_db, limit):
    result = run_cli("runs", "--limit", limit)
    assert result.returncode == 2
    assert f"--limit: {limit!r} is not a whole number >= 1" in result.stderr


def test_diverged_run_exits_nonzero_with_status_diverged(arena_db):
    result = run_cli("run", "--framework", "tensorflow", "--model", "mlp", "--dataset", "digits", "--optimizer",
                     "sgd", "--lr", "1e9", *TINY, "--json")
    assert result.returncode == 1
    record = last_json(result.stdout)
    assert (record["status"], record["reason"], record["device"]) == ("diverged", "non_finite_loss", "cpu")
    assert "the run diverged" in record["error"] and record["summary"]["diverged_at_step"] >= 1


def test_models_reports_measured_parameter_counts():
    result = run_cli("models", "--json")
    assert result.returncode == 0, result.stderr
    counts = {(m["model"], m["dataset"]): m["param_count"] for m in last_json(result.stdout)["models"]}
    assert counts[("mlp", "digits")] == {"torch": 9610, "tensorflow": 9610}
    assert counts[("cnn", "digits")] == {"torch": 151306, "tensorflow": 151306}
    assert counts[("powerlaw", "powerlaw")] == {"torch": 1, "tensorflow": 1}
    assert counts[("mnist_cnn", "mnist")] == {"torch": 1_199_882, "tensorflow": 1_199_882}
    assert counts[("resnet", "cifar10")] == {"torch": 269_722, "tensorflow": 269_722}
    for (model, dataset), per_framework in counts.items():
        assert per_framework["torch"] == per_framework["tensorflow"], (model, dataset)


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
@pytest.mark.parametrize("model, dataset, check", [
    ("mlp", "digits", lambda m: m["test_accuracy"] >= 0.95),
    ("cnn", "digits", lambda m: m["test_accuracy"] >= 0.97),
    ("powerlaw", "powerlaw", lambda m: abs(m["phi_estimate"] - m["phi_true"]) <= 0.02),
])
def test_defaults_reach_the_quality_bar_in_20_epochs(arena_db, framework, model, dataset, check):
    """The acceptance bar of the vertical slice, with the documented defaults."""
    result = run_cli("run", "--framework", framework, "--model", model, "--dataset", dataset, "--epochs", "20",
                     "--json")
    assert result.returncode == 0, result.stderr
    metrics = last_json(result.stdout)["metrics"]
    assert check(metrics), metrics


@pytest.mark.parametrize("workers, message", [
    (["9"], "workers=9: must be <= 8"),
    (["0"], "workers=0: must be >= 1"),
    (["3"], "batch_size=32: the global batch must split evenly between 3 workers"),
    (["2", "2"], "workers=[2, 2]: a worker count is listed twice"),
    (["two"], "argument --workers: invalid int value: 'two'"),
])
def test_bad_workers_exit_2_name_the_value_and_store_nothing(arena_db, workers, message):
    result = run_cli("run", "--framework", "torch", "--model", "mlp", "--dataset", "digits", "--batch-size", "32",
                     "--workers", *workers, "--db", arena_db, env={"ARENA_SCHEDULER": "off"})
    assert result.returncode == 2
    assert message in result.stderr
    with make_sessionmaker(arena_db).begin() as s:
        assert queries.list_runs(s) == []


def test_several_worker_counts_make_a_scaling_study_and_json_lifts_the_worker_figures(arena_db):
    from engine.cli import _run_record, build_parser, build_specs

    args = build_parser().parse_args(["run", "--framework", "both", "--model", "mlp", "--dataset", "digits",
                                      "--workers", "1", "2", "--sync-batchnorm"])
    specs = build_specs(args)
    assert [(spec.framework, spec.workers) for spec in specs] == [
        ("torch", 1), ("torch", 2), ("tensorflow", 1), ("tensorflow", 2)]
    assert all(spec.sync_batchnorm for spec in specs)

    ranks = [{"rank": r, "step_time_p50_ms": 5.0 + r, "step_time_p95_ms": 6.0, "steady_samples_per_s": 900.0,
              "peak_rss_bytes": 3e8} for r in range(2)]
    with make_sessionmaker(arena_db).begin() as s:
        single, double = (queries.create_run(s, spec.to_dict()) for spec in specs[:2])
        queries.finish_run(s, double.id, {"workers": 2, "strategy": "DistributedDataParallel (gloo)",
                                          "threads_per_worker": 1, "ranks": ranks, "straggling": 1.1})
        s.refresh(double)
        records = [_run_record(run, {}) for run in (single, double)]
    assert records[0]["workers"] == 1 and "ranks" not in records[0]  # asked for one; nothing ran yet
    assert {key: records[1][key] for key in ("workers", "strategy", "threads_per_worker", "straggling")} == {
        "workers": 2, "strategy": "DistributedDataParallel (gloo)", "threads_per_worker": 1, "straggling": 1.1}
    assert records[1]["ranks"] == ranks


def test_tf_strategy_mirrored_goes_to_the_tensorflow_runs_of_several_workers_only():
    from engine.cli import build_parser, build_specs
    from engine.spec import SpecError

    def specs(*flags):
        return build_specs(build_parser().parse_args(["run", "--model", "mlp", "--dataset", "digits", *flags]))

    assert [(spec.framework, spec.workers, spec.tf_strategy) for spec in specs(
        "--framework", "both", "--workers", "1", "2", "--tf-strategy", "mirrored")] == [
        ("torch", 1, "multi_worker"), ("torch", 2, "multi_worker"), ("tensorflow", 1, "multi_worker"),
        ("tensorflow", 2, "mirrored")]
    with pytest.raises(SpecError, match=r"tf_strategy='mirrored': applies to TensorFlow runs of 2 or more workers"):
        specs("--framework", "torch", "--workers", "2", "--tf-strategy", "mirrored")
    with pytest.raises(SpecError, match=r"mode='xla': one XLA-compiled step cannot reach"):
        specs("--framework", "tensorflow", "--mode", "xla", "--workers", "2", "--tf-strategy", "mirrored")


def test_input_flags_reach_the_specs_and_fit_needs_the_native_pipeline():
    from engine.cli import build_parser, build_specs
    from engine.spec import SpecError

    def specs(*flags):
        return build_specs(build_parser().parse_args(["run", "--model", "mlp", "--dataset", "digits", *flags]))

    torch_run, graph, fit = specs("--framework", "both", "--mode", "torch:eager", "graph", "fit",
                                  "--pipeline", "native", "--loader-workers", "0", "--augment", "flip,crop")
    assert [(spec.framework, spec.mode) for spec in (torch_run, graph, fit)] == [
        ("torch", "eager"), ("tensorflow", "graph"), ("tensorflow", "fit")]
    assert {(spec.pipeline, spec.loader_workers, spec.augment) for spec in (torch_run, graph, fit)} == {
        ("native", 0, ("crop", "flip"))}
    (default,) = specs("--framework", "torch")
    assert (default.pipeline, default.augment) == ("arrays", ())
    with pytest.raises(SpecError, match=r"pipeline='arrays': mode fit trains over .* use pipeline native"):
        specs("--framework", "tensorflow", "--mode", "fit")
    with pytest.raises(SpecError, match=r"loader_workers=4: .* add --pipeline native"):
        specs("--framework", "torch", "--loader-workers", "4")
    with pytest.raises(SpecError, match=r"augment='crop,blur': unknown augmentation 'blur'"):
        specs("--framework", "torch", "--augment", "crop,blur")
    with pytest.raises(SpecError, match=r"augment='flip': powerlaw holds no images"):
        build_specs(build_parser().parse_args(["run", "--framework", "torch", "--model", "powerlaw", "--dataset",
                                               "powerlaw", "--augment", "flip"]))


def test_a_fit_run_beside_a_graph_run_reports_its_input_figures_in_json(arena_db):
    """Real runs, tiny: the native pipeline with one loader worker, TensorFlow's graph loop and Keras model.fit."""
    result = run_cli("run", "--framework", "tensorflow", "--mode", "graph", "fit", "--model", "mlp", "--dataset",
                     "digits", "--pipeline", "native", "--loader-workers", "1", "--epochs", "1",
                     "--max-steps-per-epoch", "4", "--warmup-steps", "1", "--inference-iters", "0",
                     "--calibration-steps", "2", "--profile-steps", "0", "--db", arena_db, "--json")
    assert result.returncode == 0, result.stderr
    graph, fit = last_json(result.stdout)["runs"]
    assert (graph["mode"], fit["mode"]) == ("graph", "fit")
    for record in (graph, fit):
        assert (record["status"], record["pipeline"], record["augment"]) == ("finished", "native", [])
        figures = record["input"]
        assert (figures["pipeline"], figures["loader_workers"], figures["batches"]) == ("native", 1, 2)
        assert figures["loader"].startswith("tf.data")
        assert figures["loader_samples_per_s"] > 0 and figures["ceiling_samples_per_s"] > 0
    assert 0 <= graph["input"]["data_wait_share"] <= 1 and "fit" not in graph
    assert "model.fit" in fit["input"]["data_wait"] and "steps_per_execution" in fit["fit"]


def test_a_run_beside_a_busy_process_says_so_and_records_how_busy(arena_db):
    """A process spinning a core while the run trains (not the run's: started by the test) is measured and named."""
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        result = run_cli("run", "--framework", "torch", "--model", "mlp", "--dataset", "digits", *TINY, "--json")
    finally:
        hog.kill()
        hog.wait()
    assert result.returncode == 0, result.stderr
    summary = last_json(result.stdout)["summary"]
    assert 0.5 <= summary["others_busy_cores"] <= summary["host_cores"]
    assert f"busy machine: other processes kept {summary['others_busy_cores']:.1f} of {summary['host_cores']}" \
        in result.stderr
