"""Per-layer weight and gradient statistics in plain numpy: what the loop records for tensor_stats.

Both backends hand over their tensors under the canonical names and in the canonical (Keras)
layout of engine/weights.py, so a row of a PyTorch run and a row of a TensorFlow run describe
the same numbers. Statistics are taken over the finite values; a statistic that is not finite
itself is None (NULL in the database).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

from engine.spec import MAX_HISTOGRAM_BINS

KINDS = ("weight", "grad")


def tensor_summary(values: np.ndarray, bins: int) -> dict[str, Any]:
    """numel, L2 norm, mean, std, min, max and a `bins`-bin histogram of the finite values.

    numel counts every element, so numel minus the histogram's total is the number of NaN/inf
    values. The bins are equal-width between min and max (a constant tensor's range is widened to
    value +- max(0.5, 1e-6 |value|)); std is the population one (ddof=0). No finite value: every
    statistic None.
    """
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or not 1 <= bins <= MAX_HISTOGRAM_BINS:
        raise ValueError(f"bins={bins!r}: expected a whole number in 1..{MAX_HISTOGRAM_BINS}")
    flat = np.asarray(values).ravel()
    # float64: a float32 sum of squares over many values overflows or rounds long before the values do.
    finite = flat[np.isfinite(flat)].astype(np.float64)
    summary: dict[str, Any] = {"numel": int(flat.size)}
    if finite.size == 0:
        return {**summary, "norm": None, "mean": None, "std": None, "min": None, "max": None, "histogram": None}
    low, high = float(finite.min()), float(finite.max())
    # numpy widens a constant range by 0.5 itself, which vanishes next to a value like 1e20: widen it here.
    pad = max(0.5, abs(low) * 1e-6) if low == high else 0.0
    counts, edges = np.histogram(finite, bins=int(bins), range=(low - pad, high + pad))
    summary.update(
        # einsum's own loop, not np.dot: BLAS would wake numpy's OpenBLAS threads (engine/host_threads.py).
        norm=_finite_or_none(np.sqrt(np.einsum("i,i->", finite, finite))), mean=_finite_or_none(finite.mean()),
        std=_finite_or_none(finite.std()), min=low, max=high,
        histogram={"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    )
    return summary


def layer_rows(epoch: int, step: int, weights: Sequence[tuple[str, np.ndarray]],
               grads: Sequence[tuple[str, np.ndarray]], bins: int) -> list[dict[str, Any]]:
    """Rows for Recorder.tensor_stats: one per tensor and kind ("weight" rows first, in the given order)."""
    rows = []
    for kind, tensors in zip(KINDS, (weights, grads), strict=True):
        for layer, values in tensors:
            rows.append({"epoch": epoch, "step": step, "layer": layer, "kind": kind, **tensor_summary(values, bins)})
    return rows


def _finite_or_none(value: float) -> Optional[float]:
    value = float(value)
    return value if math.isfinite(value) else None
