"""Each framework's own input pipeline against the shared arrays, measured in pairs of real runs (issue 19).

`.venv/bin/python bench/pipelines.py [--cases mlp/digits,cnn/synthetic_images] [--pairs 3] [--augment] [--json]`

Per framework it prints native-pipeline throughput / arrays throughput (PyTorch DataLoader against
the shared numpy arrays; TensorFlow tf.data against the same arrays), TensorFlow's Keras model.fit
against its graph-mode loop over the same tf.data pipeline, and the loader-only throughput of each
native pipeline with 0, 1 and 2 loader workers.

Paired runs: one spec trained with pipeline "arrays" and with pipeline "native" (TensorFlow also
with mode "fit", the native pipeline), back to back, each the production path: queued in a
temporary SQLite database and trained by its own runner process (engine.processes.start_runner, CPU
placement; TensorFlow and PyTorch never share a process). The order reverses every round (arrays
native [fit], then [fit] native arrays) and the frameworks take turns, so slow drift of the machine
cancels. Throughput is each run's `steady_samples_per_s`: wall-clock samples/s over every epoch after
the first (warm-up: tracing, the loader's worker processes starting), data waits included. Ratios are
per round; the report gives their median and its order-statistic interval (bench/loop_report.
median_interval) with the interval's coverage at that many pairs. Nothing after training but the
loop's own input figures (calibration_steps batches: the step alone on one fixed batch, the ceiling).

Loader-only: one process per framework builds the backend and its native pipeline
(backend.native_pipeline, as a run does) with loader_workers 0, 1 and 2, and iterates whole epochs
of the run's sample order alone, no step -- batches onto the device, augmentations on when asked --
after one untimed epoch (worker processes started, tf.data's functions traced), for at least
--loader-seconds per measurement, worker counts in alternating order each round. That is cleaner than
the runs' summary["input"]["loader_samples_per_s"] (calibration_steps batches after training, start-up
included), which the report shows beside it for the 2-worker runs.

A 2-core CPU machine bounds what this can say: loader workers (DataLoader processes, tf.data's
map threads) share the 2 cores with the step's own intra-op threads, and there is no GPU, so
pin_memory and prefetching to the device do not apply (a batch "on the device" is a host tensor).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
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

from bench.loop_report import NOISY_LOAD_CORES, median_interval, spawn_worker  # noqa: E402
from bench.scaling import run_once  # noqa: E402
from engine.augment import AUGMENTATIONS, parse_augment  # noqa: E402
from engine.catalog import framework_label  # noqa: E402
from engine.spec import RunSpec  # noqa: E402

FRAMEWORKS = ("torch", "tensorflow")
# What a round trains per framework: (pipeline, mode); None = the framework's default mode (eager, graph).
KINDS: dict[str, dict[str, tuple[str, Optional[str]]]] = {
    "torch": {"arrays": ("arrays", None), "native": ("native", None)},
    "tensorflow": {"arrays": ("arrays", None), "native": ("native", None), "fit": ("native", "fit")},
}
LOADER_WORKERS = (0, 1, 2)
# Runs whose steady throughput falls below this share of the rate their median (wait + step) gives were mostly
# stalled steps: the report says so rather than read a pipeline's cost into them.
STALLED_BELOW = 0.5


@dataclass(frozen=True)
class Case:
    """A model on a dataset, with the epochs that give its arrays run ~2-4 s of steady steps on 2 quiet cores."""
    model: str
    dataset: str
    epochs: int
    synthetic_size: Optional[int] = None
    synthetic_shape: Optional[str] = None

    @property
    def label(self) -> str:
        return f"{self.model}/{self.dataset}" + (f" {self.synthetic_shape}" if self.synthetic_shape else "")


# Two regimes: digits (8x8x1) makes a step of well under a millisecond (mlp) to a few (cnn), so the
# loader's per-sample work is a large part of a step; 32x32x3 images give the cnn a ~35 ms step
# that any loader here outruns, and the mlp a ~1 ms step over 48x the bytes a sample.
CASES: dict[str, Case] = {
    "mlp/digits": Case("mlp", "digits", 30),
    "cnn/digits": Case("cnn", "digits", 12),
    "mlp/synthetic_images": Case("mlp", "synthetic_images", 30, 1024, "32x32x3"),
    "cnn/synthetic_images": Case("cnn", "synthetic_images", 3, 1024, "32x32x3"),
}
DEFAULT_CASES = ("mlp/digits", "cnn/synthetic_images")


@dataclass(frozen=True)
class Settings:
    batch_size: int
    epochs: Optional[int]  # None: each case's own
    max_steps_per_epoch: Optional[int]
    loader_workers: int  # the native runs' (the spec's default, 2)
    calibration_steps: int  # batches of the loop's input figures after training (ceiling, loader)


def build_spec(framework: str, case: Case, settings: Settings, kind: str, augment: tuple = (),
               loader_workers: Optional[int] = None) -> RunSpec:
    """The spec every run of a round shares, but for its pipeline (and TensorFlow's mode)."""
    pipeline, mode = KINDS[framework][kind]
    epochs = settings.epochs or case.epochs
    spec = RunSpec(framework=framework, model=case.model, dataset=case.dataset, synthetic_size=case.synthetic_size,
                   synthetic_shape=case.synthetic_shape, epochs=epochs, batch_size=settings.batch_size,
                   max_steps_per_epoch=settings.max_steps_per_epoch, seed=0, device="cpu", deterministic=False,
                   mode=mode, warmup_steps=0, inference_iters=0, calibration_steps=settings.calibration_steps,
                   profile_steps=0, layer_stats=False, keep_weights=False, target_accuracy=None, pipeline=pipeline,
                   loader_workers=settings.loader_workers if loader_workers is None else loader_workers,
                   augment=augment)
    steps = steps_per_epoch(spec)
    # Epoch 1 is warm-up (tracing, compiling, the loader's processes starting); with one epoch, its first half.
    return dataclasses.replace(spec, warmup_steps=steps if epochs > 1 else max(1, steps // 2))


def steps_per_epoch(spec: RunSpec) -> int:
    """Full batches an epoch (the last partial one is dropped), capped by max_steps_per_epoch."""
    steps = spec.train_size() // spec.batch_size
    return min(steps, spec.max_steps_per_epoch) if spec.max_steps_per_epoch else steps


def augment_label(augment: tuple) -> str:
    return "+".join(augment) if augment else "none"


# ---- paired runs -------------------------------------------------------------------------------------

def run_kind(sessions, url: str, spec: RunSpec) -> dict[str, Any]:
    """One run through its runner process: bench.scaling.run_once's figures, the summary's input figures, and the
    median steady step with its data wait."""
    from db import queries

    figures = run_once(sessions, url, spec)
    with sessions.begin() as s:
        summary = queries.get_run(s, figures["run_id"]).summary or {}
        points = queries.metric_frame(s, [figures["run_id"]], [STEP_TIME, DATA_WAIT])
    figures["input"] = summary.get("input") or {}
    figures["cycle_p50_ms"] = median_cycle_ms(points, spec.warmup_steps)
    figures["batch_size"] = spec.batch_size
    return figures


STEP_TIME, DATA_WAIT = "step/step_time_ms", "step/data_wait_ms"


def median_cycle_ms(points, warmup_steps: int) -> Optional[float]:
    """Median over the steady steps of (the wait for the batch + the step): what a step costs with its loader,
    blind to the rare step another process's load stalls and to per-epoch work. A fit run has no wait of its
    own (Keras takes the batch inside its step): its step time alone."""
    steady = points[points["step"] > warmup_steps]
    steps = steady[steady["name"] == STEP_TIME].set_index("step")["value"]
    if steps.empty:
        return None
    waits = steady[steady["name"] == DATA_WAIT].set_index("step")["value"]
    return float((steps + waits.reindex(steps.index).fillna(0.0)).median())


def measure_runs(cases: list[Case], variants: list[tuple], frameworks: tuple[str, ...], settings: Settings,
                 pairs: int, url: str) -> dict[tuple[str, str, str], list[dict]]:
    """`pairs` rounds; in each, per case and variant, every framework trains its kinds back to back."""
    from db.session import make_sessionmaker

    sessions = make_sessionmaker(url)
    rounds: dict[tuple[str, str, str], list[dict]] = {}
    for index in range(pairs):
        turn = frameworks if index % 2 == 0 else frameworks[::-1]
        for case in cases:
            for augment in variants:
                for framework in turn:
                    kinds = list(KINDS[framework]) if index % 2 == 0 else list(KINDS[framework])[::-1]
                    runs = {}
                    for kind in kinds:
                        runs[kind] = run_kind(sessions, url, build_spec(framework, case, settings, kind, augment))
                        print(f"  round {index + 1}/{pairs} {case.label:<32} augment {augment_label(augment):<15} "
                              f"{framework:<10} {kind:<6}: {runs[kind]['samples_per_s']:>9,.0f} samples/s, "
                              f"run {runs[kind]['wall_s']:.0f} s", file=sys.stderr, flush=True)
                    rounds.setdefault((case.label, augment_label(augment), framework), []).append(runs)
    return rounds


def _median_range(values: list[float]) -> dict[str, float]:
    low, high = median_interval(values)
    return {"median": statistics.median(values), "low": low, "high": high, "values": values}


def _input(runs: list[dict], kind: str, key: str) -> Optional[float]:
    values = [run[kind]["input"].get(key) for run in runs if run[kind]["input"].get(key) is not None]
    return statistics.median(values) if values else None


def summarise_runs(framework: str, rounds: list[dict]) -> dict[str, Any]:
    """Medians over the rounds: samples/s per kind, native/arrays and (TensorFlow) fit/graph per round."""
    kinds = list(KINDS[framework])
    row: dict[str, Any] = {"framework": framework, "pairs": len(rounds),
                           "framework_version": rounds[0]["arrays"]["framework_version"]}
    for kind in kinds:
        row[f"{kind}_samples_per_s"] = statistics.median(r[kind]["samples_per_s"] for r in rounds)
        row[f"{kind}_data_wait_share"] = _input(rounds, kind, "data_wait_share")
    for name, (top, bottom) in {"native_over_arrays": ("native", "arrays"), "fit_over_graph": ("fit", "native")}.items():
        if top not in kinds:
            continue
        row[name] = _median_range([r[top]["samples_per_s"] / r[bottom]["samples_per_s"] for r in rounds])
        # The same ratio from median (wait + step) times: a slower cycle is a lower throughput.
        cycles = [(r[bottom]["cycle_p50_ms"], r[top]["cycle_p50_ms"]) for r in rounds]
        if all(b and t for b, t in cycles):
            row[f"{name}_p50"] = _median_range([b / t for b, t in cycles])
    # The step alone on one fixed batch (every run measures it after training): what no loader can exceed.
    ceilings = [r[kind]["input"]["ceiling_samples_per_s"] for r in rounds for kind in kinds
                if r[kind]["input"].get("ceiling_samples_per_s")]
    row["ceiling_samples_per_s"] = statistics.median(ceilings) if ceilings else None
    row["in_run_loader_samples_per_s"] = _input(rounds, "native", "loader_samples_per_s")
    # Steady throughput over the rate the median (wait + step) implies: well below 1, most of the time went to
    # steps that other processes stalled (PyTorch's OpenMP team waits for a thread that lost its core).
    reached = [r[kind]["samples_per_s"] * r[kind]["cycle_p50_ms"] / 1e3 / r[kind]["batch_size"]
               for r in rounds for kind in kinds if r[kind]["cycle_p50_ms"]]
    row["steady_over_p50_rate"] = statistics.median(reached) if reached else None
    row["native_loader"] = rounds[0]["native"]["input"].get("loader")
    runs = [r[kind] for r in rounds for kind in kinds]
    row["wall_s"] = sum(run["wall_s"] for run in runs)
    row["other_busy_cpu_s"] = sum(run["other_busy_cpu_s"] for run in runs)
    return row


# ---- loader alone, one process per framework ---------------------------------------------------------

def loader_only(framework: str, plan: dict[str, Any]) -> dict[str, Any]:
    """In this process (one framework): each case's native pipeline iterated alone with 0, 1 and 2 workers."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU placement the runs get
    from engine.backends import get_backend
    from engine.data import load_spec

    settings = Settings(**plan["settings"])
    rows, described = [], {}
    for case_fields in plan["cases"]:
        case = Case(**case_fields)
        for augment in plan["variants"]:
            base = build_spec(framework, case, settings, "native", tuple(augment))
            data = load_spec(base)
            backend = get_backend(framework, "cpu")
            backend.build(base, data.task, None, tuple(data.x_train.shape[1:]), data.num_outputs)
            rates: dict[int, list[float]] = {workers: [] for workers in plan["workers"]}
            for index in range(plan["rounds"]):
                for workers in (plan["workers"] if index % 2 == 0 else plan["workers"][::-1]):
                    spec = dataclasses.replace(base, loader_workers=workers)
                    pipeline = backend.native_pipeline(spec, data)
                    try:
                        rates[workers].append(_loader_rate(spec, backend, pipeline, len(data.x_train),
                                                           plan["min_seconds"]))
                        described[workers] = pipeline.settings()["loader"]
                    finally:
                        pipeline.close()
                    print(f"progress: loader {framework:<10} {case.label:<32} augment {augment_label(tuple(augment)):<15} "
                          f"{workers} workers: {rates[workers][-1]:>10,.0f} samples/s\n", end="", file=sys.stderr,
                          flush=True)
            rows.append({"case": case.label, "augment": augment_label(tuple(augment)),
                         "samples_per_s": {str(workers): values for workers, values in rates.items()}})
    return {"framework": framework, "framework_version": backend.describe().get("framework_version"),
            "rows": rows, "loaders": {str(k): v for k, v in described.items()}}


def _loader_rate(spec: RunSpec, backend, pipeline, samples_in_set: int, min_seconds: float) -> float:
    """Samples/s of whole epochs iterated alone (batches on the device), after one untimed epoch."""
    from engine.data import epoch_order

    steps = steps_per_epoch(spec)

    def one_epoch(epoch: int) -> int:
        order = epoch_order(samples_in_set, spec.seed, epoch)[:steps * spec.batch_size]
        samples = sum(size for _, _, size in pipeline.batches(epoch, order, steps))
        backend.synchronize()
        return samples

    one_epoch(1)  # the loader's worker processes start, tf.data's functions are traced: not timed
    samples, epoch = 0, 2
    start = time.perf_counter()
    while True:
        samples += one_epoch(epoch)
        epoch += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return samples / elapsed


def measure_loaders(cases: list[Case], variants: list[tuple], frameworks: tuple[str, ...], settings: Settings,
                    rounds: int, min_seconds: float) -> dict[str, dict]:
    """One worker process per framework (loop_report.spawn_worker: its JSON and the other processes' load)."""
    plan = {"cases": [dataclasses.asdict(case) for case in cases], "variants": [list(v) for v in variants],
            "settings": dataclasses.asdict(settings), "workers": list(LOADER_WORKERS), "rounds": rounds,
            "min_seconds": min_seconds}
    return {framework: spawn_worker(framework, [sys.executable, str(Path(__file__).resolve()), "--loader-worker",
                                                framework, "--plan", json.dumps(plan)])
            for framework in frameworks}


def summarise_loader(row: dict[str, Any]) -> dict[str, Any]:
    """Median and interval per worker count; 1 and 2 workers over 0 per round."""
    rates = {int(workers): values for workers, values in row["samples_per_s"].items()}
    out = {"case": row["case"], "augment": row["augment"],
           "samples_per_s": {workers: _median_range(values) for workers, values in rates.items()}}
    for workers in (1, 2):
        if workers in rates and 0 in rates:
            out[f"{workers}_over_0"] = _median_range([a / b for a, b in zip(rates[workers], rates[0])])
    return out


# ---- report -------------------------------------------------------------------------------------------

def interval_coverage(n: int, confidence: float = 0.95) -> float:
    """How often median_interval's interval over n values covers the median (the same k it picks)."""
    k = 1
    while k < n // 2 and 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n <= 1 - confidence:
        k += 1
    return 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n


def told(ratio: dict[str, float], faster: str, slower: str, pairs: int) -> str:
    """What a ratio's interval says against 1."""
    if ratio["low"] > 1:
        return faster
    if ratio["high"] < 1:
        return slower
    return f"cannot tell from 1 at {pairs} pairs: rerun with --pairs {max(10, 2 * pairs)}"


def _range(ratio: dict[str, float]) -> str:
    return f"{ratio['median']:.3f} ({ratio['low']:.3f}-{ratio['high']:.3f})"


def _maybe_range(ratio: Optional[dict[str, float]]) -> str:
    return "-" if ratio is None else _range(ratio)


def _share(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.0%}"


def _rate(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:,.0f}"


def format_report(cases: list[Case], settings: Settings, rows: dict[tuple[str, str, str], dict],
                  loaders: dict[str, dict], pairs: int, elapsed_s: float, load: tuple[tuple, tuple]) -> str:
    """Method, the machine's bounds and load; then native/arrays, fit/graph and the loader alone."""
    cores = os.cpu_count()
    data = "; ".join(f"{case.label}: {build_spec('torch', case, settings, 'arrays').train_size():,} training "
                     f"samples, {settings.epochs or case.epochs} epochs x "
                     f"{steps_per_epoch(build_spec('torch', case, settings, 'arrays'))} steps" for case in cases)
    coverage = interval_coverage(pairs)
    lines = [
        f"Arena input pipelines, CPU ({cores} cores): native pipeline / shared arrays, per framework; "
        f"batch {settings.batch_size}, native runs with {settings.loader_workers} loader workers, {pairs} pairs",
        f"data: {data}; epoch 1 warm-up",
        "method: each round trains one spec with pipeline arrays and pipeline native (TensorFlow also mode fit "
        "over the native pipeline), back to back, each a real runner process on a temporary SQLite database; "
        "order reverses every round, frameworks take turns. Throughput = the run's steady_samples_per_s "
        "(wall-clock samples/s after warm-up, data waits included); beside it the same ratio from each run's "
        "median over steady steps of (data wait + step), blind to steps other processes stalled and to "
        "per-epoch work (a fit run: its step alone, Keras takes the batch inside it). Ratios per round: median "
        "and its "
        + (f"order-statistic interval (at {pairs} pairs it covers the median {coverage:.0%} of the time; 95 % from "
           "6 pairs)." if pairs > 1 else "one pair: no interval (the ranges below are that pair's value)."),
        "loader-only: measured directly, not taken from the runs: one process per framework builds the backend "
        "and its native pipeline (backend.native_pipeline) with 0, 1 and 2 workers and iterates whole epochs of "
        "the run's sample order alone (no step; batches onto the device; augmentations as the row says) after "
        "one untimed epoch; the runs' own figure (summary input.loader_samples_per_s: "
        f"{settings.calibration_steps} batches after training, start-up included) is shown beside it.",
        f"BOUND BY THIS MACHINE ({cores} cores, CPU only): loader workers -- DataLoader processes, tf.data's map "
        "threads -- run on the same cores as the step's own intra-op threads (PyTorch's OpenMP team, "
        "TensorFlow's pool), so in a run a worker gains only what the step leaves idle and costs the step what "
        "it takes; alone, 2 workers can at most double 1. No GPU: pin_memory (CUDA only) and prefetching to the "
        "device do not apply -- a batch on the 'device' is a host tensor, there is no copy to overlap.",
        f"load average at start {load[0][0]:.2f} {load[0][1]:.2f} {load[0][2]:.2f}, at end "
        f"{load[1][0]:.2f} {load[1][1]:.2f} {load[1][2]:.2f}",
    ]
    by_framework: dict[str, list[dict]] = {}
    for (_, _, framework), row in rows.items():
        by_framework.setdefault(framework, []).append(row)
    noisy = False
    for framework, framework_rows in by_framework.items():
        wall = sum(row["wall_s"] for row in framework_rows)
        other = sum(row["other_busy_cpu_s"] for row in framework_rows) / wall
        noisy |= other > NOISY_LOAD_CORES
        lines.append(f"  {framework} ({framework_label(framework)} {framework_rows[0]['framework_version']}): "
                     f"runs {wall:.0f} s, other processes busy {other:.2f} cores; native loader: "
                     f"{framework_rows[0]['native_loader']}")
    for framework, worker in loaders.items():
        noisy |= worker["other_load_cores"] > NOISY_LOAD_CORES
        lines.append(f"  {framework} loader-only process: {worker['wall_s']:.0f} s, other processes busy "
                     f"{worker['other_load_cores']:.2f} cores")
    if noisy:
        lines.append(f"  WARNING: other processes kept more than {NOISY_LOAD_CORES} cores busy: the figures are "
                     "noisy (see the intervals); rerun on a quiet machine")

    header = (f"{'case':<32} {'augment':<15} {'framework':<10} {'arrays/s':>9} {'native/s':>9} "
              f"{'native / arrays (interval)':>27} {'from p50 wait+step':>24} {'wait arrays|native':>18} "
              f"{'step ceiling/s':>14}")
    lines += ["", "native pipeline / arrays, steady samples/s", header, "-" * len(header)]
    for (case, augment, framework), row in rows.items():
        waits = f"{_share(row['arrays_data_wait_share'])} | {_share(row['native_data_wait_share'])}"
        lines.append(f"{case:<32} {augment:<15} {framework:<10} {row['arrays_samples_per_s']:>9,.0f} "
                     f"{row['native_samples_per_s']:>9,.0f} {_range(row['native_over_arrays']):>27} "
                     f"{_maybe_range(row.get('native_over_arrays_p50')):>24} {waits:>18} "
                     f"{_rate(row['ceiling_samples_per_s']):>14}")
    for (case, augment, framework), row in rows.items():
        stalled = row["steady_over_p50_rate"]
        lines.append(f"  {framework_label(framework)}, {case}, augment {augment}: native/arrays "
                     f"{_range(row['native_over_arrays'])}: "
                     + told(row["native_over_arrays"], "the native pipeline is faster", "the native pipeline is slower",
                            row["pairs"])
                     + ("" if stalled is None or stalled >= STALLED_BELOW else
                        f"; STALLED: its runs' steady throughput was {stalled:.0%} of what their median step and "
                        "wait give (other processes' load stalled steps): trust neither ratio, rerun on a quiet "
                        "machine"))

    fit_rows = {key: row for key, row in rows.items() if "fit_over_graph" in row}
    if fit_rows:
        header = (f"{'case':<32} {'augment':<15} {'graph/s':>9} {'fit/s':>9} {'fit / graph (interval)':>25} "
                  f"{'from p50 wait+step':>24}  (both over the native tf.data pipeline)")
        lines += ["", "TensorFlow: Keras model.fit / the engine's graph-mode loop", header, "-" * len(header)]
        for (case, augment, _), row in fit_rows.items():
            lines.append(f"{case:<32} {augment:<15} {row['native_samples_per_s']:>9,.0f} "
                         f"{row['fit_samples_per_s']:>9,.0f} {_range(row['fit_over_graph']):>25} "
                         f"{_maybe_range(row.get('fit_over_graph_p50')):>24}  "
                         + told(row["fit_over_graph"], "fit is faster", "fit is slower", row["pairs"]))

    if loaders:
        header = (f"{'case':<32} {'augment':<15} {'framework':<10} {'0 workers/s':>22} {'1 worker/s':>22} "
                  f"{'2 workers/s':>22} {'2 / 0 (interval)':>20} {'in run, 2w':>10} {'2w / ceiling':>12}")
        lines += ["", "loader alone (native pipeline iterated without a step), samples/s: median (interval)",
                  header, "-" * len(header)]
        for framework, worker in loaders.items():
            for loader in worker["rows"]:
                summary = summarise_loader(loader)
                cells = []
                for workers in LOADER_WORKERS:
                    rate = summary["samples_per_s"].get(workers)
                    cells.append("-" if rate is None else
                                 f"{rate['median']:,.0f} ({rate['low']:,.0f}-{rate['high']:,.0f})")
                run_row = rows.get((loader["case"], loader["augment"], framework), {})
                ceiling = run_row.get("ceiling_samples_per_s")
                two = summary["samples_per_s"].get(2)
                over_ceiling = f"{two['median'] / ceiling:.2f}" if two and ceiling else "-"
                lines.append(f"{loader['case']:<32} {loader['augment']:<15} {framework:<10} {cells[0]:>22} "
                             f"{cells[1]:>22} {cells[2]:>22} "
                             f"{_range(summary['2_over_0']) if '2_over_0' in summary else '-':>20} "
                             f"{_rate(run_row.get('in_run_loader_samples_per_s')):>10} {over_ceiling:>12}")
        lines.append("  2w / ceiling: the loader alone with 2 workers over the step alone; below 1 no overlap can "
                     "hide the loader (input-bound), above 1 it can keep up if the cores allow")
        for framework, worker in loaders.items():
            for workers, text in worker["loaders"].items():
                lines.append(f"  {framework} {workers} workers: {text}")
    lines += ["", f"total {elapsed_s:.0f} s"]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(DEFAULT_CASES),
                        help=f"comma-separated, any of {', '.join(CASES)}")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated: torch,tensorflow")
    parser.add_argument("--pairs", type=int, default=3, help="rounds of paired runs (and of loader-only timings)")
    parser.add_argument("--augment", nargs="?", const=",".join(AUGMENTATIONS), default=None,
                        help="also measure with augmentations on (default when given: crop,flip,noise)")
    parser.add_argument("--loader-workers", type=int, default=2, help="the native runs' loader workers")
    parser.add_argument("--epochs", type=int, help="epochs per run (default: each case's, ~2-4 s of steady steps)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-steps-per-epoch", type=int, help="cap on steps an epoch (default: the whole set)")
    parser.add_argument("--calibration-steps", type=int, default=10,
                        help="batches of the runs' own input figures after training (step ceiling)")
    parser.add_argument("--loader-seconds", type=float, default=1.0, help="least seconds per loader-only timing")
    parser.add_argument("--no-loader", action="store_true", help="skip the loader-only timings")
    parser.add_argument("--json", action="store_true", help="also print one JSON object on the last line")
    parser.add_argument("--loader-worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--plan", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loader_worker:  # the child: one framework's loader-only timings, one JSON line
        print(json.dumps(loader_only(args.loader_worker, json.loads(args.plan))))
        return 0

    frameworks = tuple(name.strip() for name in args.frameworks.split(",") if name.strip())
    for name in frameworks:
        if name not in FRAMEWORKS:
            parser.error(f"--frameworks names {name!r}: expected {', '.join(FRAMEWORKS)}")
    names = [name.strip() for name in args.cases.split(",") if name.strip()]
    for name in names:
        if name not in CASES:
            parser.error(f"--cases names {name!r}: expected any of {', '.join(CASES)}")
    if args.pairs < 1:
        parser.error(f"--pairs {args.pairs}: at least one round")
    try:
        augment = parse_augment(args.augment) if args.augment is not None else ()
    except ValueError as exc:
        parser.error(f"--augment: {exc}")
    if args.augment is not None and not augment:
        parser.error(f"--augment {args.augment!r}: name at least one of {', '.join(AUGMENTATIONS)}")
    variants = [()] + ([augment] if augment else [])
    cases = [CASES[name] for name in names]
    settings = Settings(args.batch_size, args.epochs, args.max_steps_per_epoch, args.loader_workers,
                        args.calibration_steps)
    try:
        for framework in frameworks:
            for case in cases:
                for kind in KINDS[framework]:
                    for variant in variants:
                        build_spec(framework, case, settings, kind, variant)
    except ValueError as exc:
        parser.error(str(exc))
    if not args.calibration_steps:
        parser.error("--calibration-steps 0: the runs' step ceiling needs at least one batch")

    started, load_start = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="arena-bench-pipelines-") as scratch:
        from engine.datafiles import data_dir

        os.environ.setdefault("ARENA_DATA_DIR", str(data_dir()))  # run logs into scratch; file datasets stay put
        os.environ["ARENA_HOME"] = scratch
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        rounds = measure_runs(cases, variants, frameworks, settings, args.pairs,
                              f"sqlite:///{Path(scratch) / 'pipelines.db'}")
        loaders = {} if args.no_loader else measure_loaders(cases, variants, frameworks, settings, args.pairs,
                                                            args.loader_seconds)
    rows = {key: summarise_runs(key[2], framework_rounds) for key, framework_rounds in rounds.items()}
    print(format_report(cases, settings, rows, loaders, args.pairs, time.perf_counter() - started,
                        (load_start, os.getloadavg())))
    if args.json:
        print(json.dumps({"settings": dataclasses.asdict(settings), "cores": os.cpu_count(), "pairs": args.pairs,
                          "runs": [{"case": case, "augment": augment_name, **row}
                                   for (case, augment_name, _), row in rows.items()],
                          "loader_only": {framework: {**{k: v for k, v in worker.items() if k != "rows"},
                                                      "rows": [summarise_loader(r) for r in worker["rows"]]}
                                          for framework, worker in loaders.items()}}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
