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
import traceback
from typing import Optional

from db import queries
from db.session import make_sessionmaker, resolve_db_url
from engine import environment
from engine.data import load
from engine.monitor import Monitor, Nvml
from engine.recorder import Recorder
from engine.spec import RunSpec


class Stopped(BaseException):
    """Raised in the main thread when the runner is asked to stop (SIGTERM)."""


def _on_sigterm(signum, _frame):
    raise Stopped(f"stopped by signal {signal.Signals(signum).name}")


def execute(run_id: int, db_url: Optional[str] = None) -> int:
    """Claim and train one queued run; return the process exit code (0 = finished)."""
    sessions = make_sessionmaker(resolve_db_url(db_url))
    with sessions.begin() as s:
        if not queries.claim_run(s, run_id, os.getpid(), socket.gethostname()):
            run = queries.get_run(s, run_id)
            state = "does not exist" if run is None else f"is {run.status}, not queued"
            print(f"run {run_id} {state}; nothing to do", file=sys.stderr)
            return 2
        spec_dict = dict(queries.get_run(s, run_id).spec)

    recorder = Recorder(sessions, run_id).start()
    monitor: Optional[Monitor] = None
    nvml: Optional[Nvml] = None
    summary: dict = {}
    try:
        spec = RunSpec.from_dict(spec_dict)
        data = load(spec.dataset, spec.seed, spec.noise)
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
