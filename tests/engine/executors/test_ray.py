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
import psutil
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
from engine.executors.ray import RAY_CPU, RAY_GPU, Request, RayExecutor, actor_name, request_for
from engine.launch import cancel_runs, queue_runs
from engine.processes import absolute_db_url
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


# The paths end to end (runs, a deployment, the CLI, the Devices page) run on both databases: `on_ray`'s db_url. The
# failure and placement paths are the executor's and Ray's own, the same whichever database records them: they run
# once, on SQLite, which every machine has (a PostgreSQL run of each added 100 s of make test's worker time).
ON_SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


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
    # A multi-worker run's share of the cluster, all its workers' (its placement group: engine/executors/ray_groups.py).
    assert request_for("auto", cluster_gpus=4, cpus=2, workers=2) == Request(RAY_GPU, 4, 2)
    assert request_for("cpu", cluster_gpus=4, cpus=1, workers=3) == Request(RAY_CPU, 3, 0)


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


@ON_SQLITE
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


@ON_SQLITE
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


# Multi-worker runs: a placement group, one actor per rank --------------------------------------------

def groups_named(name: str) -> list[dict]:
    """Every placement group Ray has had of this name (removed ones too), oldest first."""
    return [entry for entry in ray.util.placement_group_table().values() if entry["name"] == name]


def group_removed(name: str) -> bool:
    return bool(groups_named(name)) and all(entry["state"] == "REMOVED" for entry in groups_named(name))


def rank_processes(url: str, run_id: int) -> list[psutil.Process]:
    """The runner processes of this run's ranks >= 1, wherever on this machine they run."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        line = process.info["cmdline"] or []
        if "engine.runner" in line and str(run_id) in line and "--rank" in line and absolute_db_url(url) in line:
            found.append(process)
    return found


def rank_points(sessions, run_id: int, rank: int) -> int:
    with sessions.begin() as s:
        return len(queries.metric_frame(s, [run_id], [f"{queries.RANK_PREFIX}{rank}/{queries.STEP_PREFIX}step_time_ms"]))


@ON_SQLITE
@pytest.mark.parametrize("framework, placement, strategy", [("torch", None, "PACK"), ("tensorflow", "spread", "SPREAD")],
                         ids=["torch-pack", "tensorflow-spread"])
def test_a_two_worker_run_is_a_placement_group_of_one_actor_per_rank_that_trains_and_is_removed(
        on_ray, monkeypatch, framework, placement, strategy):
    sessions, scheduler, url = on_ray["sessions"], on_ray["scheduler"], on_ray["url"]
    if placement:
        monkeypatch.setenv("ARENA_RAY_PLACEMENT", placement)
    run_id = queue(sessions, framework, workers=2, batch_size=64)
    scheduler.start()
    run = wait_until(lambda: ended(sessions, run_id), 300, "the 2-worker run to end")
    assert run.status == FINISHED, run.error
    assert run.placed_device == "cpu,cpu" and run.summary["workers"] == 2
    assert [rank["rank"] for rank in run.summary["ranks"]] == [0, 1]
    # Both ranks met at rank 0's address: its node's as Ray knows it (one node here, so both on it).
    (node,) = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
    assert [rank["node"] for rank in run.summary["ranks"]] == [node, node]
    assert rank_points(sessions, run_id, 1) >= 5  # rank 1 recorded its own step times, from its own actor
    assert ("DistributedDataParallel" if framework == "torch" else "MultiWorkerMirroredStrategy") in \
        run.summary["strategy"]
    (group,) = groups_named(actor_name(url, run_id))
    assert group["strategy"] == strategy and group["bundles"] == {0: {"CPU": 1.0}, 1: {"CPU": 1.0}}
    wait_until(lambda: group_removed(actor_name(url, run_id)), 60, "rank 0's actor to remove the group")
    wait_until(lambda: ray.available_resources().get("CPU") == 2, 60, "Ray to get both CPUs back")


@ON_SQLITE
@pytest.mark.parametrize("framework, killed, words", [
    ("torch", "process", "worker rank 1 was killed by SIGKILL"),
    # Its actor: Ray reports the actor dead, and the rank's process, orphaned, exits.
    ("tensorflow", "actor", "worker rank 1 was lost with its Ray actor (ActorDiedError"),
], ids=["torch-process", "tensorflow-actor"])
def test_a_killed_rank_on_ray_fails_the_run_within_seconds_and_its_group_goes(on_ray, framework, killed, words):
    sessions, scheduler, url = on_ray["sessions"], on_ray["scheduler"], on_ray["url"]
    run_id = queue(sessions, framework, workers=2, batch_size=64, **LONG)
    scheduler.start()
    wait_until(lambda: rank_points(sessions, run_id, 1) >= 3, 240, "rank 1 to record steps")
    (rank_1,) = rank_processes(url, run_id)
    victim = rank_1 if killed == "process" else rank_1.parent()  # the process, or rank 1's actor's
    killed_at = time.monotonic()
    victim.kill()
    run = wait_until(lambda: ended(sessions, run_id), 30, "the run to fail")
    noticed_s = time.monotonic() - killed_at
    assert noticed_s < 15, noticed_s
    # Named by the watcher or by rank 0's failing collective, whichever ends the run first: the same words.
    assert run.status == FAILED and words in run.error, run.error
    assert "---- worker rank 1 on" in Path(run.log_path).read_text()  # its output, added to the run's log
    wait_until(lambda: group_removed(actor_name(url, run_id)), 60, "the group to be removed")
    wait_until(lambda: not rank_1.is_running() or rank_1.status() == psutil.STATUS_ZOMBIE, 30, "rank 1 to end")
    wait_until(lambda: ray.available_resources().get("CPU") == 2, 60, "Ray to get both CPUs back")
    print(f"a killed rank ({framework}, its {killed}) failed the run {noticed_s:.2f} s later")


@ON_SQLITE
def test_cancel_takes_a_waiting_group_out_of_ray_and_stops_every_rank_of_a_running_one(on_ray):
    sessions, scheduler, url = on_ray["sessions"], on_ray["scheduler"], on_ray["url"]
    taken = ray.util.placement_group([{"CPU": 2}])  # someone else's job holds both CPUs
    ray.get(taken.ready(), timeout=60)
    try:
        waiting = queue(sessions, "torch", workers=2, batch_size=64, **LONG)
        scheduler.start()
        wait_until(lambda: get(sessions, waiting).placed_device == RAY_CPU, 60, "the run to be handed to Ray")
        assert [entry["state"] for entry in groups_named(actor_name(url, waiting))] == ["PENDING"]
        assert get(sessions, waiting).status == QUEUED  # queued in Arena while Ray waits
        assert cancel_runs(sessions, [waiting], via="test") == {waiting: "cancelled"}
        assert group_removed(actor_name(url, waiting))
        with pytest.raises(ValueError):
            ray.get_actor(actor_name(url, waiting), namespace=arena_ray.NAMESPACE)
    finally:
        ray.util.remove_placement_group(taken)

    running = queue(sessions, "torch", workers=2, batch_size=64, **LONG)
    scheduler.wake()
    wait_until(lambda: rank_points(sessions, running, 1) >= 3, 240, "rank 1 to record steps")
    ranks = [get(sessions, running).pid] + [process.pid for process in rank_processes(url, running)]
    assert len(ranks) == 2
    assert cancel_runs(sessions, [running], via="test")[running] in ("cancelled", "requested")
    run = wait_until(lambda: ended(sessions, running), 30, "the run to end cancelled")
    assert run.status == CANCELLED
    wait_until(lambda: group_removed(actor_name(url, running)), 30, "the group to be removed")
    wait_until(lambda: not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                               for pid in ranks), 30, "every rank's process to end")
    wait_until(lambda: ray.available_resources().get("CPU") == 2, 60, "Ray to get both CPUs back")


@ON_SQLITE
def test_a_group_no_cluster_can_hold_fails_at_once_naming_the_numbers(on_ray, monkeypatch):
    sessions, scheduler, url = on_ray["sessions"], on_ray["scheduler"], on_ray["url"]
    packed = queue(sessions, "torch", workers=4, batch_size=64)
    scheduler.tick()
    monkeypatch.setenv("ARENA_RAY_PLACEMENT", "spread")  # best effort too: the same count of bundles decides
    spread = queue(sessions, "torch", workers=3, batch_size=63)
    scheduler.tick()
    for run_id, workers in ((packed, 4), (spread, 3)):
        run = get(sessions, run_id)
        assert run.status == FAILED
        assert (f"{workers} workers need {workers} bundles of 1 CPU, one per worker, and the cluster's 1 node(s) "
                f"hold 2 at most (2 per node)") in run.error
        assert groups_named(actor_name(url, run_id)) == []  # nothing was reserved
    # Workers sharing one process (TensorFlow's MirroredStrategy) are one actor, so they need one node with room.
    spec = RunSpec(framework="tensorflow", device="cpu", workers=3, batch_size=63, **TINY).to_dict()
    with sessions.begin() as s:
        one_process = queries.create_run(s, {**spec, "tf_strategy": "mirrored"}, None, 5).id
    scheduler.tick()
    run = get(sessions, one_process)
    assert run.status == FAILED and ("3 workers in one process (MirroredStrategy) need 3 CPUs on one node and the "
                                     "largest node has 2") in run.error, run.error
    assert groups_named(actor_name(url, one_process)) == []


@ON_SQLITE
def test_a_group_ray_lost_with_its_actor_is_removed_and_the_run_goes_back_to_the_queue(on_ray):
    sessions, scheduler, url = on_ray["sessions"], on_ray["scheduler"], on_ray["url"]
    run_id = queue(sessions, "torch", workers=2, batch_size=64)
    with sessions.begin() as s:  # handed to Ray by a scheduler that reserved the group and died before its actor
        assert queries.place_run(s, run_id, RAY_CPU, hostname=None)
    stale = ray.util.placement_group([{"CPU": 1}, {"CPU": 1}], name=actor_name(url, run_id), lifetime="detached")
    ray.get(stale.ready(), timeout=60)
    scheduler.start()
    run = wait_until(lambda: ended(sessions, run_id), 300, "the run to be submitted again and end")
    assert run.status == FINISHED, run.error
    assert len(groups_named(actor_name(url, run_id))) >= 2  # the stale group, then the run's own
    wait_until(lambda: group_removed(actor_name(url, run_id)), 60, "both groups to be removed")


@ON_SQLITE
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


@ON_SQLITE
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
