"""The small interface both framework backends implement (mirror images, same method order)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Sequence

import numpy as np


class Backend(ABC):
    """One framework: builds a model from canonical weights, trains a step, evaluates."""

    name: str

    @abstractmethod
    def __init__(self, device: str) -> None:
        """Resolve 'auto' | 'cpu' | 'cuda:N' to a device this framework sees, or raise naming it."""

    @abstractmethod
    def build(self, model: str, task: str, weights: dict[str, np.ndarray], input_shape: tuple[int, ...],
              num_outputs: int, optimizer: str, lr: float, seed: int) -> int:
        """Create model, loss and optimizer from canonical weights; return the parameter count."""

    @abstractmethod
    def to_device(self, x: np.ndarray, y: np.ndarray) -> tuple[Any, Any]:
        """Move one epoch of (already ordered) inputs and targets onto the device."""

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
    def synchronize(self) -> None:
        """Wait until all queued device work is done, so a timer reads real elapsed time."""

    @abstractmethod
    def memory_stats(self) -> list[tuple[str, float, str]]:
        """Framework allocator gauges as (name, value, unit); empty where the device has none."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """Framework version, CUDA/cuDNN versions and the device name, for the run's environment."""

    @property
    @abstractmethod
    def gpu_index(self) -> int | None:
        """CUDA ordinal of the device in use, or None on the CPU."""
