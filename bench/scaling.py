"""2-worker scaling efficiency per framework, measured side by side in one run (issue 18).

`.venv/bin/python bench/scaling.py [--model mlp] [--repeats 5] [--epochs N] [--json]`

For each framework (PyTorch DistributedDataParallel over gloo, TensorFlow MultiWorkerMirroredStrategy)
it trains pairs of runs of one spec that differ only in `workers` (1 and 2): the same global batch,
seed, data and epochs, deterministic kernels off, and nothing after training (inference_iters=0,
calibration_steps=0, profile_steps=0, no layer statistics, no kept weights). Every run is the
production path: queued in a temporary SQLite database and trained by its own runner process
(engine.processes.start_runner, CPU placement), rank 0 starting rank 1 itself. Within a pair the
order flips every pair (1 2, 2 1, ...), and the frameworks take turns within each round, so slow
drift of the machine cancels.

Throughput is the run's own `steady_samples_per_s` (global samples/s, the first epoch's steps
excluded as warm-up). Efficiency per pair = thr2 / (2 x thr1); the report gives its median and 95 %
interval over the pairs (bench/loop_report.median_interval), the same ratio from median step times
(p50 1 worker / (2 x p50 2 workers): blind to the rare stalled step other processes' load causes),
the per-rank median step times, straggling, threads per worker, the gradients' all-reduce timed
alone (the run's `communication`), and PyTorch's efficiency / TensorFlow's per round.

A 2-core machine bounds what this can say. The 1-worker run's framework uses both cores for its
intra-op threads; each of the 2 workers gets 1 (ARENA_THREADS = cores // workers). So 2 workers x 1
thread against 1 worker x 2 threads on the same 2 cores measures what process-level data parallelism
costs -- the gradient all-reduce, the loss all-reduce, each worker's own Python and framework
overhead per step -- and not the speed-up a real multi-GPU or multi-node run would show, where each
worker brings its own device. Like the other benchmarks it says how busy other processes kept the
machine (above NOISY_LOAD_CORES the figures are noise-dominated).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from bench.loop_report import NOISY_LOAD_CORES, median_interval  # noqa: E402
from engine.catalog import MODELS, framework_label  # noqa: E402
from engine.monitor import host_busy_cpu_s  # noqa: E402
from engine.spec import RunSpec  # noqa: E402

FRAMEWORKS = ("torch", "tensorflow")
WORKERS = (1, 2)
# Data per model: digits where the model trains on it (1,437 training images), else a synthetic set
# sized so an epoch is a second or two. Epochs: the same work in both runs of a pair, so the faster run
# (1 worker, on these 2 cores) holds a few seconds of steady steps and the slower ~5-30 s; a round of
# mlp (4 runs) takes ~1.5 min on 2 quiet cores, most of it the runners' start-up.
MODEL_DATA: dict[str, tuple[str, Optional[int]]] = {
    "mlp": ("digits", None), "cnn": ("digits", None), "mnist_cnn": ("synthetic_images", 2048),
    "resnet": ("synthetic_images", 1024), "lstm": ("synthetic_text", 4096), "transformer": ("synthetic_text", 4096),
}
EPOCHS = {"mlp": 80, "cnn": 10, "mnist_cnn": 4, "resnet": 4, "lstm": 6, "transformer": 6}
RUN_TIMEOUT_S = 900
CPU_PLACEMENT = {"CUDA_VISIBLE_DEVICES": "", "ARENA_DEVICE": "cpu"}  # what the local executor gives a CPU run


@dataclass(frozen=True)
class Settings:
    model: str
    epochs: int
    batch_size: int
    max_steps_per_epoch: Optional[int]
    warmup_steps: int


def build_spec(framework: str, settings: Settings, workers: int) -> RunSpec:
    """The one spec both runs of a pair share, but for `workers`."""
    dataset, size = MODEL_DATA[settings.model]
    return RunSpec(framework=framework, model=settings.model, dataset=dataset, synthetic_size=size,
                   epochs=settings.epochs, batch_size=settings.batch_size,
                   max_steps_per_epoch=settings.max_steps_per_epoch, seed=0, device="cpu", deterministic=False,
                   warmup_steps=settings.warmup_steps, inference_iters=0, calibration_steps=0, profile_steps=0,
                   layer_stats=False, keep_weights=False, target_accuracy=None, workers=workers)


def steps_per_epoch(spec: RunSpec) -> int:
    """Full global batches an epoch (the last partial one is dropped), capped by max_steps_per_epoch."""
    steps = spec.train_size() // spec.batch_size
    return min(steps, spec.max_steps_per_epoch) if spec.max_steps_per_epoch else steps


def run_once(sessions, url: str, spec: RunSpec) -> dict[str, Any]:
    """Queue one run, train it in its runner process (rank 0 starts the other ranks), return its figures."""
    from db import queries
    from db.models import FINISHED
    from engine.processes import start_runner, stop_process_trees

    with sessions.begin() as s:
        run_id = queries.create_run(s, spec.to_dict()).id
    busy, children, own = host_busy_cpu_s(), _cpu_s(resource.RUSAGE_CHILDREN), _cpu_s(resource.RUSAGE_SELF)
    started = time.perf_counter()
    process = start_runner(sessions, run_id, url, dict(CPU_PLACEMENT))
    try:
        process.wait(RUN_TIMEOUT_S)
    except BaseException:  # a timeout or Ctrl-C: no runner of ours keeps training after the benchmark
        stop_process_trees([process.pid])
        raise
    wall_s = time.perf_counter() - started
    # Rank 0 waits for its ranks, so their CPU time is in the runner's, which is in this process's children's.
    ours = _cpu_s(resource.RUSAGE_CHILDREN) - children + _cpu_s(resource.RUSAGE_SELF) - own
    other_busy_s = max(0.0, host_busy_cpu_s() - busy - ours)
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        status, summary, environment, error = run.status, run.summary or {}, run.environment or {}, run.error
        log_tail = Path(run.log_path).read_text()[-3000:] if run.log_path and Path(run.log_path).exists() else ""
    if status != FINISHED or not summary.get("steady_samples_per_s"):
        raise RuntimeError(f"run {run_id} ({spec.framework}, {spec.workers} workers) ended {status}: {error}\n{log_tail}")
    threads = summary.get("threads_per_worker") or environment.get("intra_op_threads")
    return {
        "run_id": run_id, "workers": spec.workers, "samples_per_s": summary["steady_samples_per_s"],
        "step_time_p50_ms": summary.get("step_time_p50_ms"), "steady_steps": summary.get("steady_steps"),
        "steady_s": (summary.get("steady_steps") or 0) * (summary.get("step_time_mean_ms") or 0.0) / 1e3,
        "threads_per_worker": threads, "strategy": summary.get("strategy"), "ranks": summary.get("ranks"),
        "straggling": summary.get("straggling"), "communication": summary.get("communication"),
        "framework_version": environment.get("framework_version"), "wall_s": wall_s,
        "other_busy_cpu_s": other_busy_s,
    }


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def measure(settings: Settings, frameworks: tuple[str, ...], repeats: int, url: str) -> dict[str, list[dict]]:
    """`repeats` rounds; in each, every framework trains one (1-worker, 2-worker) pair, orders alternating."""
    from db.session import make_sessionmaker

    sessions = make_sessionmaker(url)
    pairs: dict[str, list[dict]] = {framework: [] for framework in frameworks}
    for index in range(repeats):
        order = WORKERS if index % 2 == 0 else WORKERS[::-1]
        turn = frameworks if index % 2 == 0 else frameworks[::-1]
        for framework in turn:
            runs = {}
            for workers in order:
                runs[workers] = run_once(sessions, url, build_spec(framework, settings, workers))
                print(f"  pair {index + 1}/{repeats} {framework:<10} {workers} worker{'s' * (workers > 1)}: "
                      f"{runs[workers]['samples_per_s']:>9,.0f} samples/s, {runs[workers]['steady_s']:.1f} s steady, "
                      f"run {runs[workers]['wall_s']:.0f} s", file=sys.stderr, flush=True)
            pairs[framework].append({"one": runs[1], "two": runs[2],
                                     "efficiency": runs[2]["samples_per_s"] / (2 * runs[1]["samples_per_s"]),
                                     # The same ratio from median step times: blind to the rare stalled step that
                                     # another process's load gives a run (PyTorch's threads on 2 busy cores).
                                     "efficiency_p50": runs[1]["step_time_p50_ms"] / (2 * runs[2]["step_time_p50_ms"])})
    return pairs


def summarise(framework: str, pairs: list[dict]) -> dict[str, Any]:
    """Medians over the pairs; efficiency's median with its 95 % interval."""
    efficiencies = [pair["efficiency"] for pair in pairs]
    low, high = median_interval(efficiencies)
    by_p50 = [pair["efficiency_p50"] for pair in pairs]
    p50_low, p50_high = median_interval(by_p50)
    two = [pair["two"] for pair in pairs]
    rank_p50: dict[int, list[float]] = {}
    rss: dict[int, list[float]] = {}
    for run in two:
        for entry in run["ranks"] or []:
            if entry.get("step_time_p50_ms") is not None:
                rank_p50.setdefault(entry["rank"], []).append(entry["step_time_p50_ms"])
            if entry.get("peak_rss_bytes"):
                rss.setdefault(entry["rank"], []).append(entry["peak_rss_bytes"])
    runs = [run for pair in pairs for run in (pair["one"], pair["two"])]
    wall_s = sum(run["wall_s"] for run in runs)
    straggling = [run["straggling"] for run in two if run["straggling"] is not None]
    # What the 2-worker run's rank 0 measured after training: the gradients' bytes all-reduced alone.
    exchange = [run["communication"] for run in two if run.get("communication")]
    all_reduce = [entry["all_reduce_ms"] for entry in exchange if entry.get("all_reduce_ms") is not None]
    shares = [entry["share"] for entry in exchange if entry.get("share") is not None]
    return {
        "framework": framework, "framework_version": pairs[0]["one"]["framework_version"],
        "strategy": two[0]["strategy"], "pairs": len(pairs),
        "samples_per_s_1": statistics.median(pair["one"]["samples_per_s"] for pair in pairs),
        "samples_per_s_2": statistics.median(run["samples_per_s"] for run in two),
        "efficiency": statistics.median(efficiencies), "efficiency_low": low, "efficiency_high": high,
        "pair_efficiencies": efficiencies,
        "efficiency_p50": statistics.median(by_p50), "efficiency_p50_low": p50_low, "efficiency_p50_high": p50_high,
        "threads_per_worker_1": pairs[0]["one"]["threads_per_worker"],
        "threads_per_worker_2": two[0]["threads_per_worker"],
        "step_time_p50_ms_1": statistics.median(pair["one"]["step_time_p50_ms"] for pair in pairs),
        "rank_step_time_p50_ms": {rank: statistics.median(values) for rank, values in sorted(rank_p50.items())},
        "rank_peak_rss_mib": {rank: statistics.median(values) / 2**20 for rank, values in sorted(rss.items())},
        "straggling": statistics.median(straggling) if straggling else None,
        "straggling_max": max(straggling) if straggling else None,
        "all_reduce_ms": statistics.median(all_reduce) if all_reduce else None,
        "communication_share": statistics.median(shares) if shares else None,
        "steady_s_1": statistics.median(pair["one"]["steady_s"] for pair in pairs),
        "steady_s_2": statistics.median(run["steady_s"] for run in two),
        "wall_s": wall_s,
        "other_load_cores": sum(run["other_busy_cpu_s"] for run in runs) / wall_s,
        "pairs_detail": pairs,
    }


def efficiency_ratio(rows: dict[str, dict]) -> Optional[dict[str, Any]]:
    """PyTorch's efficiency / TensorFlow's, per round (their pairs ran minutes apart at most), median and interval."""
    if not all(framework in rows for framework in FRAMEWORKS):
        return None
    ratios = [t / f for t, f in zip(rows["torch"]["pair_efficiencies"], rows["tensorflow"]["pair_efficiencies"])]
    low, high = median_interval(ratios)
    return {"ratio": statistics.median(ratios), "low": low, "high": high, "pair_ratios": ratios}


def _threads(value: Any) -> str:
    return "framework default (all cores)" if not value else str(value)


def verdict(row: dict[str, Any]) -> str:
    """What the efficiency interval can tell: 0.5 is where 2 workers on these 2 cores match 1 worker."""
    if row["efficiency"] > 1:
        return ("above 1 is no speed-up: the 1-worker run's threads were slowed (another process on a core makes "
                "intra-op threads wait for each other; compare the p50 step times); rerun on a quiet machine")
    if row["efficiency_high"] < 0.5:
        return "2 workers slower than 1 (interval below 0.5)"
    if row["efficiency_low"] > 0.5:
        return "2 workers faster than 1 (interval above 0.5)"
    return f"cannot tell 2 workers from 1 (interval spans 0.5): rerun with --repeats {max(10, 2 * row['pairs'])}"


def format_report(settings: Settings, rows: dict[str, dict], ratio: Optional[dict], elapsed_s: float) -> str:
    """Header (method, the 2-core bound, load), one row per framework, and PyTorch / TensorFlow."""
    spec = build_spec(FRAMEWORKS[0], settings, 1)
    steps = steps_per_epoch(spec)
    cores = os.cpu_count()
    lines = [
        f"Arena 2-worker scaling, CPU ({cores} cores): {settings.model} on {spec.dataset} ({spec.train_size():,} "
        f"training samples), global batch {settings.batch_size}, {settings.epochs} epochs x {steps} steps, "
        f"first {settings.warmup_steps} steps warm-up, {next(iter(rows.values()))['pairs']} pairs",
        "method: each pair is a 1-worker and a 2-worker run of the same spec (global batch, seed 0, deterministic "
        "off, nothing after training), each a real runner process on a temporary SQLite database; order 1 2, 2 1, "
        "...; frameworks take turns each round. Throughput = the run's steady_samples_per_s (global samples/s, "
        "warm-up excluded); efficiency = thr2 / (2 x thr1) per pair: median and its 95 % order-statistic interval "
        "(min-max up to 8 pairs).",
        f"BOUND BY THIS MACHINE ({cores} cores): 2 workers x 1 thread against 1 worker x {cores} threads on the "
        f"same {cores} cores. This measures what process-level data parallelism costs (gradient all-reduce, loss "
        "all-reduce, each worker's own Python and framework overhead per step), NOT the speed-up a real multi-GPU "
        "or multi-node run would show, where each worker brings its own device. 0.5 = 2 workers as fast as 1.",
    ]
    for row in rows.values():
        lines.append(f"  {row['framework']} ({framework_label(row['framework'])} {row['framework_version']}, "
                     f"{row['strategy']}): runs {row['wall_s']:.0f} s, other processes busy "
                     f"{row['other_load_cores']:.2f} cores")
    if any(row["other_load_cores"] > NOISY_LOAD_CORES for row in rows.values()):
        lines.append(f"  WARNING: other processes kept more than {NOISY_LOAD_CORES} cores busy: the figures are noisy "
                     "(see the intervals); rerun on a quiet machine")
    header = (f"{'framework':<10} {'1 worker samples/s':>18} {'2 workers samples/s':>19} {'efficiency':>10} "
              f"{'95% interval':>12}  {'threads/worker 1w | 2w':<38} {'p50 ms 1w':>9} {'p50 ms rank 0 | 1':>17} "
              f"{'straggling':>10} {'steady s 1w | 2w':>16}")
    lines += ["", header, "-" * len(header)]
    for row in rows.values():
        ranks = " | ".join(f"{value:.2f}" for value in row["rank_step_time_p50_ms"].values())
        threads = f"{_threads(row['threads_per_worker_1'])} | {_threads(row['threads_per_worker_2'])}"
        straggling = f"{row['straggling']:.2f}" if row["straggling"] is not None else "-"
        lines.append(f"{row['framework']:<10} {row['samples_per_s_1']:>18,.0f} {row['samples_per_s_2']:>19,.0f} "
                     f"{row['efficiency']:>10.3f} {row['efficiency_low']:>5.3f}-{row['efficiency_high']:<6.3f}  "
                     f"{threads:<38} {row['step_time_p50_ms_1']:>9.2f} {ranks:>17} {straggling:>10} "
                     f"{row['steady_s_1']:>7.1f} | {row['steady_s_2']:<6.1f}")
    lines.append("")
    for row in rows.values():
        extra = ""
        if row["rank_peak_rss_mib"]:
            extra = ", peak RSS per rank " + " | ".join(f"{v:,.0f}" for v in row["rank_peak_rss_mib"].values()) + " MiB"
        if row["all_reduce_ms"] is not None and row["communication_share"] is not None:
            extra += (f", the gradients all-reduced alone {row['all_reduce_ms']:.2f} ms = "
                      f"{row['communication_share']:.0%} of a 2-worker step")
        lines.append(f"{row['framework']}: efficiency {row['efficiency']:.3f}: {verdict(row)}; from median step "
                     f"times (p50 1w / (2 x p50 2w), blind to stalled steps) {row['efficiency_p50']:.3f} "
                     f"({row['efficiency_p50_low']:.3f}-{row['efficiency_p50_high']:.3f}); straggling max "
                     f"{row['straggling_max'] or 0:.2f}{extra}; pair efficiencies "
                     + ", ".join(f"{e:.3f}" for e in row["pair_efficiencies"]))
    if ratio is not None:
        if ratio["low"] > 1:
            told = "PyTorch's 2 workers keep more of 1 worker's throughput than TensorFlow's"
        elif ratio["high"] < 1:
            told = "TensorFlow's 2 workers keep more of 1 worker's throughput than PyTorch's"
        else:
            told = (f"the interval includes 1: the two cannot be told apart at {len(ratio['pair_ratios'])} pairs; "
                    "rerun with --repeats 20")
        lines.append(f"PyTorch efficiency / TensorFlow efficiency: {ratio['ratio']:.3f} "
                     f"({ratio['low']:.3f}-{ratio['high']:.3f}, per round): {told}")
    lines += ["", f"total {elapsed_s:.0f} s"]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mlp", choices=sorted(MODEL_DATA))
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated: torch,tensorflow")
    parser.add_argument("--repeats", type=int, default=5, help="(1-worker, 2-worker) pairs per framework")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: the model's, ~5-10 s of steady steps)")
    parser.add_argument("--batch-size", type=int, help="global batch, even (default: the catalog's for the model)")
    parser.add_argument("--max-steps-per-epoch", type=int, help="cap on steps an epoch (default: the whole set)")
    parser.add_argument("--json", action="store_true", help="also print one JSON object on the last line")
    args = parser.parse_args(argv)
    frameworks = tuple(name.strip() for name in args.frameworks.split(",") if name.strip())
    for name in frameworks:
        if name not in FRAMEWORKS:
            parser.error(f"--frameworks names {name!r}: expected {', '.join(FRAMEWORKS)}")
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: at least one pair")
    batch = args.batch_size or MODELS[args.model].defaults["batch_size"]
    if batch % 2:
        parser.error(f"--batch-size {batch}: the global batch must split evenly between 2 workers")
    probe = Settings(args.model, args.epochs or EPOCHS[args.model], batch, args.max_steps_per_epoch, 0)
    try:
        epoch_steps = steps_per_epoch(build_spec(FRAMEWORKS[0], probe, 1))
        build_spec(FRAMEWORKS[0], probe, 2)
    except ValueError as exc:
        parser.error(str(exc))
    # Epoch 1 is warm-up (tracing, allocator, the workers' first collectives), as in bench/loop_overhead.py;
    # with a single epoch, its first half.
    warmup = epoch_steps if probe.epochs > 1 else max(1, epoch_steps // 2)
    settings = Settings(probe.model, probe.epochs, batch, probe.max_steps_per_epoch, warmup)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="arena-bench-scaling-") as scratch:
        from engine.datafiles import data_dir

        # Run logs into the scratch directory; file datasets stay where they are.
        os.environ.setdefault("ARENA_DATA_DIR", str(data_dir()))
        os.environ["ARENA_HOME"] = scratch
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        pairs = measure(settings, frameworks, args.repeats, f"sqlite:///{Path(scratch) / 'scaling.db'}")
    rows = {framework: summarise(framework, framework_pairs) for framework, framework_pairs in pairs.items()}
    ratio = efficiency_ratio(rows)
    print(format_report(settings, rows, ratio, time.perf_counter() - started))
    if args.json:
        print(json.dumps({"settings": settings.__dict__, "cores": os.cpu_count(), "frameworks": rows,
                          "torch_over_tensorflow": ratio}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
