"""Queue and cancel deployment jobs (the process itself is engine/deploy/job.py).

queue() checks everything a user can get wrong at the boundary and stores nothing when anything
is: the run must exist, be finished and have kept its weights; the formats must be its
framework's and able to express its model (formats.unsupported). The scheduler then places the
job like a run (engine/scheduler.py, engine/executors/): the local executor gives it this machine
once no run is on it and starts its process (engine.processes.start_deployment), which outlives
the page or CLI that queued it; engine.processes.reap_deployments ends it lost if that process dies.
"""
from __future__ import annotations

import socket
from typing import Any, Mapping, Optional, Sequence, Union

from sqlalchemy.orm import Session, sessionmaker

from db import deployments, queries
from db.models import CANCELLED, FINISHED, RUNNING
from engine import kept_weights
from engine.deploy import formats
from engine.deploy.job import settings_with_defaults
from engine.processes import deployment_alive, stop_process_trees
from engine.scheduler import wake


class DeployError(ValueError):
    """A deployment that cannot be queued; the message names the run, format or setting and why."""


Formats = Optional[Union[Sequence[str], Mapping[str, Sequence[str]]]]


def check(s: Session, run_id: int, names: Formats) -> tuple[str, list[str]]:
    """(framework, formats) for a run that can be deployed, or DeployError naming what cannot.

    names: format names (None: every format of the run's framework), or per framework {framework: names}.
    """
    run = queries.get_run(s, run_id)
    if run is None:
        raise DeployError(f"run {run_id} does not exist")
    if run.status != FINISHED:
        raise DeployError(f"run {run_id} is {run.status}: only a finished run's trained model can be deployed")
    if kept_weights.find(s, run_id) is None:
        raise DeployError(f"run {run_id} kept no weights (it trained with keep_weights off): train it again "
                          f"with \"Keep the trained weights\" on")
    framework = run.framework
    if isinstance(names, Mapping):
        names = names.get(framework)
        if not names:
            raise DeployError(f"no {framework} format chosen for run {run_id}: pick at least one of "
                              f"{', '.join(formats.names(framework))}")
    names = list(names) if names else list(formats.names(framework))
    for name in names:
        if name not in formats.names(framework):
            raise DeployError(f"format {name!r} is not one of {framework}'s: expected one of "
                              f"{', '.join(formats.names(framework))} (run {run_id} trained in {framework})")
        reason = formats.unsupported(framework, name, run.model)
        if reason and len(names) == 1:
            raise DeployError(f"run {run_id}: {run.model} cannot be exported to {name}: {reason}")
    return framework, names


def queue(sessions: sessionmaker[Session], run_ids: Sequence[int], names: Formats = None,
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


def launch(sessions: sessionmaker[Session], db_url: str, run_ids: Sequence[int], names: Formats = None,
            settings: Optional[dict[str, Any]] = None) -> list[int]:
    """Queue one job per run (as queue()) and wake this process's scheduler, which places them; the job ids.

    If another process (a dashboard, a CLI) holds the database's scheduler lease, that one places them.
    """
    job_ids = queue(sessions, run_ids, names, settings)
    wake(sessions, db_url)
    return job_ids


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


def cancel(sessions: sessionmaker[Session], job_id: int) -> Optional[str]:
    """Stop a job: a queued one ends cancelled; a running one is asked, and its process tree on this
    machine is stopped (it ends itself cancelled); the status after, None when there is no such job.

    A cancelled job still in a cluster's queue starts nothing when its turn comes (the actor finds
    it ended and leaves at once).
    """
    with sessions.begin() as s:
        status = deployments.request_cancel(s, job_id)
        job = deployments.get(s, job_id)
        pid, host = (job.pid, job.hostname) if job is not None else (None, None)
    if status == RUNNING and pid is not None and host == socket.gethostname() and deployment_alive(pid):
        stop_process_trees([pid], grace_s=10.0)
        with sessions.begin() as s:
            deployments.end(s, job_id, CANCELLED, "cancel requested")
            status = deployments.get(s, job_id).status
    return status
