"""Deployment jobs and their results (issue 17): query functions, the session outside, as db/queries.py.

A job goes queued -> running -> finished | failed | cancelled | lost like a run; every change
from an active status is conditional on it, so an ended job is never rewritten.
"""
from __future__ import annotations

from datetime import timedelta
from typing import Any, Optional, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.models import (
    ACTIVE_STATUSES, CANCELLED, FAILED, FINISHED, LOST, QUEUED, RUNNING, WEIGHTS_KIND, Deployment, DeploymentResult, Run,
    RunArtifact,
)
from db.queries import utcnow

ENDED = (FINISHED, FAILED, CANCELLED, LOST)
JOB_COLUMNS = ["id", "run_id", "status", "formats", "settings", "environment", "steps_done", "steps_total", "current",
               "error", "placed_device", "hostname", "pid", "created_at", "started_at", "finished_at", "heartbeat_at",
               "cancel_requested_at"]
RESULT_COLUMNS = ["id", "deployment_id", "framework", "format", "status", "error", "export_s", "size_bytes", "figures",
                  "serving", "artifact_name", "created_at"]


def create(s: Session, run_id: int, formats: Sequence[str], settings: dict[str, Any]) -> int:
    """Queue a job for one run; return its id."""
    job = Deployment(run_id=run_id, status=QUEUED, formats=list(formats), settings=dict(settings), steps_done=0,
                     steps_total=0, created_at=utcnow())
    s.add(job)
    s.flush()
    return job.id


def claim(s: Session, job_id: int, pid: int, hostname: str) -> bool:
    """queued -> running for this process; False when it is not queued (ended, or claimed by another)."""
    now = utcnow()
    done = s.execute(update(Deployment).where(Deployment.id == job_id, Deployment.status == QUEUED)
                     .values(status=RUNNING, pid=pid, hostname=hostname, started_at=now, heartbeat_at=now))
    return done.rowcount == 1


def progress(s: Session, job_id: int, steps_done: int, steps_total: int, current: str) -> bool:
    """Record progress and a heartbeat while running; False when the job is no longer running."""
    done = s.execute(update(Deployment).where(Deployment.id == job_id, Deployment.status == RUNNING)
                     .values(steps_done=steps_done, steps_total=steps_total, current=current[:255],
                             heartbeat_at=utcnow()))
    return done.rowcount == 1


def set_environment(s: Session, job_id: int, environment: dict[str, Any]) -> None:
    s.execute(update(Deployment).where(Deployment.id == job_id).values(environment=environment))


def end(s: Session, job_id: int, status: str, error: Optional[str] = None) -> bool:
    """An active job ends as status (finished, failed, cancelled, lost); False when it had ended already."""
    if status not in ENDED:
        raise ValueError(f"status={status!r}: a job ends as one of {', '.join(ENDED)}")
    done = s.execute(update(Deployment).where(Deployment.id == job_id, Deployment.status.in_(ACTIVE_STATUSES))
                     .values(status=status, error=error, finished_at=utcnow(), current=None))
    return done.rowcount == 1


def request_cancel(s: Session, job_id: int) -> Optional[str]:
    """Ask an active job to stop: a queued one ends cancelled now; a running one is asked (its process ends it).

    Returns the job's status after the request, None when there is no such job.
    """
    job = s.get(Deployment, job_id)
    if job is None:
        return None
    if job.status == QUEUED:
        end(s, job_id, CANCELLED)
    elif job.status == RUNNING and job.cancel_requested_at is None:
        job.cancel_requested_at = utcnow()
    s.flush()
    s.refresh(job)
    return job.status


def cancel_requested(s: Session, job_id: int) -> bool:
    return s.scalar(select(Deployment.cancel_requested_at).where(Deployment.id == job_id)) is not None


def add_result(s: Session, job_id: int, framework: str, fmt: str, status: str, *, error: Optional[str] = None,
               export_s: Optional[float] = None, size_bytes: Optional[int] = None,
               figures: Optional[dict[str, Any]] = None, artifact_name: Optional[str] = None,
               artifact: Optional[bytes] = None) -> int:
    result = DeploymentResult(deployment_id=job_id, framework=framework, format=fmt, status=status, error=error,
                              export_s=export_s, size_bytes=size_bytes, figures=figures, artifact_name=artifact_name,
                              artifact=artifact, created_at=utcnow())
    s.add(result)
    s.flush()
    return result.id


def set_serving(s: Session, result_id: int, serving: list[dict[str, Any]], error: Optional[str] = None) -> None:
    """The served figures of one format; error (a failed server) is appended to the result's."""
    result = s.get(DeploymentResult, result_id)
    result.serving = serving
    if error:
        result.error = f"{result.error}\n\n{error}" if result.error else error


def get(s: Session, job_id: int) -> Optional[Deployment]:
    return s.get(Deployment, job_id)


def jobs(s: Session, run_ids: Optional[Sequence[int]] = None, statuses: Optional[Sequence[str]] = None
         ) -> list[dict[str, Any]]:
    """Jobs as dicts of JOB_COLUMNS, newest first; of these runs / statuses when given."""
    query = select(*(getattr(Deployment, c) for c in JOB_COLUMNS)).order_by(Deployment.id.desc())
    if run_ids is not None:
        query = query.where(Deployment.run_id.in_(list(run_ids)))
    if statuses is not None:
        query = query.where(Deployment.status.in_(list(statuses)))
    return [dict(row._mapping) for row in s.execute(query)]


def results(s: Session, job_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The jobs' results as dicts of RESULT_COLUMNS (no artifact bytes), in the order they were stored."""
    query = (select(*(getattr(DeploymentResult, c) for c in RESULT_COLUMNS))
             .where(DeploymentResult.deployment_id.in_(list(job_ids))).order_by(DeploymentResult.id))
    return [dict(row._mapping) for row in s.execute(query)]


def artifact(s: Session, result_id: int) -> Optional[tuple[str, bytes]]:
    """(file name, bytes) of one exported artifact, or None when none was kept."""
    row = s.execute(select(DeploymentResult.artifact_name, DeploymentResult.artifact)
                    .where(DeploymentResult.id == result_id)).first()
    return None if row is None or row.artifact is None else (row.artifact_name, row.artifact)


def unplaced(s: Session) -> list[Deployment]:
    """Queued jobs no scheduler has placed yet, oldest first."""
    return list(s.scalars(select(Deployment).where(Deployment.status == QUEUED, Deployment.placed_device.is_(None))
                          .order_by(Deployment.id)))


def place(s: Session, job_id: int, device: str, hostname: Optional[str]) -> bool:
    """Give a queued, unplaced job a device on a host (None: a cluster picks it); False if another moved it first."""
    done = s.execute(update(Deployment)
                     .where(Deployment.id == job_id, Deployment.status == QUEUED, Deployment.placed_device.is_(None))
                     .values(placed_device=device, hostname=hostname, heartbeat_at=utcnow())
                     .execution_options(synchronize_session=False))
    return done.rowcount == 1


def set_process(s: Session, job_id: int, pid: int, hostname: str, device: Optional[str] = None) -> None:
    """The process started for a placed job (it claims the job when it comes up), and the device it got when a
    cluster chose (a job in Ray's queue, "ray:cpu", gets "cpu")."""
    values: dict[str, Any] = {"pid": pid, "hostname": hostname}
    if device is not None:
        values["placed_device"] = device
    s.execute(update(Deployment).where(Deployment.id == job_id, Deployment.status == QUEUED)
              .values(**values).execution_options(synchronize_session=False))


def unplace(s: Session, job_id: int) -> bool:
    """Put a placed job that has no process back in the queue; False if it has started or ended meanwhile."""
    done = s.execute(update(Deployment)
                     .where(Deployment.id == job_id, Deployment.status == QUEUED, Deployment.pid.is_(None))
                     .values(placed_device=None, hostname=None).execution_options(synchronize_session=False))
    return done.rowcount == 1


def unplace_unstarted(s: Session, older_than: timedelta, keep: Sequence[str] = ()) -> list[int]:
    """Put jobs placed on this machine's devices that never got a process back in the queue (their scheduler died)."""
    stale = s.scalars(select(Deployment.id).where(
        Deployment.status == QUEUED, Deployment.placed_device.is_not(None), Deployment.placed_device.not_in(keep),
        Deployment.pid.is_(None), Deployment.heartbeat_at < utcnow() - older_than)).all()
    return [job_id for job_id in stale if unplace(s, job_id)]


def placed_unstarted(s: Session, devices: Sequence[str]) -> list[int]:
    """Queued jobs placed on one of these devices with no process yet (in a cluster's queue), oldest first."""
    return list(s.scalars(select(Deployment.id).where(
        Deployment.status == QUEUED, Deployment.placed_device.in_(list(devices)), Deployment.pid.is_(None))
        .order_by(Deployment.id)))


def holding(s: Session, hostname: str) -> int:
    """Jobs that hold this machine: placed on it and waiting for their process, or measuring on it."""
    return s.scalar(select(func.count(Deployment.id)).where(
        Deployment.status.in_(ACTIVE_STATUSES), Deployment.hostname == hostname)) or 0


def blockers(s: Session, job_id: int, hostname: str) -> tuple[int, int]:
    """(runs active, earlier jobs measuring) on this machine: what a job waits for before it measures.

    The local scheduler places a job only on an idle machine, so there it is (0, 0); on a cluster a
    node may still finish a run when the job arrives. Only earlier jobs count, so two never wait for
    each other.
    """
    runs = s.scalar(select(func.count(Run.id)).where(
        Run.status.in_(ACTIVE_STATUSES), Run.placed_device.is_not(None), Run.hostname == hostname)) or 0
    earlier = s.scalar(select(func.count(Deployment.id)).where(
        Deployment.status == RUNNING, Deployment.hostname == hostname, Deployment.id < job_id)) or 0
    return runs, earlier


def deployable_runs(s: Session) -> list[dict[str, Any]]:
    """Finished runs that kept their weights, newest first: id, name, framework, model, dataset, seed, mode."""
    kept = select(RunArtifact.run_id).where(RunArtifact.kind == WEIGHTS_KIND)
    query = (select(Run.id, Run.name, Run.framework, Run.model, Run.dataset, Run.seed, Run.mode)
             .where(Run.status == FINISHED, Run.id.in_(kept)).order_by(Run.id.desc()))
    return [dict(row._mapping) for row in s.execute(query)]


def results_of_runs(s: Session, run_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Every deployment result of these runs (RESULT_COLUMNS plus run_id and the job's settings), no bytes."""
    query = (select(Deployment.run_id, Deployment.settings.label("job_settings"),
                    *(getattr(DeploymentResult, c) for c in RESULT_COLUMNS))
             .join(Deployment, Deployment.id == DeploymentResult.deployment_id)
             .where(Deployment.run_id.in_(list(run_ids))).order_by(DeploymentResult.id))
    return [dict(row._mapping) for row in s.execute(query)]
