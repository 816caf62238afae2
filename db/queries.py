"""Query functions. Each takes the session first and never commits: the caller owns the transaction."""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence

from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.orm import Session

from db import chunks, run_results
from db.models import (
    ACTIVE_STATUSES,
    CANCELLED,
    ERROR,
    OUT_OF_MEMORY,
    FAILED,
    FINISHED,
    LOST,
    QUEUED,
    RUNNING,
    RUN_NAME_MAX,
    TAG_MAX,
    TAGS_MAX,
    MetricChunk,
    MetricPoint,
    Run,
    RunArtifact,
    SchedulerLease,
    SystemSample,
    TensorStat,
)

if TYPE_CHECKING:  # pandas is imported where a frame is built: the CLI and runners start without it
    import pandas as pd

# Metric names recorded once per optimizer step start with this prefix; the rest are per epoch.
STEP_PREFIX = "step/"
# Per-rank metrics of a multi-worker run's other workers ("rank1/step/step_time_ms"): timing, not learning curves.
RANK_PREFIX = "rank"


def utcnow() -> datetime:
    """Naive UTC now: SQLite stores no zone, so every timestamp in the database is UTC."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def create_run(
    s: Session,
    spec: dict[str, Any],
    group_tag: Optional[str] = None,
    total_steps: Optional[int] = None,
) -> Run:
    """Queue a run for a validated spec dict (total_steps: optimizer steps it will take, for progress)."""
    run = Run(
        created_at=utcnow(),
        status=QUEUED,
        framework=spec["framework"],
        model=spec["model"],
        dataset=spec["dataset"],
        group_tag=group_tag,
        spec=dict(spec),
        total_epochs=spec["epochs"],
        total_steps=total_steps,
        epoch=0,
        step=0,
        mode=spec.get("mode"),
        precision=spec.get("precision"),
        seed=spec.get("seed"),
    )
    s.add(run)
    s.flush()
    return run


def get_run(s: Session, run_id: int) -> Optional[Run]:
    """One run by id, or None."""
    return s.get(Run, run_id)


def list_runs(
    s: Session, statuses: Optional[Sequence[str]] = None, limit: Optional[int] = None
) -> list[Run]:
    """Runs, newest first."""
    query = select(Run).order_by(Run.id.desc())
    if statuses:
        query = query.where(Run.status.in_(statuses))
    if limit:
        query = query.limit(limit)
    return list(s.scalars(query))


# Names, notes and tags -----------------------------------------------------------------------
def clean_name(name: Optional[str]) -> Optional[str]:
    """A run name as stored: stripped, None when empty; ValueError naming it when too long."""
    name = _without_nul("run name", (name or "").strip())
    if len(name) > RUN_NAME_MAX:
        raise ValueError(f"run name {name[:40]!r}... is {len(name)} characters long; the limit is {RUN_NAME_MAX}")
    return name or None


def clean_tags(tags: Iterable[str]) -> list[str]:
    """Tags as stored: stripped, de-duplicated in order; ValueError naming a tag that is too long or odd."""
    cleaned: list[str] = []
    for tag in tags:
        if not isinstance(tag, str):
            raise ValueError(f"tag {tag!r} is not text")
        tag = _without_nul("tag", tag.strip())
        if not tag or tag in cleaned:
            continue
        if len(tag) > TAG_MAX:
            raise ValueError(f"tag {tag[:40]!r}... is {len(tag)} characters long; the limit is {TAG_MAX}")
        if "," in tag:
            raise ValueError(f"tag {tag!r} contains a comma; commas separate tags")
        cleaned.append(tag)
    if len(cleaned) > TAGS_MAX:
        raise ValueError(f"{len(cleaned)} tags given; a run holds at most {TAGS_MAX}")
    return cleaned


def _without_nul(what: str, text: str) -> str:
    # PostgreSQL text cannot hold a NUL character: refused on every backend, so a run's names read the same on each.
    if "\x00" in text:
        raise ValueError(f"{what} {text[:40]!r} contains a NUL character (\\x00), which a database cannot store")
    return text


def _storable(text: str) -> str:
    """Text Arena copies from elsewhere (a traceback, a log), with any NUL shown as U+FFFD: PostgreSQL refuses NUL."""
    return text.replace("\x00", "\ufffd")


def annotate_run(s: Session, run_id: int, *, name: Any = ..., notes: Any = ..., tags: Any = ...) -> None:
    """Rename a run, set its notes or its tags (only the ones given); values are validated first."""
    values: dict[str, Any] = {}
    if name is not ...:
        values["name"] = clean_name(name)
    if notes is not ...:
        values["notes"] = _without_nul("notes", (notes or "").strip()) or None
    if tags is not ...:
        values["tags"] = clean_tags(tags or []) or None
    if values:
        s.execute(update(Run).where(Run.id == run_id).values(**values))


def set_launch_info(s: Session, run_id: int, pid: int, hostname: str, log_path: str,
                    placed_device: Optional[str] = None) -> None:
    """Record the runner process that was started for a queued run (and its device, when a cluster chose it)."""
    values: dict[str, Any] = dict(pid=pid, hostname=hostname, log_path=log_path)
    if placed_device is not None:
        values["placed_device"] = placed_device
    s.execute(update(Run).where(Run.id == run_id).values(**values))


def claim_run(s: Session, run_id: int, pid: int, hostname: str) -> bool:
    """Move a queued run to running for this process; False if it was not queued (someone else has it)."""
    now = utcnow()
    result = s.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == QUEUED)
        .values(status=RUNNING, started_at=now, heartbeat_at=now, pid=pid, hostname=hostname)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def unplaced_queue(s: Session) -> list[Run]:
    """Queued runs no scheduler has placed yet, oldest first (the queue's order)."""
    return list(s.scalars(select(Run).where(Run.status == QUEUED, Run.placed_device.is_(None)).order_by(Run.id)))


def placed_active_runs(s: Session, hostname: str) -> list[Run]:
    """Runs placed on a device of this host that still hold it (placed and waiting to start, or running)."""
    return list(s.scalars(select(Run).where(
        Run.status.in_(ACTIVE_STATUSES), Run.placed_device.is_not(None), Run.hostname == hostname)))


def place_run(s: Session, run_id: int, device: str, hostname: Optional[str]) -> bool:
    """Give a queued, unplaced run a device on a host (None: a cluster picks it); False if another moved it first."""
    result = s.execute(
        update(Run)
        .where(Run.id == run_id, Run.status == QUEUED, Run.placed_device.is_(None))
        .values(placed_device=device, hostname=hostname, heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def unplace_unstarted(s: Session, older_than: timedelta, keep: Sequence[str] = ()) -> list[int]:
    """Put placed runs that never got a process back in the queue (their scheduler died in between).

    Runs placed on a device in keep are left alone: they wait in a cluster's queue, which says when they are lost.
    """
    cutoff = utcnow() - older_than
    stale = s.scalars(select(Run.id).where(
        Run.status == QUEUED, Run.placed_device.is_not(None), Run.placed_device.not_in(keep), Run.pid.is_(None),
        Run.heartbeat_at < cutoff)).all()
    return [run_id for run_id in stale if unplace(s, run_id)]


def placed_unstarted(s: Session, devices: Sequence[str]) -> list[int]:
    """Queued runs placed on one of these devices with no process yet (in a cluster's queue), oldest first."""
    return list(s.scalars(select(Run.id).where(
        Run.status == QUEUED, Run.placed_device.in_(devices), Run.pid.is_(None)).order_by(Run.id)))


def unplace(s: Session, run_id: int) -> bool:
    """Put a placed run that has no process back in the queue; False if it has started or ended meanwhile."""
    result = s.execute(update(Run).where(Run.id == run_id, Run.status == QUEUED, Run.pid.is_(None))
                       .values(placed_device=None, hostname=None).execution_options(synchronize_session=False))
    return result.rowcount == 1


def cancel_waiting(s: Session, run_id: int) -> bool:
    """Fail a queued run that has no process yet (stopped before it started); False otherwise."""
    result = s.execute(
        update(Run).where(Run.id == run_id, Run.status == QUEUED, Run.pid.is_(None))
        .values(status=FAILED, finished_at=utcnow(), reason=ERROR, error="stopped before it started")
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def acquire_lease(s: Session, name: str, holder: str, hostname: str, pid: int, ttl: timedelta) -> bool:
    """Take or renew the named lease for holder; False while another holder's lease is unexpired.

    One conditional UPDATE (or the INSERT of the first row) decides, so two schedulers racing for
    an expired lease cannot both win.
    """
    now = utcnow()
    result = s.execute(
        update(SchedulerLease)
        .where(SchedulerLease.name == name, (SchedulerLease.holder == holder) | (SchedulerLease.expires_at < now))
        .values(holder=holder, hostname=hostname, pid=pid, expires_at=now + ttl,
                acquired_at=case((SchedulerLease.holder == holder, SchedulerLease.acquired_at), else_=now))
        .execution_options(synchronize_session=False)
    )
    if result.rowcount == 1:
        return True
    # No row yet: the first INSERT wins, a racing one does nothing (both dialects Arena supports).
    dialect = s.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as dialect_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as dialect_insert
    inserted = s.execute(
        dialect_insert(SchedulerLease)
        .values(name=name, holder=holder, hostname=hostname, pid=pid, acquired_at=now, expires_at=now + ttl)
        .on_conflict_do_nothing(index_elements=["name"])
        # SQLAlchemy keeps an INSERT's rowcount only when asked: psycopg 3 reports -1 once the cursor is closed.
        .execution_options(preserve_rowcount=True)
    )
    return inserted.rowcount == 1


def release_lease(s: Session, name: str, holder: str) -> None:
    """Give the lease up at once (only if holder still has it)."""
    s.execute(delete(SchedulerLease).where(SchedulerLease.name == name, SchedulerLease.holder == holder))


def lease(s: Session, name: str) -> Optional[SchedulerLease]:
    """The lease row, expired or not (None when no scheduler ever ran)."""
    return s.get(SchedulerLease, name)


def update_run(s: Session, run_id: int, **values: Any) -> None:
    """Set columns of a run (progress, environment, summary, heartbeat ...)."""
    s.execute(update(Run).where(Run.id == run_id).values(**values))


def finish_run(s: Session, run_id: int, summary: dict[str, Any]) -> bool:
    """Mark an active run finished with its summary; False if it had already ended (a reader found it lost)."""
    result = s.execute(
        update(Run)
        .where(Run.id == run_id, Run.status.in_(ACTIVE_STATUSES))
        # error=None: a cancel asked for too late to stop the run leaves no "cancelled by" text behind.
        .values(status=FINISHED, finished_at=utcnow(), summary=summary, heartbeat_at=utcnow(), error=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def fail_run(s: Session, run_id: int, error: str, summary: Optional[dict[str, Any]] = None,
             reason: str = ERROR, status: str = FAILED) -> bool:
    """Mark an active run failed (or diverged), keeping everything it recorded; the error says why.

    False if the run had already ended: an ended run is never rewritten.
    """
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": _storable(error), "reason": reason}
    if summary is not None:
        values["summary"] = summary
    result = s.execute(update(Run).where(Run.id == run_id, Run.status.in_(ACTIVE_STATUSES)).values(**values)
                       .execution_options(synchronize_session=False))
    return result.rowcount == 1


def delete_run(s: Session, run_id: int) -> None:
    """Delete a run, its points and its files (no active run: stop it first); its results go with its row."""
    s.execute(delete(MetricPoint).where(MetricPoint.run_id == run_id))
    s.execute(delete(MetricChunk).where(MetricChunk.run_id == run_id))
    s.execute(delete(SystemSample).where(SystemSample.run_id == run_id))
    s.execute(delete(TensorStat).where(TensorStat.run_id == run_id))
    s.execute(delete(RunArtifact).where(RunArtifact.run_id == run_id))
    s.execute(delete(Run).where(Run.id == run_id))


def add_metric_points(s: Session, rows: Iterable[dict[str, Any]]) -> None:
    """Store metric points: dicts with run_id, name, step, epoch, wall_time, value.

    Per-step series ("step/..." names) go into packed chunks, one per series per call; per-epoch
    values into rows of their own. Either way metric_frame gives every point back. The runs' results
    kept on their rows (db/run_results.py) are refreshed in the same transaction.
    """
    per_step, per_epoch = [], []
    for row in rows:
        (per_step if row["name"].startswith(STEP_PREFIX) else per_epoch).append(row)
    if per_step:
        s.execute(insert(MetricChunk.__table__), chunks.pack(per_step))
    if per_epoch:
        # Core executemany on the table: the ORM's per-row bookkeeping held the GIL long enough
        # to stall eager PyTorch steps during every flush (bench/loop_overhead.py).
        s.execute(insert(MetricPoint.__table__), per_epoch)
        run_results.refresh(s, run_results.runs_with_results(per_epoch))


def add_system_samples(s: Session, rows: Iterable[dict[str, Any]]) -> None:
    """Bulk insert samples: dicts with run_id, time, source, name, value, unit."""
    rows = list(rows)
    if rows:
        s.execute(insert(SystemSample.__table__), rows)


def add_tensor_stats(s: Session, rows: Iterable[dict[str, Any]]) -> None:
    """Bulk insert per-layer statistics: dicts with the TensorStat columns (run_id, epoch, layer ...)."""
    rows = list(rows)
    if rows:
        s.execute(insert(TensorStat.__table__), rows)


def add_artifact(s: Session, run_id: int, kind: str, name: str, media_type: str, data: bytes,
                 size_bytes: int) -> int:
    """Store a file a run produced (data as stored, e.g. gzip; size_bytes before compression); return its id."""
    artifact = RunArtifact(run_id=run_id, kind=kind, name=name, media_type=media_type, data=data,
                           size_bytes=size_bytes, created_at=utcnow())
    s.add(artifact)
    s.flush()
    return artifact.id


ARTIFACT_COLUMNS = ["id", "run_id", "kind", "name", "media_type", "size_bytes", "created_at"]


def list_artifacts(s: Session, run_ids: Sequence[int], kind: Optional[str] = None) -> list[dict[str, Any]]:
    """The runs' files without their bytes (ARTIFACT_COLUMNS plus stored_bytes), oldest first."""
    columns = [getattr(RunArtifact, name) for name in ARTIFACT_COLUMNS]
    query = (select(*columns, func.length(RunArtifact.data).label("stored_bytes"))
             .where(RunArtifact.run_id.in_(list(run_ids))).order_by(RunArtifact.id))
    if kind is not None:
        query = query.where(RunArtifact.kind == kind)
    return [dict(row._mapping) for row in s.execute(query)]


def get_artifact(s: Session, artifact_id: int) -> Optional[RunArtifact]:
    """One stored file with its bytes, or None."""
    return s.get(RunArtifact, artifact_id)


TENSOR_STAT_COLUMNS = ["run_id", "epoch", "step", "layer", "kind", "numel", "norm", "mean", "std", "min", "max",
                       "histogram"]


def tensor_stat_frame(s: Session, run_ids: Sequence[int], with_histograms: bool = True) -> pd.DataFrame:
    """Per-layer weight/gradient statistics of some runs, one row per (run, epoch, layer, kind)."""
    import pandas as pd

    columns = [getattr(TensorStat, name) for name in TENSOR_STAT_COLUMNS if with_histograms or name != "histogram"]
    query = (select(*columns).where(TensorStat.run_id.in_(list(run_ids)))
             .order_by(TensorStat.run_id, TensorStat.epoch, TensorStat.id))
    return pd.DataFrame(s.execute(query).all(), columns=[column.key for column in columns])


def metric_frame(s: Session, run_ids: Sequence[int], names: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Metric points of some runs as a DataFrame (run_id, name, step, epoch, wall_time, value).

    Ordered by run, name and step; every stored point, per-step and per-epoch, NaN where a
    non-finite value was recorded.
    """
    import pandas as pd

    run_ids = [int(i) for i in run_ids]
    if not run_ids:
        return pd.DataFrame(columns=chunks.FRAME_COLUMNS)
    query = select(
        MetricPoint.run_id, MetricPoint.name, MetricPoint.step, MetricPoint.epoch,
        MetricPoint.wall_time, MetricPoint.value,
    ).where(MetricPoint.run_id.in_(run_ids))
    chunk_query = select(
        MetricChunk.run_id, MetricChunk.name, MetricChunk.count, MetricChunk.steps, MetricChunk.epochs,
        MetricChunk.wall_times, MetricChunk.values,
    ).where(MetricChunk.run_id.in_(run_ids))
    if names:
        query = query.where(MetricPoint.name.in_(list(names)))
        chunk_query = chunk_query.where(MetricChunk.name.in_(list(names)))
    query = query.order_by(MetricPoint.run_id, _code_point_order(s, MetricPoint.name), MetricPoint.step,
                           MetricPoint.id)
    rows = pd.DataFrame(s.execute(query).all(), columns=chunks.FRAME_COLUMNS)
    rows["value"] = rows["value"].astype(float)  # NULL (how SQLite stores a NaN) becomes NaN
    packed = chunks.unpack(s.execute(chunk_query.order_by(
        MetricChunk.run_id, _code_point_order(s, MetricChunk.name), MetricChunk.first_step, MetricChunk.id)).all())
    if packed.empty:
        return rows
    packed["name"] = packed["name"].astype(object)
    if rows.empty:
        return packed
    # Both are ordered; merged, a stable sort keeps points recorded at one step in their order.
    frame = pd.concat([rows, packed], ignore_index=True)
    return frame.sort_values(["run_id", "name", "step"], kind="stable", ignore_index=True)


def _code_point_order(s: Session, column):
    """The column to ORDER BY in code point order, as SQLite and pandas sort text.

    PostgreSQL sorts text by its database's collation: under en_US "loss_b" comes before "loss/a".
    """
    return column.collate("C") if s.get_bind().dialect.name == "postgresql" else column


def metric_names(s: Session, run_ids: Sequence[int]) -> list[str]:
    """Every metric name some of the runs recorded, sorted; a multi-worker run's per-rank timings left out."""
    ids = list(run_ids)
    names = set(s.scalars(select(MetricPoint.name).where(MetricPoint.run_id.in_(ids)).distinct()))
    names.update(s.scalars(select(MetricChunk.name).where(MetricChunk.run_id.in_(ids)).distinct()))
    return sorted(name for name in names if not name.startswith(RANK_PREFIX))


def sample_frame(
    s: Session, run_ids: Sequence[int], source: Optional[str] = None, name: Optional[str] = None
) -> pd.DataFrame:
    """System samples of some runs as a DataFrame (run_id, time, source, name, value, unit)."""
    import pandas as pd

    query = select(
        SystemSample.run_id, SystemSample.time, SystemSample.source, SystemSample.name,
        SystemSample.value, SystemSample.unit,
    ).where(SystemSample.run_id.in_(list(run_ids)))
    if source:
        query = query.where(SystemSample.source == source)
    if name:
        query = query.where(SystemSample.name == name)
    rows = s.execute(query.order_by(SystemSample.run_id, SystemSample.time)).all()
    return pd.DataFrame(rows, columns=["run_id", "time", "source", "name", "value", "unit"])


def final_metrics(s: Session, run_ids: Sequence[int]) -> dict[int, dict[str, float]]:
    """Last recorded value of every per-epoch metric, per run (not a multi-worker run's per-rank step times)."""
    frame = metric_frame(s, run_ids)
    result: dict[int, dict[str, float]] = {int(r): {} for r in run_ids}
    if frame.empty:
        return result
    epoch_rows = frame[~frame["name"].str.startswith(STEP_PREFIX) & ~frame["name"].str.startswith(RANK_PREFIX)]
    for (run_id, name), group in epoch_rows.groupby(["run_id", "name"], sort=False):
        result[int(run_id)][name] = float(group["value"].iloc[-1])
    return result


# A runner beats every 0.5 s (engine/recorder.py). A run on another host is lost once its last
# heartbeat is this old: room for a flush held up by a busy database, yet a reader polling every
# 2 s reports a killed runner within 15 s. Hosts sharing a database need clocks within seconds (NTP).
LOST_AFTER = timedelta(seconds=8)
# A runner started on another host beats only once it has imported its code and claimed its run.
CLAIM_GRACE = timedelta(seconds=60)
# Why a run was lost (Run.reason): its runner on this host ended without a result; its heartbeat stopped.
PROCESS_GONE, NO_HEARTBEAT = "process_gone", "no_heartbeat"


def reap_orphans(
    s: Session,
    hostname: str,
    is_alive: Callable[[int], bool],
    stale_after: timedelta = LOST_AFTER,
) -> list[int]:
    """End active runs whose runner is gone as lost, so no run stays "running" forever; return their ids.

    A run on this host is gone as soon as its process is (a live runner is never lost, however long
    its first step compiles); a run on another host once its heartbeat is older than stale_after.
    A queued run without a process waits, it is not lost. A runner whose log says memory ran out
    ends failed · out_of_memory, one asked to cancel ends cancelled; every point stays. Each run ends
    through a conditional UPDATE: two readers reaping at once end it once, and a runner that beat
    since this reader looked is left alone.
    """
    now = utcnow()
    reaped = []
    # A list: every row read before the first UPDATE, so no read snapshot is held open under a write.
    for run in list(s.scalars(select(Run).where(Run.status.in_(ACTIVE_STATUSES)).order_by(Run.id))):
        if run.status == QUEUED and run.pid is None:
            continue  # queued, not launched yet: nothing has died
        last = run.heartbeat_at or run.started_at or run.created_at
        if run.hostname == hostname and run.pid is not None:
            if is_alive(run.pid):
                continue
            unchanged = Run.pid == run.pid
            reason = PROCESS_GONE
            why = (f"runner process {run.pid} on {hostname} ended without reporting a result "
                   f"(last heartbeat {last:%Y-%m-%d %H:%M:%S} UTC)")
        else:
            limit = stale_after if run.status == RUNNING else max(stale_after, CLAIM_GRACE)
            if now - last <= limit:
                continue
            unchanged = func.coalesce(Run.heartbeat_at, Run.started_at, Run.created_at) < now - limit
            reason = NO_HEARTBEAT
            runner = f"runner process {run.pid}" if run.pid is not None else "runner"
            why = (f"no heartbeat from {runner} on {run.hostname} since "
                   f"{last:%Y-%m-%d %H:%M:%S} UTC ({(now - last).total_seconds():.0f} s before "
                   f"{now:%H:%M:%S} UTC)")
        tail = _log_tail(run.log_path)
        values: dict[str, Any]
        if run.cancel_requested_at is not None:  # the runner died between the request and recording it
            values = dict(status=CANCELLED, reason=None, error=f"{run.error or 'cancelled'}; {why}")
        elif _says_out_of_memory(tail):
            values = dict(status=FAILED, reason=OUT_OF_MEMORY, error=why + tail)
        else:
            values = dict(status=LOST, reason=reason, error=why + tail)
        result = s.execute(
            update(Run).where(Run.id == run.id, Run.status.in_(ACTIVE_STATUSES), unchanged)
            .values(finished_at=now, **values).execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            reaped.append(run.id)
    return reaped


# Cancelling -----------------------------------------------------------------------------------
def request_cancel(s: Session, run_id: int, text: str) -> Optional[str]:
    """Ask a run to stop; return the status it had (None: no such run).

    A queued run is cancelled at once (a runner started for it finds it no longer queued). A running
    one gets cancel_requested_at, which its runner reads at its next heartbeat, and the text (who
    and when) its end will keep; a second request keeps the first one's.
    """
    before = s.scalar(select(Run.status).where(Run.id == run_id))
    if before not in ACTIVE_STATUSES:
        return before
    now = utcnow()
    s.execute(update(Run).where(Run.id == run_id, Run.status == QUEUED)
              .values(status=CANCELLED, finished_at=now, cancel_requested_at=now, error=text, reason=None)
              .execution_options(synchronize_session=False))
    s.execute(update(Run).where(Run.id == run_id, Run.status == RUNNING, Run.cancel_requested_at.is_(None))
              .values(cancel_requested_at=now, error=text).execution_options(synchronize_session=False))
    return before


def cancel_requested(s: Session, run_id: int) -> Optional[datetime]:
    """When someone asked the run to stop, or None."""
    return s.scalar(select(Run.cancel_requested_at).where(Run.id == run_id))


def end_cancelled(s: Session, run_id: int, summary: Optional[dict[str, Any]] = None) -> bool:
    """End an active run that was asked to stop as cancelled, keeping its points (and summary so far).

    False if it had already ended or nobody asked: its runner and its canceller may both try.
    """
    # The request's "cancelled by ..." text stays; a request written without one still says what happened.
    values: dict[str, Any] = {"status": CANCELLED, "finished_at": utcnow(), "reason": None,
                              "error": func.coalesce(Run.error, "cancelled")}
    if summary is not None:
        values["summary"] = summary
    result = s.execute(
        update(Run).where(Run.id == run_id, Run.status.in_(ACTIVE_STATUSES), Run.cancel_requested_at.is_not(None))
        .values(**values).execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


# What a runner that died of memory exhaustion leaves in its log: TensorFlow's C++ runtime aborts
# with std::bad_alloc rather than raising; the kernel's OOM killer leaves nothing but a SIGKILL.
_OUT_OF_MEMORY_MARKS = ("std::bad_alloc", "OOM when allocating", "out of memory", "Cannot allocate memory")


def _says_out_of_memory(log_tail: str) -> bool:
    return any(mark in log_tail for mark in _OUT_OF_MEMORY_MARKS)


# The line engine.launch writes at the top of a runner's log; a run started again appends another.
LOG_HEADER = "=== Arena run"
LOG_TAIL_BYTES = 256 * 1024  # enough for the last lines; a chatty runner's log can grow to many megabytes


def _log_tail(log_path: Optional[str], lines: int = 20) -> str:
    """The last lines its runner wrote, from its last start on (never another run's lines)."""
    if not log_path:
        return ""
    try:
        with open(log_path, "rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - LOG_TAIL_BYTES))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    own = text.splitlines(keepends=True)
    starts = [index for index, line in enumerate(own) if line.startswith(LOG_HEADER)]
    tail = own[starts[-1] + 1:][-lines:] if starts else own[-lines:]
    # A log cut short by a crash can end in NUL bytes (a file extended, never written).
    return _storable("\n\nLast lines of the runner log:\n" + "".join(tail)) if tail else ""


# Rank r >= 1 of a multi-worker run records its step times as rank{r}/step/step_time_ms (rank 0's are the run's own).
RANK_STEP_TIME_SUFFIX = "/step/step_time_ms"
RANK_STEP_TIME_COLUMNS = ["run_id", "rank", "step", "value"]


def rank_step_times(s: Session, run_ids: Sequence[int]) -> pd.DataFrame:
    """Every rank's step times (ms) of some runs as a DataFrame (run_id, rank, step, value), by run, rank, step.

    Rank 0 is the run's own `step/step_time_ms`; rank r >= 1 recorded `rank{r}/step/step_time_ms`. The
    rank names present are looked up first, so a run of any number of workers is read in one more query.
    """
    import pandas as pd

    ids = [int(i) for i in run_ids]
    if not ids:
        return pd.DataFrame(columns=RANK_STEP_TIME_COLUMNS)
    ranks = {STEP_PREFIX + "step_time_ms": 0}
    for model in (MetricPoint, MetricChunk):
        # LIKE narrows it down in the database (its "_" matches any character); the exact shape is checked here.
        for name in s.scalars(select(model.name).where(
                model.run_id.in_(ids), model.name.like(f"rank%{RANK_STEP_TIME_SUFFIX}")).distinct()):
            rank = name[len("rank"):-len(RANK_STEP_TIME_SUFFIX)]
            if name.startswith("rank") and name.endswith(RANK_STEP_TIME_SUFFIX) and rank.isascii() \
                    and rank.isdigit() and int(rank) > 0:
                ranks[name] = int(rank)
    frame = metric_frame(s, ids, sorted(ranks))
    frame = frame.assign(rank=frame["name"].map(ranks).astype(int))
    return frame[RANK_STEP_TIME_COLUMNS].sort_values(["run_id", "rank", "step"], kind="stable", ignore_index=True)
