"""The frameworks' own input pipelines (engine/pipeline.py), augmentation in training, and Keras's model.fit.

Each framework runs in its own process (never both in one): a probe trains and iterates for real and
prints JSON the tests read. The two probes start together and run side by side.
"""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from db import queries
from db.models import AUGMENT_SAMPLES_KIND, CANCELLED, FINISHED
from db.session import make_sessionmaker
from engine.launch import queue_runs
from engine.processes import start_runner
from engine.spec import RunSpec, SpecError
from tests.conftest import REPO_ROOT, wait_until
from tests.engine.test_datafiles import write_cifar, write_mnist
from tests.fakes.backend import FakeBackend

_PROBE = """
import json, sys
import numpy as np
from engine.spec import RunSpec
from engine.data import load_spec, epoch_order
from engine.backends import get_backend
from engine.loop import train
from engine import pipeline

FRAMEWORK = sys.argv[1]

class Sink:
    def __init__(self):
        self.steps = {}
    def step_metrics(self, name, points):
        self.steps.setdefault(name, []).extend(points)
    def epoch_metrics(self, epoch, step, metrics): pass
    def progress(self, epoch, step): pass
    def tensor_stats(self, rows): pass

def run(**fields):
    settings = dict(epochs=2, max_steps_per_epoch=12, inference_iters=0, profile_steps=0, calibration_steps=4,
                    layer_stats=False)
    settings.update(fields)
    spec = RunSpec.with_model_defaults(FRAMEWORK, settings.pop("model", "mlp"), settings.pop("dataset", "digits"),
                                       **settings)
    sink = Sink()
    summary = train(spec, get_backend(FRAMEWORK, "cpu"), load_spec(spec), sink)
    return {"losses": [p[2] for p in sink.steps["train_loss"]], "input": summary["input"],
            "waits": len(sink.steps.get("data_wait_ms", [])), "timed": len(sink.steps.get("step_time_ms", [])),
            "fit": summary.get("fit"), "compile_events": summary.get("compile_events")}

def batches(dataset, **fields):
    spec = RunSpec.with_model_defaults(FRAMEWORK, "mlp", dataset, batch_size=4, pipeline="native", **fields)
    data = load_spec(spec)
    backend = get_backend(FRAMEWORK, "cpu")
    backend.build(spec, data.task, None, tuple(data.x_train.shape[1:]), data.num_outputs)
    order = epoch_order(len(data.x_train), spec.seed, 1)[:8]
    made = backend.native_pipeline(spec, data)
    try:
        got = [(np.asarray(x), np.asarray(y)) for x, y, _ in made.batches(1, order, 2)]
    finally:
        made.close()
    x = np.concatenate([b[0] for b in got])
    if x.ndim == 4 and x.shape[-1] not in (1, 3):  # PyTorch hands NCHW over; compare as NHWC
        x = x.transpose(0, 2, 3, 1)
    return {"x": x.tolist(), "y": np.concatenate([b[1] for b in got]).tolist(),
            "expected_x": data.x_train[order].tolist(), "expected_y": data.y_train[order].tolist(),
            "records": data.records is not None}

report = {
    "arrays": run(),
    "native": run(pipeline="native"),
    "native0": run(pipeline="native", loader_workers=0),
    "augmented": run(pipeline="native", augment="crop,flip,noise"),
    "augmented_again": run(pipeline="native", augment="crop,flip,noise", loader_workers=1),
    "arrays_augmented": run(augment="crop,flip,noise"),
    "mnist": batches("mnist"),
    "cifar10": batches("cifar10"),
    "cifar10_flip": batches("cifar10", augment="flip"),
}
if FRAMEWORK == "tensorflow":
    report["graph"] = run(pipeline="native", mode="graph")
    report["fit"] = run(pipeline="native", mode="fit")
    # Whole epochs with their last, smaller batch (1,437 = 14 x 100 + 37): fit's batches stay within an epoch.
    kept = dict(pipeline="native", last_batch="keep", batch_size=100, max_steps_per_epoch=None, calibration_steps=0)
    report["graph_keep"] = run(mode="graph", **kept)
    report["fit_keep"] = run(mode="fit", **kept)
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, dict]:
    """Both frameworks' probes, run side by side over the same small MNIST and CIFAR-10 files."""
    data_dir = tmp_path_factory.mktemp("data")
    write_mnist(data_dir / "mnist", n_train=16, n_test=4)
    write_cifar(data_dir / "cifar10", per_batch=4)
    env = {**os.environ, "ARENA_DATA_DIR": str(data_dir), "ARENA_DATA_VERIFY": "0", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": str(REPO_ROOT)}
    probes = {framework: subprocess.Popen([sys.executable, "-c", _PROBE, framework], cwd=REPO_ROOT, env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for framework in ("torch", "tensorflow")}
    found = {}
    for framework, probe in probes.items():
        stdout, stderr = probe.communicate(timeout=600)
        assert probe.returncode == 0, stderr[-4000:]
        found[framework] = json.loads(next(line for line in stdout.splitlines() if line.startswith("REPORT "))[7:])
    found["data_dir"] = data_dir
    return found


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_the_native_pipeline_feeds_the_very_batches_the_arrays_do(reports, framework):
    report = reports[framework]
    # Same samples, same order, same decoding: the losses agree to the last bit or nearly, whatever the workers.
    np.testing.assert_allclose(report["native"]["losses"], report["arrays"]["losses"], rtol=1e-6)
    np.testing.assert_allclose(report["native0"]["losses"], report["arrays"]["losses"], rtol=1e-6)
    assert len(report["native"]["losses"]) == 24
    native, arrays = report["native"]["input"], report["arrays"]["input"]
    assert native["pipeline"] == "native" and arrays["pipeline"] == "arrays" and native["loader_workers"] == 2
    assert ("DataLoader(num_workers=2" if framework == "torch" else "num_parallel_calls=2") in native["loader"]
    for figures in (native, arrays):
        assert figures["loader_samples_per_s"] > 0 and figures["ceiling_samples_per_s"] > 0
        assert 0 <= figures["data_wait_share"] <= 1 and figures["data_wait_p50_ms"] >= 0
    assert report["native"]["waits"] == report["native"]["timed"] == 24  # every step timed alone on a CPU


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_file_datasets_are_read_record_by_record_from_the_files_into_the_same_values(reports, framework, dataset):
    got = reports[framework][dataset]
    assert got["records"]
    np.testing.assert_array_equal(np.array(got["x"], np.float32), np.array(got["expected_x"], np.float32))
    assert got["y"] == got["expected_y"]
    records = reports["data_dir"] / dataset / "records"
    assert [path.name for path in records.rglob("*") if path.is_file()]  # the official bytes, decompressed once


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_augmentation_is_seeded_whatever_the_loader_workers_and_recorded(reports, framework):
    report = reports[framework]
    augmented, again = report["augmented"], report["augmented_again"]
    assert augmented["losses"] == again["losses"]  # draws come from (seed, epoch, index), not from a worker
    assert augmented["losses"] != report["native"]["losses"]
    assert augmented["input"]["augment"] == {"crop": "pad 1 px with zeros, random 8x8 crop",
                                             "flip": "horizontal, p=0.5", "noise": "Gaussian, std 0.05"}
    assert ("torch ops" if framework == "torch" else "TensorFlow ops") in augmented["input"]["augment_by"]
    flipped = np.array(report["cifar10_flip"]["x"], np.float32)
    plain = np.array(report["cifar10_flip"]["expected_x"], np.float32)
    mirrored = [np.array_equal(f, p[:, ::-1]) and not np.array_equal(f, p) for f, p in zip(flipped, plain)]
    kept = [np.array_equal(f, p) for f, p in zip(flipped, plain)]
    assert all(m or k for m, k in zip(mirrored, kept)) and any(mirrored)


def test_the_arrays_pipeline_augments_both_frameworks_alike(reports):
    torch_losses, tf_losses = (reports[f]["arrays_augmented"]["losses"] for f in ("torch", "tensorflow"))
    np.testing.assert_allclose(torch_losses, tf_losses, rtol=2e-4)  # the same numpy draws; the frameworks' float error
    assert reports["torch"]["arrays_augmented"]["input"]["augment_by"].startswith("numpy")


def test_keras_fit_trains_the_same_steps_as_the_graph_loop_and_records_each(reports):
    fit, graph = reports["tensorflow"]["fit"], reports["tensorflow"]["graph"]
    assert len(fit["losses"]) == len(graph["losses"]) == 24 and fit["timed"] == 24
    # Each step's loss recovered from Keras's running mean: float32 rounding of a sum, nothing more.
    np.testing.assert_allclose(fit["losses"], graph["losses"], rtol=1e-4, atol=1e-5)
    assert "steps_per_execution=1" in fit["fit"] and "jit_compile=False" in fit["fit"]
    assert fit["input"]["data_wait"].startswith("inside model.fit") and "data_wait_share" not in fit["input"]
    assert fit["input"]["loader_samples_per_s"] > 0
    fit_keep, graph_keep = reports["tensorflow"]["fit_keep"], reports["tensorflow"]["graph_keep"]
    assert len(fit_keep["losses"]) == len(graph_keep["losses"]) == 30
    np.testing.assert_allclose(fit_keep["losses"], graph_keep["losses"], rtol=1e-4, atol=1e-5)


def test_the_data_wait_sees_a_slowed_pipeline():
    from engine.data import load
    from engine.loop import train

    class Sink:
        def __init__(self):
            self.steps = {}

        def step_metrics(self, name, points):
            self.steps.setdefault(name, []).extend(points)

        def epoch_metrics(self, epoch, step, metrics):
            pass

        def progress(self, epoch, step):
            pass

        def tensor_stats(self, rows):
            pass

    data = load("digits", 0)
    shares = {}
    for pipeline, batch_s in (("arrays", 0.0), ("native", 0.004)):
        spec = RunSpec("torch", "mlp", "digits", epochs=1, max_steps_per_epoch=30, warmup_steps=2, pipeline=pipeline,
                       inference_iters=0, profile_steps=0, calibration_steps=0, layer_stats=False)
        sink = Sink()
        summary = train(spec, FakeBackend(step_s=0.001, batch_s=batch_s), data, sink)
        shares[pipeline] = summary["input"]["data_wait_share"]
        waits = [ms for _, _, ms, _ in sink.steps["data_wait_ms"]]
        assert len(waits) == 30
    assert shares["native"] > 0.6, shares  # 4 ms waited per ~5 ms step
    assert shares["arrays"] < 0.2, shares
    assert summary["input"]["data_wait_p50_ms"] >= 4.0


def test_pipeline_settings_that_cannot_run_are_named_at_the_boundary():
    with pytest.raises(SpecError, match="pipeline='arrays'.*mode fit.*use pipeline native"):
        RunSpec("tensorflow", "mlp", "digits", mode="fit")
    with pytest.raises(SpecError, match="augment='crop'.*synthetic_text holds no images"):
        RunSpec("torch", "lstm", "synthetic_text", augment="crop")
    with pytest.raises(SpecError, match="augment='rotate'.*rotate"):
        RunSpec("torch", "mlp", "digits", augment="rotate")
    with pytest.raises(SpecError, match="loader_workers=99: must be <= 16"):
        RunSpec("torch", "mlp", "digits", pipeline="native", loader_workers=99)
    with pytest.raises(SpecError, match="pipeline='files'"):
        RunSpec("torch", "mlp", "digits", pipeline="files")
    with pytest.raises(SpecError, match="workers=2.*mode fit"):
        RunSpec("tensorflow", "mlp", "digits", mode="fit", pipeline="native", workers=2)
    spec = RunSpec("torch", "mlp", "digits", augment=["noise", "crop", "crop"])
    assert spec.augment == ("crop", "noise") and RunSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_a_fit_run_through_the_runner_records_points_and_stops_when_cancelled(arena_db):
    sessions = make_sessionmaker(arena_db)
    long_fit = RunSpec("tensorflow", "mlp", "digits", mode="fit", pipeline="native", epochs=1000, inference_iters=0,
                       augment="flip")
    short = RunSpec("torch", "mlp", "digits", pipeline="native", augment="crop,flip,noise", epochs=1,
                    max_steps_per_epoch=5, inference_iters=0, profile_steps=0, calibration_steps=2)
    fit_id, short_id = queue_runs(sessions, [long_fit, short])
    env = {"CUDA_VISIBLE_DEVICES": ""}
    processes = [start_runner(sessions, run_id, arena_db, extra_env=env) for run_id in (fit_id, short_id)]
    try:
        def fit_points() -> int:
            with sessions.begin() as s:
                run = queries.get_run(s, fit_id)
                assert run.status in ("queued", "running"), run.error  # a run that failed says why, at once
                return len(queries.metric_frame(s, [fit_id], names=["step/train_loss"]))

        wait_until(lambda: fit_points() >= 60, 180, "the fit run to record its steps")
        with sessions.begin() as s:  # read by the runner at its next heartbeat, as from another machine
            queries.request_cancel(s, fit_id, "cancelled by the test")
        started = time.monotonic()
        processes[0].wait(timeout=60)
        stop_s = time.monotonic() - started
        assert processes[1].wait(timeout=180) == 0
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    with sessions.begin() as s:
        fit_run, short_run = queries.get_run(s, fit_id), queries.get_run(s, short_id)
        steps = queries.metric_frame(s, [fit_id], names=["step/train_loss", "step/step_time_ms", "test_accuracy"])
        samples = queries.list_artifacts(s, [short_id], AUGMENT_SAMPLES_KIND)
        blob = queries.get_artifact(s, samples[0]["id"]).data if samples else None
    assert fit_run.status == CANCELLED and stop_s < 10, (fit_run.status, stop_s)
    per_name = steps.groupby("name").size().to_dict()
    assert per_name["step/train_loss"] >= 60 and per_name["step/step_time_ms"] >= 60  # kept, every step's
    assert per_name["test_accuracy"] >= 1  # fit's epochs end as the loop's do: evaluated and recorded
    assert short_run.status == FINISHED, short_run.error
    assert short_run.summary["input"]["augment"].keys() == {"crop", "flip", "noise"}
    document = json.loads(gzip.decompress(blob))
    before, after = np.array(document["before"]), np.array(document["after"])
    assert before.shape == after.shape == (8, 8, 8, 1) and document["by"] == "torch"
    assert not np.array_equal(before, after) and 0 <= after.min() and after.max() <= 255
