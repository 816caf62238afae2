"""The Compare page's numbers: x axes, smoothing, downsampling, seed groups, their bands and speed ratios.

Pure numpy/pandas, no streamlit: every number a chart draws can be tested and benchmarked on its own.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

X_AXES = ("step", "epoch", "wall_time", "relative_time")
MAX_POINTS = 2000  # per series sent to the browser: 20 runs of it keep plotly responsive
# First, last, the global extremes of two extra columns and one bucket's min, max and non-finite point.
MIN_POINTS = 10
PREPARED_COLUMNS = ["run_id", "name", "x", "value", "smoothed", "step", "epoch"]
BAND_COLUMNS = ["x", "mean", "lo", "hi", "n"]
BAND_KINDS = ("std", "ci95")
STATISTICS: dict[str, Callable[..., Any]] = {"mean": np.mean, "median": np.median}
# Spec keys that name or describe a run without changing what it trains. "device" stays in: it changes speed.
NOT_EXPERIMENT_KEYS = frozenset({"seed", "name", "notes", "tags"})
# Student t 0.975 quantiles for 1..30 degrees of freedom (beyond, _t975 uses the Cornish-Fisher series).
T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
        2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
        2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
Z975 = 1.959964
BOOT_BLOCKS = 1000  # a longer input (per-step rates) is resampled in this many contiguous blocks
BOOT_CHUNK_VALUES = 2_000_000  # resampled indices held at once: bounds memory for a large n_boot


def x_values(points: pd.DataFrame, x_axis: str, run_start: Optional[float] = None) -> np.ndarray:
    """One run's points on an x axis; relative_time is seconds since run_start (default: its first point)."""
    if x_axis not in X_AXES:
        raise ValueError(f"x_axis={x_axis!r}: expected one of {', '.join(X_AXES)}")
    if x_axis != "relative_time":
        return points[x_axis].to_numpy(dtype=float)
    wall = points["wall_time"].to_numpy(dtype=float)
    if run_start is None:
        run_start = float(np.nanmin(wall)) if len(wall) else 0.0
    return wall - run_start


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard's debiased EMA; non-finite values pass through unchanged and stay out of the average."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight={weight!r}: expected 0 <= weight < 1")
    values = np.asarray(values, dtype=float)
    # TensorBoard leaves a constant series alone: debiasing rounding would make a flat line wobble.
    if weight == 0.0 or values.size == 0 or (values == values[0]).all():
        return values
    finite = np.isfinite(values)
    smoothed = values.copy()
    # adjust=True divides by sum(w**i for i < n), which is TensorBoard's (1 - w) / (1 - w**n): same numbers, in C.
    smoothed[finite] = pd.Series(values[finite]).ewm(alpha=1.0 - weight, adjust=True).mean().to_numpy()
    return smoothed


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most max_points points in x order: per bucket the min and max y and the first non-finite y."""
    x, y = np.asarray(x), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-d and of one length, got shapes {x.shape} and {y.shape}")
    _check_max_points(max_points)
    if len(y) <= max_points:
        return x, y
    if not (x[1:] >= x[:-1]).all():
        order = np.argsort(x, kind="stable")
        x, y = x[order], y[order]
    kept = _kept_indices(y, max_points)
    return x[kept], y[kept]


def _check_max_points(max_points: int) -> None:
    if max_points < MIN_POINTS:
        raise ValueError(f"max_points={max_points!r}: need at least {MIN_POINTS} to keep the first, last "
                         "and extreme points")


def _kept_indices(y: np.ndarray, max_points: int, also: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Sorted positions (y in x order) that min/max bucketing keeps, plus the global extremes of `also`.

    Buckets of equal count, each giving its min and max finite y (so the global extremes are always
    among them) and its first non-finite y (a divergence must stay visible); then the first and last
    point. The bucket count leaves room for all of that, so the result never exceeds max_points.
    """
    n = len(y)
    finite = np.isfinite(y)
    has_nonfinite = not finite.all()
    reserved = 2 + 2 * len(also)
    buckets = max(1, (max_points - reserved) // (2 + has_nonfinite))
    size = -(-n // buckets)
    buckets = -(-n // size)  # with ceil-sized buckets the last may be short; none is empty
    padded = buckets * size
    starts = np.arange(buckets) * size
    # Non-finite values and the padding lose every min/max contest against a finite value.
    low = np.full(padded, np.inf)
    low[:n] = np.where(finite, y, np.inf)
    high = np.full(padded, -np.inf)
    high[:n] = np.where(finite, y, -np.inf)
    kept = [starts + low.reshape(buckets, size).argmin(axis=1),
            starts + high.reshape(buckets, size).argmax(axis=1), np.array([0, n - 1])]
    if has_nonfinite:
        bad = np.zeros(padded, dtype=bool)
        bad[:n] = ~finite
        bad = bad.reshape(buckets, size)
        kept.append((starts + bad.argmax(axis=1))[bad.any(axis=1)])
    for column in also:
        column_finite = np.isfinite(column)
        if column_finite.any():
            kept.append(np.array([np.where(column_finite, column, np.inf).argmin(),
                                  np.where(column_finite, column, -np.inf).argmax()]))
    return np.unique(np.concatenate(kept))


def prepare(frame: pd.DataFrame, x_axis: str, smoothing: float = 0.0, max_points: int = MAX_POINTS,
            starts: Optional[Mapping[int, Optional[float]]] = None) -> pd.DataFrame:
    """Every (run_id, name) series in x order, EMA-smoothed over all its points, then downsampled.

    relative_time counts from starts[run_id] (unix s) where given, else from the run's first point
    in the frame. Series come in the frame's order when they are already together, else by run and name.
    """
    if x_axis not in X_AXES:
        raise ValueError(f"x_axis={x_axis!r}: expected one of {', '.join(X_AXES)}")
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"smoothing={smoothing!r}: expected 0 <= smoothing < 1")
    _check_max_points(max_points)
    if frame.empty:
        return pd.DataFrame({column: [] for column in PREPARED_COLUMNS})
    run_ids = frame["run_id"].to_numpy()
    names = frame["name"].to_numpy()
    # Relative time sorts like wall time; each run's start is subtracted once the series are in order.
    x = frame["wall_time" if x_axis == "relative_time" else x_axis].to_numpy(dtype=float)
    order, series_starts = _series_order(run_ids, names, x)
    if order is not None:
        run_ids, names, x = run_ids[order], names[order], x[order]
    values = frame["value"].to_numpy(dtype=float)
    values = values if order is None else values[order]
    ends = np.append(series_starts[1:], len(x))

    kept, smoothed_parts = [], []
    for start, end in zip(series_starts, ends):
        raw = values[start:end]
        smoothed = ema(raw, smoothing)
        index = (np.arange(len(raw)) if len(raw) <= max_points
                 else _kept_indices(raw, max_points, also=(smoothed,) if smoothing else ()))
        kept.append(start + index)
        smoothed_parts.append(smoothed[index])
    rows = np.concatenate(kept)
    x_sorted, x = x, x[rows]
    if x_axis == "relative_time":
        # A run's start: its earliest point over all its series (each series' first point, in x order).
        firsts = pd.Series(x_sorted[series_starts]).groupby(run_ids[series_starts]).min()
        given = {run_id: start for run_id, start in (starts or {}).items() if start is not None}
        firsts = pd.Series(given, dtype=float).combine_first(firsts)
        x = x - firsts.reindex(run_ids[rows]).to_numpy(dtype=float)
    source = rows if order is None else order[rows]
    return pd.DataFrame({
        "run_id": run_ids[rows], "name": names[rows], "x": x, "value": values[rows],
        "smoothed": np.concatenate(smoothed_parts),
        "step": frame["step"].to_numpy()[source], "epoch": frame["epoch"].to_numpy()[source],
    })


def _series_order(run_ids: np.ndarray, names: np.ndarray, x: np.ndarray) -> tuple[Optional[np.ndarray], np.ndarray]:
    """Row order that puts each (run_id, name) series together in x order (None: it already is), series starts.

    metric_frame already sorts by run, name and step, so the usual case is a linear check, not a sort.
    """
    boundary = (run_ids[1:] != run_ids[:-1]) | (names[1:] != names[:-1])
    starts = np.concatenate([[0], np.flatnonzero(boundary) + 1])
    keys = list(zip(run_ids[starts].tolist(), names[starts].tolist())) if len(starts) <= 10_000 else []
    contiguous = len(keys) == len(starts) and len(set(keys)) == len(keys)
    if contiguous and ((x[1:] >= x[:-1]) | boundary).all():
        return None, starts
    name_codes = pd.factorize(names, sort=True)[0]
    order = np.lexsort((x, name_codes, run_ids))
    sorted_runs, sorted_codes = run_ids[order], name_codes[order]
    boundary = (sorted_runs[1:] != sorted_runs[:-1]) | (sorted_codes[1:] != sorted_codes[:-1])
    return order, np.concatenate([[0], np.flatnonzero(boundary) + 1])


def seed_group_key(spec: dict[str, Any]) -> str:
    """The spec without its seed (and name, notes, tags) as stable JSON: equal keys differ only by seed."""
    kept = {key: value for key, value in spec.items() if key not in NOT_EXPERIMENT_KEYS}
    return json.dumps(kept, sort_keys=True, separators=(",", ":"), default=str)


def seed_groups(specs: dict[int, dict[str, Any]]) -> list[list[int]]:
    """Runs that differ only by seed: groups of two or more ids, ascending, ordered by their first id."""
    groups: dict[str, list[int]] = {}
    for run_id in sorted(specs):
        groups.setdefault(seed_group_key(specs[run_id]), []).append(run_id)
    return [ids for ids in groups.values() if len(ids) >= 2]


def group_band(series: list[tuple[np.ndarray, np.ndarray]], how: str = "std",
               grid_points: int = MAX_POINTS) -> pd.DataFrame:
    """Mean of a seed group and a band around it (mean ± std, or the Student t 95% CI of the mean) at each x.

    Members on the same x values (steps, epochs) align exactly; otherwise (wall or relative time)
    each is interpolated onto grid_points evenly spaced x over the range all of them cover. n counts
    the members with a finite value at x; lo and hi are NaN where n < 2.
    """
    if how not in BAND_KINDS:
        raise ValueError(f"how={how!r}: expected one of {', '.join(BAND_KINDS)}")
    _check_max_points(grid_points)
    if not series:
        raise ValueError("group_band got no member series")
    members = []
    for number, (x, y) in enumerate(series):
        x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        if x.ndim != 1 or x.shape != y.shape or not len(x):
            raise ValueError(f"member {number}: x and y must be 1-d, non-empty and of one length, "
                             f"got shapes {x.shape} and {y.shape}")
        order = np.argsort(x, kind="stable")
        members.append((x[order], y[order]))
    x = members[0][0]
    if all(np.array_equal(mx, x) for mx, _ in members):
        values = np.vstack([my for _, my in members])
    else:
        first, last = max(mx[0] for mx, _ in members), min(mx[-1] for mx, _ in members)
        if first > last:
            raise ValueError(f"the members share no x range (latest start {first:g} > earliest end {last:g}); "
                             "on wall time, sequential runs never overlap: use relative_time")
        x = np.linspace(first, last, grid_points) if last > first else np.array([first])
        values = np.vstack([np.interp(x, mx, my) for mx, my in members])

    finite = np.isfinite(values)
    n = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(finite, values, 0.0).sum(axis=0) / n
        squares = np.where(finite, values - mean, 0.0) ** 2
        std = np.where(n >= 2, np.sqrt(squares.sum(axis=0) / (n - 1)), np.nan)
        half = std if how == "std" else _t975(n - 1) * std / np.sqrt(n)
    band = pd.DataFrame({"x": x, "mean": mean, "lo": mean - half, "hi": mean + half, "n": n})
    if len(band) <= grid_points:
        return band
    kept = _kept_indices(mean, grid_points, also=(band["lo"].to_numpy(), band["hi"].to_numpy()))
    return band.iloc[kept].reset_index(drop=True)


def _t975(dof: np.ndarray) -> np.ndarray:
    """Student t 0.975 quantile per degrees of freedom (NaN below 1): the table, then a series in 1/dof."""
    dof = np.asarray(dof, dtype=float)
    table = np.array((np.nan,) + T975)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = Z975
        # Cornish-Fisher expansion (Abramowitz & Stegun 26.7.5): within 1e-4 of the exact value past 30.
        expansion = (z + (z ** 3 + z) / (4 * dof) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * dof ** 2)
                     + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * dof ** 3))
        looked_up = table[np.clip(np.nan_to_num(dof), 0, len(T975)).astype(int)]
    return np.where(dof < 1, np.nan, np.where(dof <= len(T975), looked_up, expansion))


def bootstrap_ratio(a: np.ndarray, b: np.ndarray, n_boot: int = 4000, seed: int = 0,
                    statistic: str = "mean") -> tuple[float, float, float]:
    """statistic(a) / statistic(b) and its percentile 95% CI, resampling a and b independently.

    Non-finite values are dropped. An input longer than BOOT_BLOCKS values (one run's per-step
    rates, in step order) is resampled as BOOT_BLOCKS contiguous blocks: neighbouring steps share
    the machine's state, so single steps are not independent and resampling them would give a
    falsely narrow interval (and take seconds for 100,000 steps).
    """
    if statistic not in STATISTICS:
        raise ValueError(f"statistic={statistic!r}: expected one of {', '.join(STATISTICS)}")
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot!r}: need at least 1 resample")
    a, b = _sample(a, "a"), _sample(b, "b")
    stat = STATISTICS[statistic]
    denominator = float(stat(b))
    if denominator == 0:
        raise ValueError(f"the {statistic} of b is 0: no ratio to it")
    rng = np.random.default_rng(seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = _resampled(a, statistic, n_boot, rng) / _resampled(b, statistic, n_boot, rng)
    lo, hi = np.percentile(ratios, [2.5, 97.5])
    return float(stat(a)) / denominator, float(lo), float(hi)


def _sample(values: np.ndarray, label: str) -> np.ndarray:
    values = np.asarray(values, dtype=float).ravel()
    finite = values[np.isfinite(values)]
    if not len(finite):
        raise ValueError(f"group {label} is empty: {len(values)} values given, none finite")
    return finite


def _resampled(values: np.ndarray, statistic: str, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """The statistic of n_boot resamples of values' blocks (single values up to BOOT_BLOCKS), a chunk at a time."""
    blocks = min(len(values), BOOT_BLOCKS)
    edges = (np.arange(blocks) * len(values)) // blocks
    if statistic == "mean" and blocks == len(values):
        def resample(index: np.ndarray) -> np.ndarray:
            return values[index].mean(axis=1)
    elif statistic == "mean":
        # Blocks differ in size by one value: a resample's mean is its total over its count.
        sums, counts = np.add.reduceat(values, edges), np.diff(np.append(edges, len(values)))
        def resample(index: np.ndarray) -> np.ndarray:
            return sums[index].sum(axis=1) / counts[index].sum(axis=1)
    else:
        medians = values if blocks == len(values) else np.array([np.median(block)
                                                                 for block in np.split(values, edges[1:])])
        def resample(index: np.ndarray) -> np.ndarray:
            return np.median(medians[index], axis=1)
    rows = max(1, BOOT_CHUNK_VALUES // blocks)
    return np.concatenate([resample(rng.integers(0, blocks, (min(rows, n_boot - done), blocks)))
                           for done in range(0, n_boot, rows)])


def ratio_sentence(name_a: str, name_b: str, ratio: float, lo: float, hi: float, n_a: int, n_b: int,
                   unit: str = "seeds") -> str:
    """"A is 1.42× B, 95% CI 1.37–1.48×, 5 seeds each", the side with the larger value named first."""
    if not all(math.isfinite(v) and v > 0 for v in (ratio, lo, hi)):
        raise ValueError(f"ratio={ratio!r}, CI {lo!r}-{hi!r}: expected positive finite numbers")
    if ratio < 1:
        name_a, name_b, n_a, n_b = name_b, name_a, n_b, n_a
        ratio, lo, hi = 1 / ratio, 1 / hi, 1 / lo
    if n_a == n_b:
        counts = f"{n_a:,} {unit[:-1] if n_a == 1 and unit.endswith('s') else unit} each"
    else:
        counts = f"{n_a:,} and {n_b:,} {unit}"
    sentence = f"{name_a} is {ratio:.2f}× {name_b}, 95% CI {lo:.2f}–{hi:.2f}×, {counts}"
    return sentence + (" — no clear difference" if lo <= 1 <= hi else "")
