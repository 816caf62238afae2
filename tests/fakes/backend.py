"""A framework backend without a framework, for fast in-process tests of engine/loop.py.

It trains nothing: each step returns the next loss of a given sequence (a NaN where a test wants a
divergence) after `step_s` of sleep, and it counts the device synchronisations the loop asks for.
`asynchronous=True` makes it a device that runs ahead of the host, as a GPU does, so the loop's
windowed timing can be exercised on a machine without one.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from engine.backends.base import Backend, OperatorProfile
from engine.pipeline import ArraysPipeline
from engine.weights import layer_shapes, parameter_count, trainable


class FakeBackend(Backend):
    name = "fake"

    def __init__(self, device: str = "cpu", asynchronous: bool = False, step_s: float = 0.0005,
                 losses: Optional[Sequence[float]] = None, slow_steps: Optional[dict[int, float]] = None,
                 batch_s: float = 0.0) -> None:
        self.device = device
        self._asynchronous = asynchronous
        self.step_s = step_s
        self.slow_steps = dict(slow_steps or {})  # {training step (1-based): its seconds instead of step_s}
        self._losses = list(losses) if losses is not None else None
        self.steps = 0
        self.synchronizations = 0
        self.step_shapes: list[tuple[int, ...]] = []
        self.batch_s = batch_s  # the native pipeline's seconds per batch, as a slow loader's

    def build(self, spec, task, weights, input_shape, num_outputs) -> int:
        self._spec, self._task = spec, task
        self._tensors = [(name, np.zeros(shape, np.float32))
                         for name, shape in layer_shapes(spec.model, input_shape, num_outputs) if trainable(name)]
        return parameter_count(spec.model, input_shape, num_outputs)

    def settings(self) -> dict[str, Any]:
        return {"mode": self._spec.mode, "compute_dtype": "float32", "loss_scaling": False, "tf32": False,
                "layout": "n/a", "deterministic": False}

    def to_device(self, x, y):
        return x, y

    def native_pipeline(self, spec, data):
        """The arrays pipeline, each batch `batch_s` late: a loader the step must wait for."""
        return _SlowPipeline(ArraysPipeline(spec, self, data), self.batch_s)

    def train_step(self, x, y):
        self.steps += 1
        self.step_shapes.append(tuple(np.shape(x)))
        time.sleep(self.slow_steps.get(self.steps, self.step_s))
        if self._losses is not None and self.steps <= len(self._losses):
            return self._losses[self.steps - 1]
        return 1.0 / self.steps

    def losses_to_floats(self, losses: Sequence[Any]) -> list[float]:
        return [float(loss) for loss in losses]

    def evaluate(self, x, y, batch_size) -> dict[str, float]:
        if self._task == "classification":
            return {"test_loss": 0.5, "test_accuracy": 0.9}
        return {"test_loss": 0.5, "phi_estimate": 2.0}

    def predict(self, x):
        return np.zeros((len(x), 1), np.float32)

    def named_parameters_canonical(self) -> list[tuple[str, np.ndarray]]:
        return list(self._tensors)

    def canonical_weights(self) -> dict[str, np.ndarray]:
        return dict(self._tensors)

    def fixed_batch_gradients(self, x, y) -> list[tuple[str, np.ndarray]]:
        return list(self._tensors)

    def synchronize(self) -> None:
        self.synchronizations += 1

    @property
    def asynchronous(self) -> bool:
        return self._asynchronous

    def compile_events(self) -> dict[str, Any]:
        return {}

    def memory_stats(self):
        return []

    def reset_peak_memory(self) -> None:
        pass

    def peak_memory(self) -> dict[str, float]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"framework": "fake", "framework_version": "0", "device": self.device}

    @property
    def gpu_index(self) -> Optional[int]:
        return None

    # Calibration and profiling after training (engine/calibration.py): each phase sleeps a third of
    # a step, the update really changes the tensors (so a test sees restore_training_state undo it),
    # and the "profiler" writes a one-event Chrome trace.
    @property
    def backward_repeats_forward(self) -> bool:
        return False

    def forward_loss(self, x, y):
        time.sleep(self.step_s / 3)
        return 1.0

    def backward(self, forward):
        time.sleep(self.step_s / 3)
        return [np.ones_like(tensor) for _, tensor in self._tensors]

    def apply_gradients(self, gradients) -> None:
        time.sleep(self.step_s / 3)
        self._tensors = [(name, tensor - gradient) for (name, tensor), gradient in zip(self._tensors, gradients)]

    def snapshot_training_state(self):
        return [(name, tensor.copy()) for name, tensor in self._tensors]

    def restore_training_state(self, state) -> None:
        self._tensors = [(name, tensor.copy()) for name, tensor in state]

    def profile(self, run_steps, directory: Path) -> OperatorProfile:
        start = time.perf_counter()
        run_steps()
        elapsed_us = (time.perf_counter() - start) * 1e6
        trace = directory / "trace.json"
        trace.write_text(json.dumps({"traceEvents": [{"name": "fake::step", "ph": "X", "ts": 0, "dur": elapsed_us,
                                                      "pid": 1, "tid": 1}]}))
        return OperatorProfile("fake profiler 0", "CPU self time", [("fake::step", elapsed_us / 1e3, 1)], trace,
                               "trace.json")


class RecordingSink:
    """A MetricSink that keeps everything it is sent, for assertions."""

    def __init__(self) -> None:
        self.steps: dict[str, list[tuple[int, int, float, float]]] = {}
        self.epochs: list[tuple[int, int, dict[str, float]]] = []
        self.progressed: list[tuple[int, int]] = []
        self.stats: list[dict] = []

    def step_metrics(self, name: str, points) -> None:
        self.steps.setdefault(name, []).extend(points)

    def epoch_metrics(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        self.epochs.append((epoch, step, dict(metrics)))

    def progress(self, epoch: int, step: int) -> None:
        self.progressed.append((epoch, step))

    def tensor_stats(self, rows: list[dict]) -> None:
        self.stats.extend(rows)


class _SlowPipeline:
    def __init__(self, inner: ArraysPipeline, batch_s: float) -> None:
        self.inner, self.batch_s = inner, batch_s

    def batches(self, epoch, order, steps):
        for batch in self.inner.batches(epoch, order, steps):
            time.sleep(self.batch_s)
            yield batch

    def settings(self):
        return {"pipeline": "native", "loader": f"the arrays, {self.batch_s * 1e3:g} ms late per batch"}

    def close(self) -> None:
        self.closed = True
