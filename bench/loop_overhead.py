"""Arena's engine against each framework's idiomatic loop, per framework, model and execution mode.

`python bench/loop_overhead.py [--quick] [--json] [--frameworks F,..] [--models M,..] [--modes MODE,..]`

Engine side: what a real run does -- engine.loop.train in the run's mode (RunSpec.mode) with a
Recorder writing to a temporary SQLite database and a Monitor sampling, exactly as engine.runner
wires them. Reference side (bench/reference_loops.py): the loop each framework's own examples
write, switched into the same mode the framework's own way (pytorch/examples index slicing, plus
torch.compile for compiled; Keras compile + fit with jit_compile False/True or run_eagerly).
Same model, batch size, Adam settings, initial weights and samples per epoch (full batches only,
as the engine trains) on both sides.

Throughput is steady-state samples/s over the epochs after warm-up (epoch 1 traces, compiles
and warms allocators; in XLA mode Keras's fit also compiles again in epoch 2). Engine and reference repeats alternate in one process (AB BA AB ...) so drift on a
noisy machine cancels in each pair; the reported ratio is the median of the per-pair ratios. One
worker subprocess per framework: torch and tensorflow never share a process.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `engine`, `db` and `bench` import from the repo

# Neither imports a framework: the parent stays light, each worker imports its one framework.
from bench.reference_loops import (  # noqa: E402  (needs ROOT on the path)
    REFERENCE_LABELS, full_batch_samples, keras_reference, torch_reference,
)
from engine.catalog import FRAMEWORKS, MODE_LABELS, MODES, default_mode  # noqa: E402

MODELS = ("mlp", "cnn")
DATASET = "digits"
SEED = 0
GOAL_RATIO = 0.97
# Average load from other processes above which the report warns that its ratios are noisy.
NOISY_LOAD_CORES = 0.25
# Epochs per run: about 1.5-3 s of steady state each on 2 idle cores (eager PyTorch: an mlp
# epoch takes ~80 ms, a cnn epoch ~0.5 s; compiled PyTorch and TensorFlow's cnn are in the same
# range). On this 2-core VM epoch times wander by +-10% over seconds even when it is idle, so
# many short alternating runs cancel that drift better than a few long ones.
EPOCHS = {"mlp": 24, "cnn": 5}
QUICK_EPOCHS = {"mlp": 8, "cnn": 3}
# Modes whose epochs are slower: TensorFlow's mlp epoch takes ~0.15-0.25 s in graph and XLA
# mode; eager TensorFlow runs Keras 3 layers and Adam op by op, ~1.7 s an mlp epoch and ~5.5 s
# a cnn epoch, so its one timed epoch already holds seconds of steady state. --epochs
# overrides every mode alike.
MODE_EPOCHS = {
    ("tensorflow", "graph"): {"mlp": 12},
    ("tensorflow", "xla"): {"mlp": 12},
    ("tensorflow", "eager"): {"mlp": 2, "cnn": 2},
}
QUICK_MODE_EPOCHS = {("tensorflow", "eager"): {"mlp": 2, "cnn": 2}}
# Untimed epochs at the start of each run. Epoch 1 holds tracing, compiling and allocator warm-up.
# With jit_compile=True Keras's fit pays about one more compile in epoch 2 (digits cnn, 2 idle
# cores: reference epoch 2 median 1.6 s against 0.6 s steady; the engine's epoch 2 is steady),
# so XLA runs time epochs >= 3 on both sides.
WARMUP_EPOCHS = 1
MODE_WARMUP_EPOCHS = {("tensorflow", "xla"): 2}
REPEATS, QUICK_REPEATS = 5, 2

ENGINE, REFERENCE = "engine", "reference"
PROGRESS_PREFIX = "progress: "
# Informational variants, each reported as a ratio to the same reference. They run in each
# framework's default mode only (where the earlier figures were taken) and not with --quick: in
# every mode they would add half again to the benchmark's time.
VARIANT_LABELS = {
    ENGINE: "engine (Recorder + Monitor, SQLite)",
    REFERENCE: "reference",
    "engine_unrecorded": "engine loop only, no Recorder/Monitor",
    "reference_dataloader": "reference with DataLoader(TensorDataset)",
}


# Worker (one framework per process) ---------------------------------------------------------

class _EpochTimes:
    """A MetricSink that keeps only epoch_time_s: the engine loop without any recording."""

    def __init__(self) -> None:
        self.epoch_time_s: list[float] = []

    def step_metrics(self, name: str, points: list[tuple[int, int, float, float]]) -> None:
        pass

    def epoch_metrics(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.epoch_time_s.append(metrics["epoch_time_s"])

    def progress(self, epoch: int, step: int) -> None:
        pass

    def tensor_stats(self, rows: list[dict]) -> None:
        pass


def _engine_spec(framework: str, model: str, mode: str, epochs: int):
    from engine.spec import RunSpec

    # The inference benchmark runs after training and is not part of any epoch time; off, it
    # saves a compile per batch size in the compiled modes.
    return RunSpec.with_model_defaults(framework, model, DATASET, epochs=epochs, seed=SEED, device="cpu",
                                       mode=mode, inference_iters=0)


def _engine_run(framework: str, model: str, mode: str, epochs: int, data, sessions,
                recorded: bool, samples_per_epoch: int) -> list[float]:
    """Epoch times of one engine run; recorded=True wires Recorder + Monitor as engine.runner does."""
    from db import queries
    from engine.backends import get_backend
    from engine.loop import train
    from engine.recorder import Recorder
    from engine.runner import start_instruments

    spec = _engine_spec(framework, model, mode, epochs)
    backend = get_backend(framework, spec.device)
    if not recorded:
        sink = _EpochTimes()
        summary = train(spec, backend, data, sink)
        _check_engine_work(summary, spec, samples_per_epoch)
        return sink.epoch_time_s

    with sessions.begin() as s:
        run_id = queries.create_run(s, spec.to_dict(), group_tag="bench-loop-overhead").id
        queries.claim_run(s, run_id, os.getpid(), socket.gethostname())
    recorder = Recorder(sessions, run_id).start()
    instruments = start_instruments(spec, backend, recorder, os.getpid())
    try:
        summary = train(spec, backend, data, recorder, instruments.meter)
    finally:
        instruments.stop({})
        recorder.close()
    if recorder.flush_error is not None:
        raise RuntimeError(f"recorder failed to flush during the run: {recorder.flush_error!r}")
    _check_engine_work(summary, spec, samples_per_epoch)
    with sessions.begin() as s:
        queries.finish_run(s, run_id, summary)
        frame = queries.metric_frame(s, [run_id], ["epoch_time_s"])
    # Read back from the database: the times a real run records, and proof that it recorded them.
    times = frame.sort_values("epoch")["value"].tolist()
    if len(times) != epochs:
        raise RuntimeError(f"run {run_id} recorded {len(times)} epoch_time_s points, expected {epochs}")
    return times


def _check_engine_work(summary: dict, spec, samples_per_epoch: int) -> None:
    """The engine must run the mode asked for and train the samples per epoch the reference trains."""
    if summary.get("mode") != spec.mode:
        raise RuntimeError(f"engine ran mode={summary.get('mode')!r}, the benchmark asked for {spec.mode!r}")
    if summary["steps_per_epoch"] * spec.batch_size != samples_per_epoch:
        raise RuntimeError(f"engine trained {summary['steps_per_epoch']} steps of {spec.batch_size} an epoch; "
                           f"the reference trains {samples_per_epoch} samples")


def _variants(framework: str, model: str, mode: str, epochs: int, data, weights, hparams,
              sessions, samples_per_epoch: int, informational: bool) -> dict[str, Callable[[], list[float]]]:
    """The runs to alternate for one (model, mode): engine and reference, plus informational ones in the default mode."""
    engine = partial(_engine_run, framework, model, mode, epochs, data, samples_per_epoch=samples_per_epoch)
    if framework == "torch":
        reference = partial(torch_reference, model, mode, epochs, data, weights, hparams, SEED)
    else:
        reference = partial(keras_reference, model, mode, epochs, data, weights, hparams, SEED)
    variants = {ENGINE: partial(engine, sessions, recorded=True), REFERENCE: reference}
    if informational and mode == default_mode(framework):
        variants["engine_unrecorded"] = partial(engine, None, recorded=False)
        if framework == "torch":
            variants["reference_dataloader"] = partial(reference, use_loader=True)
    return variants


def _fresh_compiler(framework: str) -> None:
    """Start each (model, mode) from a clean compiler state, as a fresh runner process would.

    Without it the graphs of earlier models and modes stay in torch.compile's cache, which every
    compiled module in the process shares (at most recompile_limit = 8 entries, then it falls
    back to eager); the on-disk Inductor cache keeps the recompiles short.
    """
    if framework == "torch":
        import torch._dynamo
        from torch._dynamo.utils import counters

        torch._dynamo.reset()
        counters.clear()  # reset() keeps them; _compiler_stats reports this (model, mode) only
    else:
        import keras

        keras.backend.clear_session()


def _compiler_stats(framework: str, mode: str) -> dict[str, int]:
    """What torch.compile did in this (model, mode): proof that the compiled side really compiled."""
    if framework != "torch" or mode != "compiled":
        return {}
    from torch._dynamo.utils import counters

    return {"unique_graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values()))}


def _framework_info(framework: str) -> dict[str, Any]:
    if framework == "torch":
        import torch

        return {"version": torch.__version__, "intra_op_threads": torch.get_num_threads()}
    import keras
    import tensorflow as tf

    return {"version": tf.__version__, "keras_version": keras.__version__,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()}


def _progress(message: str) -> None:
    """One progress line on stderr; the parent passes these through and keeps the rest for errors."""
    print(f"{PROGRESS_PREFIX}{message}", file=sys.stderr, flush=True)


def run_worker(framework: str, models: list[str], modes: list[str], epochs: dict[str, dict[str, int]],
               repeats: int, informational: bool) -> dict[str, Any]:
    """All variants of every (model, mode) for one framework, interleaved; epoch times per run."""
    from db.session import make_sessionmaker
    from engine.catalog import DATASETS, MODELS as MODEL_INFO
    from engine.data import load
    from engine.weights import initial_weights

    started = time.perf_counter()
    if framework == "tensorflow":
        import tensorflow as tf

        # Every run builds a new backend and so new tf.functions; TensorFlow warns about that
        # "retracing" across runs, which is this benchmark's doing, not something a run does.
        tf.get_logger().setLevel("ERROR")
    data = load(DATASET, SEED)
    info = DATASETS[DATASET]
    results: dict[str, dict[str, Any]] = {}
    compiler: dict[str, dict[str, Any]] = {}
    group_wall_s: dict[str, dict[str, float]] = {}
    samples_per_epoch: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="arena-bench-") as tmp:
        sessions = make_sessionmaker(f"sqlite:///{Path(tmp) / 'bench.db'}")
        for model in models:
            hparams = MODEL_INFO[model].defaults
            if hparams["optimizer"] != "adam":
                raise ValueError(f"optimizer={hparams['optimizer']!r}: the reference loops are written for adam")
            weights = initial_weights(model, info.input_shape, data.num_outputs, SEED)
            samples_per_epoch[model] = full_batch_samples(len(data.x_train), hparams["batch_size"])
            results[model], compiler[model], group_wall_s[model] = {}, {}, {}
            for mode in modes:
                group_started = time.perf_counter()
                _fresh_compiler(framework)
                variants = _variants(framework, model, mode, epochs[mode][model], data, weights, hparams,
                                     sessions, samples_per_epoch[model], informational)
                _progress(f"{framework} {model} {mode}: {repeats} x {', '.join(variants)}, "
                          f"{epochs[mode][model]} epochs each (worker at {group_started - started:.0f} s)")
                runs: dict[str, list[list[float]]] = {name: [] for name in variants}
                for repeat in range(repeats):
                    # AB BA AB ...: reversing every other repeat cancels a linear drift within each pair.
                    order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
                    for name in order:
                        runs[name].append(variants[name]())
                results[model][mode] = runs
                compiler[model][mode] = _compiler_stats(framework, mode)
                group_wall_s[model][mode] = time.perf_counter() - group_started
        sessions.kw["bind"].dispose()
    return {"framework": framework, "info": _framework_info(framework), "n_train": len(data.x_train),
            "samples_per_epoch": samples_per_epoch, "modes": modes,
            "epochs": epochs, "warmup_epochs": {mode: warmup_epochs(framework, mode) for mode in modes},
            "repeats": repeats,
            "hyperparameters": {m: MODEL_INFO[m].defaults for m in models},
            "compiler": compiler, "group_wall_s": group_wall_s, "epoch_time_s": results}


# Parent: spawn workers, summarise, print --------------------------------------------------

def warmup_epochs(framework: str, mode: str) -> int:
    """Epochs at the start of a run that are not timed."""
    return MODE_WARMUP_EPOCHS.get((framework, mode), WARMUP_EPOCHS)


def steady_samples_per_s(epoch_times: list[float], samples_per_epoch: int, warmup: int) -> float:
    """Samples/s of one run over the epochs after the first `warmup` (tracing, compiling, allocator warm-up)."""
    steady = epoch_times[warmup:]
    return samples_per_epoch * len(steady) / sum(steady)


def summarise(worker: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, mode, variant): median samples/s and the median of per-repeat ratios to the reference."""
    rows = []
    for model, by_mode in worker["epoch_time_s"].items():
        samples = worker["samples_per_epoch"][model]
        for mode, runs in by_mode.items():
            warmup = warmup_epochs(worker["framework"], mode)
            rates = {name: [steady_samples_per_s(t, samples, warmup) for t in times] for name, times in runs.items()}
            for name, values in rates.items():
                ratios = [v / r for v, r in zip(values, rates[REFERENCE])]
                ratio = statistics.median(ratios)
                rows.append({
                    "framework": worker["framework"], "model": model, "mode": mode, "variant": name,
                    "samples_per_s": statistics.median(values), "samples_per_s_runs": values,
                    "ratio_to_reference": ratio, "ratio_min": min(ratios), "ratio_max": max(ratios),
                    "passed": ratio >= GOAL_RATIO if name == ENGINE else None,
                })
    return rows


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (or stolen by the hypervisor) since boot."""
    t = psutil.cpu_times()
    # guest time is already counted in user time; steal is capacity this VM did not get.
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def spawn_worker(framework: str, models: list[str], modes: list[str], epochs: dict[str, dict[str, int]],
                 repeats: int, quick: bool) -> dict[str, Any]:
    """Run one framework's worker process; its JSON plus how busy other processes kept the machine."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", framework,
               "--models", ",".join(models), "--modes", ",".join(modes), "--repeats", str(repeats),
               "--worker-epochs", json.dumps(epochs)] + (["--quick"] if quick else [])
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    busy, children, started = _busy_cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    log: deque[str] = deque(maxlen=200)
    # stdout (one large JSON line) goes to a file, so reading stderr live cannot block the worker.
    with tempfile.TemporaryFile("w+") as out:
        worker = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
        for line in worker.stderr:
            if line.startswith(PROGRESS_PREFIX):
                print(f"  {line[len(PROGRESS_PREFIX):]}", end="", file=sys.stderr, flush=True)
            else:
                log.append(line)  # framework start-up chatter: shown only if the worker fails
        returncode = worker.wait()
        out.seek(0)
        stdout = out.read()
    wall_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu_s = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    if returncode != 0:
        raise RuntimeError(f"{framework} worker exited {returncode}:\n{''.join(log)[-4000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    report["wall_s"] = wall_s
    # The benchmark cannot stop other processes, but it can say how much of the machine they took.
    report["other_load_cores"] = max(0.0, (_busy_cpu_s() - busy - worker_cpu_s) / wall_s)
    return report


def format_report(workers: list[dict[str, Any]], rows: list[dict[str, Any]], elapsed_s: float) -> str:
    """The header (setup, versions, references, background load) and the ratio tables."""
    first, cores = workers[0], os.cpu_count()
    epochs = "; ".join(f"{worker['framework']} {mode}: " + ", ".join(f"{model} {n}" for model, n in by_model.items())
                       for worker in workers for mode, by_model in worker["epochs"].items())
    hparams = {(h["batch_size"], h["lr"]) for h in first["hyperparameters"].values()}
    settings = "; ".join(f"batch {batch}, Adam lr {lr:g} eps 1e-8" for batch, lr in sorted(hparams))
    samples = sorted(set(first["samples_per_epoch"].values()))
    lines = [
        f"Arena loop overhead, CPU ({cores} cores): {DATASET} ({first['n_train']} training samples, "
        f"{'/'.join(map(str, samples))} per epoch in full batches), {settings}, same initial weights on both sides",
        f"{first['repeats']} repeats alternating engine/reference (AB BA ...); epochs per run: {epochs}",
        "samples/s per run: epochs after warm-up (epoch 1; xla: epochs 1-2) from epoch_time_s; shown: median over "
        "runs; ratio: median of per-pair ratios",
    ]
    for worker in workers:
        framework = worker["framework"]
        details = ", ".join(f"{key} {value}" for key, value in worker["info"].items())
        lines.append(f"  {framework} ({details}): worker {worker['wall_s']:.0f} s, "
                     f"other processes busy {worker['other_load_cores']:.2f} cores")
        for mode in worker["modes"]:
            lines.append(f"    {mode:<9} engine {MODE_LABELS[mode]}; reference {REFERENCE_LABELS[framework, mode]}")
        for model, by_mode in worker["compiler"].items():
            for mode, stats in by_mode.items():
                if stats:
                    lines.append(f"    {mode:<9} {model}: torch.compile made {stats['unique_graphs']} graphs, "
                                 f"{stats['graph_breaks']} graph breaks (engine train + eval, reference train)")
    if any(worker["other_load_cores"] > NOISY_LOAD_CORES for worker in workers):
        lines.append(f"  WARNING: other processes kept more than {NOISY_LOAD_CORES} cores busy: the ratios are noisy "
                     "(see pair range); rerun on a quiet machine")

    header = (f"{'framework':<11} {'model':<5} {'mode':<9} {'engine samples/s':>16} {'reference samples/s':>19} "
              f"{'engine/reference':>16} {'pair range':>11}  goal >= {GOAL_RATIO}")
    lines += ["", header, "-" * len(header)]
    engine_rows = [row for row in rows if row["variant"] == ENGINE]
    by_key = {(row["framework"], row["model"], row["mode"], row["variant"]): row for row in rows}
    for engine in engine_rows:
        reference = by_key[engine["framework"], engine["model"], engine["mode"], REFERENCE]
        lines.append(f"{engine['framework']:<11} {engine['model']:<5} {engine['mode']:<9} "
                     f"{engine['samples_per_s']:>16,.0f} {reference['samples_per_s']:>19,.0f} "
                     f"{engine['ratio_to_reference']:>16.3f} {_pair_range(engine)}  "
                     f"{'PASS' if engine['passed'] else 'FAIL'}")
    passed = sum(row["passed"] for row in engine_rows)
    lines.append(f"{passed} of {len(engine_rows)} at or above the goal")

    informational = [row for row in rows if row["variant"] not in (ENGINE, REFERENCE)]
    if informational:
        header = (f"{'informational':<13} {'model':<5} {'mode':<6} {'variant':<42} {'samples/s':>10} "
                  f"{'/reference':>10} {'pair range':>11}")
        lines += ["", header, "-" * len(header)]
        for row in informational:
            lines.append(f"{row['framework']:<13} {row['model']:<5} {row['mode']:<6} "
                         f"{VARIANT_LABELS[row['variant']]:<42} {row['samples_per_s']:>10,.0f} "
                         f"{row['ratio_to_reference']:>10.3f} {_pair_range(row)}")
    lines += ["", f"total {elapsed_s:.0f} s"]
    return "\n".join(lines)


def _pair_range(row: dict[str, Any]) -> str:
    return f"{row['ratio_min']:>5.2f}-{row['ratio_max']:<5.2f}"


def _parse_epochs(text: str) -> dict[str, int]:
    pairs = dict(item.split("=", 1) for item in text.split(","))
    return {model: int(value) for model, value in pairs.items()}


def epochs_per_run(framework: str, modes: list[str], models: list[str], quick: bool,
                   override: dict[str, int]) -> dict[str, dict[str, int]]:
    """Epochs per run by mode and model: the defaults, the slower modes' own counts, then --epochs."""
    base = QUICK_EPOCHS if quick else EPOCHS
    per_mode = QUICK_MODE_EPOCHS if quick else MODE_EPOCHS
    chosen = {}
    for mode in modes:
        by_model = {**base, **per_mode.get((framework, mode), {}), **override}
        chosen[mode] = {model: by_model[model] for model in models}
    return chosen


def main(argv: Optional[list[str]] = None) -> int:
    all_modes = tuple(dict.fromkeys(mode for framework in FRAMEWORKS for mode in MODES[framework]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: fewer epochs and repeats, no informational rows")
    parser.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated subset")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--modes", default=",".join(all_modes),
                        help="comma-separated subset of " + "; ".join(f"{f}: {', '.join(MODES[f])}" for f in FRAMEWORKS)
                        + " (each framework runs the ones it has)")
    parser.add_argument("--repeats", type=int,
                        help=f"engine/reference pairs (default {REPEATS}, quick {QUICK_REPEATS})")
    parser.add_argument("--epochs", help="per model, every mode, e.g. mlp=24,cnn=5 (epoch 1, in xla mode 1-2, "
                                         "is warm-up and not timed)")
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-epochs", help=argparse.SUPPRESS)  # JSON: {mode: {model: epochs}}
    args = parser.parse_args(argv)

    models, frameworks, modes = args.models.split(","), args.frameworks.split(","), args.modes.split(",")
    for name, chosen, allowed in (("model", models, MODELS), ("framework", frameworks, FRAMEWORKS),
                                  ("mode", modes, all_modes)):
        unknown = [c for c in chosen if c not in allowed]
        if unknown:
            parser.error(f"{name}={unknown[0]!r}: expected one of {', '.join(allowed)}")
    modes_by_framework = {f: [m for m in MODES[f] if m in modes] for f in frameworks}
    if not any(modes_by_framework.values()):
        parser.error(f"modes={args.modes!r}: none of them is a mode of {', '.join(frameworks)}")
    override: dict[str, int] = {}
    if args.epochs:
        try:
            override = _parse_epochs(args.epochs)
        except ValueError:
            parser.error(f"--epochs={args.epochs!r}: expected e.g. mlp=24,cnn=5")
        unknown = [m for m in override if m not in MODELS]
        if unknown:
            parser.error(f"--epochs names model {unknown[0]!r}: expected one of {', '.join(MODELS)}")
    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)
    if repeats < 1:
        parser.error(f"--repeats={repeats}: need at least 1")

    if args.worker:
        epochs = json.loads(args.worker_epochs)
        worker = run_worker(args.worker, models, modes_by_framework[args.worker], epochs, repeats,
                            informational=not args.quick)
        print(json.dumps(worker))
        return 0

    # Every framework's epochs are checked before the first worker starts, not minutes into the run.
    plan = {f: epochs_per_run(f, modes_by_framework[f], models, args.quick, override)
            for f in frameworks if modes_by_framework[f]}  # e.g. --modes xla: nothing for torch to run
    for framework, epochs in plan.items():
        for mode, by_model in epochs.items():
            warmup = warmup_epochs(framework, mode)
            if any(n <= warmup for n in by_model.values()):
                parser.error(f"epochs={by_model} in {framework} {mode} mode: need more than {warmup} per model "
                             f"(the first {warmup} are warm-up, not timed)")
    started = time.perf_counter()
    workers = []
    for framework, epochs in plan.items():
        print(f"running {framework} worker ...", file=sys.stderr, flush=True)
        workers.append(spawn_worker(framework, models, modes_by_framework[framework], epochs, repeats, args.quick))
    rows = [row for worker in workers for row in summarise(worker)]
    print(format_report(workers, rows, time.perf_counter() - started))
    if args.json:
        print(json.dumps({"goal_ratio": GOAL_RATIO, "workers": workers, "rows": rows}))
    return 0  # a benchmark reports; it does not assert


if __name__ == "__main__":
    sys.exit(main())
