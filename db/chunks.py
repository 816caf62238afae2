"""Packing per-step metric points into MetricChunk rows, and unpacking them into one frame."""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

if TYPE_CHECKING:  # imported by unpack, which builds a frame: writers (runners) start without pandas
    import pandas as pd

FRAME_COLUMNS = ["run_id", "name", "step", "epoch", "wall_time", "value"]
# Explicit little-endian dtypes: a chunk written on one machine reads the same on any other.
STEP_DTYPE, EPOCH_DTYPE, FLOAT_DTYPE = np.dtype("<i8"), np.dtype("<i4"), np.dtype("<f8")


def pack(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """MetricChunk rows for point dicts (run_id, name, step, epoch, wall_time, value): one per (run, name).

    Points keep their order within a series; a None value (the old way of storing NaN) becomes NaN.
    """
    series: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        series[(row["run_id"], row["name"])].append(row)
    chunks = []
    for (run_id, name), points in series.items():
        steps = np.fromiter((p["step"] for p in points), STEP_DTYPE, len(points))
        values = np.fromiter((np.nan if p["value"] is None else p["value"] for p in points), FLOAT_DTYPE,
                             len(points))
        chunks.append(dict(
            run_id=run_id, name=name, first_step=int(steps.min()), last_step=int(steps.max()), count=len(points),
            steps=steps.tobytes(),
            epochs=np.fromiter((p["epoch"] for p in points), EPOCH_DTYPE, len(points)).tobytes(),
            wall_times=np.fromiter((p["wall_time"] for p in points), FLOAT_DTYPE, len(points)).tobytes(),
            values=values.tobytes(),
        ))
    return chunks


def unpack(chunks: Sequence[Sequence[Any]]) -> pd.DataFrame:
    """One frame (FRAME_COLUMNS) from (run_id, name, count, steps, epochs, wall_times, values) tuples.

    The chunks come ordered by run, name and first step, so the points come out in that order too.
    """
    import pandas as pd

    if not chunks:
        return pd.DataFrame(columns=FRAME_COLUMNS)
    counts = np.fromiter((chunk[2] for chunk in chunks), np.int64, len(chunks))
    # Names repeat a few times over thousands of points: a categorical costs one code per point.
    names = pd.Categorical([chunk[1] for chunk in chunks])
    return pd.DataFrame({
        "run_id": np.repeat(np.fromiter((chunk[0] for chunk in chunks), np.int64, len(chunks)), counts),
        "name": pd.Categorical.from_codes(np.repeat(names.codes, counts), names.categories),
        "step": _joined(chunks, 3, STEP_DTYPE).astype(np.int64),
        "epoch": _joined(chunks, 4, EPOCH_DTYPE).astype(np.int64),
        "wall_time": _joined(chunks, 5, FLOAT_DTYPE),
        "value": _joined(chunks, 6, FLOAT_DTYPE),
    })


def _joined(chunks: Sequence[Sequence[Any]], column: int, dtype: np.dtype) -> np.ndarray:
    return np.frombuffer(b"".join(chunk[column] for chunk in chunks), dtype=dtype)
