"""Hands queued runs to the executor; exactly one scheduler acts on a database at a time.

The scheduler holds a lease row (db.models.SchedulerLease) that it renews on every tick. A
scheduler that crashes stops renewing and another takes over once the lease has expired, so the
lock never outlives its holder. Whoever holds it (a dashboard, `python -m engine run`, or
`python -m engine scheduler`) ends runs and deployment jobs whose process died (engine.processes)
and asks its executor to take the queue, runs and deployment jobs in the order they were queued:
ARENA_EXECUTOR=local places them on this machine's devices (engine/executors/local.py),
ARENA_EXECUTOR=ray hands them to a Ray cluster (engine/executors/ray.py). Either way each run trains in its own runner process, which goes on when
the scheduler stops; a run of N workers (spec.workers) is placed on N devices at once, and its runner
starts the other N-1 workers itself.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import uuid
from datetime import timedelta
from typing import Optional

from sqlalchemy.orm import Session, sessionmaker

from db import deployments, queries
from engine.executors import DEPLOYMENT, RUN, Executor, Placement, Queued, configured_executor
from engine.executors.local import LocalExecutor
from engine.processes import reap, reap_deployments

ENV_SCHEDULER = "ARENA_SCHEDULER"
LEASE_NAME = "scheduler"
LEASE_TTL_S = 10.0  # a crashed scheduler's queue is picked up this long after its last tick
TICK_INTERVAL_S = 1.0


def scheduling_enabled() -> bool:
    """Whether this process may schedule (ARENA_SCHEDULER=on, the default; off: a dashboard that only watches)."""
    raw = os.environ.get(ENV_SCHEDULER, "on").strip().lower()
    if raw not in ("on", "off"):
        raise ValueError(f"{ENV_SCHEDULER}={raw!r}: expected on or off")
    return raw == "on"


class Scheduler:
    """One scheduler instance: tick() places what it can while it holds the database's lease."""

    def __init__(self, sessions: sessionmaker[Session], db_url: str, executor: Optional[Executor] = None,
                 lease_ttl_s: float = LEASE_TTL_S, interval_s: float = TICK_INTERVAL_S) -> None:
        """executor: where runs go (default: the local executor, this machine's devices)."""
        self._sessions = sessions
        self.executor = executor or LocalExecutor(sessions, db_url)
        self.holder = uuid.uuid4().hex
        self.hostname = socket.gethostname()
        self._ttl = timedelta(seconds=lease_ttl_s)
        self._interval = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._tick_lock = threading.Lock()
        self.holds_lease = False
        self.last_error: Optional[str] = None

    # One pass ------------------------------------------------------------------------------
    def tick(self) -> list[Placement]:
        """Renew or take the lease; if held, reap dead processes and hand the queue to the executor. Never raises."""
        with self._tick_lock:
            try:
                placements = self._tick()
                self.last_error = None
                return placements
            except Exception as exc:  # a bad setting or a database hiccup: say so, try again next tick
                self.last_error = f"{type(exc).__name__}: {exc}"
                print(f"arena scheduler: {self.last_error}", file=sys.stderr, flush=True)
                return []

    def _tick(self) -> list[Placement]:
        with self._sessions.begin() as s:
            self.holds_lease = queries.acquire_lease(s, LEASE_NAME, self.holder, self.hostname, os.getpid(), self._ttl)
        if not self.holds_lease:
            return []
        reap(self._sessions)
        reap_deployments(self._sessions)
        self.executor.requeue_lost()
        with self._sessions.begin() as s:
            queued = _waiting(s)
        return self.executor.submit(queued)

    # Background loop ------------------------------------------------------------------------
    def start(self) -> "Scheduler":
        """Tick in a daemon thread every interval (and at once after wake())."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="arena-scheduler", daemon=True)
            self._thread.start()
        return self

    def wake(self) -> None:
        """Tick now rather than at the next interval (a run was just queued)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._wake.wait(self._interval)
            self._wake.clear()

    def stop(self, release: bool = True) -> None:
        """Stop ticking; release the lease so another scheduler takes over at once. Runs go on."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        if release:
            try:
                with self._sessions.begin() as s:
                    queries.release_lease(s, LEASE_NAME, self.holder)
            except Exception:
                pass  # it expires on its own
        self.holds_lease = False


def _waiting(s: Session) -> list[Queued]:
    """Unplaced queued runs and deployment jobs, in the order they were queued (a run first on a tie), each run with
    the workers it needs at once (1 for runs stored before workers existed)."""
    runs = [(run.created_at, 0, Queued(run.id, run.spec.get("device", "auto"), RUN, int(run.spec.get("workers") or 1)))
            for run in queries.unplaced_queue(s)]
    jobs = [(job.created_at, 1, Queued(job.id, "cpu", DEPLOYMENT)) for job in deployments.unplaced(s)]
    return [item for *_, item in sorted(runs + jobs, key=lambda entry: entry[:2])]


_running: dict[str, Scheduler] = {}
_running_lock = threading.Lock()


def ensure_running(sessions: sessionmaker[Session], db_url: str) -> Optional[Scheduler]:
    """This process's scheduler for a database, started once (the dashboard, launch() and the CLI share it).

    None when ARENA_SCHEDULER=off: queued runs then wait for another process's scheduler.
    """
    if not scheduling_enabled():
        return None
    with _running_lock:
        scheduler = _running.get(db_url)
        if scheduler is None:
            scheduler = _running[db_url] = Scheduler(sessions, db_url, configured_executor(sessions, db_url))
        return scheduler.start()


def wake(sessions: sessionmaker[Session], db_url: str) -> Optional[Scheduler]:
    """Something was just queued: this process's scheduler (started if need be) places it now; None when
    ARENA_SCHEDULER=off (another process's scheduler must)."""
    scheduler = ensure_running(sessions, db_url)
    if scheduler is not None:
        scheduler.wake()
    return scheduler


NOT_SCHEDULING = (f"{ENV_SCHEDULER}=off: another process's scheduler (a dashboard, `python -m engine scheduler`) "
                  "must place these")


def stop_all() -> None:
    """Stop every scheduler this process started and release their leases."""
    with _running_lock:
        schedulers = list(_running.values())
        _running.clear()
    for scheduler in schedulers:
        scheduler.stop()

