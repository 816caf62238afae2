"""What sampling costs training: steady samples/s of real runs with the Monitor at 10 Hz against off.

`python bench/monitor_overhead.py [--quick] [--json] [--frameworks F,..] [--repeats N] [--epochs N]`

Every run takes the real path: queued with engine.launch.queue_runs into a temporary SQLite
database and trained by `python -m engine.runner RUN_ID --db URL` in its own process (one
framework per process), which starts the Monitor at the spec's sample_hz (0: no Monitor thread)
with the Recorder writing its samples. Throughput is the run's steady_samples_per_s (warm-up steps
excluded). On and off runs alternate (on/off, off/on, ...) so slow drift cancels in each pair; the
ratio is the median of the per-pair ratios on/off.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `engine` and `db` import from the repo

# None of these imports a framework: each runner process imports its one.
from db import queries  # noqa: E402  (needs ROOT on the path)
from db.session import make_sessionmaker  # noqa: E402
from engine import PROJECT_ROOT, child_env  # noqa: E402
from engine.catalog import FRAMEWORKS  # noqa: E402
from engine.launch import queue_runs  # noqa: E402
from engine.monitor import DEFAULT_SAMPLE_HZ, Monitor  # noqa: E402
from engine.spec import RunSpec  # noqa: E402

MODEL, DATASET, SEED = "cnn", "digits", 0
GOAL_RATIO = 0.98
NOISY_LOAD_CORES = 0.25  # average load from other processes above which the ratios are called noisy
# Epochs per run, each framework in its default mode on 2 idle cores: a cnn epoch takes ~0.5-1 s
# (torch eager, TensorFlow graph), so a run holds 3-5 s of steady state after 10 warm-up steps,
# and a runner process takes 12-20 s in all (framework import, data, evaluation, database).
EPOCHS, QUICK_EPOCHS = 5, 3
REPEATS, QUICK_REPEATS = 4, 2  # on/off pairs per framework
RUN_TIMEOUT_S = 600


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (or stolen by the hypervisor) since boot."""
    t = psutil.cpu_times()
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def sample_cost_us(samples: int = 2000) -> float:
    """Median cost of one Monitor.sample() (the built-in host probe) in this process, in microseconds."""
    monitor = Monitor(lambda batch: None, os.getpid())
    monitor.sample()  # primes psutil's CPU counter
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        monitor.sample()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def run_once(sessions, db_url: str, framework: str, epochs: int, sample_hz: float) -> dict[str, Any]:
    """Queue one run, train it in a runner process, and read back its throughput and samples."""
    spec = RunSpec.with_model_defaults(framework, MODEL, DATASET, epochs=epochs, seed=SEED, device="cpu",
                                       inference_iters=0, sample_hz=sample_hz)
    [run_id] = queue_runs(sessions, [spec])
    busy, children, started = _busy_cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "engine.runner", str(run_id), "--db", db_url],
                            cwd=PROJECT_ROOT, env=child_env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    wall_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    runner_cpu_s = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        rss = queries.sample_frame(s, [run_id], "host", "rss")
        status, summary = run.status, dict(run.summary or {})
    throughput = summary.get("steady_samples_per_s")
    if result.returncode != 0 or status != "finished" or not throughput:
        raise RuntimeError(f"{framework} run {run_id} (sample_hz={sample_hz:g}) ended {status!r}, exit "
                           f"{result.returncode}, steady_samples_per_s={throughput!r}:\n{result.stderr[-4000:]}")
    times = rss["time"].tolist()
    return {
        "run_id": run_id, "sample_hz": sample_hz, "samples_per_s": throughput, "wall_s": wall_s,
        "other_load_cores": max(0.0, (_busy_cpu_s() - busy - runner_cpu_s) / wall_s),
        # Proof that sample_hz was honoured: host samples stored and the rate they were taken at.
        "host_samples": len(times),
        "measured_hz": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None,
        "monitor_errors": summary.get("monitor_errors"),
    }


def measure(framework: str, epochs: int, repeats: int, sample_hz: float) -> dict[str, Any]:
    """Alternating on/off pairs of one framework's runs; the per-pair ratios on/off and their median."""
    pairs = []
    with tempfile.TemporaryDirectory(prefix="arena-monitor-bench-") as tmp:
        db_url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        sessions = make_sessionmaker(db_url)
        for i in range(repeats):
            order = (sample_hz, 0.0) if i % 2 == 0 else (0.0, sample_hz)  # AB BA: drift cancels
            runs = {}
            for hz in order:
                runs["on" if hz else "off"] = run = run_once(sessions, db_url, framework, epochs, hz)
                print(f"  {framework} pair {i + 1}/{repeats} {'on ' if hz else 'off'}: "
                      f"{run['samples_per_s']:,.0f} samples/s, {run['wall_s']:.0f} s, "
                      f"other load {run['other_load_cores']:.2f} cores", file=sys.stderr, flush=True)
            pairs.append({**runs, "ratio": runs["on"]["samples_per_s"] / runs["off"]["samples_per_s"]})
        sessions.kw["bind"].dispose()
    ratios = [pair["ratio"] for pair in pairs]
    on_runs, off_runs = [p["on"] for p in pairs], [p["off"] for p in pairs]
    return {
        "framework": framework, "epochs": epochs, "pairs": pairs,
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "on_samples_per_s": statistics.median(r["samples_per_s"] for r in on_runs),
        "off_samples_per_s": statistics.median(r["samples_per_s"] for r in off_runs),
        "measured_hz": statistics.median(r["measured_hz"] or 0.0 for r in on_runs),
        "off_host_samples": sum(r["host_samples"] for r in off_runs),
        "other_load_cores": statistics.fmean(r["other_load_cores"] for p in pairs for r in (p["on"], p["off"])),
        "monitor_errors": sorted({e for r in on_runs for e in (r["monitor_errors"] or [])}),
        "passed": statistics.median(ratios) >= GOAL_RATIO,
    }


def format_report(rows: list[dict[str, Any]], cost_us: float, sample_hz: float, elapsed_s: float) -> str:
    repeats = len(rows[0]["pairs"])
    lines = [
        f"Arena monitor overhead, CPU ({os.cpu_count()} cores): {MODEL} on {DATASET}, each framework's default mode, "
        f"real runner processes (engine.runner) on a temporary SQLite database",
        f"{repeats} on/off pairs per framework, alternating (on/off, off/on, ...); on = sample_hz {sample_hz:g}, "
        f"off = sample_hz 0 (no Monitor thread); samples/s: the run's steady_samples_per_s; ratio: median of "
        f"per-pair ratios on/off",
        f"one Monitor.sample() (host RSS + CPU via psutil) costs {cost_us:.0f} us in this process: at "
        f"{sample_hz:g} Hz {cost_us * sample_hz / 1e4:.2f} % of one core",
    ]
    for row in rows:
        lines.append(f"  {row['framework']}: {row['epochs']} epochs a run; on runs sampled at "
                     f"{row['measured_hz']:.1f} Hz "
                     f"(stored host samples), off runs stored {row['off_host_samples']}; other processes busy "
                     f"{row['other_load_cores']:.2f} cores on average"
                     + (f"; monitor errors: {row['monitor_errors']}" if row["monitor_errors"] else ""))
    if any(row["other_load_cores"] > NOISY_LOAD_CORES for row in rows):
        lines.append(f"  WARNING: other processes kept more than {NOISY_LOAD_CORES} cores busy: the ratios are noisy "
                     "(see pair range); rerun on a quiet machine")
    header = (f"{'framework':<11} {'on samples/s':>12} {'off samples/s':>13} {'on/off':>7} {'pair range':>11}"
              f"  goal >= {GOAL_RATIO}")
    lines += ["", header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row['framework']:<11} {row['on_samples_per_s']:>12,.0f} {row['off_samples_per_s']:>13,.0f} "
                     f"{row['ratio']:>7.3f} {row['ratio_min']:>5.2f}-{row['ratio_max']:<5.2f}  "
                     f"{'PASS' if row['passed'] else 'FAIL'}"
                     f"{' (noisy)' if row['other_load_cores'] > NOISY_LOAD_CORES else ''}")
    lines += ["", f"total {elapsed_s:.0f} s"]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke mode: {QUICK_EPOCHS} epochs, {QUICK_REPEATS} pairs")
    parser.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated subset")
    parser.add_argument("--repeats", type=int,
                        help=f"on/off pairs per framework (default {REPEATS}, quick {QUICK_REPEATS})")
    parser.add_argument("--epochs", type=int, help=f"epochs per run (default {EPOCHS}, quick {QUICK_EPOCHS})")
    parser.add_argument("--sample-hz", type=float, default=DEFAULT_SAMPLE_HZ,
                        help="the 'on' rate (default %(default)g)")
    args = parser.parse_args(argv)
    frameworks = args.frameworks.split(",")
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown:
        parser.error(f"framework={unknown[0]!r}: expected one of {', '.join(FRAMEWORKS)}")
    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)
    epochs = args.epochs or (QUICK_EPOCHS if args.quick else EPOCHS)
    if repeats < 1 or epochs < 1:
        parser.error(f"--repeats={repeats} --epochs={epochs}: need at least 1 of each")
    if not 0 < args.sample_hz <= 100:
        parser.error(f"--sample-hz={args.sample_hz:g}: expected a rate in (0, 100]")

    started = time.perf_counter()
    cost_us = sample_cost_us()
    rows = []
    for framework in frameworks:
        print(f"running {framework} ...", file=sys.stderr, flush=True)
        rows.append(measure(framework, epochs, repeats, args.sample_hz))
    print(format_report(rows, cost_us, args.sample_hz, time.perf_counter() - started))
    if args.json:
        print(json.dumps({"goal_ratio": GOAL_RATIO, "sample_cost_us": cost_us, "rows": rows}))
    return 0  # a benchmark reports; it does not assert


if __name__ == "__main__":
    sys.exit(main())
