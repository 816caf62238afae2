"""Deployment jobs end to end: real runs keep their weights, `python -m engine deploy` exports them in both
frameworks, checks every artifact against the trained model in fresh processes and stores the figures; bad
input is refused before anything is stored; cancel and a killed job never leave one running."""
from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import pandas as pd
import psutil
import pytest

from db import deployments, queries
from db.models import CANCELLED, FINISHED, LOST, RUNNING
from db.session import make_sessionmaker
from engine import child_env, export
from engine.deploy import jobs
from engine.launch import launch
from engine.processes import reap_deployments
from engine.spec import RunSpec
from tests.conftest import REPO_ROOT
from tests.engine.test_runner import done, wait_for

TINY = dict(model="mlp", dataset="digits", epochs=1, max_steps_per_epoch=20, calibration_steps=0, profile_steps=0,
            inference_iters=0, layer_stats=False, sample_hz=0.0)
QUICK = ["--min-time", "0.05", "--batches", "1,8"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished PyTorch run and TensorFlow run with kept weights, and one without, in one database."""
    home = tmp_path_factory.mktemp("deploy")
    url = f"sqlite:///{home / 'arena.db'}"
    os.environ["ARENA_HOME"] = str(home)
    sessions = make_sessionmaker(url)
    specs = [RunSpec(framework="torch", **TINY), RunSpec(framework="tensorflow", **TINY),
             RunSpec(framework="torch", keep_weights=False, **TINY)]
    ids = launch(sessions, specs, url)
    runs = [wait_for(sessions, run_id, done) for run_id in ids]
    assert [r.status for r in runs] == [FINISHED] * 3, [r.error for r in runs]
    return url, sessions, runs


def deploy(url: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "deploy", *args, "--db", url], cwd=REPO_ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=timeout)


def test_both_frameworks_exports_equal_the_trained_models_loaded_in_fresh_processes(trained):
    url, sessions, runs = trained
    torch_run, tf_run = runs[0], runs[1]
    torch_done = deploy(url, str(torch_run.id), "--formats", "torchscript,torch_export,onnx", *QUICK, "--json")
    tf_done = deploy(url, str(tf_run.id), "--formats", "savedmodel,tflite,tflite_int8,onnx", *QUICK, "--json")
    for finished, run in ((torch_done, torch_run), (tf_done, tf_run)):
        assert finished.returncode == 0, finished.stderr[-3000:]
        report = json.loads(finished.stdout.strip().splitlines()[-1])
        assert [d["status"] for d in report["deployments"]] == [FINISHED]
        accuracy = queries_accuracy(sessions, run.id)
        for result in report["results"]:
            figures = result["figures"]
            assert result["status"] in ("ok", "not_exportable"), (result["format"], result["error"])
            if result["status"] == "not_exportable":
                assert result["format"] == "onnx" and result["error"]  # tf2onnx, when it cannot: named
                continue
            parity = figures["parity"]
            # The trained model rebuilt from the kept weights scores what the run recorded.
            assert parity["accuracy_reference"] == pytest.approx(accuracy, abs=1e-9)
            assert parity["samples"] == 360  # digits' test split, every sample
            if parity["tolerance"] is not None:
                assert parity["max_abs_diff"] <= parity["tolerance"] and parity["within_tolerance"]
                assert parity["accuracy_artifact"] == pytest.approx(accuracy, abs=1e-9)
            else:  # int8: its accuracy change is reported, not hidden
                assert abs(parity["accuracy_artifact"] - accuracy) < 0.05 and parity["argmax_agreement"] > 0.9
            assert [x["batch"] for x in figures["latency"]] == [1, 8]
            assert all(x["p50_ms"] > 0 and x["samples_per_s"] > 0 and len(x["quantiles_ms"]) == 21
                       for x in figures["latency"])
            assert figures["load_s"] > 0 and figures["threads"] == 1 and figures["peak_rss_bytes"] > 10 * 2**20
            runtime_holds = {"onnxruntime": [], "litert": [], "torch": ["torch"], "tensorflow": ["tensorflow"]}
            assert figures["frameworks_loaded"] == runtime_holds[figures["runtime"]]  # only its own runtime
            assert result["size_bytes"] > 0 and result["artifact_name"]
    with sessions.begin() as s:
        stored = deployments.results(s, [j["id"] for j in deployments.jobs(s, [torch_run.id])])
        name, data = deployments.artifact(s, stored[0]["id"])
    assert name == "model.torchscript.pt" and len(data) == stored[0]["size_bytes"]
    # Exported with the run: a row per format in CSV, every figure in JSON.
    with zipfile.ZipFile(io.BytesIO(export.export_csv(sessions, [torch_run.id]))) as archive:
        rows = pd.read_csv(archive.open("deployments.csv"))
        latency = pd.read_csv(archive.open("deployment_latency.csv"))
    assert rows["format"].tolist() == ["torchscript", "torch_export", "onnx"] and (rows["status"] == "ok").all()
    assert (rows["max_abs_diff"] <= 1e-5).all() and (rows["threads"] == 1).all()
    assert len(latency) == 6 and sorted(set(latency["batch"])) == [1, 8]
    (document,) = json.loads(export.export_json(sessions, [tf_run.id]))["runs"]
    assert [d["format"] for d in document["deployments"]] == ["savedmodel", "tflite", "tflite_int8", "onnx"]
    assert document["deployments"][0]["figures"]["parity"]["samples"] == 360


def queries_accuracy(sessions, run_id: int) -> float:
    with sessions.begin() as s:
        return queries.final_metrics(s, [run_id])[run_id]["test_accuracy"]


@pytest.mark.parametrize("args, message", [
    (["999"], "run 999 does not exist"),
    (["3"], "run 3 kept no weights"),
    (["1", "--formats", "tflite"], "format 'tflite' is not one of torch's: expected one of torchscript"),
    (["1", "--threads", "0"], "threads=0: expected a whole number from 1 to 256"),
    (["1", "--batches", "1,x"], "'1,x': expected whole numbers"),
])
def test_bad_input_is_named_and_nothing_is_queued(trained, args, message):
    url, sessions, _ = trained
    with sessions.begin() as s:
        before = len(deployments.jobs(s))
    refused = deploy(url, *args, timeout=60)
    assert refused.returncode == 2 and message in refused.stderr, refused.stderr
    with sessions.begin() as s:
        assert len(deployments.jobs(s)) == before


def test_an_unfinished_run_is_refused(trained):
    url, sessions, _ = trained
    with sessions.begin() as s:
        queued = queries.create_run(s, RunSpec(framework="torch", **TINY).to_dict()).id
    with pytest.raises(jobs.DeployError, match=f"run {queued} is queued: only a finished run"):
        jobs.queue(sessions, [queued])
    with sessions.begin() as s:
        queries.delete_run(s, queued)


def wait_job(sessions, job_id, condition, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reap_deployments(sessions)
        with sessions.begin() as s:
            job = deployments.get(s, job_id)
            if condition(job):
                return job
        time.sleep(0.2)
    raise AssertionError(f"deployment {job_id} stayed {job.status} ({job.current})")


def measuring(job) -> bool:
    return job.status == RUNNING and job.current is not None and job.current.startswith("measuring")


def measuring_job(trained) -> tuple[int, psutil.Process, list[psutil.Process]]:
    """A job queued on the PyTorch run, placed by the scheduler and measuring (a minute per batch size): its id,
    process and children."""
    url, sessions, runs = trained
    (job_id,) = jobs.launch(sessions, url, [runs[0].id], ["torchscript"], {"min_time_s": 60.0})
    job = wait_job(sessions, job_id, measuring)
    assert job.placed_device == "cpu"  # placed like a run, by this process's scheduler
    process = psutil.Process(job.pid)
    tree = process.children(recursive=True)
    assert tree, "a measuring job has a measuring process"
    return job_id, process, tree


def test_cancel_stops_a_measuring_job_and_every_process_it_started(trained):
    sessions = trained[1]
    job_id, process, tree = measuring_job(trained)
    started = time.monotonic()
    assert jobs.cancel(sessions, job_id) == CANCELLED
    assert time.monotonic() - started < 15
    psutil.wait_procs([process], timeout=15)
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_a_killed_job_is_found_lost_and_leaves_no_worker(trained):
    sessions = trained[1]
    job_id, process, tree = measuring_job(trained)
    os.kill(process.pid, signal.SIGKILL)
    psutil.wait_procs([process], timeout=10)
    job = wait_job(sessions, job_id, lambda j: j.status != RUNNING, timeout=30)
    assert job.status == LOST and "ended without reporting a result" in job.error
    psutil.wait_procs(tree, timeout=10)  # the kernel ends them with their parent (PR_SET_PDEATHSIG)
    assert not [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_served_over_http_with_batching_on_and_off_at_each_concurrency(trained):
    url, sessions, runs = trained
    served = deploy(url, str(runs[0].id), "--formats", "onnx", *QUICK, "--serve", "--concurrency", "1,4",
                    "--serve-duration", "1", "--json")
    assert served.returncode == 0, served.stderr[-3000:]
    (result,) = json.loads(served.stdout.strip().splitlines()[-1])["results"]
    assert result["status"] == "ok" and result["error"] is None
    figures = {(s["batching"], s["concurrency"]): s for s in result["serving"]}
    assert set(figures) == {(True, 1), (True, 4), (False, 1), (False, 4)}
    for s in figures.values():
        assert s["errors"] == 0 and s["completed"] > 0 and 0 < s["p50_ms"] <= s["p99_ms"] and s["threads"] == 1
    assert "served onnx: batching on  concurrency   4" in served.stdout
