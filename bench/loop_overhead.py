"""Arena's engine against each framework's idiomatic loop, per framework, model and execution mode.

`python bench/loop_overhead.py [--quick] [--json] [--frameworks F,..] [--models M,..] [--modes MODE,..]
[--repeats N] [--epochs M=N,..] [--samples M=N,..] [--informational]`

Engine side: what a real run does -- engine.loop.train in the run's mode (RunSpec.mode) with a
Recorder writing to a temporary SQLite database and a Monitor sampling, exactly as engine.runner
wires them. Reference side (bench/reference_loops.py): each model written the way the framework's
own examples write it, trained by the loop those examples write, switched into the same mode the
framework's own way (pytorch/examples index slicing, plus torch.compile for compiled; Keras
compile + fit with jit_compile False/True or run_eagerly). Same model, batch size, Adam settings,
initial weights and samples per epoch (full batches only, as the engine trains) on both sides;
before timing a model, its reference must compute the engine's loss on one fixed batch
(bench/same_network.py).

Throughput is steady-state samples/s over the epochs after warm-up (epoch 1 traces, compiles
and warms allocators; in XLA mode Keras's fit also compiles again in epoch 2). Engine and
reference repeats alternate in one process (AB BA AB ...) so drift on a noisy machine cancels in
each pair; the reported ratio is the median of the per-pair ratios. One worker subprocess per
framework: torch and tensorflow never share a process.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import fields
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `engine`, `db` and `bench` import from the repo

# None of these imports a framework: the parent stays light, each worker imports its one.
from bench.loop_report import (  # noqa: E402  (needs ROOT on the path)
    ENGINE, GOAL_RATIO, REFERENCE, format_report, spawn_worker, summarise, warmup_epochs,
)
from bench.reference_loops import CHOICE_VARIANTS, full_batch_samples, train_reference  # noqa: E402
from engine.catalog import FRAMEWORKS, MODES, NATIVE_PIPELINE_MODES  # noqa: E402
# The modes Arena's own loop runs the step in, each against a hand-written loop of the same mode. Keras's
# model.fit is not a step this loop runs: what it costs over the tf.function loop is bench/pipelines.py's.
LOOP_MODES = {framework: tuple(m for m in MODES[framework] if m not in NATIVE_PIPELINE_MODES)
              for framework in FRAMEWORKS}

SEED = 0
# The zoo but powerlaw: one scalar parameter, so a step is nearly all loop and no model -- the
# mlp already measures that -- and no framework example writes such a model (bench/README.md).
MODELS = ("mlp", "cnn", "mnist_cnn", "resnet", "lstm", "transformer")
MODEL_DATASETS = {
    "mlp": "digits", "cnn": "digits",
    "mnist_cnn": "synthetic_images",  # 28x28x1 (the model's synthetic_shape): MNIST's shape, no files needed
    "resnet": "synthetic_images",  # 32x32x3, CIFAR's shape
    "lstm": "synthetic_text", "transformer": "synthetic_text",  # 32 tokens
}
# Training samples per epoch of the synthetic datasets (digits has its 1,437, 1,408 in full
# batches of 32), so an epoch takes ~0.2-2 s on 2 cores and many short runs alternate. Each run
# trains the full batches of them (batch 64 for these models). ResNet-20 on 32x32x3 is the
# costliest step: ~0.15 s in eager PyTorch, ~0.15-0.3 s in TensorFlow's graph and XLA modes.
SAMPLES = {"mnist_cnn": 1024, "resnet": 512, "lstm": 2048, "transformer": 2048}
# Where a mode is much slower, smaller epochs (the same on both sides of a row): eager TensorFlow
# runs Keras layers and Adam op by op (~1-2 s for these); XLA's mnist_cnn step on the CPU takes
# ~4x its graph-mode step (~0.25 s).
MODE_SAMPLES = {
    ("tensorflow", "eager"): {"mnist_cnn": 512, "resnet": 256, "lstm": 512, "transformer": 512},
    ("tensorflow", "xla"): {"mnist_cnn": 256},
}
# Epochs per run, warm-up included: ~1-3 s of steady state on 2 idle cores (eager PyTorch epochs:
# mlp ~70 ms, cnn ~0.15 s, mnist_cnn ~1 s, resnet ~1 s, lstm ~0.15 s, transformer ~0.5 s). On this
# 2-core VM epoch times wander by +-10% over seconds even when it is idle, so many short
# alternating runs cancel that drift better than a few long ones.
EPOCHS = {"mlp": 24, "cnn": 12, "mnist_cnn": 3, "resnet": 3, "lstm": 10, "transformer": 4}
QUICK_EPOCHS = {"mlp": 8, "cnn": 4, "mnist_cnn": 2, "resnet": 2, "lstm": 4, "transformer": 2}
# Modes whose runs need other counts: XLA runs time epochs from the third on; eager TensorFlow's
# epochs take ~1-2 s, so one or two timed epochs already hold seconds of steady state.
MODE_EPOCHS = {
    ("tensorflow", "xla"): {"mnist_cnn": 4, "resnet": 4, "lstm": 8, "transformer": 5},
    ("tensorflow", "eager"): {"mlp": 3, "cnn": 2, "mnist_cnn": 3, "resnet": 2, "lstm": 3, "transformer": 2},
}
QUICK_MODE_EPOCHS = {
    ("tensorflow", "xla"): {"mnist_cnn": 3, "resnet": 3, "transformer": 3},
    ("tensorflow", "eager"): {"mlp": 2, "cnn": 2, "lstm": 2},
}
REPEATS, QUICK_REPEATS = 5, 2
# Informational variants (--informational), each reported as a ratio to the same reference.
INFORMATIONAL = ("engine_unrecorded", "reference_dataloader", "reference_choice")


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


def engine_spec(framework: str, model: str, mode: str, epochs: int, samples: Optional[int]):
    """The RunSpec of one engine run: the model's defaults on its benchmark data, CPU, this mode."""
    from engine.spec import RunSpec

    # What runs after training is in no epoch time: the inference benchmark (off, it saves a
    # compile per batch size in the compiled modes) and, where this engine has them, the
    # calibration window and operator profile.
    after_training = {"inference_iters": 0, "calibration_steps": 0, "profile_steps": 0}
    known = {f.name for f in fields(RunSpec)}
    return RunSpec.with_model_defaults(
        framework, model, MODEL_DATASETS[model], epochs=epochs, seed=SEED, device="cpu", mode=mode,
        synthetic_size=samples, **{name: value for name, value in after_training.items() if name in known})


def _engine_run(spec, data, sessions, recorded: bool, samples_per_epoch: int, events: dict) -> list[float]:
    """Epoch times of one engine run; recorded=True wires Recorder + Monitor as engine.runner does."""
    from db import queries
    from engine.backends import get_backend
    from engine.loop import train
    from engine.recorder import Recorder
    from engine.runner import start_instruments

    backend = get_backend(spec.framework, spec.device)
    if not recorded:
        sink = _EpochTimes()
        summary = train(spec, backend, data, sink)
        _check_engine_work(summary, spec, samples_per_epoch)
        return sink.epoch_time_s

    with sessions.begin() as s:
        run_id = queries.create_run(s, spec.to_dict(), group_tag="bench-loop-overhead").id
        queries.claim_run(s, run_id, os.getpid(), "bench")
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
    events.setdefault("compile_events", summary.get("compile_events", {}))
    with sessions.begin() as s:
        queries.finish_run(s, run_id, summary)
        frame = queries.metric_frame(s, [run_id], ["epoch_time_s"])
    # Read back from the database: the times a real run records, and proof that it recorded them.
    times = frame.sort_values("epoch")["value"].tolist()
    if len(times) != spec.epochs:
        raise RuntimeError(f"run {run_id} recorded {len(times)} epoch_time_s points, expected {spec.epochs}")
    return times


def _check_engine_work(summary: dict, spec, samples_per_epoch: int) -> None:
    """The engine must run the mode asked for and train the samples per epoch the reference trains."""
    if summary.get("mode") != spec.mode:
        raise RuntimeError(f"engine ran mode={summary.get('mode')!r}, the benchmark asked for {spec.mode!r}")
    if summary["steps_per_epoch"] * spec.batch_size != samples_per_epoch:
        raise RuntimeError(f"engine trained {summary['steps_per_epoch']} steps of {spec.batch_size} an epoch; "
                           f"the reference trains {samples_per_epoch} samples")


def _variants(spec, data, weights, sessions, samples_per_epoch: int, informational: bool,
              events: dict) -> dict[str, Callable[[], list[float]]]:
    """The runs to alternate for one (model, mode): engine and reference, plus the informational ones asked for."""
    framework, model, mode = spec.framework, spec.model, spec.mode
    engine = partial(_engine_run, spec, data, samples_per_epoch=samples_per_epoch, events=events)
    reference = partial(train_reference, framework, model, mode, spec.epochs, data, weights,
                        {"lr": spec.lr, "batch_size": spec.batch_size}, SEED)
    variants = {ENGINE: partial(engine, sessions, recorded=True), REFERENCE: reference}
    if informational:
        variants["engine_unrecorded"] = partial(engine, None, recorded=False)
        if framework == "torch":
            variants["reference_dataloader"] = partial(reference, use_loader=True)
        if (framework, model) in CHOICE_VARIANTS:
            variants["reference_choice"] = partial(reference, choice=True)
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


def _compiler_stats(framework: str, mode: str, events: dict) -> dict[str, Any]:
    """What torch.compile did in this (model, mode), engine and reference together; what the engine saw it refuse."""
    if framework != "torch" or mode != "compiled":
        return {}
    from torch._dynamo.utils import counters

    return {"unique_graphs": int(counters["stats"]["unique_graphs"]),
            "graph_breaks": int(sum(counters["graph_break"].values())),
            "not_compiled": events.get("compile_events", {}).get("not_compiled", [])}


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
    print(f"progress: {message}", file=sys.stderr, flush=True)


def run_worker(framework: str, models: list[str], plan: dict[str, dict[str, dict]], repeats: int,
               informational: bool) -> dict[str, Any]:
    """Check, then time, every variant of every (model, mode) for one framework, interleaved; epoch times per run.

    plan: {mode: {model: {"epochs": N, "samples": S or None}}}.
    """
    from bench import same_network
    from db.session import make_sessionmaker
    from engine.data import load_spec
    from engine.weights import initial_weights

    started = time.perf_counter()
    if framework == "tensorflow":
        import tensorflow as tf

        # Every run builds a new backend and so new tf.functions; TensorFlow warns about that
        # "retracing" across runs, which is this benchmark's doing, not something a run does.
        tf.get_logger().setLevel("ERROR")
    modes = list(plan)
    report: dict[str, Any] = {"framework": framework, "modes": modes, "repeats": repeats, "plan": plan,
                              "loss_check": {}, "data": {}, "samples_per_epoch": {}, "hyperparameters": {},
                              "compiler": {}, "group_wall_s": {}, "epoch_time_s": {}}
    with tempfile.TemporaryDirectory(prefix="arena-bench-") as tmp:
        sessions = make_sessionmaker(f"sqlite:///{Path(tmp) / 'bench.db'}")
        for model in models:
            datasets: dict[Optional[int], Any] = {}  # by samples: the modes that share a size share the data
            for key in ("epoch_time_s", "compiler", "group_wall_s", "samples_per_epoch"):
                report[key][model] = {}
            for mode in modes:
                epochs, samples = plan[mode][model]["epochs"], plan[mode][model]["samples"]
                spec = engine_spec(framework, model, mode, epochs, samples)
                if spec.optimizer != "adam":
                    raise ValueError(f"optimizer={spec.optimizer!r}: the reference loops are written for adam")
                if samples not in datasets:
                    datasets[samples] = load_spec(spec)
                data = datasets[samples]
                weights = initial_weights(model, tuple(data.x_train.shape[1:]), data.num_outputs, SEED)
                if model not in report["loss_check"]:
                    _progress(f"{framework} {model}: checking the reference's loss against the engine's")
                    check_spec = engine_spec(framework, model, "eager", 1, samples)  # eager: nothing to compile
                    report["loss_check"][model] = same_network.check(framework, model, check_spec, data, weights, SEED)
                    report["data"][model] = {"dataset": spec.dataset, "input_shape": list(data.x_train.shape[1:])}
                    report["hyperparameters"][model] = {"batch_size": spec.batch_size, "lr": spec.lr}
                samples_per_epoch = full_batch_samples(len(data.x_train), spec.batch_size)
                report["samples_per_epoch"][model][mode] = samples_per_epoch
                group_started = time.perf_counter()
                _fresh_compiler(framework)
                events: dict = {}
                variants = _variants(spec, data, weights, sessions, samples_per_epoch, informational, events)
                _progress(f"{framework} {model} {mode}: {repeats} x {', '.join(variants)}, {epochs} epochs of "
                          f"{samples_per_epoch} samples each (worker at {group_started - started:.0f} s)")
                runs: dict[str, list[list[float]]] = {name: [] for name in variants}
                for repeat in range(repeats):
                    # AB BA AB ...: reversing every other repeat cancels a linear drift within each pair.
                    order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
                    for name in order:
                        runs[name].append(variants[name]())
                report["epoch_time_s"][model][mode] = runs
                report["compiler"][model][mode] = _compiler_stats(framework, mode, events)
                report["group_wall_s"][model][mode] = time.perf_counter() - group_started
        sessions.kw["bind"].dispose()
    report["info"] = _framework_info(framework)
    report["warmup_epochs"] = {mode: warmup_epochs(framework, mode) for mode in modes}
    return report


# Parent: plan, spawn workers, print ---------------------------------------------------------

def _parse_counts(text: str) -> dict[str, int]:
    pairs = dict(item.split("=", 1) for item in text.split(","))
    return {model: int(value) for model, value in pairs.items()}


def run_plan(framework: str, modes: list[str], models: list[str], quick: bool, epochs_override: dict[str, int],
             samples_override: dict[str, int]) -> dict[str, dict[str, dict]]:
    """{mode: {model: {"epochs", "samples"}}}: the defaults, the slower modes' own figures, then the overrides."""
    base = QUICK_EPOCHS if quick else EPOCHS
    per_mode = QUICK_MODE_EPOCHS if quick else MODE_EPOCHS
    plan: dict[str, dict[str, dict]] = {}
    for mode in modes:
        epochs = {**base, **per_mode.get((framework, mode), {}), **epochs_override}
        samples = {**SAMPLES, **MODE_SAMPLES.get((framework, mode), {}), **samples_override}
        plan[mode] = {model: {"epochs": epochs[model], "samples": samples.get(model)} for model in models}
    return plan


def main(argv: Optional[list[str]] = None) -> int:
    all_modes = tuple(dict.fromkeys(mode for framework in FRAMEWORKS for mode in LOOP_MODES[framework]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: fewer epochs and repeats")
    parser.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated subset")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--modes", default=",".join(all_modes),
                        help="comma-separated subset of " + "; ".join(f"{f}: {', '.join(LOOP_MODES[f])}" for f in FRAMEWORKS)
                        + " (each framework runs the ones it has)")
    parser.add_argument("--repeats", type=int,
                        help=f"engine/reference pairs (default {REPEATS}, quick {QUICK_REPEATS})")
    parser.add_argument("--epochs", help="per model, every mode, e.g. mlp=24,cnn=5 (epoch 1, in xla mode 1-2, "
                                         "is warm-up and not timed)")
    parser.add_argument("--samples", help="training samples per epoch of a synthetic-data model, every mode, "
                                          "e.g. resnet=512 (" + ", ".join(SAMPLES) + ")")
    parser.add_argument("--informational", action="store_true",
                        help="also time the engine without Recorder/Monitor, PyTorch's DataLoader loop and the "
                             "reference with the engine's fairness choice flipped, as ratios to the reference")
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    parser.add_argument("--worker-plan", help=argparse.SUPPRESS)  # JSON: run_plan's answer
    args = parser.parse_args(argv)

    models, frameworks, modes = args.models.split(","), args.frameworks.split(","), args.modes.split(",")
    for name, chosen, allowed in (("model", models, MODELS), ("framework", frameworks, FRAMEWORKS),
                                  ("mode", modes, all_modes)):
        unknown = [c for c in chosen if c not in allowed]
        if unknown:
            parser.error(f"{name}={unknown[0]!r}: expected one of {', '.join(allowed)}")
    modes_by_framework = {f: [m for m in LOOP_MODES[f] if m in modes] for f in frameworks}
    if not any(modes_by_framework.values()):
        parser.error(f"modes={args.modes!r}: none of them is a mode of {', '.join(frameworks)}")
    overrides: dict[str, dict[str, int]] = {}
    for option, text, allowed in (("--epochs", args.epochs, MODELS), ("--samples", args.samples, tuple(SAMPLES))):
        try:
            overrides[option] = _parse_counts(text) if text else {}
        except ValueError:
            parser.error(f"{option}={text!r}: expected e.g. {allowed[-1]}=4,{allowed[0]}=2")
        unknown = [m for m in overrides[option] if m not in allowed]
        if unknown:
            parser.error(f"{option} names model {unknown[0]!r}: expected one of {', '.join(allowed)}")
    for model, samples in overrides["--samples"].items():
        batch = 64  # every synthetic-data model's default batch
        if samples < batch:
            parser.error(f"--samples {model}={samples}: need at least one full batch of {batch}")
    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)
    if repeats < 1:
        parser.error(f"--repeats={repeats}: need at least 1")

    if args.worker:
        worker = run_worker(args.worker, models, json.loads(args.worker_plan), repeats, args.informational)
        print(json.dumps(worker))
        return 0

    # Every framework's plan is checked before the first worker starts, not minutes into the run.
    plans = {f: run_plan(f, modes_by_framework[f], models, args.quick, overrides["--epochs"], overrides["--samples"])
             for f in frameworks if modes_by_framework[f]}  # e.g. --modes xla: nothing for torch to run
    for framework, plan in plans.items():
        for mode, by_model in plan.items():
            warmup = warmup_epochs(framework, mode)
            short = {model: entry["epochs"] for model, entry in by_model.items() if entry["epochs"] <= warmup}
            if short:
                parser.error(f"epochs={short} in {framework} {mode} mode: need more than {warmup} per model "
                             f"(the first {warmup} are warm-up, not timed)")
    started = time.perf_counter()
    workers = []
    for framework, plan in plans.items():
        print(f"running {framework} worker ...", file=sys.stderr, flush=True)
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", framework, "--models", ",".join(models),
                   "--repeats", str(repeats), "--worker-plan", json.dumps(plan)]
        workers.append(spawn_worker(framework, command + (["--informational"] if args.informational else [])))
    rows = [row for worker in workers for row in summarise(worker)]
    print(format_report(workers, rows, time.perf_counter() - started))
    if args.json:
        print(json.dumps({"goal_ratio": GOAL_RATIO, "workers": workers, "rows": rows}))
    return 0  # a benchmark reports; it does not assert


if __name__ == "__main__":
    sys.exit(main())
