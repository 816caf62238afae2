"""engine/executors/ray.py against a real local Ray cluster: runs placed by Ray's resource accounting, cancel, lost.

The cluster is started by the tests (`ray start --head --block`) with 2 CPUs and one GPU that Ray counts but
that does not exist (this machine has none): enough to see Ray hold a GPU run back until the GPU is free
and hand it CUDA_VISIBLE_DEVICES, without pretending the run could use it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy.engine import make_url
from streamlit.testing.v1 import AppTest

from db import deployments, queries
from db.models import CANCELLED, FAILED, FINISHED, LOST, QUEUED, RUNNING
from db.session import make_sessionmaker
from engine import PROJECT_ROOT
from analysis.device_labels import device_labels
from engine.devices import check_available
from engine.deploy import jobs
from engine.executors import DEPLOYMENT
from engine.executors import ray as arena_ray
from engine.executors.ray import RAY_CPU, RAY_GPU, Request, RayExecutor, actor_name, request_for, runner_env
from engine.launch import cancel_runs, queue_runs
from engine.scheduler import Scheduler
from engine.spec import RunSpec, SpecError
from analysis import device_tables as devices_page
from tests.conftest import NO_CALIBRATION, run_cli, wait_until
from tests.dashboard import free_port
from tests.pages.helpers import failures

ray = pytest.importorskip("ray")

TINY = dict(model="mlp", dataset="digits", epochs=1, max_steps_per_epoch=5, sample_hz=0, layer_stats=False,
            **NO_CALIBRATION)
LONG = dict(model="mlp", dataset="digits", epochs=500, max_steps_per_epoch=50, sample_hz=0, layer_stats=False)
HERE = socket.gethostname()


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A Ray head on 127.0.0.1 with 2 CPUs and 1 (counted, not real) GPU; its workers log runs under their own home."""
    home = tmp_path_factory.mktemp("ray")
    # Ray's sockets live under its temp dir, and an AF_UNIX path holds at most 107 bytes: under
    # pytest-xdist's deeper base temp (.../popen-gw0/ray0/tmp/session_<date>_<pid>/sockets/...) it does not fit.
    temp_dir = Path(tempfile.mkdtemp(prefix="arena-ray-", dir="/tmp"))
    # RAY_AUTH_MODE: the cluster of `ray start --head` demands a token when ~/.ray/auth_token exists (written
    # by any `ray.init()` that started a local cluster without one); the tests' drivers send none.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "ARENA_HOME": str(home / "worker-home"),
           "RAY_AUTH_MODE": "disabled"}
    log = open(home / "ray.log", "wb")
    for attempt in range(3):
        # A free port can be taken before the head binds it: other tests start Ray instances of their own
        # (Deploy's model servers), each opening ports at random. Ready means this head said so in its
        # log, not that something answers on the port; a head that could not start is started again.
        port = free_port()
        head = subprocess.Popen(
            [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
             f"--port={port}", "--num-cpus=2", "--num-gpus=1", "--include-dashboard=false",
             "--object-store-memory=100000000", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: b"Ray runtime started" in (home / "ray.log").read_bytes() or head.poll() is not None,
                   120, "the Ray head to start")
        if head.poll() is None:
            break
    address = f"127.0.0.1:{port}"
    try:
        assert head.poll() is None, (home / "ray.log").read_text()
        assert _answers(port), (home / "ray.log").read_text()
        yield {"address": address, "worker_home": home / "worker-home"}
    finally:
        ray.shutdown()
        head.send_signal(signal.SIGTERM)  # --block: the head takes the processes it started down with it
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        log.close()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _answers(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.fixture
def on_ray(ray_cluster, db_url, monkeypatch):
    """ARENA_EXECUTOR=ray against the test cluster, a fresh database of each backend, a connection from here."""
    monkeypatch.setenv("ARENA_EXECUTOR", "ray")
    monkeypatch.setenv("ARENA_RAY_ADDRESS", ray_cluster["address"])
    monkeypatch.setenv("ARENA_SCHEDULER", "off")  # pages under test only watch; the test's own scheduler places
    arena_ray.connect()
    wait_until(lambda: ray.available_resources().get("CPU") == 2 and ray.available_resources().get("GPU") == 1,
               60, "a previous test's runs to give their resources back")
    sessions = make_sessionmaker(db_url)
    scheduler = Scheduler(sessions, db_url, RayExecutor(sessions, db_url), interval_s=0.5)
    yield {"sessions": sessions, "url": db_url, "scheduler": scheduler, **ray_cluster}
    scheduler.stop()
    with sessions.begin() as s:
        active = [run.id for run in queries.list_runs(s, statuses=(QUEUED, RUNNING))]
    cancel_runs(sessions, active)


def queue(sessions, framework: str = "torch", device: str = "cpu", **overrides) -> int:
    spec = RunSpec(framework=framework, device=device, **{**TINY, **overrides})
    return queue_runs(sessions, [spec])[0]


def get(sessions, run_id: int):
    with sessions.begin() as s:
        return queries.get_run(s, run_id)


def ended(sessions, run_id: int):
    run = get(sessions, run_id)
    return run if run.status not in (QUEUED, RUNNING) else None


def point_count(sessions, run_id: int) -> int:
    with sessions.begin() as s:
        return len(queries.metric_frame(s, [run_id]))


# Pure rules -----------------------------------------------------------------------------------------

def test_auto_asks_ray_for_a_gpu_when_the_cluster_has_one_and_cpu_runs_ask_for_cpus():
    assert request_for("auto", cluster_gpus=4, cpus=2) == Request(RAY_GPU, 2, 1)
    assert request_for("auto", cluster_gpus=0, cpus=2) == Request(RAY_CPU, 2, 0)
    assert request_for("cpu", cluster_gpus=4, cpus=1.5) == Request(RAY_CPU, 1.5, 0)
    assert "pins a GPU of one machine" in request_for("cuda:1", cluster_gpus=4, cpus=1)
    # A multi-worker run asks one actor for every worker's share: Ray gives it one node with all of them, or waits.
    assert request_for("auto", cluster_gpus=4, cpus=2, workers=2) == Request(RAY_GPU, 4, 2)
    assert request_for("cpu", cluster_gpus=4, cpus=1, workers=3) == Request(RAY_CPU, 3, 0)


def test_a_multi_worker_run_on_ray_hands_each_rank_one_of_the_gpus_ray_assigned():
    env = runner_env([3, 5], workers=2)
    ranks = json.loads(env["ARENA_WORKER_ENVS"])
    assert env["ARENA_PLACED_DEVICE"] == "cuda:3,cuda:5" and env["CUDA_VISIBLE_DEVICES"] == "3"
    assert [rank["CUDA_VISIBLE_DEVICES"] for rank in ranks] == ["3", "5"]
    assert {rank["ARENA_DEVICE"] for rank in ranks} == {"cuda:0"}
    cpu = runner_env([], workers=2, threads=1)
    assert cpu["ARENA_PLACED_DEVICE"] == "cpu,cpu"
    assert [rank["ARENA_THREADS"] for rank in json.loads(cpu["ARENA_WORKER_ENVS"])] == ["1", "1"]


def test_actor_names_are_one_per_run_and_database_whatever_the_url_s_spelling():
    # The same in every process (a digest, not Python's per-process salted hash()): the canceller finds the actor.
    digest = hashlib.sha256(b"sqlite:////tmp/a.db").hexdigest()[:12]
    assert actor_name("sqlite:////tmp/a.db", 3) == f"arena-run-{digest}-3"
    assert actor_name("sqlite:////tmp/a.db", 3) != actor_name("sqlite:////tmp/b.db", 3)
    assert actor_name("sqlite:////tmp/a.db", 3) != actor_name("sqlite:////tmp/a.db", 4)
    url = "postgresql+psycopg://arena:p%40ss@db.example/arena"  # how the canceller's engine renders it
    assert actor_name(url, 1) == actor_name(make_url(url).render_as_string(hide_password=False), 1)


def test_bad_executor_settings_are_named_before_anything_is_queued(arena_db, monkeypatch):
    result = run_cli("run", "--framework", "torch", "--model", "mlp", "--dataset", "digits",
                     env={"ARENA_EXECUTOR": "kubernetes"})
    assert result.returncode == 2 and "ARENA_EXECUTOR='kubernetes': expected local or ray" in result.stderr
    with make_sessionmaker(arena_db).begin() as s:
        assert queries.list_runs(s) == []
    monkeypatch.setenv("ARENA_RAY_CPUS_PER_RUN", "none")
    with pytest.raises(ValueError, match="ARENA_RAY_CPUS_PER_RUN='none'"):
        arena_ray.cpus_per_run()
    monkeypatch.setenv("ARENA_EXECUTOR", "ray")
    with pytest.raises(SpecError, match="pins a GPU of one machine"):
        check_available("cuda:0")
    assert list(device_labels()) == ["auto", "cpu"]  # the Launch form offers no GPU index of this machine
    assert "anywhere in the Ray cluster" in device_labels()["auto"]


def test_an_unreachable_ray_address_is_named_within_seconds_not_minutes():
    if ray.is_initialized():
        pytest.skip("this process is connected to a cluster already")
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"cannot reach the Ray cluster at '127.0.0.1:\d+'"):
        arena_ray.connect(f"127.0.0.1:{free_port()}")
    assert time.monotonic() - started < arena_ray.CONNECT_TIMEOUT_S + 5
    with pytest.raises(RuntimeError, match="expected host:port"):
        arena_ray.connect("headnode")


# On a real cluster -------------------------------------------------------------------------------------

def test_queued_runs_execute_on_ray_in_their_own_runners_and_their_metrics_land_in_the_database(on_ray):
    sessions, scheduler = on_ray["sessions"], on_ray["scheduler"]
    run_ids = [queue(sessions, "torch"), queue(sessions, "tensorflow"), queue(sessions, "torch", seed=1)]
    scheduler.start()
    runs = [wait_until(lambda i=i: ended(sessions, i), 240, f"run {i} to end") for i in run_ids]

    assert [run.status for run in runs] == [FINISHED] * 3, [run.error for run in runs]
    assert all(point_count(sessions, run.id) > 0 for run in runs)
    assert {run.placed_device for run in runs} == {"cpu"} and {run.hostname for run in runs} == {HERE}
    assert len({run.pid for run in runs}) == 3  # one runner process per run: the frameworks never share one
    # The runner was started on Ray's side: by the actor, in the worker's environment, not by this process.
    assert all(Path(run.log_path).is_relative_to(on_ray["worker_home"]) for run in runs)
    # Two CPUs, one per run: Ray never had three running at once.
    for run in runs:
        overlapping = [o for o in runs if o.started_at < run.finished_at and run.started_at < o.finished_at]
        assert len(overlapping) <= 2
    wait_until(lambda: ray.available_resources().get("CPU") == 2, 60, "Ray to get the CPUs back")


def test_a_gpu_run_waits_in_ray_until_a_gpu_is_free_and_gets_that_gpu(on_ray):
    sessions, scheduler = on_ray["sessions"], on_ray["scheduler"]
    taken = ray.util.placement_group([{"GPU": 1}])  # someone else's job holds the cluster's one GPU
    ray.get(taken.ready(), timeout=60)
    try:
        gpu_run, cpu_run = queue(sessions, device="auto"), queue(sessions, device="cpu")
        scheduler.start()
        assert wait_until(lambda: ended(sessions, cpu_run), 240, "the CPU run to end").status == FINISHED
        waiting = get(sessions, gpu_run)
        assert (waiting.status, waiting.placed_device, waiting.pid) == (QUEUED, RAY_GPU, None)
        assert devices_page.queue_table([waiting])["state"].tolist() == ["in Ray's queue, waiting for a free GPU"]
        assert ray.available_resources().get("GPU", 0) == 0
    finally:
        ray.util.remove_placement_group(taken)

    run = wait_until(lambda: ended(sessions, gpu_run), 240, "the GPU run to start and end")
    # Ray gave it GPU 0, which the runner recorded; no CUDA device exists here, so the run fails and says so.
    assert (run.placed_device, run.hostname) == ("cuda:0", HERE)
    assert run.status == FAILED and "CUDA" in run.error
    wait_until(lambda: ray.available_resources().get("GPU") == 1, 60, "Ray to get the GPU back")


def test_cancel_stops_a_running_ray_run_and_takes_a_waiting_one_out_of_rays_queue(on_ray):
    sessions, scheduler, url = on_ray["sessions"], on_ray["scheduler"], on_ray["url"]
    taken = ray.util.placement_group([{"GPU": 1}])
    ray.get(taken.ready(), timeout=60)
    try:
        running, waiting = queue(sessions, device="cpu", **LONG), queue(sessions, device="auto")
        scheduler.start()
        wait_until(lambda: get(sessions, running).status == RUNNING and point_count(sessions, running) >= 3, 240,
                   "the long run to record points")
        assert get(sessions, waiting).placed_device == RAY_GPU
        ray.get_actor(actor_name(url, waiting), namespace=arena_ray.NAMESPACE)  # submitted: Ray holds it

        outcomes = cancel_runs(sessions, [running, waiting], via="test")
        assert outcomes == {running: "cancelled", waiting: "cancelled"}
        stopped, withdrawn = get(sessions, running), get(sessions, waiting)
        assert stopped.status == withdrawn.status == CANCELLED
        assert point_count(sessions, running) >= 3  # what it recorded stays
        with pytest.raises(ValueError):
            ray.get_actor(actor_name(url, waiting), namespace=arena_ray.NAMESPACE)
        assert withdrawn.pid is None  # no runner was ever started for it
    finally:
        ray.util.remove_placement_group(taken)
    wait_until(lambda: ray.available_resources().get("CPU") == 2, 60, "the cancelled run's CPU to be free")


def test_a_two_worker_run_takes_both_cpus_of_a_node_at_once_and_trains_there(on_ray):
    sessions, scheduler = on_ray["sessions"], on_ray["scheduler"]
    run_id = queue(sessions, "torch", workers=2, batch_size=64)
    scheduler.start()
    run = wait_until(lambda: ended(sessions, run_id), 240, "the 2-worker run to end")
    assert run.status == FINISHED, run.error
    assert run.placed_device == "cpu,cpu" and run.summary["workers"] == 2
    assert [rank["rank"] for rank in run.summary["ranks"]] == [0, 1]
    assert run.summary["strategy"] == "DistributedDataParallel (gloo)"
    wait_until(lambda: ray.available_resources().get("CPU") == 2, 60, "Ray to get both CPUs back")


def test_a_run_with_more_workers_than_any_node_holds_fails_at_once_saying_so(on_ray):
    sessions, scheduler = on_ray["sessions"], on_ray["scheduler"]
    run_id = queue(sessions, "torch", workers=4, batch_size=64)
    scheduler.start()
    run = wait_until(lambda: ended(sessions, run_id), 60, "the run to be refused")
    assert run.status == FAILED
    assert "4 workers need 4 CPUs on one node" in run.error and "the largest node has 2" in run.error


def test_a_killed_ray_runner_is_lost_like_a_local_one_and_ray_frees_its_cpu(on_ray):
    sessions, scheduler = on_ray["sessions"], on_ray["scheduler"]
    run_id = queue(sessions, device="cpu", **LONG)
    scheduler.start()
    run = wait_until(lambda: (r := get(sessions, run_id)).status == RUNNING and point_count(sessions, run_id) and r,
                     240, "the run to record points")
    os.kill(run.pid, signal.SIGKILL)
    lost = wait_until(lambda: ended(sessions, run_id), 30, "the run to be reaped")
    assert (lost.status, lost.reason) == (LOST, queries.PROCESS_GONE)
    assert f"runner process {run.pid} on {HERE} ended without reporting a result" in lost.error
    wait_until(lambda: ray.available_resources().get("CPU") == 2, 60, "Ray to get the CPU back")


def test_a_run_ray_lost_before_it_started_goes_back_to_the_queue_and_runs(on_ray):
    sessions, scheduler = on_ray["sessions"], on_ray["scheduler"]
    run_id = queue(sessions, device="cpu")
    with sessions.begin() as s:  # handed to Ray by a scheduler whose actor never came up
        assert queries.place_run(s, run_id, RAY_CPU, hostname=None)
    scheduler.start()
    run = wait_until(lambda: ended(sessions, run_id), 240, "the run to be submitted again and end")
    assert run.status == FINISHED and point_count(sessions, run_id) > 0


def test_a_deployment_job_goes_through_ray_like_a_run_and_measures_on_the_node_ray_chose(on_ray):
    """Issue 17: the scheduler places deployment jobs through the executor; Ray starts the job's process."""
    sessions, scheduler, url = on_ray["sessions"], on_ray["scheduler"], on_ray["url"]
    run_id = queue(sessions, device="cpu")
    scheduler.start()
    assert wait_until(lambda: ended(sessions, run_id), 240, "the run to end").status == FINISHED
    (job_id,) = jobs.queue(sessions, [run_id], ["torchscript"], {"min_time_s": 0.05, "batch_sizes": [1]})
    scheduler.wake()
    job = wait_until(lambda: (j := deployment(sessions, job_id)).status not in (QUEUED, RUNNING) and j, 240,
                     "the deployment to end")
    assert job.status == FINISHED, job.error
    assert (job.placed_device, job.hostname) == ("cpu", HERE)  # "ray:cpu" while it waited in Ray's queue
    with sessions.begin() as s:
        (result,) = deployments.results(s, [job_id])
    assert result["status"] == "ok" and result["figures"]["parity"]["within_tolerance"]
    wait_until(lambda: ray.available_resources().get("CPU") == 2, 60, "Ray to get the CPU back")
    wait_until(lambda: not _actor_alive(actor_name(url, job_id, DEPLOYMENT)), 60, "the job's actor to end with it")


def _actor_alive(name: str) -> bool:
    try:
        ray.get_actor(name, namespace=arena_ray.NAMESPACE)
        return True
    except ValueError:
        return False


def deployment(sessions, job_id: int):
    with sessions.begin() as s:
        return deployments.get(s, job_id)


def test_the_devices_page_shows_the_cluster_s_nodes_and_gpus_from_ray(on_ray):
    at = AppTest.from_file(str(PROJECT_ROOT / "app.py"), default_timeout=60).run()
    at.switch_page("pages/devices.py").run()
    assert not failures(at), failures(at)
    assert "Ray cluster" in [header.value for header in at.subheader]
    nodes = next(frame.value for frame in at.dataframe if "node" in frame.value.columns)
    assert isinstance(nodes, pd.DataFrame) and len(nodes) == 1
    row = nodes.iloc[0]
    assert (row["node"], row["state"], row["cpus"], row["gpus"]) == (HERE, "alive", "2 of 2", "1 of 1")
    captions = " ".join(caption.value for caption in at.caption)
    assert f"address `{on_ray['address']}`" in captions and "1 node(s) alive, 2 CPUs, 1 GPUs" in captions


def test_the_cli_runs_both_frameworks_on_ray_and_waits_for_them(on_ray):
    result = run_cli("run", "--framework", "both", "--model", "mlp", "--dataset", "digits", "--epochs", "1",
                     "--max-steps-per-epoch", "5", "--device", "cpu", "--sample-hz", "0", "--json",
                     env={"ARENA_SCHEDULER": "on"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = json.loads(result.stdout.strip().splitlines()[-1])["runs"]
    assert [run["status"] for run in runs] == [FINISHED, FINISHED]
    sessions = on_ray["sessions"]
    for run in runs:
        stored = get(sessions, run["run_id"])
        assert Path(stored.log_path).is_relative_to(on_ray["worker_home"]) and point_count(sessions, stored.id) > 0
