"""Buffers a run's metrics and samples and writes them to the database in batches.

A background thread flushes at least every FLUSH_INTERVAL_S, with the run's progress and a
heartbeat in the same transaction, so a killed runner loses at most that much and the dashboard
can tell a live runner from a dead one. A flush that fails keeps its rows for the next one; a
database that takes nothing for GIVE_UP_AFTER_S ends the run with the reason (disk full,
read-only file, unreachable server) instead of letting it train on unrecorded. Each flush also
reads whether someone asked the run to stop, so a runner on any machine hears of it within a beat.
"""
from __future__ import annotations

import sys
import threading
import time
from datetime import datetime
from typing import Any, Callable, Optional

from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.errors import database_error
from engine.distributed import metric_prefix

FLUSH_INTERVAL_S = 0.5
# Long enough to ride out a database server's restart or a writer holding the lock; short enough
# that a run on a full disk does not burn hours of compute on points nobody will see.
GIVE_UP_AFTER_S = 30.0
KINDS = ("metric_points", "samples", "tensor_stats")  # what counts() counts, per kind

class RecorderError(RuntimeError):
    """The run's points could not be written to its database; the message names the database and why."""


class Recorder:
    """Thread-safe metric/sample buffer for one run (the loop's MetricSink)."""

    def __init__(self, session_factory: sessionmaker[Session], run_id: int,
                 flush_interval_s: float = FLUSH_INTERVAL_S, give_up_after_s: float = GIVE_UP_AFTER_S,
                 on_cancel: Optional[Callable[[], None]] = None, rank: int = 0) -> None:
        """rank > 0: a multi-worker run's other worker, which records only its own step times and samples, named
        by rank ("rank1/step/step_time_ms", source "rank1/host"); rank 0 records the run (engine/distributed.py)."""
        self._sessions = session_factory
        self.run_id = run_id
        self._lead = rank == 0
        self._prefix = metric_prefix(rank)
        self._interval = flush_interval_s
        self._give_up_after_s = give_up_after_s
        self._lock = threading.Lock()  # the buffers
        self._flushing = threading.Lock()  # one flush at a time
        self._metrics: list[dict[str, Any]] = []
        self._samples: list[dict[str, Any]] = []
        self._tensor_stats: list[dict[str, Any]] = []
        self._progress: Optional[tuple[int, int]] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"recorder-{run_id}", daemon=True)
        self.flush_error: Optional[RecorderError] = None  # the last failed flush's, until one succeeds
        # Handed to the recorder and committed, per kind: the run's summary carries them (counts()).
        self._produced = dict.fromkeys(KINDS, 0)
        self._stored = dict.fromkeys(KINDS, 0)
        self._failed_flushes = 0
        self._failing_since: Optional[float] = None  # monotonic time of the first failure in a row
        # Called once, from the flush thread, after a flush finds the run asked to stop.
        self._on_cancel = on_cancel
        self.cancel_requested_at: Optional[datetime] = None

    # MetricSink -------------------------------------------------------------------------
    def step_metrics(self, name: str, points: list[tuple[int, int, float, float]]) -> None:
        """Per-step values (step, epoch, value, unix time the step ended), stored as "step/<name>"."""
        if not self._lead and name == "train_loss":
            return  # the global batch's loss is the same on every worker: rank 0 records it
        rows = [dict(run_id=self.run_id, name=f"{self._prefix}{queries.STEP_PREFIX}{name}", step=step, epoch=epoch,
                     wall_time=ended_at, value=value) for step, epoch, value, ended_at in points]
        with self._lock:
            self._metrics.extend(rows)
            self._produced["metric_points"] += len(rows)

    def epoch_metrics(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        if not self._lead:
            return
        now = time.time()
        rows = [dict(run_id=self.run_id, name=name, step=step, epoch=epoch, wall_time=now, value=float(value))
                for name, value in metrics.items()]
        with self._lock:
            self._metrics.extend(rows)
            self._produced["metric_points"] += len(rows)

    def progress(self, epoch: int, step: int) -> None:
        """Note the run's progress; raise RecorderError once the database has taken nothing for too long."""
        with self._lock:
            self._progress = (epoch, step)
            failing_since, error = self._failing_since, self.flush_error
        # Raised here, in the training thread, so the run ends with the reason rather than trains on unrecorded.
        if failing_since is not None and time.monotonic() - failing_since > self._give_up_after_s:
            raise RecorderError(f"{error}; nothing could be written for {time.monotonic() - failing_since:.0f} s, "
                                f"so the run stops") from error

    # Samples from the monitor thread ----------------------------------------------------
    def samples(self, rows: list[tuple[float, str, str, float, str]]) -> None:
        """Add (time, source, name, value, unit) readings."""
        with self._lock:
            before = len(self._samples)
            self._samples.extend(
                dict(run_id=self.run_id, time=t, source=f"{self._prefix}{src}", name=name, value=value, unit=unit)
                for t, src, name, value, unit in rows
            )
            self._produced["samples"] += len(self._samples) - before

    def tensor_stats(self, rows: list[dict[str, Any]]) -> None:
        """Add per-layer statistics (dicts with epoch, step, layer, kind, numel, norm, mean, std, min, max,
        histogram: TensorStat's columns but run_id) and write them now, in the caller's thread.

        The loop calls this between epochs, outside every timer. Left to the flush thread, their JSON
        histograms (~15 ms of encoding for a transformer's layers) would be written during the next
        epoch, on the cores its steps use. A failed write leaves them to the flush thread's retries.
        """
        with self._lock:
            self._tensor_stats.extend({**row, "run_id": self.run_id} for row in rows)
            self._produced["tensor_stats"] += len(rows)
        try:
            self.flush()
        except RecorderError:
            pass  # kept for the next flush; progress() gives up in time if the database stays away

    def counts(self) -> dict[str, Any]:
        """Points produced (handed to the recorder) and stored (committed) per kind, and the flushes that failed."""
        with self._lock:
            counts: dict[str, Any] = {kind: {"produced": self._produced[kind], "stored": self._stored[kind]}
                                      for kind in KINDS}
            counts["failed_flushes"] = self._failed_flushes
        return counts

    # Lifecycle --------------------------------------------------------------------------
    def start(self) -> "Recorder":
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the flush thread and write whatever is still buffered (RecorderError when that fails)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()

    def flush(self) -> None:
        """Write buffered rows, progress and a heartbeat in one transaction: all of them or, failing, none.

        A failed flush keeps its rows for the next one and raises RecorderError naming the database and why.
        Flushes run one at a time (the flush thread's and the training thread's), so progress never goes back.
        """
        with self._flushing:
            failing = self.flush_error is not None
            try:
                self._flush()
            except RecorderError as exc:
                if not failing:  # the first failure in a row goes to the runner's log at once
                    print(f"arena recorder: {exc}; retrying every {self._interval:g} s for up to "
                          f"{self._give_up_after_s:g} s", file=sys.stderr, flush=True)
                raise
            if failing:  # the outage is over and nothing was lost: say so beside the error in the log
                print(f"arena recorder: run {self.run_id}: writing again; every point kept", file=sys.stderr,
                      flush=True)

    def _flush(self) -> None:
        with self._lock:
            metrics, self._metrics = self._metrics, []
            samples, self._samples = self._samples, []
            tensor_stats, self._tensor_stats = self._tensor_stats, []
            progress = self._progress
        values: dict[str, Any] = {"heartbeat_at": queries.utcnow()}
        if progress is not None:
            values.update(epoch=progress[0], step=progress[1])
        try:
            with self._sessions.begin() as s:
                queries.add_metric_points(s, metrics)
                queries.add_system_samples(s, samples)
                queries.add_tensor_stats(s, tensor_stats)
                requested = None
                if self._lead:  # the other workers' progress is rank 0's; rank 0 stops them when cancelled
                    queries.update_run(s, self.run_id, **values)
                    requested = queries.cancel_requested(s, self.run_id)
        except Exception as exc:
            # Keep the rows for the next attempt rather than dropping recorded points.
            with self._lock:
                self._metrics[:0] = metrics
                self._samples[:0] = samples
                self._tensor_stats[:0] = tensor_stats
                self._failed_flushes += 1
                if self._failing_since is None:
                    self._failing_since = time.monotonic()
                pending = len(self._metrics) + len(self._samples) + len(self._tensor_stats)
            error = RecorderError(f"run {self.run_id}: {pending:,} points wait to be written to "
                                  f"{database_error(exc, self._url())}")
            self.flush_error = error
            raise error from exc
        with self._lock:
            for kind, rows in zip(KINDS, (metrics, samples, tensor_stats)):
                self._stored[kind] += len(rows)
            self._failing_since, self.flush_error = None, None
        self.cancel_requested_at = requested

    def _url(self) -> str:
        # Unmasked, so that database_error can mask the password wherever the driver repeats it.
        return self._sessions.kw["bind"].url.render_as_string(hide_password=False)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except RecorderError:
                pass  # logged by flush; retried on the next tick; progress() gives up in time
            except Exception as exc:  # not the database's: say so, and keep the thread flushing
                print(f"arena recorder: run {self.run_id}: flush failed: {type(exc).__name__}: {exc}",
                      file=sys.stderr, flush=True)
            if self.cancel_requested_at is not None and self._on_cancel is not None:
                on_cancel, self._on_cancel = self._on_cancel, None
                on_cancel()
