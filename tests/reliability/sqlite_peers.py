"""The SQLite stress test's other processes: writers that come and go, and a reader that polls like a page.

`python -m tests.reliability.sqlite_peers write URL SECONDS close|abrupt`
`python -m tests.reliability.sqlite_peers read URL SECONDS EVERY_S`

A writer claims a run of its own (created running, in one transaction, so no scheduler places it), writes
step losses and samples as fast as a runner flushes them, finishes the run with the Recorder's own
count of what it produced and stored, prints the run id and exits: `close` closes its connections
(the last one out checkpoints and removes the WAL), `abrupt` leaves them to the kernel (no
checkpoint), as a runner that ends by os._exit or a signal after its last flush does.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback

from db import queries, run_table
from db.session import make_sessionmaker
from engine.launch import default_url_for
from engine.recorder import Recorder
from engine.spec import RunSpec

SPEC = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=1)
STEPS_PER_BATCH = 40  # points handed to the recorder at a time, about what a fast model produces per flush


def write(url: str, seconds: float, how: str) -> None:
    """Write one run's points for about `seconds`, finish it, print its id and exit as `how` says."""
    sessions = make_sessionmaker(url)
    with sessions.begin() as s:
        run_id = queries.create_run(s, SPEC.to_dict(), "sqlite-stress").id
        # Claimed as from another machine: the dashboard then judges it by its heartbeat, as it would a remote
        # runner's, instead of looking for an engine.runner process with its pid here (this is no runner).
        queries.claim_run(s, run_id, os.getpid(), f"{socket.gethostname()}-stress-writer")
    recorder = Recorder(sessions, run_id).start()
    step, started = 0, time.monotonic()
    while time.monotonic() - started < seconds:
        now = time.time()
        recorder.step_metrics("train_loss", [(step + i, 1, 1.0 / (step + i + 1), now) for i in range(STEPS_PER_BATCH)])
        recorder.samples([(now, "host", "rss", float(step), "bytes")])
        step += STEPS_PER_BATCH
        recorder.progress(1, step)
        time.sleep(0.02)
    recorder.close()
    with sessions.begin() as s:
        queries.finish_run(s, run_id, {"recorded": recorder.counts()})
    print(run_id, flush=True)
    if how == "abrupt":
        os._exit(0)
    sessions.kw["bind"].dispose()


def read(url: str, seconds: float, every_s: float) -> None:
    """Poll as an open page does, every_s for `seconds`: validate the URL, read the Runs table and a run's series.

    Its connections stay open all along, like a dashboard's. Prints {"reads": N, "errors": [...]}.
    """
    sessions = make_sessionmaker(url)
    reads, errors, started = 0, [], time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            default_url_for(url)  # what every page call does first
            with sessions.begin() as s:
                overview = run_table.runs_overview(s)
                ids = overview["id"].tolist()[:4]
                queries.metric_frame(s, ids, ["step/train_loss"])
                queries.sample_frame(s, ids, "host", "rss")
            reads += 1
        except Exception:  # noqa: BLE001 - every failed read is a finding, counted and shown
            errors.append(traceback.format_exc())
        time.sleep(every_s)
    print(json.dumps({"reads": reads, "errors": errors}), flush=True)


if __name__ == "__main__":
    command, url, seconds, extra = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    if command == "write":
        write(url, seconds, extra)
    else:
        read(url, seconds, float(extra))
