"""Runner and deployment processes on this machine: start one, tell whether it is alive, reap the dead, stop a tree.

Every run trains in a process of its own, `python -m engine.runner RUN_ID --db URL`, and every
deployment job measures in one, `python -m engine.deploy.job JOB_ID --db URL`, whoever starts it:
the local executor on this machine, a Ray actor on a cluster node (engine/executors/). This module
is the one place that starts, watches and stops those processes; it knows no executor.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Optional, Sequence

import psutil
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from db import deployments, queries
from db.models import ACTIVE_STATUSES, FAILED, LOST
from db.session import run_log_path
from engine import PROJECT_ROOT, child_env

RUNNER_MODULE = "engine.runner"
DEPLOY_MODULE = "engine.deploy.job"
# A deployment job on another machine without a heartbeat this long is lost (its process beats every POLL_S).
DEPLOY_LOST_AFTER = timedelta(seconds=60)
# A cancelled runner's processes get this long to end on SIGTERM (the runner records the cancel and
# its last points) before SIGKILL; then KILL_WAIT_S for the kernel to take them down.
CANCEL_GRACE_S = 2.0
KILL_WAIT_S = 0.8

# Runners this process started and has not waited for yet (reap_children() waits for the finished ones).
children: list[subprocess.Popen] = []


def absolute_db_url(url: str) -> str:
    """A URL the runner can open from any working directory (relative SQLite paths made absolute)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return parsed.set(database=str(Path(parsed.database).expanduser().resolve())).render_as_string(
            hide_password=False
        )
    return url


def start_runner(sessions: sessionmaker[Session], run_id: int, db_url: str,
                 extra_env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    """Start the runner process for a placed run; its output goes to a per-run log file.

    The process gets its own session so it outlives whoever started it (dashboard, CLI), a page
    reload or a closed browser; engine.launch.cancel_runs stops it. extra_env carries the placement
    (CUDA_VISIBLE_DEVICES and friends); its ARENA_PLACED_DEVICE is stored with the process (the local
    executor stored the same when it placed the run; on a cluster, the device was chosen just now).
    """
    runner_url = absolute_db_url(db_url)
    log_path = run_log_path(runner_url, run_id)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**child_env(), **(extra_env or {})}
    with open(log_path, "ab") as log:
        # A run started again (Ray lost it before it began) appends: readers take the lines after the last header.
        log.write(f"{queries.LOG_HEADER} {run_id} of {make_url(runner_url).render_as_string(hide_password=True)}, "
                  f"started {queries.utcnow():%Y-%m-%d %H:%M:%S} UTC on {socket.gethostname()}\n".encode())
        log.flush()
        try:
            process = _spawn(RUNNER_MODULE, run_id, runner_url, env, log)
        except OSError as exc:
            with sessions.begin() as s:
                queries.fail_run(s, run_id, f"could not start the runner process: {exc}")
            raise
    with sessions.begin() as s:
        queries.set_launch_info(s, run_id, process.pid, socket.gethostname(), str(log_path),
                                placed_device=env.get("ARENA_PLACED_DEVICE"))
    return process


def start_deployment(sessions: sessionmaker[Session], job_id: int, db_url: str,
                     extra_env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    """Start the process of a placed deployment job, in a session of its own, logging next to the runs' logs.

    Its pid is stored at once, so a reaper can tell when it died before claiming the job.
    """
    url = absolute_db_url(db_url)
    env = {**child_env(), **(extra_env or {})}
    log_path = run_log_path(url, job_id).with_name(f"deploy-{job_id}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            process = _spawn(DEPLOY_MODULE, job_id, url, env, log)
        except OSError as exc:
            with sessions.begin() as s:
                deployments.end(s, job_id, FAILED, f"could not start the deployment process: {exc}")
            raise
    with sessions.begin() as s:
        deployments.set_process(s, job_id, process.pid, socket.gethostname(), env.get("ARENA_PLACED_DEVICE"))
    return process


def _spawn(module: str, item_id: int, url: str, env: dict[str, str], log) -> subprocess.Popen:
    """`python -m module ID --db URL` in a session of its own (it outlives whoever started it), output to log;
    kept in children until it is waited for."""
    process = subprocess.Popen([sys.executable, "-m", module, str(item_id), "--db", url], cwd=PROJECT_ROOT, env=env,
                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    children.append(process)
    return process


def deployment_alive(pid: int) -> bool:
    """True while a deployment job process with this pid exists (not a zombie, not a reused pid)."""
    reap_children()
    return module_alive(pid, DEPLOY_MODULE)


def runner_alive(pid: int) -> bool:
    """True while a runner process with this pid exists (a zombie or a reused pid is not one)."""
    reap_children()
    return module_alive(pid, RUNNER_MODULE)


def module_alive(pid: int, module: str) -> bool:
    """True while `python -m module` runs with this pid (a zombie, or a pid reused by another program, does not)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = process.cmdline()
        # Empty while the process is between vfork and the end of its exec (Popen has returned by
        # then, so the scheduler may already look): it is the process on its way, not a stranger.
        return not cmdline or module in " ".join(cmdline)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def reap_children() -> None:
    """Wait for finished runners this process started, so they do not linger as zombies."""
    for child in list(children):
        if child.poll() is not None:
            children.remove(child)


def reap(sessions: sessionmaker[Session]) -> list[int]:
    """End queued/running runs whose runner is gone (lost; see queries.reap_orphans); return their ids."""
    with sessions.begin() as s:
        return queries.reap_orphans(s, socket.gethostname(), runner_alive)


def reap_deployments(sessions: sessionmaker[Session]) -> list[int]:
    """End jobs whose process is gone (this machine) or silent for DEPLOY_LOST_AFTER (another) as lost; their ids.

    A queued job with no process yet waits (in the queue, or in a cluster's queue): nothing has died.
    """
    host, now = socket.gethostname(), queries.utcnow()
    with sessions.begin() as s:
        candidates = [j for j in deployments.jobs(s, statuses=list(ACTIVE_STATUSES)) if j["pid"] is not None]
    lost = []
    for job in candidates:
        if job["hostname"] == host:
            if deployment_alive(job["pid"]):
                continue
            why = f"deployment process {job['pid']} on {host} ended without reporting a result"
        else:
            last = job["heartbeat_at"] or job["started_at"] or job["created_at"]
            if now - last <= DEPLOY_LOST_AFTER:
                continue
            why = f"no heartbeat from deployment process {job['pid']} on {job['hostname']} since {last:%H:%M:%S} UTC"
        with sessions.begin() as s:
            if deployments.end(s, job["id"], LOST, why):
                lost.append(job["id"])
    return lost


def stop_process_trees(pids: Sequence[int], grace_s: float = CANCEL_GRACE_S) -> list[int]:
    """SIGTERM processes and every process they started, SIGKILL what is left after grace_s; the pids still alive.

    A runner leads its own process group (start_runner), so the group is signalled too: that reaches
    a worker forked after the tree was read. Walking the tree reaches one that left the group.
    """
    tree: list[psutil.Process] = []
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            root = psutil.Process(pid)
            tree += [root, *root.children(recursive=True)]
    groups = [pid for pid in pids if _leads_group(pid)]
    _signal(tree, groups, signal.SIGTERM)
    alive = _wait_gone(tree, grace_s)
    if alive:
        late = [child for process in alive for child in _children_of(process)]
        _signal(alive + late, groups, signal.SIGKILL)
        alive = _wait_gone(alive + late, KILL_WAIT_S)
    reap_children()
    return [process.pid for process in alive]


def _leads_group(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except OSError:
        return False


def _children_of(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def _signal(processes: list[psutil.Process], groups: list[int], signum: signal.Signals) -> None:
    for group in groups:
        with contextlib.suppress(OSError):
            os.killpg(group, signum)
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(signum)  # psutil checks the pid still names the same process


def _wait_gone(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Poll until every process has ended (a zombie has: only its parent's wait is missing) or timeout_s passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [process for process in processes if _running(process)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.05)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
