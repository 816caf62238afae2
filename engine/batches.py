"""The batches of one epoch, on the device: equal shapes by default, or the shapes a user asked to vary.

By default every step sees one shape: full batches only, the epoch's samples copied to the device
at once and sliced. Two spec options change the shape on purpose, the same way in both frameworks,
to show what a compiled step does then: last_batch="keep" adds the epoch's last, smaller batch, and
variable_length cuts every batch of token sequences to its own length (drawn from the seed and the
epoch). A shortened sequence keeps all its marker tokens and drops noise tokens only, so its label
(the marker that occurs most often) still holds.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

from engine.spec import RunSpec

Batch = tuple[Any, Any, int]  # device inputs, device targets, samples


def steps_per_epoch(spec: RunSpec, train_size: int) -> int:
    """Optimizer steps in one epoch: full batches only (or the cap), plus the last partial one if kept.

    The last partial batch is dropped by default, as benchmarks do: a batch of another size would
    recompile in compiled modes and put an odd step into the step-time distribution.
    """
    full = max(1, train_size // spec.batch_size)
    steps = math.ceil(train_size / spec.batch_size) if spec.last_batch == "keep" else full
    return min(steps, spec.max_steps_per_epoch) if spec.max_steps_per_epoch else steps


def epoch_batches(spec: RunSpec, backend, x: np.ndarray, y: np.ndarray, epoch: int,
                  num_classes: int) -> Callable[[int], Batch]:
    """batch(i) for step i of the epoch; x and y are the training set in this epoch's order (host arrays)."""
    n, size = len(x), spec.batch_size
    if not spec.variable_length:
        x_device, y_device = backend.to_device(x, y)
        return lambda i: (x_device[i * size:min((i + 1) * size, n)], y_device[i * size:min((i + 1) * size, n)],
                          min((i + 1) * size, n) - i * size)
    steps = steps_per_epoch(spec, n)
    lengths = batch_lengths(spec.seed, epoch, steps, x.shape[1], shortest_length(x, num_classes))
    batches = []
    for i, length in enumerate(lengths):
        lo, hi = i * size, min((i + 1) * size, n)
        batches.append((*backend.to_device(shortened(x[lo:hi], int(length), num_classes), y[lo:hi]), hi - lo))
    return batches.__getitem__


def shortest_length(x: np.ndarray, num_classes: int) -> int:
    """The shortest length every sequence keeps all its markers in, and at least half the full length."""
    return max(int((x <= num_classes).sum(axis=1).max()), x.shape[1] // 2)


def batch_lengths(seed: int, epoch: int, steps: int, full: int, shortest: int) -> np.ndarray:
    """A sequence length per step of an epoch, drawn from the seed and the epoch alone (never the framework)."""
    return np.random.default_rng([seed, epoch, 11]).integers(shortest, full + 1, steps)


def shortened(x: np.ndarray, length: int, num_classes: int) -> np.ndarray:
    """Each sequence cut to `length` tokens: every marker (ids 1..num_classes) kept, noise dropped from the end."""
    marker = x <= num_classes
    noise_rank = np.cumsum(~marker, axis=1) - 1
    keep = marker | (noise_rank < (length - marker.sum(axis=1, keepdims=True)))
    # Kept positions first, in their order: a stable sort of "dropped" flags.
    positions = np.argsort(~keep, axis=1, kind="stable")[:, :length]
    return np.take_along_axis(x, positions, axis=1)
