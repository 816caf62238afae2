"""Buffers a run's metrics and samples and writes them to the database in batches.

A background thread flushes at least every FLUSH_INTERVAL_S, with the run's progress and a
heartbeat in the same transaction, so a killed runner loses at most that much and the dashboard
can tell a live runner from a dead one.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Optional

from sqlalchemy.orm import Session, sessionmaker

from db import queries

FLUSH_INTERVAL_S = 0.5


class Recorder:
    """Thread-safe metric/sample buffer for one run (the loop's MetricSink)."""

    def __init__(self, session_factory: sessionmaker[Session], run_id: int,
                 flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        self._sessions = session_factory
        self.run_id = run_id
        self._interval = flush_interval_s
        self._lock = threading.Lock()
        self._metrics: list[dict[str, Any]] = []
        self._samples: list[dict[str, Any]] = []
        self._tensor_stats: list[dict[str, Any]] = []
        self._progress: Optional[tuple[int, int]] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"recorder-{run_id}", daemon=True)
        self.flush_error: Optional[BaseException] = None

    # MetricSink -------------------------------------------------------------------------
    def step_metrics(self, name: str, points: list[tuple[int, int, float, float]]) -> None:
        """Per-step values (step, epoch, value, unix time the step ended), stored as "step/<name>"."""
        rows = [dict(run_id=self.run_id, name=f"{queries.STEP_PREFIX}{name}", step=step, epoch=epoch,
                     wall_time=ended_at, value=value) for step, epoch, value, ended_at in points]
        with self._lock:
            self._metrics.extend(rows)

    def epoch_metrics(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        now = time.time()
        rows = [dict(run_id=self.run_id, name=name, step=step, epoch=epoch, wall_time=now, value=float(value))
                for name, value in metrics.items()]
        with self._lock:
            self._metrics.extend(rows)

    def progress(self, epoch: int, step: int) -> None:
        with self._lock:
            self._progress = (epoch, step)

    # Samples from the monitor thread ----------------------------------------------------
    def samples(self, rows: list[tuple[float, str, str, float, str]]) -> None:
        """Add (time, source, name, value, unit) readings."""
        with self._lock:
            self._samples.extend(
                dict(run_id=self.run_id, time=t, source=src, name=name, value=value, unit=unit)
                for t, src, name, value, unit in rows
            )

    def tensor_stats(self, rows: list[dict[str, Any]]) -> None:
        """Add per-layer statistics: dicts with epoch, step, layer, kind, numel, norm, mean, std, min, max,
        histogram (TensorStat's columns but run_id)."""
        with self._lock:
            self._tensor_stats.extend({**row, "run_id": self.run_id} for row in rows)

    # Lifecycle --------------------------------------------------------------------------
    def start(self) -> "Recorder":
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the flush thread and write whatever is still buffered."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        self.flush()

    def flush(self) -> None:
        """Write buffered rows, progress and a heartbeat in one transaction."""
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
                queries.update_run(s, self.run_id, **values)
        except Exception:
            # Keep the rows for the next attempt rather than dropping recorded points.
            with self._lock:
                self._metrics[:0] = metrics
                self._samples[:0] = samples
                self._tensor_stats[:0] = tensor_stats
            raise

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.flush()
            except Exception as exc:  # retried on the next tick; surfaced at close()
                self.flush_error = exc
