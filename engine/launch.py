"""Queue runs and start their runner processes; find runs whose runner died.

Used by the dashboard and the CLI alike, so both go through the same path: queue a row -> the
scheduler (engine/scheduler.py) places it on a device and starts `python -m engine.runner RUN_ID
--db URL` -> the runner claims the row.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Optional, Sequence

import psutil
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import ACTIVE_STATUSES
from db.session import arena_home
from engine import PROJECT_ROOT, child_env
from engine.loop import steps_per_epoch
from engine.spec import RunSpec

RUNNER_MODULE = "engine.runner"


def absolute_db_url(url: str) -> str:
    """A URL the runner can open from any working directory (relative SQLite paths made absolute)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        return parsed.set(database=str(Path(parsed.database).expanduser().resolve())).render_as_string(
            hide_password=False
        )
    return url


def queue_runs(sessions: sessionmaker[Session], specs: Sequence[RunSpec], group_tag: Optional[str] = None) -> list[int]:
    """Store specs as queued runs (one group tag when several are queued together)."""
    if group_tag is None and len(specs) > 1:
        group_tag = uuid.uuid4().hex[:8]
    with sessions.begin() as s:
        return [
            queries.create_run(s, spec.to_dict(), group_tag, steps_per_epoch(spec, spec.train_size()) * spec.epochs).id
            for spec in specs
        ]


def start_runner(sessions: sessionmaker[Session], run_id: int, db_url: str,
                 extra_env: Optional[dict[str, str]] = None) -> subprocess.Popen:
    """Start the runner process for a placed run; its output goes to a per-run log file.

    The process gets its own session so it outlives whoever started it (dashboard, CLI), a page
    reload or a closed browser; stop_run() stops it. extra_env carries the placement
    (CUDA_VISIBLE_DEVICES and friends).
    """
    log_dir = arena_home() / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"run-{run_id}.log"
    env = {**child_env(), **(extra_env or {})}
    with open(log_path, "ab") as log:
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", RUNNER_MODULE, str(run_id), "--db", absolute_db_url(db_url)],
                cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            with sessions.begin() as s:
                queries.fail_run(s, run_id, f"could not start the runner process: {exc}")
            raise
    _children.append(process)
    with sessions.begin() as s:
        queries.set_launch_info(s, run_id, process.pid, socket.gethostname(), str(log_path))
    return process


_children: list[subprocess.Popen] = []


def launch(sessions: sessionmaker[Session], specs: Sequence[RunSpec], db_url: str) -> list[int]:
    """Queue specs and make sure this process's scheduler places them; return the run ids.

    If another process (a dashboard, a CLI) holds the database's scheduler lease, that one starts them.
    """
    from engine.scheduler import ensure_running

    run_ids = queue_runs(sessions, specs)
    scheduler = ensure_running(sessions, db_url)
    if scheduler is not None:
        scheduler.wake()
    return run_ids


def runner_alive(pid: int) -> bool:
    """True while a runner process with this pid exists (a zombie or a reused pid is not one)."""
    # Reap finished children of this process so they do not linger as zombies.
    for child in list(_children):
        if child.poll() is not None:
            _children.remove(child)
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return RUNNER_MODULE in " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def reap(sessions: sessionmaker[Session]) -> list[int]:
    """Fail queued/running runs whose runner is gone; return their ids."""
    with sessions.begin() as s:
        return queries.reap_orphans(s, socket.gethostname(), runner_alive)


def stop_run(sessions: sessionmaker[Session], run_id: int) -> bool:
    """Stop a run: a waiting one leaves the queue; a started one's runner gets SIGTERM and records the stop."""
    with sessions.begin() as s:
        if queries.cancel_waiting(s, run_id):
            return True
        run = queries.get_run(s, run_id)
        if run is None or run.status not in ACTIVE_STATUSES:
            return False
        pid, host = run.pid, run.hostname
    if pid is None or host != socket.gethostname() or not runner_alive(pid):
        reap(sessions)
        return False
    os.kill(pid, signal.SIGTERM)
    return True


def default_url_for(url: Optional[str]) -> str:
    """Resolved, runner-ready database URL."""
    from db.session import resolve_db_url

    return absolute_db_url(resolve_db_url(url))
