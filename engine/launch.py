"""Arena's entry point for pages and the CLI: queue runs, launch them, cancel them, end the lost ones.

Both go through the same path: queue a row -> the scheduler (engine/scheduler.py) hands it to the
executor (engine/executors/), which places it and starts `python -m engine.runner RUN_ID --db URL`
(engine/processes.py) -> the runner claims the row. Nothing here places or starts a run itself.
"""
from __future__ import annotations

import getpass
import os
import socket
import sys
import uuid
from typing import Iterable, Optional, Sequence

from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import ACTIVE_STATUSES, RUNNING
from db.session import resolve_db_url
from db.urls import validate
from engine.batches import steps_per_epoch
from engine.executors import get_executor, queue_holder
from engine.processes import CANCEL_GRACE_S, absolute_db_url, reap, runner_alive, stop_process_trees
from engine.scheduler import wake
from engine.spec import RunSpec

# What pages and the CLI call; reap and CANCEL_GRACE_S are engine.processes', offered here with the rest.
__all__ = ["ALREADY_ENDED", "CANCELLED_NOW", "CANCEL_GRACE_S", "CANCEL_REQUESTED", "NO_SUCH_RUN", "cancel_runs",
           "default_url_for", "launch", "queue_runs", "reap"]

# What cancel_runs did with a run: ended it; asked its runner on another machine, which stops at its
# next heartbeat; nothing, the run had already ended; nothing, there is no such run.
CANCELLED_NOW, CANCEL_REQUESTED, ALREADY_ENDED, NO_SUCH_RUN = "cancelled", "requested", "ended", "unknown"


def queue_runs(sessions: sessionmaker[Session], specs: Sequence[RunSpec], group_tag: Optional[str] = None) -> list[int]:
    """Store specs as queued runs (one group tag when several are queued together)."""
    if group_tag is None and len(specs) > 1:
        group_tag = uuid.uuid4().hex[:8]
    with sessions.begin() as s:
        return [
            queries.create_run(s, spec.to_dict(), group_tag, steps_per_epoch(spec, spec.train_size()) * spec.epochs).id
            for spec in specs
        ]


def launch(sessions: sessionmaker[Session], specs: Sequence[RunSpec], db_url: str) -> list[int]:
    """Queue specs and make sure this process's scheduler places them; return the run ids.

    If another process (a dashboard, a CLI) holds the database's scheduler lease, that one starts them.
    """
    run_ids = queue_runs(sessions, specs)
    wake(sessions, db_url)
    return run_ids


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
    in_queue: dict[str, list[int]] = {}  # executor name -> runs waiting in its own queue, not started: they leave it
    with sessions.begin() as s:
        for run_id in dict.fromkeys(run_ids):
            before = queries.request_cancel(s, run_id, text)
            if before is None or before not in ACTIVE_STATUSES:
                outcomes[run_id] = NO_SUCH_RUN if before is None else ALREADY_ENDED
                continue
            run = queries.get_run(s, run_id)
            holder = queue_holder(run.placed_device) if run.pid is None else None
            if holder is not None:
                in_queue.setdefault(holder, []).append(run_id)
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
    for executor_name, waiting in in_queue.items():
        _withdraw(sessions, executor_name, waiting)
    return outcomes


def _withdraw(sessions: sessionmaker[Session], executor_name: str, run_ids: list[int]) -> None:
    """Free an executor's queue of cancelled runs; if it cannot be reached, each ends unstarted when it comes up."""
    url = sessions.kw["bind"].url.render_as_string(hide_password=False)
    try:
        get_executor(executor_name, sessions, url).withdraw(run_ids)
    except Exception as exc:  # the cancel stands either way: no runner starts for a cancelled run
        print(f"arena: could not withdraw runs {run_ids} from the {executor_name} executor's queue: {exc}",
              file=sys.stderr)


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a container)
        return f"uid {os.getuid()}"


def default_url_for(url: Optional[str]) -> str:
    """Resolved, runner-ready database URL; db.urls.DatabaseURLError naming a URL Arena cannot use."""
    return absolute_db_url(validate(resolve_db_url(url)))
