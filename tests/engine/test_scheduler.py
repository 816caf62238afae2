"""engine/scheduler.py with the local executor: placement over fake GPUs, the lease between schedulers, real runs
on the CPU. The placement rules alone: tests/engine/executors/test_local.py."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from db import deployments, queries
from db.models import FINISHED
from db.session import make_sessionmaker
from engine import PROJECT_ROOT, child_env
from engine.executors.local import Gpu, LocalExecutor
from engine.launch import queue_runs
from engine.scheduler import LEASE_NAME, LEASE_TTL_S, Scheduler
from engine.spec import RunSpec
from tests.conftest import NO_CALIBRATION, wait_until
from tests.fakes import fake_gpu, fake_state, install_fake_nvml

SPEC = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=1, max_steps_per_epoch=5, **NO_CALIBRATION)


# Placement over two fake GPUs, with real processes --------------------------------------------

# Stands in for the runner where CUDA would be needed: claims the run, waits to be released, and
# finishes it with the environment it was started with. "engine.runner" in its argv lets the
# reaper recognise it as a runner, as it recognises the real one.
STUB_RUNNER = """
import os, socket, sys, time
from db import deployments, queries
from db.session import make_sessionmaker
run_id, url, release = int(sys.argv[2]), sys.argv[3], sys.argv[4]
sessions = make_sessionmaker(url)
with sessions.begin() as s:
    assert queries.claim_run(s, run_id, os.getpid(), socket.gethostname())
while not os.path.exists(f"{release}{run_id}"):
    time.sleep(0.05)
with sessions.begin() as s:
    queries.finish_run(s, run_id, {key: os.environ.get(key) for key in
                                   ("CUDA_VISIBLE_DEVICES", "ARENA_DEVICE", "ARENA_PLACED_DEVICE", "ARENA_NVML_INDEX")})
"""


def local_scheduler(sessions, url, launcher, gpus=None, **options) -> Scheduler:
    """A scheduler whose local executor starts placed runs with launcher(run id, env), over gpus() if given."""
    return Scheduler(sessions, url, LocalExecutor(sessions, url, launcher, gpus), **options)


def stub_launcher(sessions, url, release_prefix, processes):
    def launch(run_id, env):
        process = subprocess.Popen([sys.executable, "-c", STUB_RUNNER, "engine.runner", str(run_id), url,
                                    str(release_prefix)], cwd=PROJECT_ROOT, env={**child_env(), **env})
        processes.append(process)
        with sessions.begin() as s:
            queries.set_launch_info(s, run_id, process.pid, socket.gethostname(), "")
        return process
    return launch


def test_three_queued_runs_over_two_fake_gpus(arena_db, tmp_path, monkeypatch):
    state = fake_state([fake_gpu(0), fake_gpu(1)])
    install_fake_nvml(monkeypatch, tmp_path, state)
    uuids = [gpu["uuid"] for gpu in state["gpus"]]
    sessions = make_sessionmaker(arena_db)
    first, second, third = queue_runs(sessions, [SPEC, SPEC, SPEC])
    release, processes = tmp_path / "release-", []
    scheduler = local_scheduler(sessions, arena_db, stub_launcher(sessions, arena_db, release, processes))
    try:
        placed = scheduler.tick()
        assert [(p.id, p.device) for p in placed] == [(first, "cuda:0"), (second, "cuda:1")]

        def status(run_id):
            with sessions.begin() as s:
                return queries.get_run(s, run_id)
        wait_until(lambda: status(first).status == status(second).status == "running", what="both running")
        assert scheduler.tick() == []  # both GPUs busy: the third waits
        assert status(third).status == "queued" and status(third).placed_device is None

        (tmp_path / f"release-{second}").touch()
        wait_until(lambda: status(second).status == FINISHED, what="second finished")
        placed = scheduler.tick()
        assert [(p.id, p.device) for p in placed] == [(third, "cuda:1")]
        (tmp_path / f"release-{first}").touch()
        (tmp_path / f"release-{third}").touch()
        wait_until(lambda: status(first).status == status(third).status == FINISHED, what="all finished")
        seen = {run_id: status(run_id).summary for run_id in (first, second, third)}
        assert seen[first] == {"CUDA_VISIBLE_DEVICES": uuids[0], "ARENA_DEVICE": "cuda:0",
                               "ARENA_PLACED_DEVICE": "cuda:0", "ARENA_NVML_INDEX": "0"}
        assert seen[second]["CUDA_VISIBLE_DEVICES"] == seen[third]["CUDA_VISIBLE_DEVICES"] == uuids[1]
        assert [status(r).placed_device for r in (first, second, third)] == ["cuda:0", "cuda:1", "cuda:1"]
    finally:
        for process in processes:
            process.kill()
            process.wait()


def test_a_gpu_busy_with_a_foreign_process_is_left_alone(arena_db, tmp_path, monkeypatch):
    install_fake_nvml(monkeypatch, tmp_path, fake_state([fake_gpu(0, processes=[[999999, 2**30]]), fake_gpu(1)]))
    sessions = make_sessionmaker(arena_db)
    run_ids = queue_runs(sessions, [SPEC, SPEC])
    launched = []
    scheduler = local_scheduler(sessions, arena_db, lambda run_id, env: launched.append((run_id, env)))
    assert [(p.id, p.device) for p in scheduler.tick()] == [(run_ids[0], "cuda:1")]


# The lease: one scheduler per database -----------------------------------------------------------

def instant_launcher(sessions, launched, who):
    """Claims and finishes the run at once, recording who launched it."""
    def launch(run_id, env):
        launched.append((run_id, who))
        with sessions.begin() as s:
            assert queries.claim_run(s, run_id, os.getpid(), socket.gethostname())
            queries.finish_run(s, run_id, {})
    return launch


def test_two_schedulers_on_one_database_never_start_a_run_twice(arena_db, monkeypatch):
    monkeypatch.setenv("ARENA_CPU_SLOTS", "1")
    run_ids = queue_runs(make_sessionmaker(arena_db), [SPEC] * 8)
    launched: list[tuple[int, str]] = []
    schedulers = []
    for who in ("a", "b"):
        sessions = make_sessionmaker(arena_db)  # one engine each, as two dashboards have
        launcher = instant_launcher(sessions, launched, who)
        schedulers.append(local_scheduler(sessions, arena_db, launcher, gpus=lambda: []))
    barrier = threading.Barrier(2, timeout=30)

    def hammer(scheduler):
        barrier.wait()
        for _ in range(30):
            scheduler.tick()

    threads = [threading.Thread(target=hammer, args=(s,)) for s in schedulers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(run_id for run_id, _ in launched) == run_ids  # every run once, none twice
    assert len({who for _, who in launched}) == 1  # only the lease holder acted
    assert sum(s.holds_lease for s in schedulers) == 1


def test_a_crashed_schedulers_lease_expires_and_another_takes_the_queue(arena_db):
    sessions = make_sessionmaker(arena_db)
    launched: list[tuple[int, str]] = []
    first = local_scheduler(sessions, arena_db, instant_launcher(sessions, launched, "first"), gpus=lambda: [],
                            lease_ttl_s=1.0)
    second = local_scheduler(sessions, arena_db, instant_launcher(sessions, launched, "second"), gpus=lambda: [],
                             lease_ttl_s=1.0)
    first.tick()
    assert first.holds_lease
    first.stop(release=False)  # as if it crashed: the lease stays until it expires
    (run_id,) = queue_runs(sessions, [SPEC])
    assert second.tick() == [] and not second.holds_lease
    time.sleep(1.2)
    assert [p.id for p in second.tick()] == [run_id] and launched == [(run_id, "second")]


def _lease_holder_pid(sessions):
    with sessions.begin() as s:
        lease = queries.lease(s, LEASE_NAME)
        return lease.pid if lease is not None and lease.expires_at > queries.utcnow() else None


@pytest.mark.parametrize("how", ["killed", "stopped"])
def test_the_scheduler_command_holds_the_lease_until_it_dies_or_stops(arena_db, how):
    sessions = make_sessionmaker(arena_db)
    process = subprocess.Popen([sys.executable, "-m", "engine", "scheduler", "--db", arena_db],
                               cwd=PROJECT_ROOT, env=child_env(), stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _lease_holder_pid(sessions) == process.pid, timeout_s=60, what="the command holds the lease")
        local = local_scheduler(sessions, arena_db, lambda *_: None, gpus=lambda: [])
        assert local.tick() == [] and not local.holds_lease
        start = time.monotonic()
        if how == "killed":
            process.kill()  # no chance to release: the lease has to expire
        else:
            process.send_signal(signal.SIGTERM)  # stops cleanly and gives the lease up at once
        returncode = process.wait(timeout=30)
        if how == "stopped":
            # Given up, not left to expire: only the holder's release deletes the row. The clock starts
            # at its exit: how long a process takes to exit on a busy machine is not the lease's doing.
            with sessions.begin() as s:
                assert queries.lease(s, LEASE_NAME) is None
            start = time.monotonic()
        wait_until(lambda: local.tick() is not None and local.holds_lease, timeout_s=LEASE_TTL_S + 10,
                   what="the lease passes on")
        waited = time.monotonic() - start
        assert waited <= LEASE_TTL_S + 3 if how == "killed" else waited < 3
    finally:
        process.kill()
        process.wait()
    if how == "stopped":
        assert returncode == 0, process.stderr.read()


# Real runs on the CPU ---------------------------------------------------------------------------

def test_runs_go_on_when_the_scheduler_stops_and_the_next_one_takes_the_queue(arena_db):
    sessions = make_sessionmaker(arena_db)
    longer = RunSpec(framework="torch", model="cnn", dataset="digits", epochs=2, max_steps_per_epoch=40,
                     inference_iters=0)
    first_id, second_id = queue_runs(sessions, [longer, SPEC])
    dashboard = Scheduler(sessions, arena_db).start()

    def run(run_id):
        with sessions.begin() as s:
            return queries.get_run(s, run_id)
    wait_until(lambda: run(first_id).status == "running", what="first run started")
    dashboard.stop()  # the dashboard goes away mid-run
    assert run(second_id).status == "queued" and run(second_id).placed_device is None
    finished = wait_until(lambda: run(first_id).status == FINISHED and run(first_id), timeout_s=180,
                          what="first run finished without a scheduler")
    assert finished.placed_device == "cpu" and finished.environment["cuda_visible_devices"] == ""
    time.sleep(1.5)
    assert run(second_id).status == "queued"  # nobody schedules: it waits, it is not lost
    restarted = Scheduler(sessions, arena_db).start()
    try:
        second = wait_until(lambda: run(second_id).status == FINISHED and run(second_id), timeout_s=180,
                            what="the restarted scheduler ran the queue")
        assert second.started_at >= finished.finished_at and second.placed_device == "cpu"
    finally:
        restarted.stop()


def finished_run(s) -> int:
    run_id = queries.create_run(s, SPEC.to_dict()).id
    queries.claim_run(s, run_id, 1, "elsewhere")
    queries.finish_run(s, run_id, {})
    return run_id


@pytest.mark.parametrize("gpus", [[], [Gpu(0, "GPU-0")]], ids=["cpu-only", "with-a-gpu"])
def test_a_deployment_job_takes_the_machine_in_queue_order(arena_db, gpus):
    """A job is placed once the runs queued before it have left the machine; runs queued after it wait for it,
    on a GPU too (a GPU run's loop uses the CPU the job times on) (issue 17)."""
    sessions = make_sessionmaker(arena_db)
    (before,) = queue_runs(sessions, [SPEC])
    with sessions.begin() as s:
        job = deployments.create(s, finished_run(s), ["onnx"], {})
    (after,) = queue_runs(sessions, [SPEC])
    # Launchers that start no process: a placed run or job holds its place until it ends, as while starting.
    launched, jobs_launched = [], []
    executor = LocalExecutor(sessions, arena_db, lambda run_id, env: launched.append(run_id), lambda: gpus,
                             job_launcher=lambda job_id, env: jobs_launched.append((job_id, env["CUDA_VISIBLE_DEVICES"])))
    scheduler = Scheduler(sessions, arena_db, executor)
    assert [(p.kind, p.id) for p in scheduler.tick()] == [("run", before)]
    assert scheduler.tick() == [] and jobs_launched == []  # a run is on the machine: the job and the run after wait
    with sessions.begin() as s:
        assert queries.claim_run(s, before, 1, "elsewhere")  # it trained and ended
        queries.finish_run(s, before, {})
    assert [(p.kind, p.id, p.device) for p in scheduler.tick()] == [("deployment", job, "cpu")]
    assert jobs_launched == [(job, "")]  # the runtimes it times see no GPU
    with sessions.begin() as s:
        assert deployments.get(s, job).placed_device == "cpu"
    assert scheduler.tick() == [] and launched == [before]  # the job measures: nothing starts beside it
    with sessions.begin() as s:
        deployments.end(s, job, FINISHED)
    assert [(p.kind, p.id) for p in scheduler.tick()] == [("run", after)]


def test_a_job_placed_but_never_started_goes_back_to_the_queue(arena_db, monkeypatch):
    """Its scheduler died between placing it and starting its process: the next one places it again."""
    sessions = make_sessionmaker(arena_db)
    with sessions.begin() as s:
        job = deployments.create(s, finished_run(s), ["onnx"], {})
        assert deployments.place(s, job, "cpu", socket.gethostname())
    monkeypatch.setattr("engine.executors.local.UNSTARTED_PLACEMENT_S", 0.0)
    started = []
    executor = LocalExecutor(sessions, arena_db, lambda run_id, env: None, lambda: [],
                             job_launcher=lambda job_id, env: started.append(job_id))
    time.sleep(0.01)
    assert [(p.kind, p.id) for p in Scheduler(sessions, arena_db, executor).tick()] == [("deployment", job)]
    assert started == [job]
