"""The small interface both framework backends implement (mirror images, same method order)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np

from engine.spec import RunSpec


class Backend(ABC):
    """One framework: builds a model from canonical weights, trains a step, evaluates, predicts."""

    name: str

    @abstractmethod
    def __init__(self, device: str) -> None:
        """Resolve 'auto' | 'cpu' | 'cuda:N' to a device this framework sees, or raise naming it."""

    @abstractmethod
    def build(self, spec: RunSpec, task: str, weights: Optional[dict[str, np.ndarray]],
              input_shape: tuple[int, ...], num_outputs: int) -> int:
        """Create model, loss and optimizer in the spec's mode and precision; return the trainable parameter count.

        weights=None keeps the framework's own initialisers (the spec's same_init=False).
        """

    @abstractmethod
    def settings(self) -> dict[str, Any]:
        """What the run really uses: mode, compute_dtype, loss_scaling, tf32, layout, deterministic."""

    @abstractmethod
    def to_device(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        """Move (already ordered) inputs and targets onto the device, in the run's layout."""

    @abstractmethod
    def native_pipeline(self, spec: RunSpec, data: Any) -> Any:
        """The framework's own input pipeline over data (an engine.data.Dataset), as engine.pipeline.Pipeline."""

    @abstractmethod
    def train_step(self, x: Any, y: Any) -> Any:
        """One optimizer step on a batch; return the loss as a device scalar (no host sync)."""

    @abstractmethod
    def losses_to_floats(self, losses: Sequence[Any]) -> list[float]:
        """Bring a list of device loss scalars to the host in one transfer."""

    @abstractmethod
    def evaluate(self, x: np.ndarray, y: np.ndarray, batch_size: int) -> dict[str, float]:
        """Test metrics in inference mode: test_loss plus test_accuracy or phi_estimate."""

    @abstractmethod
    def predict(self, x: Any) -> Any:
        """One forward pass in inference mode and the run's execution mode, on device inputs."""

    @abstractmethod
    def named_parameters_canonical(self) -> list[tuple[str, np.ndarray]]:
        """Every trainable tensor as (canonical name, float32 array in the canonical layout), in weights.py's order."""

    @abstractmethod
    def canonical_weights(self) -> dict[str, np.ndarray]:
        """Every tensor of the model (batch-norm moving statistics too) by canonical name, float32, canonical layout."""

    @abstractmethod
    def fixed_batch_gradients(self, x: np.ndarray, y: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """Loss gradients on one host batch at the current weights, named and ordered as named_parameters_canonical.

        Inference mode (dropout off, batch norm on its moving statistics): no random mask differs
        between the frameworks, and no optimizer step or moving-statistics update happens.
        """

    @abstractmethod
    def synchronize(self) -> None:
        """Wait until all queued device work is done, so a timer reads real elapsed time."""

    @property
    @abstractmethod
    def asynchronous(self) -> bool:
        """Whether the device runs ahead of the host (a GPU): then a step is timed only after synchronize()."""

    @abstractmethod
    def compile_events(self) -> dict[str, Any]:
        """What the framework traced or compiled so far, from its own counters: {} in a mode that compiles nothing."""

    @abstractmethod
    def memory_stats(self) -> list[tuple[str, float, str]]:
        """Framework allocator gauges as (name, value, unit); empty on the CPU, where neither framework keeps any."""

    @abstractmethod
    def reset_peak_memory(self) -> None:
        """Restart the allocator's peak counters from the current use; a no-op on the CPU."""

    @abstractmethod
    def peak_memory(self) -> dict[str, float]:
        """Allocator peaks in bytes since the last reset, e.g. {"allocated": ...}; {} on the CPU."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Framework version, CUDA/cuDNN versions and the device name, for the run's environment."""

    @property
    @abstractmethod
    def gpu_index(self) -> int | None:
        """CUDA ordinal of the device in use, or None on the CPU."""

    # Calibration and profiling after training (engine/calibration.py) -----------------------------
    @property
    @abstractmethod
    def backward_repeats_forward(self) -> bool:
        """Whether backward() runs the forward pass again (TensorFlow graphs), so calibration subtracts it."""

    @abstractmethod
    def forward_loss(self, x: Any, y: Any) -> Any:
        """A training step's first part: clear gradients, forward pass and loss; returns what backward() takes."""

    @abstractmethod
    def backward(self, forward: Any) -> Any:
        """The gradients of what forward_loss returned; returns what apply_gradients() takes."""

    @abstractmethod
    def apply_gradients(self, gradients: Any) -> None:
        """A training step's last part: the optimizer's update with the gradients backward() returned."""

    @abstractmethod
    def snapshot_training_state(self) -> Any:
        """A copy of every weight, buffer, optimizer slot and random-number state, for restore_training_state."""

    @abstractmethod
    def restore_training_state(self, state: Any) -> None:
        """Put back what snapshot_training_state copied: the model trains on as if nothing ran in between."""

    @abstractmethod
    def profile(self, run_steps: Callable[[], None], directory: Path) -> OperatorProfile:
        """Call run_steps() under the framework's profiler, its trace written into directory; return what it saw."""


def exception_chain(exc: BaseException, limit: int = 8) -> Iterator[BaseException]:
    """exc and the exceptions it was raised from, nearest first (as a traceback shows them)."""
    seen: set[int] = set()
    link: Optional[BaseException] = exc
    while link is not None and id(link) not in seen and len(seen) < limit:
        seen.add(id(link))
        yield link
        link = link.__cause__ if link.__cause__ is not None or link.__suppress_context__ else link.__context__


@dataclass(frozen=True)
class OperatorProfile:
    """What a framework's profiler saw over some training steps (Backend.profile)."""

    profiler: str  # e.g. "torch.profiler 2.13.0+cpu", "tf.profiler 2.21.0"
    measure: str  # what each operator's time is, e.g. "CPU self time", "GPU kernel time"
    operators: list[tuple[str, float, int]]  # (name, self milliseconds over all the steps, calls), any order
    trace_path: Path  # the trace file the profiler wrote, in the framework's own format
    trace_name: str  # the name to store it under: "trace.json", "profile.xplane.pb"
