"""The one training loop, shared by both backends: epochs, data order, timing, metrics."""
from __future__ import annotations

import math
import time
from typing import Protocol

from engine.backends.base import Backend
from engine.catalog import DATASETS
from engine.data import Dataset, epoch_order
from engine.spec import RunSpec
from engine.weights import initial_weights

# Per-step losses stay on the device and come to the host in one transfer at most this often,
# so recording them costs no per-step synchronisation.
LOSS_DRAIN_INTERVAL_S = 0.25
EVAL_BATCH_SIZE = 1024


class MetricSink(Protocol):
    def step_losses(self, points: list[tuple[int, int, float]]) -> None: ...
    def epoch_metrics(self, epoch: int, step: int, metrics: dict[str, float]) -> None: ...
    def progress(self, epoch: int, step: int) -> None: ...


def steps_per_epoch(spec: RunSpec, train_size: int) -> int:
    """Optimizer steps in one epoch: every sample once (last batch may be short), or the cap."""
    steps = math.ceil(train_size / spec.batch_size)
    return min(steps, spec.max_steps_per_epoch) if spec.max_steps_per_epoch else steps


def train(spec: RunSpec, backend: Backend, data: Dataset, sink: MetricSink) -> dict:
    """Train per the spec, streaming metrics to the sink; return the run summary."""
    info = DATASETS[spec.dataset]
    weights = initial_weights(spec.model, info.input_shape, data.num_outputs, spec.seed)
    param_count = backend.build(
        spec.model, data.task, weights, info.input_shape, data.num_outputs, spec.optimizer, spec.lr, spec.seed
    )
    n_train, batch = len(data.x_train), spec.batch_size
    steps = steps_per_epoch(spec, n_train)
    summary: dict = {"param_count": param_count, "steps_per_epoch": steps, **data.info}
    global_step = 0
    first_step_s = None

    for epoch in range(1, spec.epochs + 1):
        order = epoch_order(n_train, spec.seed, epoch)
        backend.synchronize()
        start = time.perf_counter()
        x_epoch, y_epoch = backend.to_device(data.x_train[order], data.y_train[order])
        pending: list = []
        pending_steps: list[int] = []
        epoch_losses: list[float] = []
        last_drain = start
        samples = 0
        warmup_samples, warmup_s = 0, 0.0
        for i in range(steps):
            lo, hi = i * batch, min((i + 1) * batch, n_train)
            pending.append(backend.train_step(x_epoch[lo:hi], y_epoch[lo:hi]))
            global_step += 1
            samples += hi - lo
            pending_steps.append(global_step)
            if first_step_s is None:
                # The first step traces (tf.function) or warms allocators: timed and reported apart.
                backend.synchronize()
                first_step_s = time.perf_counter() - start
                warmup_samples, warmup_s = hi - lo, first_step_s
            now = time.perf_counter()
            if now - last_drain >= LOSS_DRAIN_INTERVAL_S:
                epoch_losses += _drain(backend, sink, pending, pending_steps, epoch)
                sink.progress(epoch - 1, global_step)
                last_drain = time.perf_counter()
        backend.synchronize()
        train_s = time.perf_counter() - start
        epoch_losses += _drain(backend, sink, pending, pending_steps, epoch)
        timed_samples, timed_s = samples - warmup_samples, train_s - warmup_s
        metrics = {
            "train_loss": sum(epoch_losses) / len(epoch_losses),
            "epoch_time_s": train_s,
            "samples_per_s": timed_samples / timed_s if timed_samples and timed_s > 0 else samples / train_s,
        }
        metrics.update(backend.evaluate(data.x_test, data.y_test, EVAL_BATCH_SIZE))
        if "phi_true" in data.info:
            metrics["phi_true"] = data.info["phi_true"]  # the target, plotted beside the estimate
        for name, value in metrics.items():
            if not math.isfinite(value):
                sink.epoch_metrics(epoch, global_step, metrics)
                raise FloatingPointError(f"{name} became {value} in epoch {epoch}: lower lr (now {spec.lr})?")
        sink.epoch_metrics(epoch, global_step, metrics)
        sink.progress(epoch, global_step)
        warmup_samples, warmup_s = 0, 0.0

    summary["first_step_s"] = first_step_s
    return summary


def _drain(backend, sink, pending, pending_steps, epoch) -> list[float]:
    """Move pending device losses to the host in one transfer, hand them to the sink, return them."""
    losses = backend.losses_to_floats(pending)
    sink.step_losses([(s, epoch, v) for s, v in zip(pending_steps, losses)])
    pending.clear()
    pending_steps.clear()
    return losses
