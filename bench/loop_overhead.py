"""Arena's engine against an idiomatic training loop, per framework, measured side by side.

`python bench/loop_overhead.py [--quick] [--json]`

Engine side: what a real run does -- engine.loop.train with a Recorder writing to a temporary
SQLite database and a Monitor sampling, exactly as engine.runner wires them. Reference side: the
loop each framework's own examples write (pytorch/examples: index slicing of pre-made tensors;
Keras: compile + fit). Same model, batch size, Adam settings and initial weights on both sides.

Throughput is steady-state samples/s over epochs >= 2 (epoch 1 traces and warms allocators).
Engine and reference repeats alternate in one process (AB BA AB ...) so drift on a noisy machine
cancels in each pair; the reported ratio is the median of the per-pair ratios. One worker
subprocess per framework: torch and tensorflow never share a process.
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
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional

import psutil

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere: `engine` and `db` import from the repo

FRAMEWORKS = ("torch", "tensorflow")
MODELS = ("mlp", "cnn")
DATASET = "digits"
SEED = 0
GOAL_RATIO = 0.97
# Average load from other processes above which the report warns that its ratios are noisy.
NOISY_LOAD_CORES = 0.25
# Epochs per run: about 1.5-2.5 s of steady state each (an mlp epoch takes ~60 ms, a cnn epoch
# ~0.45 s). On this 2-core VM epoch times wander by +-10% over seconds even when it is idle, so
# many short alternating runs cancel that drift better than a few long ones.
EPOCHS = {"mlp": 24, "cnn": 5}
QUICK_EPOCHS = {"mlp": 8, "cnn": 3}
REPEATS, QUICK_REPEATS = 5, 2

ENGINE, REFERENCE = "engine", "reference"
# Informational variants, each reported as a ratio to the same reference.
VARIANT_LABELS = {
    ENGINE: "engine (Recorder + Monitor, SQLite)",
    REFERENCE: "reference",
    "engine_unrecorded": "engine loop only, no Recorder/Monitor",
    "reference_dataloader": "reference with DataLoader(TensorDataset)",
}
REFERENCE_LABELS = {
    "torch": "shuffled index slicing of pre-made tensors",
    "tensorflow": "keras compile + fit(shuffle=True)",
}


# Worker (one framework per process) ---------------------------------------------------------

class _EpochTimes:
    """A MetricSink that keeps only epoch_time_s: the engine loop without any recording."""

    def __init__(self) -> None:
        self.epoch_time_s: list[float] = []

    def step_losses(self, points: list[tuple[int, int, float]]) -> None:
        pass

    def epoch_metrics(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.epoch_time_s.append(metrics["epoch_time_s"])

    def progress(self, epoch: int, step: int) -> None:
        pass


def _engine_run(framework: str, model: str, epochs: int, data, sessions, recorded: bool) -> list[float]:
    """Epoch times of one engine run; recorded=True wires Recorder + Monitor as engine.runner does."""
    from db import queries
    from engine.backends import get_backend
    from engine.loop import train
    from engine.monitor import Monitor, Nvml
    from engine.recorder import Recorder
    from engine.spec import RunSpec

    spec = RunSpec.with_model_defaults(framework, model, DATASET, epochs=epochs, seed=SEED, device="cpu")
    backend = get_backend(framework, spec.device)
    if not recorded:
        sink = _EpochTimes()
        train(spec, backend, data, sink)
        return sink.epoch_time_s

    with sessions.begin() as s:
        run_id = queries.create_run(s, spec.to_dict(), group_tag="bench-loop-overhead").id
        queries.claim_run(s, run_id, os.getpid(), socket.gethostname())
    recorder = Recorder(sessions, run_id).start()
    nvml, _ = Nvml.load()
    monitor = Monitor(recorder.samples, os.getpid(), framework, backend.memory_stats, nvml, backend.gpu_index).start()
    try:
        summary = train(spec, backend, data, recorder)
    finally:
        monitor.stop()
        recorder.close()
        if nvml:
            nvml.shutdown()
    if recorder.flush_error is not None:
        raise RuntimeError(f"recorder failed to flush during the run: {recorder.flush_error!r}")
    with sessions.begin() as s:
        queries.finish_run(s, run_id, summary)
        frame = queries.metric_frame(s, [run_id], ["epoch_time_s"])
    # Read back from the database: the times a real run records, and proof that it recorded them.
    times = frame.sort_values("epoch")["value"].tolist()
    if len(times) != epochs:
        raise RuntimeError(f"run {run_id} recorded {len(times)} epoch_time_s points, expected {epochs}")
    return times


def _torch_net(model: str, weights: dict):
    """The model as a PyTorch user writes it (NCHW, plain nn.Flatten), loaded with the canonical weights."""
    import numpy as np
    import torch
    from torch import nn

    if model == "mlp":
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    else:
        net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 64, 128), nn.ReLU(), nn.Linear(128, 10),
        )
    canonical = dict(weights)
    if model == "cnn":
        # Canonical dense rows are in HWC order; a plain nn.Flatten reads CHW, so reorder them once.
        kernel = canonical["dense1/kernel"]
        canonical["dense1/kernel"] = kernel.reshape(4, 4, 64, 128).transpose(2, 0, 1, 3).reshape(-1, 128)
    layers = [m for m in net if isinstance(m, (nn.Linear, nn.Conv2d))]
    kernel_names = [name for name in canonical if name.endswith("/kernel")]
    with torch.no_grad():
        for layer, name in zip(layers, kernel_names, strict=True):
            kernel = canonical[name]
            kernel = kernel.T if kernel.ndim == 2 else kernel.transpose(3, 2, 0, 1)  # (out,in) / OIHW
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
            layer.bias.copy_(torch.from_numpy(canonical[name.replace("/kernel", "/bias")]))
    return net


def _torch_reference(model: str, epochs: int, data, weights, hparams, use_loader: bool) -> list[float]:
    """The pytorch/examples loop: model.train(); zero_grad; cross_entropy; backward; step."""
    import torch
    from torch.nn import functional as F

    torch.manual_seed(SEED)
    net = _torch_net(model, weights)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    if model == "cnn":
        x = x.permute(0, 3, 1, 2).contiguous()  # NCHW once, up front
    optimizer = torch.optim.Adam(net.parameters(), lr=hparams["lr"], eps=1e-8)
    batch, n = hparams["batch_size"], len(x)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True)

    def batches():
        if use_loader:
            yield from loader
            return
        order = torch.randperm(n)
        for start in range(0, n, batch):
            index = order[start:start + batch]
            yield x[index], y[index]

    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        net.train()
        for xb, yb in batches():
            optimizer.zero_grad()
            loss = F.cross_entropy(net(xb), yb)
            loss.backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def _keras_net(model: str, weights: dict):
    """The model as a Keras user writes it, loaded with the canonical (Keras-layout) weights."""
    import keras

    layers = keras.layers
    if model == "mlp":
        net = keras.Sequential([keras.Input((8, 8, 1)), layers.Flatten(),
                                layers.Dense(128, activation="relu"), layers.Dense(10)])
    else:
        net = keras.Sequential([
            keras.Input((8, 8, 1)),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2), layers.Flatten(),
            layers.Dense(128, activation="relu"), layers.Dense(10),
        ])
    net.set_weights(list(weights.values()))
    return net


def _keras_reference(model: str, epochs: int, data, weights, hparams) -> list[float]:
    """Keras's own way: compile(Adam, sparse CE from logits), fit(shuffle=True), epochs timed by a callback."""
    import keras

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._start)

    keras.utils.set_random_seed(SEED)
    net = _keras_net(model, weights)
    net.compile(optimizer=keras.optimizers.Adam(hparams["lr"], epsilon=1e-8),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    timer = EpochTimer()
    net.fit(data.x_train, data.y_train, batch_size=hparams["batch_size"], epochs=epochs,
            shuffle=True, verbose=0, callbacks=[timer])
    return timer.times


def _framework_info(framework: str) -> dict[str, Any]:
    if framework == "torch":
        import torch

        return {"version": torch.__version__, "intra_op_threads": torch.get_num_threads()}
    import keras
    import tensorflow as tf

    return {"version": tf.__version__, "keras_version": keras.__version__,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads()}


def run_worker(framework: str, models: list[str], epochs: dict[str, int], repeats: int) -> dict[str, Any]:
    """All variants of every model for one framework, interleaved; epoch times per run."""
    from db.session import make_sessionmaker
    from engine.catalog import DATASETS, MODELS as MODEL_INFO
    from engine.data import load
    from engine.weights import initial_weights

    data = load(DATASET, SEED)
    info = DATASETS[DATASET]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="arena-bench-") as tmp:
        sessions = make_sessionmaker(f"sqlite:///{Path(tmp) / 'bench.db'}")
        for model in models:
            hparams = MODEL_INFO[model].defaults
            if hparams["optimizer"] != "adam":
                raise ValueError(f"optimizer={hparams['optimizer']!r}: the reference loops are written for adam")
            weights = initial_weights(model, info.input_shape, data.num_outputs, SEED)
            run_epochs = epochs[model]
            variants: dict[str, Callable[[], list[float]]] = {
                ENGINE: partial(_engine_run, framework, model, run_epochs, data, sessions, recorded=True),
                REFERENCE: (
                    partial(_torch_reference, model, run_epochs, data, weights, hparams, use_loader=False)
                    if framework == "torch" else partial(_keras_reference, model, run_epochs, data, weights, hparams)
                ),
                "engine_unrecorded": partial(_engine_run, framework, model, run_epochs, data, None, recorded=False),
            }
            if framework == "torch":
                variants["reference_dataloader"] = partial(
                    _torch_reference, model, run_epochs, data, weights, hparams, use_loader=True)
            runs: dict[str, list[list[float]]] = {name: [] for name in variants}
            for repeat in range(repeats):
                # AB BA AB ...: reversing every other repeat cancels a linear drift within each pair.
                order = list(variants) if repeat % 2 == 0 else list(reversed(variants))
                for name in order:
                    runs[name].append(variants[name]())
            results[model] = runs
        sessions.kw["bind"].dispose()
    return {"framework": framework, "info": _framework_info(framework), "n_train": len(data.x_train),
            "epochs": {m: epochs[m] for m in models}, "repeats": repeats,
            "hyperparameters": {m: MODEL_INFO[m].defaults for m in models}, "epoch_time_s": results}


# Parent: spawn workers, summarise, print --------------------------------------------------

def steady_samples_per_s(epoch_times: list[float], n_train: int) -> float:
    """Samples/s of one run over epochs >= 2 (epoch 1 traces and warms allocators)."""
    steady = epoch_times[1:]
    return n_train * len(steady) / sum(steady)


def summarise(worker: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (model, variant): median samples/s and the median of per-repeat ratios to the reference."""
    rows = []
    for model, runs in worker["epoch_time_s"].items():
        rates = {name: [steady_samples_per_s(t, worker["n_train"]) for t in times] for name, times in runs.items()}
        for name, values in rates.items():
            ratios = [v / r for v, r in zip(values, rates[REFERENCE])]
            rows.append({
                "framework": worker["framework"], "model": model, "variant": name,
                "samples_per_s": statistics.median(values), "samples_per_s_runs": values,
                "ratio_to_reference": statistics.median(ratios),
                "ratio_min": min(ratios), "ratio_max": max(ratios),
            })
    return rows


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (or stolen by the hypervisor) since boot."""
    t = psutil.cpu_times()
    # guest time is already counted in user time; steal is capacity this VM did not get.
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def spawn_worker(framework: str, models: list[str], epochs: dict[str, int], repeats: int) -> dict[str, Any]:
    """Run one framework's worker process; its JSON plus how busy other processes kept the machine."""
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", framework,
               "--models", ",".join(models), "--repeats", str(repeats),
               "--epochs", ",".join(f"{m}={epochs[m]}" for m in models)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    busy, children, started = _busy_cpu_s(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, check=False)
    wall_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu_s = (after.ru_utime - children.ru_utime) + (after.ru_stime - children.ru_stime)
    if result.returncode != 0:
        raise RuntimeError(f"{framework} worker exited {result.returncode}:\n{result.stderr[-4000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["wall_s"] = wall_s
    # The benchmark cannot stop other processes, but it can say how much of the machine they took.
    report["other_load_cores"] = max(0.0, (_busy_cpu_s() - busy - worker_cpu_s) / wall_s)
    return report


def format_report(workers: list[dict[str, Any]], rows: list[dict[str, Any]], elapsed_s: float) -> str:
    """The header (setup, versions, background load) and the ratio tables."""
    first, cores = workers[0], os.cpu_count()
    epochs = ", ".join(f"{model} {count}" for model, count in first["epochs"].items())
    hparams = {(h["batch_size"], h["lr"]) for h in first["hyperparameters"].values()}
    settings = "; ".join(f"batch {batch}, Adam lr {lr:g} eps 1e-8" for batch, lr in sorted(hparams))
    lines = [
        f"Arena loop overhead, CPU ({cores} cores): {DATASET} ({first['n_train']} training samples), {settings}, "
        "same initial weights on both sides",
        f"{first['repeats']} repeats alternating engine/reference (AB BA ...), epochs per run: {epochs}",
        "samples/s per run: epochs >= 2 (epoch_time_s); shown: median over runs; ratio: median of per-pair ratios",
    ]
    for worker in workers:
        details = ", ".join(f"{key} {value}" for key, value in worker["info"].items())
        lines.append(f"  {worker['framework']} ({details}): reference = {REFERENCE_LABELS[worker['framework']]}; "
                     f"worker {worker['wall_s']:.0f} s, other processes busy {worker['other_load_cores']:.2f} cores")
    if any(worker["other_load_cores"] > NOISY_LOAD_CORES for worker in workers):
        lines.append(f"  WARNING: other processes kept more than {NOISY_LOAD_CORES} cores busy: the ratios are noisy "
                     "(see pair range); rerun on a quiet machine")

    header = (f"{'framework':<11} {'model':<5} {'engine samples/s':>16} {'reference samples/s':>19} "
              f"{'engine/reference':>16} {'pair range':>11}  goal >= {GOAL_RATIO}")
    lines += ["", header, "-" * len(header)]
    by_key = {(row["framework"], row["model"], row["variant"]): row for row in rows}
    for worker in workers:
        framework = worker["framework"]
        for model in worker["epoch_time_s"]:
            engine, reference = by_key[framework, model, ENGINE], by_key[framework, model, REFERENCE]
            verdict = "ok" if engine["ratio_to_reference"] >= GOAL_RATIO else "BELOW GOAL"
            lines.append(f"{framework:<11} {model:<5} {engine['samples_per_s']:>16,.0f} "
                         f"{reference['samples_per_s']:>19,.0f} {engine['ratio_to_reference']:>16.3f} "
                         f"{_pair_range(engine)}  {verdict}")

    informational = [row for row in rows if row["variant"] not in (ENGINE, REFERENCE)]
    if informational:
        header = (f"{'informational':<17} {'model':<5} {'variant':<42} {'samples/s':>10} {'/reference':>10} "
                  f"{'pair range':>11}")
        lines += ["", header, "-" * len(header)]
        for row in informational:
            lines.append(f"{row['framework']:<17} {row['model']:<5} {VARIANT_LABELS[row['variant']]:<42} "
                         f"{row['samples_per_s']:>10,.0f} {row['ratio_to_reference']:>10.3f} {_pair_range(row)}")
    lines += ["", f"total {elapsed_s:.0f} s"]
    return "\n".join(lines)


def _pair_range(row: dict[str, Any]) -> str:
    return f"{row['ratio_min']:>5.2f}-{row['ratio_max']:<5.2f}"


def _parse_epochs(text: str) -> dict[str, int]:
    pairs = dict(item.split("=", 1) for item in text.split(","))
    return {model: int(value) for model, value in pairs.items()}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke mode: fewer epochs and repeats")
    parser.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    parser.add_argument("--frameworks", default=",".join(FRAMEWORKS), help="comma-separated subset")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset")
    parser.add_argument("--repeats", type=int,
                        help=f"engine/reference pairs (default {REPEATS}, quick {QUICK_REPEATS})")
    parser.add_argument("--epochs", help="per model, e.g. mlp=24,cnn=5 (epochs >= 2 are timed)")
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    models = args.models.split(",")
    frameworks = args.frameworks.split(",")
    for name, chosen, allowed in (("model", models, MODELS), ("framework", frameworks, FRAMEWORKS)):
        unknown = [c for c in chosen if c not in allowed]
        if unknown:
            parser.error(f"{name}={unknown[0]!r}: expected one of {', '.join(allowed)}")
    epochs = dict(QUICK_EPOCHS if args.quick else EPOCHS)
    if args.epochs:
        try:
            epochs.update(_parse_epochs(args.epochs))
        except ValueError:
            parser.error(f"--epochs={args.epochs!r}: expected e.g. mlp=24,cnn=5")
    if any(epochs[m] < 2 for m in models):
        parser.error(f"epochs={epochs}: need at least 2 per model (epoch 1 is warm-up, not timed)")
    repeats = args.repeats or (QUICK_REPEATS if args.quick else REPEATS)

    if args.worker:
        print(json.dumps(run_worker(args.worker, models, epochs, repeats)))
        return 0

    started = time.perf_counter()
    workers = []
    for framework in frameworks:
        print(f"running {framework} worker ...", file=sys.stderr, flush=True)
        workers.append(spawn_worker(framework, models, epochs, repeats))
    rows = [row for worker in workers for row in summarise(worker)]
    print(format_report(workers, rows, time.perf_counter() - started))
    if args.json:
        print(json.dumps({"goal_ratio": GOAL_RATIO, "workers": workers, "rows": rows}))
    return 0  # a benchmark reports; it does not assert


if __name__ == "__main__":
    sys.exit(main())
