"""Queue runs and start their runner processes; find runs whose runner died; cancel runs.

Used by the dashboard and the CLI alike, so both go through the same path: queue a row -> the
scheduler (engine/scheduler.py) places it on a device and starts `python -m engine.runner RUN_ID
--db URL` -> the runner claims the row.
"""
from __future__ import annotations

import contextlib
import getpass
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterable, Optional, Sequence

import psutil
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import ACTIVE_STATUSES, RUNNING
from db.session import run_log_path
from engine import PROJECT_ROOT, child_env
from engine.batches import steps_per_epoch
from engine.ray_executor import RAY_PLACEMENTS
from engine.spec import RunSpec

RUNNER_MODULE = "engine.runner"
# A cancelled runner's processes get this long to end on SIGTERM (the runner records the cancel and
# its last points) before SIGKILL; then KILL_WAIT_S for the kernel to take them down.
CANCEL_GRACE_S = 2.0
KILL_WAIT_S = 0.8
# What cancel_runs did with a run: ended it; asked its runner on another machine, which stops at its
# next heartbeat; nothing, the run had already ended; nothing, there is no such run.
CANCELLED_NOW, CANCEL_REQUESTED, ALREADY_ENDED, NO_SUCH_RUN = "cancelled", "requested", "ended", "unknown"


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
    reload or a closed browser; cancel_runs() stops it. extra_env carries the placement
    (CUDA_VISIBLE_DEVICES and friends); its ARENA_PLACED_DEVICE is stored with the process (the local
    scheduler stored the same when it placed the run; on a cluster, the device was chosen just now).
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
            process = subprocess.Popen(
                [sys.executable, "-m", RUNNER_MODULE, str(run_id), "--db", runner_url],
                cwd=PROJECT_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            with sessions.begin() as s:
                queries.fail_run(s, run_id, f"could not start the runner process: {exc}")
            raise
    _children.append(process)
    with sessions.begin() as s:
        queries.set_launch_info(s, run_id, process.pid, socket.gethostname(), str(log_path),
                                placed_device=env.get("ARENA_PLACED_DEVICE"))
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
    _reap_children()
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        cmdline = process.cmdline()
        # Empty while the process is between vfork and the end of its exec (Popen has returned by
        # then, so the scheduler may already look): it is the runner on its way, not a stranger.
        return not cmdline or RUNNER_MODULE in " ".join(cmdline)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _reap_children() -> None:
    """Wait for finished runners this process started, so they do not linger as zombies."""
    for child in list(_children):
        if child.poll() is not None:
            _children.remove(child)


def reap(sessions: sessionmaker[Session]) -> list[int]:
    """End queued/running runs whose runner is gone (lost; see queries.reap_orphans); return their ids."""
    with sessions.begin() as s:
        return queries.reap_orphans(s, socket.gethostname(), runner_alive)


def stop_run(sessions: sessionmaker[Session], run_id: int) -> bool:
    """Stop a run as failed: a waiting one leaves the queue; a started one's runner gets SIGTERM and records the stop.

    cancel_runs is the user's stop (Runs page, Ctrl-C, `engine cancel`: the run ends cancelled); this
    one ends a run the way an outside SIGTERM (a shutdown) does, and tests use it for that path.
    """
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


def cancel_runs(sessions: sessionmaker[Session], run_ids: Iterable[int], via: str = "engine.launch",
                grace_s: float = CANCEL_GRACE_S) -> dict[int, str]:
    """Cancel runs, keeping every point they recorded; what happened to each (CANCELLED_NOW ... NO_SUCH_RUN).

    A queued run is cancelled at once. A running one is flagged (Run.cancel_requested_at), which its
    runner, on any machine, reads at its next heartbeat and stops; a runner on this machine also gets
    SIGTERM, with every process it started, and SIGKILL for whatever is left after grace_s, so here
    the run has ended when this returns. Its runner records the cancel; if it was killed first, this
    does. The run's error says "cancelled by <user>@<host> (<via>) at <time>".
    """
    here = socket.gethostname()
    text = f"cancelled by {_user()}@{here} ({via}) at {queries.utcnow():%Y-%m-%d %H:%M:%S} UTC"
    outcomes: dict[int, str] = {}
    local: dict[int, Optional[int]] = {}  # run id -> its runner's pid on this machine, None when it is gone
    in_ray_queue: list[int] = []  # handed to Ray, not started: their actors leave Ray's queue
    with sessions.begin() as s:
        for run_id in dict.fromkeys(run_ids):
            before = queries.request_cancel(s, run_id, text)
            if before is None or before not in ACTIVE_STATUSES:
                outcomes[run_id] = NO_SUCH_RUN if before is None else ALREADY_ENDED
                continue
            run = queries.get_run(s, run_id)
            if run.placed_device in RAY_PLACEMENTS and run.pid is None:
                in_ray_queue.append(run_id)
            on_this_machine = run.pid is not None and run.hostname == here
            if on_this_machine:
                local[run_id] = run.pid if runner_alive(run.pid) else None
            outcomes[run_id] = CANCEL_REQUESTED if run.status == RUNNING and not on_this_machine else CANCELLED_NOW
    # Committed before any signal: a runner stopped by one finds the request and ends the run cancelled.
    survivors = set(stop_process_trees([pid for pid in local.values() if pid is not None], grace_s))
    with sessions.begin() as s:
        for run_id, pid in local.items():
            if pid in survivors:  # not ours to kill (another user's): it stops at its next heartbeat
                outcomes[run_id] = CANCEL_REQUESTED
            else:
                queries.end_cancelled(s, run_id)  # a no-op when the runner recorded it (or the run was queued)
    if in_ray_queue:
        _withdraw_from_ray(sessions, in_ray_queue)
    return outcomes


def _withdraw_from_ray(sessions: sessionmaker[Session], run_ids: list[int]) -> None:
    """Free Ray's queue of cancelled runs' actors; if Ray cannot be reached, each ends unstarted when Ray runs it."""
    from engine.ray_executor import RayExecutor

    url = sessions.kw["bind"].url.render_as_string(hide_password=False)
    try:
        RayExecutor().withdraw(url, run_ids)
    except Exception as exc:  # the cancel stands either way: the actor starts no runner for a cancelled run
        print(f"arena: could not withdraw runs {run_ids} from Ray's queue: {exc}", file=sys.stderr)


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
    _reap_children()
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


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return f"uid {os.getuid()}"


def default_url_for(url: Optional[str]) -> str:
    """Resolved, runner-ready database URL; db.urls.DatabaseURLError naming a URL Arena cannot use."""
    from db.session import resolve_db_url
    from db.urls import validate

    return absolute_db_url(validate(resolve_db_url(url)))
