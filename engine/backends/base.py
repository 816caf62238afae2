"""The small interface both framework backends implement (mirror images, same method order)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Iterator, Optional, Sequence

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
    def fixed_batch_gradients(self, x: np.ndarray, y: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """Loss gradients on one host batch at the current weights, named and ordered as named_parameters_canonical.

        Inference mode (dropout off, batch norm on its moving statistics): no random mask differs
        between the frameworks, and no optimizer step or moving-statistics update happens.
        """

    @abstractmethod
    def synchronize(self) -> None:
        """Wait until all queued device work is done, so a timer reads real elapsed time."""

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


def exception_chain(exc: BaseException, limit: int = 8) -> Iterator[BaseException]:
    """exc and the exceptions it was raised from, nearest first (as a traceback shows them)."""
    seen: set[int] = set()
    link: Optional[BaseException] = exc
    while link is not None and id(link) not in seen and len(seen) < limit:
        seen.add(id(link))
        yield link
        link = link.__cause__ if link.__cause__ is not None or link.__suppress_context__ else link.__context__
