"""`python -m engine.runner RUN_ID [--db URL]`: train one stored run in this process.

One run, one process, one framework. The run goes queued -> running -> finished | failed; a
failure (exception, SIGTERM, Ctrl-C) stores the traceback and keeps every point recorded so far.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
import traceback
from typing import Optional

from db import queries
from db.models import QUEUED, RUNNING
from db.session import make_sessionmaker, resolve_db_url
from engine import environment
from engine.data import load_spec
from engine.launch import reap
from engine.monitor import Monitor, Nvml
from engine.recorder import Recorder
from engine.spec import RunSpec


class Stopped(BaseException):
    """Raised in the main thread when the runner is asked to stop (SIGTERM)."""


def _on_sigterm(signum, _frame):
    raise Stopped(f"stopped by signal {signal.Signals(signum).name}")


ENV_MAX_PARALLEL = "ARENA_MAX_PARALLEL_RUNS"
WAIT_POLL_S = 0.5
WAIT_HEARTBEAT_S = 5.0


def max_parallel_runs() -> int:
    """Runs one host trains at once (ARENA_MAX_PARALLEL_RUNS, default 1).

    One at a time by default: runs that share the processor slow each other down, and a speed
    comparison between them would measure the sharing.
    """
    raw = os.environ.get(ENV_MAX_PARALLEL, "1")
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{ENV_MAX_PARALLEL}={raw!r}: expected a whole number >= 1")
    return value


def wait_for_turn(sessions, run_id: int, pid: int, hostname: str, max_parallel: int) -> bool:
    """Block until this host has a free slot and no older run waits; claim the run. False if it left the queue."""
    announced = False
    last_beat = 0.0
    while True:
        with sessions.begin() as s:
            if queries.claim_run(s, run_id, pid, hostname, max_parallel):
                return True
            run = queries.get_run(s, run_id)
            if run is None or run.status != QUEUED:
                return False
            if not announced:
                busy = [r.id for r in queries.list_runs(s, statuses=[RUNNING]) if r.hostname == hostname]
                print(f"run {run_id} waits for its turn: running here {busy}, at most {max_parallel} at once "
                      f"({ENV_MAX_PARALLEL})", file=sys.stderr, flush=True)
                announced = True
        if time.monotonic() - last_beat >= WAIT_HEARTBEAT_S:
            reap(sessions)  # a dead runner must not hold its slot (or its place in line) forever
            with sessions.begin() as s:
                queries.update_run(s, run_id, heartbeat_at=queries.utcnow())
            last_beat = time.monotonic()
        time.sleep(WAIT_POLL_S)


def execute(run_id: int, db_url: Optional[str] = None) -> int:
    """Wait for this host's turn, claim and train one queued run; return the exit code (0 = finished)."""
    sessions = make_sessionmaker(resolve_db_url(db_url))
    pid, hostname = os.getpid(), socket.gethostname()
    try:
        max_parallel = max_parallel_runs()
    except ValueError as exc:
        with sessions.begin() as s:
            queries.fail_run(s, run_id, str(exc))
        print(exc, file=sys.stderr)
        return 2
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        if run is None or run.status != QUEUED:
            state = "does not exist" if run is None else f"is {run.status}, not queued"
            print(f"run {run_id} {state}; nothing to do", file=sys.stderr)
            return 2
        spec_dict = dict(run.spec)
        # Say where it waits, so the reaper can tell a waiting runner from a dead one.
        queries.update_run(s, run_id, pid=pid, hostname=hostname, heartbeat_at=queries.utcnow())
    try:
        if not wait_for_turn(sessions, run_id, pid, hostname, max_parallel):
            print(f"run {run_id} left the queue before it started", file=sys.stderr)
            return 2
    except (Stopped, KeyboardInterrupt) as exc:
        with sessions.begin() as s:
            queries.fail_run(s, run_id, f"{exc or 'interrupted'} before it started")
        return 1

    recorder = Recorder(sessions, run_id).start()
    monitor: Optional[Monitor] = None
    nvml: Optional[Nvml] = None
    summary: dict = {}
    try:
        spec = RunSpec.from_dict(spec_dict)
        data = load_spec(spec)
        summary.update(data.info)
        from engine.backends import get_backend  # imports exactly one framework

        backend = get_backend(spec.framework, spec.device)
        nvml, nvml_status = Nvml.load()
        nvml_info = nvml.describe() if nvml else None
        env = environment.capture(backend.describe(), nvml_info, nvml_status)
        with sessions.begin() as s:
            queries.update_run(s, run_id, environment=env)
        monitor = Monitor(recorder.samples, os.getpid(), spec.framework, backend.memory_stats,
                          nvml, backend.gpu_index).start()

        from engine.loop import train

        summary.update(train(spec, backend, data, recorder))
        _stop(monitor, recorder, summary)
        with sessions.begin() as s:
            queries.finish_run(s, run_id, summary)
        return 0
    except BaseException as exc:  # noqa: BLE001 - every way out must leave the run failed, not running
        error = "".join(traceback.format_exception(exc))
        try:
            _stop(monitor, recorder, summary)
        except Exception as flush_exc:  # still mark the run failed, and say that points may be missing
            error += f"\n(could not write the last buffered points: {flush_exc})"
        with sessions.begin() as s:
            queries.fail_run(s, run_id, error, summary or None)
        print(error, file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    finally:
        if nvml:
            nvml.shutdown()


def _stop(monitor: Optional[Monitor], recorder: Recorder, summary: dict) -> None:
    if monitor is not None:
        monitor.stop()
        if monitor.errors:
            summary["monitor_errors"] = monitor.errors
    recorder.close()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.runner", description=__doc__.splitlines()[0])
    parser.add_argument("run_id", type=int)
    parser.add_argument("--db", help="SQLAlchemy URL (default: ARENA_DB_URL or the embedded SQLite file)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    return execute(args.run_id, args.db)


if __name__ == "__main__":
    sys.exit(main())
