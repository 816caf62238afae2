"""Faults that must lose nothing: a restarted dashboard, concurrent writers, a database that fails.

Shared helpers: what a run stored, counted straight from the database, and the runner's own count.
"""
from __future__ import annotations

import hashlib
import os
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Optional

from sqlalchemy import func, select

from db.models import MetricChunk, MetricPoint, SystemSample, TensorStat

KINDS = ("metric_points", "samples", "tensor_stats")  # as engine.recorder.Recorder.counts() names them


def stored_points(s, run_id: int) -> dict[str, int]:
    """Rows a run has in the database per kind; a metric chunk counts its every value."""
    return {
        "metric_points": (s.scalar(select(func.coalesce(func.sum(MetricChunk.count), 0))
                                   .where(MetricChunk.run_id == run_id))
                          + s.scalar(select(func.count()).where(MetricPoint.run_id == run_id))),
        "samples": s.scalar(select(func.count()).where(SystemSample.run_id == run_id)),
        "tensor_stats": s.scalar(select(func.count()).where(TensorStat.run_id == run_id)),
    }


def recorded(run) -> dict:
    """The runner's own count of the points it produced and stored (summary["recorded"], Recorder.counts())."""
    counts = (run.summary or {}).get("recorded")
    assert counts is not None, (
        f"run {run.id} has no summary['recorded']: engine/runner.py must store Recorder.counts() in the summary "
        f"(_stop: summary['recorded'] = recorder.counts())")
    return counts


def assert_nothing_lost(s, run) -> dict[str, int]:
    """Every point the runner produced is in the database, exactly once; return the stored counts."""
    counts, stored = recorded(run), stored_points(s, run.id)
    for kind in KINDS:
        assert counts[kind]["produced"] == counts[kind]["stored"] == stored[kind], (run.id, kind, counts, stored)
    assert counts["failed_flushes"] == 0, (run.id, counts)
    return stored


def row_digests(path: Path, run_id: Optional[int] = None) -> dict[str, str]:
    """sha256 of each table's rows in id order, or of one run's rows: equal digests, unchanged rows."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
        tables = [name for (name,) in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        digests = {}
        for table in tables:
            columns = [row[1] for row in connection.execute(f"PRAGMA table_info({table})")]
            key = "id" if table == "runs" else "run_id"
            if run_id is not None and key not in columns:
                continue  # the scheduler's lease, the schema version: not the run's
            where = f"WHERE {key} = {int(run_id)}" if run_id is not None else ""
            digest = hashlib.sha256()
            for row in connection.execute(f"SELECT * FROM {table} {where} ORDER BY {columns[0]}"):
                digest.update(repr(row).encode())
            digests[table] = digest.hexdigest()
    return digests


def integrity(path: Path) -> str:
    """SQLite's own check of the whole file: "ok", or what is damaged."""
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]


def held_deleted(pid: int, path: Path) -> list[str]:
    """Files of a database (its -wal, its -shm) that process pid holds open although they were deleted.

    What a process whose SQLite locks were dropped keeps after another process, believing itself
    alone, checkpointed and removed them: its writes then go where no other process looks.
    """
    held = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(path)) and target.endswith("(deleted)"):
            held.append(target)
    return held


def corrupt_schema(path: Path, corrupt: bool) -> None:
    """Add (or remove) an unparseable table to a database's schema, through SQLite: every reader fails, then none.

    A damaged file made on purpose and undone: readers in other connections see the schema change
    (its version is bumped) and fail with "malformed database schema" (SQLITE_CORRUPT) until it is removed.
    """
    with closing(sqlite3.connect(path)) as connection:
        connection.execute("PRAGMA writable_schema=ON")
        if corrupt:
            connection.execute("INSERT INTO sqlite_master VALUES ('table', 'broken', 'broken', 0, 'not sql')")
        else:
            connection.execute("DELETE FROM sqlite_master WHERE name = 'broken'")
        version = connection.execute("PRAGMA schema_version").fetchone()[0]
        connection.execute(f"PRAGMA schema_version = {version + 1}")
        connection.commit()


def copy_database(source: Path, target: Path) -> None:
    """A consistent copy of a database, through SQLite's backup API: never a file copy (a WAL may hold rows)."""
    with closing(sqlite3.connect(source)) as reading, closing(sqlite3.connect(target)) as writing:
        reading.backup(writing)


def file_bytes_unopened(path: Path) -> bytes:
    """A database file's bytes, read only while this process holds no descriptor of it.

    Closing a descriptor of the file drops every POSIX lock this process's SQLite connections hold
    on it (SQLite's "How To Corrupt", section 2.2): with one open, reading it here is the bug.
    """
    held = [fd for fd in os.listdir("/proc/self/fd") if _names(fd, path)]
    assert not held, f"this process holds {path} open (descriptors {held}): read it through SQLite instead"
    return path.read_bytes()


def _names(fd: str, path: Path) -> bool:
    try:
        return os.readlink(f"/proc/self/fd/{fd}").startswith(str(path))
    except OSError:  # the descriptor listdir itself used, already closed
        return False
