"""The Runs table's data: one row per run from one narrow query, never an ORM object per run.

At 10,000 runs an ORM Run per row (its JSON spec, environment and summary decoded) costs about a
second. Here the runs query selects only the columns the table shows and pulls the few JSON
fields it needs out in SQL. Each run's results (last values, median throughput) are columns of
its row, kept up to date as its points are written (db/run_results.py): no metric point is read.
"""
from __future__ import annotations

import json
from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd
from sqlalchemy import Select, String, case, func, select, type_coerce
from sqlalchemy.orm import Session

from db import queries
from db.models import DIVERGED, FAILED, LOST, QUEUED, WEIGHTS_KIND, Run, RunArtifact
from db.run_results import LAST_VALUE_COLUMNS, RECORDED_BITS, RESULT_COLUMNS, THROUGHPUT

ENDED_EARLY = (FAILED, DIVERGED, LOST)  # statuses whose error is worth reading
# Results the table shows: the last value of these per-epoch metrics, and the median of THROUGHPUT.
LAST_METRICS = tuple(LAST_VALUE_COLUMNS)
_DATES = ("created_at", "started_at", "finished_at", "heartbeat_at")

_SPEC_MODE = func.coalesce(Run.mode, Run.spec["mode"].as_string())
RUN_COLUMNS = {
    "id": Run.id, "name": Run.name, "tags": Run.tags, "notes": Run.notes, "status": Run.status,
    "reason": Run.reason, "framework": Run.framework, "model": Run.model, "dataset": Run.dataset,
    "group_tag": Run.group_tag,
    # The mode the run was asked for (every spec names one now) and, only where its spec names
    # none (older runs), the mode it reported: a run reports the mode its spec names, so reading
    # every summary (a kilobyte of JSON each) would add time and no information. Mode, precision
    # and seed are the row's copies of its spec's; the spec is parsed only for a row without them
    # (written by an older Arena): COALESCE evaluates its second argument only when the first is NULL.
    "spec_mode": _SPEC_MODE,
    "summary_mode": case((_SPEC_MODE.is_(None), Run.summary["mode"].as_string())),
    "precision": func.coalesce(Run.precision, Run.spec["precision"].as_string()),
    "seed": func.coalesce(Run.seed, Run.spec["seed"].as_integer()),
    "placed_device": Run.placed_device,
    # Data-parallel workers (spec.workers; runs stored before it had one).
    "workers": func.coalesce(Run.spec["workers"].as_integer(), 1),
    # Read only where the table shows them: each JSON field read parses the whole document again
    # (SQLite), a millisecond per thousand runs. The device a queued run asked for; the device
    # the environment recorded for a run the scheduler never placed; where a diverged run stopped.
    "asked_device": case((Run.status == QUEUED, Run.spec["device"].as_string())),
    "environment_device": case((Run.placed_device.is_(None), Run.environment["device"].as_string())),
    "diverged_at_step": case((Run.status == DIVERGED, Run.summary["diverged_at_step"].as_integer())),
    "epoch": Run.epoch, "total_epochs": Run.total_epochs, "step": Run.step, "total_steps": Run.total_steps,
    "created_at": Run.created_at, "started_at": Run.started_at, "finished_at": Run.finished_at,
    "heartbeat_at": Run.heartbeat_at, "error": Run.error,
    # The kept trained weights' size (engine/kept_weights.py), None without: one lookup in the
    # (run_id, kind) index per row.
    "weights_bytes": (select(func.max(RunArtifact.size_bytes))
                      .where(RunArtifact.run_id == Run.id, RunArtifact.kind == WEIGHTS_KIND)
                      .correlate(Run).scalar_subquery()),
}
# The frame's columns: the run's own (error reduced to its last line), then its results. spec is
# the run's spec dict only where total_steps was not stored (progress derives the steps from it)
# and None elsewhere: decoding 10,000 specs would cost more than the rest of the table.
COLUMNS = [*RUN_COLUMNS, "spec", *LAST_METRICS, THROUGHPUT]


def count_runs(s: Session) -> int:
    """How many runs are stored."""
    return s.scalar(select(func.count(Run.id))) or 0


def existing_run_ids(s: Session, run_ids: Iterable[int]) -> set[int]:
    """Which of these run ids are stored: one indexed lookup, not the whole table."""
    wanted = sorted(set(run_ids))
    return set(s.scalars(select(Run.id).where(Run.id.in_(wanted)))) if wanted else set()


def newest_runs(s: Session) -> pd.DataFrame:
    """id and group_tag of the runs, newest first: what the Compare page's default choice needs."""
    return pd.DataFrame(s.execute(select(Run.id, Run.group_tag).order_by(Run.id.desc())).all(),
                        columns=["id", "group_tag"])


def runs_overview(s: Session, limit: Optional[int] = None, statuses: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """One row per run (COLUMNS), newest first: what the Runs table shows and filters on.

    tags is a list (empty when none), the *_at columns are naive-UTC datetimes. Results: the last
    value of each LAST_METRICS name (NaN where it was recorded as non-finite, None where it was
    never recorded) and the median samples/s over epochs (finite values only; NaN when none).
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of runs, got {limit!r}")
    # Dates and tags come as the stored text: SQLAlchemy's per-value parsing cost more than the
    # query; pandas parses the dates at once and equal tag lists are decoded once.
    raw = {"tags", *_DATES}
    query = select(*(type_coerce(column, String) if name in raw else column for name, column in RUN_COLUMNS.items()),
                   *(getattr(Run, column) for column in RESULT_COLUMNS))
    query = query.order_by(Run.id.desc())
    if statuses:
        query = query.where(Run.status.in_(list(statuses)))
    if limit is not None:
        query = query.limit(limit)
    frame = pd.DataFrame(_plain_rows(s, query), columns=[*RUN_COLUMNS, *RESULT_COLUMNS])
    for name in _DATES:
        frame[name] = pd.to_datetime(frame[name], format="ISO8601")
    frame["total_steps"] = pd.to_numeric(frame["total_steps"])  # float, NaN where not stored
    frame["tags"] = _decoded_lists(frame["tags"])
    frame["error"] = [_last_line(error) if error else None for error in frame["error"]]
    frame["spec"] = _specs_without_total_steps(s, frame)
    recorded = pd.to_numeric(frame["last_values_recorded"]).fillna(0).astype(np.int64)
    for name, column in LAST_VALUE_COLUMNS.items():
        # None where never recorded, unlike NaN: recorded, but not finite (SQLite gives the NaN as NULL).
        last = pd.to_numeric(frame[column]).astype(float).astype(object)
        frame[name] = last.where((recorded & RECORDED_BITS[name]) != 0, None)
    frame[THROUGHPUT] = pd.to_numeric(frame["median_samples_per_s"]).astype(float)
    return frame[COLUMNS]


def _decoded_lists(texts: Iterable[Any]) -> list[list[str]]:
    """JSON lists as stored (or already decoded by the driver); empty for none. Equal texts decode once."""
    decoded: dict[str, list[str]] = {}
    lists = []
    for text in texts:
        if isinstance(text, str):
            if text not in decoded:
                decoded[text] = json.loads(text) or []
            text = decoded[text]
        lists.append(list(text) if text else [])
    return lists


def _last_line(error: str) -> str:
    """The last non-empty line of a traceback: usually the exception and its message."""
    return error.strip().splitlines()[-1].strip()


def _specs_without_total_steps(s: Session, frame: pd.DataFrame) -> list[Optional[dict[str, Any]]]:
    missing = frame.loc[frame["total_steps"].fillna(0) == 0, "id"].tolist()
    specs: dict[int, dict[str, Any]] = {}
    for start in range(0, len(missing), 500):  # stay below any database's bound-parameter limit
        chunk = missing[start:start + 500]
        specs.update(s.execute(select(Run.id, Run.spec).where(Run.id.in_(chunk))).tuples().all())
    return [specs.get(run_id) for run_id in frame["id"]]


def _plain_rows(s: Session, query: Select) -> list[tuple]:
    """A select's rows as the database driver returns them, without a SQLAlchemy Row per row.

    For columns that need no conversion (numbers, text; dates and JSON read as text): the Row
    objects cost a third of the runs query. The select's constants are rendered into the SQL, so
    it must hold no user input.
    """
    connection = s.connection()
    sql = str(query.compile(dialect=connection.dialect, compile_kwargs={"literal_binds": True}))
    cursor = connection.connection.cursor()
    try:
        cursor.execute(sql)
        return cursor.fetchall()
    finally:
        cursor.close()


def ended_early(s: Session, limit: int) -> tuple[list[Run], int]:
    """The newest `limit` failed or diverged runs (whole rows: their traceback is shown) and how many there are."""
    ended = Run.status.in_(ENDED_EARLY)
    count = s.scalar(select(func.count(Run.id)).where(ended)) or 0
    return list(s.scalars(select(Run).where(ended).order_by(Run.id.desc()).limit(limit))), count


def known_tags(s: Session) -> list[str]:
    """Every tag some run has, sorted: what the tag pickers offer."""
    texts = s.scalars(select(type_coerce(Run.tags, String))).all()
    return sorted({tag for tags in _decoded_lists(texts) for tag in tags})


def add_tags(s: Session, run_ids: Sequence[int], tags: Sequence[str]) -> None:
    """Add tags to several runs (once: a tag a run has stays one); ValueError naming a bad tag, nothing stored."""
    cleaned = queries.clean_tags(tags)
    if not cleaned:
        raise ValueError(f"no tag given in {list(tags)!r}; type one to add")
    current = dict(s.execute(select(Run.id, Run.tags).where(Run.id.in_(list(run_ids)))).tuples().all())
    for run_id in run_ids:
        if run_id in current:
            queries.annotate_run(s, run_id, tags=[*(current[run_id] or []), *cleaned])
