"""What the Compare page pays to draw per-step curves: metric_frame, then series.prepare, cold.

`python bench/compare_prep.py [--runs N] [--points N] [--repeats N] [--smoothing W] [--json]`

Builds a temporary SQLite database of --runs runs x --points "step/train_loss" points (written in
batches of 10,000 rows, as a Recorder would), then, --repeats times, opens a new sessionmaker (a
fresh engine: connection, pragmas and statement cache all cold, as in a new dashboard process)
and times its first `queries.metric_frame(s, ids, ["step/train_loss"])` and
`series.prepare(frame, "step", smoothing)` separately; their sum is the page's cost. Medians over
the repeats. The operating system's file cache stays warm: the database was just written.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `db` and `analysis` import from the repo

from db import queries  # noqa: E402  (needs ROOT on the path)
from db.session import make_sessionmaker  # noqa: E402
from engine.monitor import host_busy_cpu_s  # noqa: E402
from engine.spec import RunSpec  # noqa: E402
from analysis import series  # noqa: E402

METRIC = "step/train_loss"
RUNS, POINTS, REPEATS, SMOOTHING = 20, 100_000, 5, 0.6
BATCH_ROWS = 10_000  # rows per insert: a Recorder flushes a few thousand at a time
GOAL_S = 0.5
NOISY_LOAD_CORES = 0.25  # average load from other processes above which the timings are called noisy



def build_database(url: str, runs: int, points: int) -> list[int]:
    """Runs differing only by seed, each with `points` per-step losses; returns their ids."""
    sessions = make_sessionmaker(url)
    rng = np.random.default_rng(0)
    steps = np.arange(1, points + 1)
    ids = []
    for seed in range(runs):
        spec = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=points // 1000 or 1, seed=seed)
        with sessions.begin() as s:
            run_id = queries.create_run(s, spec.to_dict()).id
        ids.append(run_id)
        loss = np.exp(-steps / (points / 4)) + rng.normal(0.0, 0.05, points)
        wall = 1_700_000_000.0 + 3600.0 * seed + 0.01 * steps
        for start in range(0, points, BATCH_ROWS):
            rows = [dict(run_id=run_id, name=METRIC, step=int(step), epoch=int((step - 1) // 1000 + 1),
                         wall_time=float(w), value=float(v))
                    for step, w, v in zip(steps[start:start + BATCH_ROWS], wall[start:start + BATCH_ROWS],
                                          loss[start:start + BATCH_ROWS])]
            with sessions.begin() as s:
                queries.add_metric_points(s, rows)
        print(f"  run {seed + 1}/{runs} written", file=sys.stderr, flush=True)
    sessions.kw["bind"].dispose()
    return ids


def measure_once(url: str, ids: list[int], smoothing: float) -> dict[str, Any]:
    """One cold repeat: a new sessionmaker, its first metric_frame, then prepare."""
    sessions = make_sessionmaker(url)  # schema check and engine set-up: once per dashboard process, not timed
    try:
        started = time.perf_counter()
        with sessions() as s:
            frame = queries.metric_frame(s, ids, [METRIC])
        queried = time.perf_counter()
        prepared = series.prepare(frame, "step", smoothing=smoothing)
        done = time.perf_counter()
    finally:
        sessions.kw["bind"].dispose()
    return {"query_s": queried - started, "prepare_s": done - queried, "total_s": done - started,
            "rows": len(frame), "points_sent_max": int(prepared.groupby(["run_id", "name"]).size().max())}


def format_report(runs: int, points: int, smoothing: float, repeats: list[dict[str, Any]],
                  build_s: float, other_load: float) -> str:
    """Setup, the median of each part with its range, and the goal."""
    lines = [f"Compare page prep: {runs} runs x {points:,} {METRIC!r} points in SQLite "
             f"({repeats[0]['rows']:,} rows, written in {build_s:.0f} s); metric_frame cold (new sessionmaker, "
             f"first query) then series.prepare(x='step', smoothing={smoothing:g}); {len(repeats)} repeats, medians",
             f"  other processes busy {other_load:.2f} cores during the repeats"]
    if other_load > NOISY_LOAD_CORES:
        lines.append(f"  WARNING: other processes kept more than {NOISY_LOAD_CORES} cores busy: the timings are "
                     "noisy; rerun on a quiet machine")
    header = f"{'part':<24} {'median s':>9} {'range s':>15}"
    lines += ["", header, "-" * len(header)]
    for key, label in (("query_s", "queries.metric_frame"), ("prepare_s", "series.prepare"), ("total_s", "together")):
        values = [r[key] for r in repeats]
        lines.append(f"{label:<24} {statistics.median(values):>9.3f} {min(values):>7.3f}-{max(values):<7.3f}")
    total = statistics.median(r["total_s"] for r in repeats)
    sent = max(r["points_sent_max"] for r in repeats)
    ok = total <= GOAL_S and sent <= series.MAX_POINTS
    lines += ["", f"points per series sent: {sent:,} (max)",
              f"goal <= {GOAL_S} s, <= {series.MAX_POINTS:,} points per series: {total:.3f} s, "
              f"goal/measured {GOAL_S / total:.2f}  {'PASS' if ok else 'FAIL'}"]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=RUNS, help="runs in the database (default %(default)s)")
    parser.add_argument("--points", type=int, default=POINTS, help="per-step points per run (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="cold measurements (default %(default)s)")
    parser.add_argument("--smoothing", type=float, default=SMOOTHING, help="EMA weight (default %(default)s)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.points < 1 or args.repeats < 1:
        parser.error(f"--runs={args.runs} --points={args.points} --repeats={args.repeats}: need at least 1 of each")
    if not 0 <= args.smoothing < 1:
        parser.error(f"--smoothing={args.smoothing:g}: expected 0 <= W < 1")

    with tempfile.TemporaryDirectory(prefix="arena-compare-prep-") as tmp:
        url = f"sqlite:///{tmp}/b.db"
        print(f"writing {args.runs} x {args.points:,} points ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        ids = build_database(url, args.runs, args.points)
        build_s = time.perf_counter() - started
        busy, measuring = host_busy_cpu_s(), time.perf_counter()
        cpu = time.process_time()
        repeats = [measure_once(url, ids, args.smoothing) for _ in range(args.repeats)]
        wall_s = time.perf_counter() - measuring
        other_load = max(0.0, (host_busy_cpu_s() - busy - (time.process_time() - cpu)) / wall_s)
    print(format_report(args.runs, args.points, args.smoothing, repeats, build_s, other_load))
    if args.json:
        print(json.dumps({"goal_s": GOAL_S, "max_points": series.MAX_POINTS, "runs": args.runs,
                          "points": args.points, "smoothing": args.smoothing, "build_s": build_s,
                          "other_load_cores": other_load, "repeats": repeats}))
    return 0  # a benchmark reports; it does not assert


if __name__ == "__main__":
    sys.exit(main())
