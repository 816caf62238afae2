"""Metric ingestion into SQLite: points per second through the path a real run writes by.

`python bench/ingest.py [--points N] [--metrics K] [--flush-every N] [--json]`

A run's Recorder buffers per-step values and flushes them every 0.5 s in one transaction with its
progress and heartbeat (engine/recorder.py); a fast run gives each flush a few thousand points per
metric. This benchmark drives that Recorder from the calling thread (no training, so the figure is
the storage's, not a model's): K per-step metrics, a flush every --flush-every steps, a per-epoch
metric every 1,000 steps, on a temporary SQLite file with Arena's pragmas (WAL, synchronous=NORMAL).
It prints points/s against the goal of 100,000 points/s, and, for reference, the same points
written one row per point (how Arena stored per-step values before chunks).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import insert

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from db import queries  # noqa: E402
from db.models import MetricPoint  # noqa: E402
from db.session import make_sessionmaker  # noqa: E402
from engine.recorder import Recorder  # noqa: E402
from engine.spec import RunSpec  # noqa: E402

GOAL_POINTS_PER_S = 100_000
SPEC = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=1).to_dict()


def through_recorder(url: str, points: int, metrics: int, flush_every: int) -> tuple[float, int]:
    """Seconds to record `points` steps of `metrics` per-step series through a Recorder, and the stored count."""
    sessions = make_sessionmaker(url)
    with sessions.begin() as s:
        run_id = queries.create_run(s, SPEC).id
    recorder = Recorder(sessions, run_id, flush_interval_s=3600)  # flushed here, by step count
    names = [f"metric_{k}" for k in range(metrics)]
    started = time.perf_counter()
    for first in range(0, points, flush_every):
        steps = range(first, min(first + flush_every, points))
        now = time.time()
        for name in names:
            recorder.step_metrics(name, [(step, 1 + step // 1000, 1.0 / (step + 1), now) for step in steps])
        if steps[-1] // 1000 != first // 1000 or first == 0:
            recorder.epoch_metrics(1 + steps[-1] // 1000, steps[-1], {"train_loss": 0.5, "samples_per_s": 1e4})
        recorder.progress(1 + steps[-1] // 1000, steps[-1])
        recorder.flush()
    elapsed = time.perf_counter() - started
    with sessions.begin() as s:
        stored = len(queries.metric_frame(s, [run_id]))
    return elapsed, stored


def as_rows(url: str, points: int, metrics: int, flush_every: int) -> float:
    """Seconds to write the same per-step points one row each (the storage chunks replaced)."""
    sessions = make_sessionmaker(url)
    with sessions.begin() as s:
        run_id = queries.create_run(s, SPEC).id
    table = MetricPoint.__table__
    started = time.perf_counter()
    for first in range(0, points, flush_every):
        now = time.time()
        rows = [dict(run_id=run_id, name=f"step/metric_{k}", step=step, epoch=1 + step // 1000, wall_time=now,
                     value=1.0 / (step + 1))
                for k in range(metrics) for step in range(first, min(first + flush_every, points))]
        with sessions.begin() as s:
            s.execute(insert(table), rows)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=200_000, help="steps recorded (default 200,000)")
    parser.add_argument("--metrics", type=int, default=2, help="per-step metrics per step (a run records 2)")
    parser.add_argument("--flush-every", type=int, default=2_000, help="steps per flush (default 2,000)")
    parser.add_argument("--json", action="store_true", help="also print one JSON object on the last line")
    args = parser.parse_args()
    total = args.points * args.metrics
    with tempfile.TemporaryDirectory() as tmp:
        chunked_s, stored = through_recorder(f"sqlite:///{tmp}/chunks.db", args.points, args.metrics,
                                             args.flush_every)
        rows_s = as_rows(f"sqlite:///{tmp}/rows.db", args.points, args.metrics, args.flush_every)
    rate, rows_rate = total / chunked_s, total / rows_s
    epoch_points = stored - total
    print(f"{total:,} per-step points ({args.metrics} metrics x {args.points:,} steps, a flush every "
          f"{args.flush_every:,} steps) + {epoch_points} per-epoch points")
    print(f"  through the Recorder (chunks): {chunked_s:6.2f} s  {rate:12,.0f} points/s   "
          f"goal {GOAL_POINTS_PER_S:,}: {rate / GOAL_POINTS_PER_S:.1f}x the goal  "
          f"{'PASS' if rate >= GOAL_POINTS_PER_S else 'FAIL'}")
    print(f"  one row per point (before):    {rows_s:6.2f} s  {rows_rate:12,.0f} points/s   "
          f"chunks are {rate / rows_rate:.1f}x faster")
    print(f"  read back: {stored:,} points stored ({'all' if stored == total + epoch_points else 'MISSING POINTS'})")
    if args.json:
        print(json.dumps({"points": total, "points_per_s": rate, "rows_points_per_s": rows_rate,
                          "goal": GOAL_POINTS_PER_S, "stored": stored}))


if __name__ == "__main__":
    main()
