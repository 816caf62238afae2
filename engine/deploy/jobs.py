"""Queue, start, cancel and reap deployment jobs (the process itself is engine/deploy/job.py).

queue() checks everything a user can get wrong at the boundary and stores nothing when anything
is: the run must exist, be finished and have kept its weights; the formats must be its
framework's and able to express its model (formats.unsupported). start() runs the job process in
a session of its own (it outlives the page or CLI that started it), logging next to the runs'
logs. reap() ends a job whose process is gone as lost, so none stays "running".
"""
from __future__ import annotations

import socket
import subprocess
import sys
from datetime import timedelta
from typing import Any, Optional, Sequence

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from db import deployments, queries
from db.models import CANCELLED, FINISHED, LOST, QUEUED, RUNNING, Deployment
from db.session import run_log_path
from engine import PROJECT_ROOT, child_env, kept_weights
from engine.deploy import formats
from engine.deploy.job import MODULE, settings_with_defaults
from engine.processes import absolute_db_url, module_alive, stop_process_trees

LOST_AFTER = timedelta(seconds=60)  # a job on another machine without a heartbeat this long is lost


class DeployError(ValueError):
    """A deployment that cannot be queued; the message names the run, format or setting and why."""


def check(s: Session, run_id: int, names: Optional[Sequence[str]]) -> tuple[str, list[str]]:
    """(framework, formats) for a run that can be deployed, or DeployError naming what cannot."""
    run = queries.get_run(s, run_id)
    if run is None:
        raise DeployError(f"run {run_id} does not exist")
    if run.status != FINISHED:
        raise DeployError(f"run {run_id} is {run.status}: only a finished run's trained model can be deployed")
    if kept_weights.find(s, run_id) is None:
        raise DeployError(f"run {run_id} kept no weights (it trained with keep_weights off): train it again "
                          f"with \"Keep the trained weights\" on")
    framework = run.framework
    names = list(names) if names else list(formats.names(framework))
    for name in names:
        if name not in formats.names(framework):
            raise DeployError(f"format {name!r} is not one of {framework}'s: expected one of "
                              f"{', '.join(formats.names(framework))} (run {run_id} trained in {framework})")
        reason = formats.unsupported(framework, name, run.model)
        if reason and len(names) == 1:
            raise DeployError(f"run {run_id}: {run.model} cannot be exported to {name}: {reason}")
    return framework, names


def queue(sessions: sessionmaker[Session], run_ids: Sequence[int], names: Optional[Sequence[str]] = None,
          settings: Optional[dict[str, Any]] = None) -> list[int]:
    """One job per run, all queued or none (the first bad run, format or setting raises DeployError)."""
    if not run_ids:
        raise DeployError("no run to deploy: pick at least one finished run")
    try:
        resolved = settings_with_defaults(settings)
    except ValueError as exc:
        raise DeployError(str(exc)) from None
    _check_settings(resolved)
    with sessions.begin() as s:
        checked = [(run_id, *check(s, run_id, names)) for run_id in run_ids]
        return [deployments.create(s, run_id, chosen, resolved) for run_id, _, chosen in checked]


def _check_settings(settings: dict[str, Any]) -> None:
    threads = settings["threads"]
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 256:
        raise DeployError(f"threads={threads!r}: expected a whole number from 1 to 256")
    for key in ("batch_sizes", "concurrency"):
        values = settings[key]
        if (not isinstance(values, list) or not values
                or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 4096 for v in values)):
            raise DeployError(f"{key}={values!r}: expected a list of whole numbers from 1 to 4096")
    for key in ("min_time_s", "serve_duration_s"):
        value = settings[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.05 <= value <= 600:
            raise DeployError(f"{key}={value!r}: expected seconds from 0.05 to 600")


def start(sessions: sessionmaker[Session], job_id: int, db_url: str) -> subprocess.Popen:
    """Start the job's process in its own session; its pid is stored so a reaper can tell it died."""
    url = absolute_db_url(db_url)
    log_path = run_log_path(url, job_id).with_name(f"deploy-{job_id}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", MODULE, str(job_id), "--db", url], cwd=PROJECT_ROOT,
                                   env=child_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    with sessions.begin() as s:
        s.execute(update(Deployment).where(Deployment.id == job_id, Deployment.status == QUEUED)
                  .values(pid=process.pid, hostname=socket.gethostname()))
    return process


def cancel(sessions: sessionmaker[Session], job_id: int) -> Optional[str]:
    """Stop a job: a queued one ends cancelled; a running one is asked, and its process tree on this
    machine is stopped (it ends itself cancelled); the status after, None when there is no such job."""
    with sessions.begin() as s:
        status = deployments.request_cancel(s, job_id)
        job = deployments.get(s, job_id)
        pid, host = (job.pid, job.hostname) if job is not None else (None, None)
    if status == RUNNING and pid is not None and host == socket.gethostname() and job_alive(pid):
        stop_process_trees([pid], grace_s=10.0)
        with sessions.begin() as s:
            deployments.end(s, job_id, CANCELLED, "cancel requested")
            status = deployments.get(s, job_id).status
    return status


def job_alive(pid: int) -> bool:
    """True while a job process with this pid exists (not a zombie, not a reused pid)."""
    return module_alive(pid, MODULE)


def reap(sessions: sessionmaker[Session]) -> list[int]:
    """End jobs whose process is gone (this machine) or silent for LOST_AFTER (another) as lost; their ids."""
    host, now = socket.gethostname(), queries.utcnow()
    with sessions.begin() as s:
        candidates = [j for j in deployments.jobs(s, statuses=[QUEUED, RUNNING]) if j["pid"] is not None]
    lost = []
    for job in candidates:
        if job["hostname"] == host:
            if job_alive(job["pid"]):
                continue
            why = f"deployment process {job['pid']} on {host} ended without reporting a result"
        else:
            last = job["heartbeat_at"] or job["started_at"] or job["created_at"]
            if now - last <= LOST_AFTER:
                continue
            why = f"no heartbeat from deployment process {job['pid']} on {job['hostname']} since {last:%H:%M:%S} UTC"
        with sessions.begin() as s:
            if deployments.end(s, job["id"], LOST, why):
                lost.append(job["id"])
    return lost
