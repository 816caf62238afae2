"""What sampling costs training: steady samples/s of real runs with the Monitor at 10 Hz against off.

`python bench/monitor_overhead.py [--quick] [--runner] [--json] [--frameworks F,..] [--repeats N] [--epochs N]`

Default: one worker process per framework trains run after run with the runner's own
instruments (engine.runner.start_instruments: Monitor at the spec's sample_hz, EpochMeter,
Recorder into a temporary SQLite database), on and off alternating (on/off, off/on, ...) in that
one process. Separate runner processes differ by ±30 % in torch throughput on this VM (thread
placement), far more than the 2 % this measures; within one process they do not.
--runner instead starts `python -m engine.runner RUN_ID --db URL` for every run (the exact
production path, much noisier). Throughput is each run's steady_samples_per_s (warm-up steps
excluded); the ratio is the median of the per-pair ratios on/off.
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `engine` and `db` import from the repo

# None of these imports a framework: each runner process imports its one.
from db import queries  # noqa: E402  (needs ROOT on the path)
from db.session import make_sessionmaker  # noqa: E402
from engine import PROJECT_ROOT, child_env  # noqa: E402
from engine.catalog import FRAMEWORKS  # noqa: E402
from engine.launch import queue_runs  # noqa: E402
from engine.monitor import DEFAULT_SAMPLE_HZ, Monitor, host_busy_cpu_s  # noqa: E402
from engine.spec import RunSpec  # noqa: E402

MODEL, DATASET, SEED = "cnn", "digits", 0
GOAL_RATIO = 0.98
NOISY_LOAD_CORES = 0.25  # average load from other processes above which the ratios are called noisy
# Epochs per run, each framework in its default mode on 2 idle cores: a cnn epoch takes ~0.5-1 s
# (torch eager, TensorFlow graph), so a run holds 3-5 s of steady state after 10 warm-up steps,
# and a runner process takes 12-20 s in all (framework import, data, evaluation, database).
EPOCHS, QUICK_EPOCHS = 5, 3  # --runner: epochs per run
REPEATS, QUICK_REPEATS = 6, 2  # --runner: on/off run pairs per framework
# Default mode: epochs per worker run (epoch 1 is warm-up, then 10 on/off pairs) and workers per framework.
PAIRED_EPOCHS, QUICK_PAIRED_EPOCHS = 17, 7
WORKERS, QUICK_WORKERS = 3, 1
RUN_TIMEOUT_S = 600



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
    busy, children, started = host_busy_cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
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
        "other_load_cores": max(0.0, (host_busy_cpu_s() - busy - runner_cpu_s) / wall_s),
        # Proof that sample_hz was honoured: host samples stored and the rate they were taken at.
        "host_samples": len(times),
        "measured_hz": (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else None,
        "monitor_errors": summary.get("monitor_errors"),
    }


class AlternatingMonitor:
    """Wraps the runner's EpochMeter: a fresh Monitor samples during "on" epochs and none during "off" ones.

    Epoch 1 (warm-up) is left out; then epochs go in pairs, on/off then off/on (ABBA), so the
    two halves of each pair share the process, the model state and the machine's mood.
    """

    def __init__(self, meter, make_monitor) -> None:
        self._meter, self._make_monitor = meter, make_monitor
        self._monitor = None
        self.epoch = 0
        self.on_epochs: list[int] = []

    @staticmethod
    def is_on(epoch: int) -> bool:
        pair, second = divmod(epoch - 2, 2)
        return (second == 0) == (pair % 2 == 0)

    def start(self) -> None:
        self.epoch += 1
        if self._monitor is not None:
            self._monitor.stop()
            self._monitor = None
        if self.epoch >= 2 and self.is_on(self.epoch):
            self._monitor = self._make_monitor().start()
            self.on_epochs.append(self.epoch)
        self._meter.start()

    def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.stop()

    def train_done(self, samples: int) -> dict[str, float]:
        return self._meter.train_done(samples)

    def end(self) -> dict[str, float]:
        return self._meter.end()

    def run_peaks(self) -> dict[str, float]:
        return self._meter.run_peaks()


# Default mode: synthetic 8x8x1 images (digits' shape), 8,000 a epoch: ~3 s epochs, long enough that
# one pair's two epochs are not dominated by the VM's sub-second jitter (digits' 0.5 s epochs were).
PAIRED_DATASET = dict(dataset="synthetic_images", synthetic_shape="8x8x1", synthetic_size=8000)


def epoch_pairs_in_process(framework: str, epochs: int, sample_hz: float) -> list[dict[str, Any]]:
    """One run whose epochs alternate monitor on/off; per-pair epoch samples/s (no separate processes)."""
    import socket

    from engine.backends import get_backend
    from engine.data import load_spec
    from engine.loop import train
    from engine.recorder import Recorder
    from engine.runner import start_instruments

    with tempfile.TemporaryDirectory(prefix="arena-monitor-bench-") as tmp:
        sessions = make_sessionmaker(f"sqlite:///{Path(tmp) / 'bench.db'}")
        spec = RunSpec.with_model_defaults(framework, MODEL, PAIRED_DATASET["dataset"], epochs=epochs, seed=SEED,
                                           device="cpu", inference_iters=0, sample_hz=0,
                                           synthetic_shape=PAIRED_DATASET["synthetic_shape"],
                                           synthetic_size=PAIRED_DATASET["synthetic_size"])
        [run_id] = queue_runs(sessions, [spec])
        with sessions.begin() as s:
            queries.claim_run(s, run_id, os.getpid(), socket.gethostname())
        data = load_spec(spec)
        backend = get_backend(framework, "cpu")
        recorder = Recorder(sessions, run_id).start()
        instruments = start_instruments(spec, backend, recorder, os.getpid())  # sample_hz 0: meter only
        probes = [(framework, backend.memory_stats)]
        meter = AlternatingMonitor(instruments.meter, lambda: Monitor(recorder.samples, os.getpid(), probes,
                                                                      interval_s=1.0 / sample_hz))
        try:
            train(spec, backend, data, recorder, meter)
        finally:
            meter.stop()
            instruments.stop({})
            recorder.close()
        with sessions.begin() as s:
            frame = queries.metric_frame(s, [run_id], ["samples_per_s"])
            samples = queries.sample_frame(s, [run_id], "host", "rss")
        sessions.kw["bind"].dispose()
    per_epoch = dict(zip(frame["epoch"], frame["value"]))
    pairs = []
    for first in range(2, epochs, 2):
        on_epoch, off_epoch = (first, first + 1) if meter.is_on(first) else (first + 1, first)
        if on_epoch in per_epoch and off_epoch in per_epoch:
            pairs.append({"on": {"samples_per_s": per_epoch[on_epoch]}, "off": {"samples_per_s": per_epoch[off_epoch]},
                          "ratio": per_epoch[on_epoch] / per_epoch[off_epoch]})
    pairs[0]["host_samples_on"] = len(samples)  # proof the on epochs sampled
    return pairs


def pairs_for(framework: str, epochs: int, repeats: int, sample_hz: float) -> list[dict[str, Any]]:
    """Alternating on/off pairs of one framework's runs, each run in its own runner process."""
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
    return pairs


def measure(framework: str, epochs: int, repeats: int, sample_hz: float, runner: bool) -> dict[str, Any]:
    """One framework's on/off pairs; the per-pair ratios and their median."""
    busy, started = host_busy_cpu_s(), time.perf_counter()
    if runner:
        pairs = pairs_for(framework, epochs, repeats, sample_hz)
    else:
        pairs = []
        for i in range(repeats):  # one worker process each: one run whose epochs alternate
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            result = subprocess.run(
                [sys.executable, __file__, "--worker", framework, "--epochs", str(epochs), "--sample-hz",
                 str(sample_hz)], cwd=PROJECT_ROOT, env=child_env(), stdout=subprocess.PIPE, text=True,
                timeout=RUN_TIMEOUT_S)
            if result.returncode != 0:
                raise RuntimeError(f"{framework} worker failed with exit {result.returncode}")
            worker_pairs = json.loads(result.stdout.strip().splitlines()[-1])
            ratios = ", ".join(f"{p['ratio']:.3f}" for p in worker_pairs)
            print(f"  {framework} worker {i + 1}/{repeats}: epoch ratios on/off {ratios}", file=sys.stderr, flush=True)
            pairs += worker_pairs
    elapsed_s = time.perf_counter() - started
    ratios = [pair["ratio"] for pair in pairs]
    on_runs, off_runs = [p["on"] for p in pairs], [p["off"] for p in pairs]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    row = {
        "framework": framework, "epochs": epochs, "pairs": pairs,
        "ratio": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "on_samples_per_s": statistics.median(r["samples_per_s"] for r in on_runs),
        "off_samples_per_s": statistics.median(r["samples_per_s"] for r in off_runs),
        "passed": statistics.median(ratios) >= GOAL_RATIO,
    }
    if runner:
        row.update(
            measured_hz=statistics.median(r["measured_hz"] or 0.0 for r in on_runs),
            off_host_samples=sum(r["host_samples"] for r in off_runs),
            other_load_cores=statistics.fmean(r["other_load_cores"] for p in pairs for r in (p["on"], p["off"])),
            monitor_errors=sorted({e for r in on_runs for e in (r["monitor_errors"] or [])}),
        )
    else:
        own_cpu_s = children.ru_utime + children.ru_stime  # every worker so far (one framework after another)
        others_s = host_busy_cpu_s() - busy - own_cpu_s + _workers_cpu_before[0]
        row.update(other_load_cores=max(0.0, others_s / elapsed_s),
                   host_samples_on=sum(p.get("host_samples_on", 0) for p in pairs))
        _workers_cpu_before[0] = own_cpu_s
    return row


_workers_cpu_before = [0.0]  # children's CPU seconds already counted by an earlier framework


def format_report(rows: list[dict[str, Any]], cost_us: float, sample_hz: float, elapsed_s: float,
                  runner: bool) -> str:
    repeats = len(rows[0]["pairs"])
    where = ("every run in its own runner process (engine.runner)" if runner else
             "worker processes training with the runner's instruments")
    lines = [
        f"Arena monitor overhead, CPU ({os.cpu_count()} cores): {MODEL}, each framework's default mode, "
        f"{where}, on a temporary SQLite database",
        (f"{repeats} on/off run pairs per framework, alternating (on/off, off/on, ...); on = sample_hz "
         f"{sample_hz:g}, off = sample_hz 0 (no Monitor thread); samples/s: the run's steady_samples_per_s"
         if runner else
         f"{PAIRED_DATASET['synthetic_size']:,} synthetic {PAIRED_DATASET['synthetic_shape']} images an epoch; "
         f"epochs alternate on/off in pairs (ABBA) after the warm-up epoch; on = a Monitor at {sample_hz:g} Hz with "
         f"the runner's probes, off = none (the Recorder and exact peaks run in both); samples/s: the epoch's") +
        "; ratio: median of per-pair ratios on/off",
        f"one Monitor.sample() (host RSS + CPU via psutil) costs {cost_us:.0f} us in this process: at "
        f"{sample_hz:g} Hz {cost_us * sample_hz / 1e4:.2f} % of one core",
    ]
    for row in rows:
        if runner:
            lines.append(f"  {row['framework']}: {row['epochs']} epochs a run; on runs sampled at "
                         f"{row['measured_hz']:.1f} Hz (stored host samples), off runs stored "
                         f"{row['off_host_samples']}; other processes busy {row['other_load_cores']:.2f} cores on "
                         f"average" + (f"; monitor errors: {row['monitor_errors']}" if row["monitor_errors"] else ""))
        else:
            lines.append(f"  {row['framework']}: {len(row['pairs'])} epoch pairs from {row['epochs']}-epoch runs; "
                         f"{row['host_samples_on']} host samples stored in the on epochs; other processes busy "
                         f"{row['other_load_cores']:.2f} cores on average")
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
                        help="smoke mode: fewer epochs and workers (or run pairs with --runner)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated subset")
    parser.add_argument("--repeats", type=int, help=f"worker runs per framework (default {WORKERS}); with "
                                                      f"--runner, on/off run pairs (default {REPEATS})")
    parser.add_argument("--epochs", type=int, help=f"epochs per run (default {PAIRED_EPOCHS}; --runner {EPOCHS})")
    parser.add_argument("--sample-hz", type=float, default=DEFAULT_SAMPLE_HZ,
                        help="the 'on' rate (default %(default)g)")
    parser.add_argument("--runner", action="store_true",
                        help="start a runner process per run (the production path; far noisier)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: one framework's pairs, as JSON
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(epoch_pairs_in_process(args.worker, args.epochs, args.sample_hz)))
        return 0
    frameworks = args.frameworks.split(",")
    unknown = [f for f in frameworks if f not in FRAMEWORKS]
    if unknown:
        parser.error(f"framework={unknown[0]!r}: expected one of {', '.join(FRAMEWORKS)}")
    if args.runner:
        repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)
        epochs = args.epochs or (QUICK_EPOCHS if args.quick else EPOCHS)
    else:
        repeats = args.repeats or (QUICK_WORKERS if args.quick else WORKERS)
        epochs = args.epochs or (QUICK_PAIRED_EPOCHS if args.quick else PAIRED_EPOCHS)
    if repeats < 1 or epochs < 1:
        parser.error(f"--repeats={repeats} --epochs={epochs}: need at least 1 of each")
    if not 0 < args.sample_hz <= 100:
        parser.error(f"--sample-hz={args.sample_hz:g}: expected a rate in (0, 100]")

    started = time.perf_counter()
    cost_us = sample_cost_us()
    rows = []
    for framework in frameworks:
        print(f"running {framework} ...", file=sys.stderr, flush=True)
        rows.append(measure(framework, epochs, repeats, args.sample_hz, args.runner))
    print(format_report(rows, cost_us, args.sample_hz, time.perf_counter() - started, args.runner))
    if args.json:
        print(json.dumps({"goal_ratio": GOAL_RATIO, "sample_cost_us": cost_us, "rows": rows}))
    return 0  # a benchmark reports; it does not assert


if __name__ == "__main__":
    sys.exit(main())
