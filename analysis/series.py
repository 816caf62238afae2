"""The Compare page's numbers: x axes, smoothing, downsampling, seed groups, their bands and speed ratios.

Pure numpy/pandas, no streamlit: every number a chart draws can be tested and benchmarked on its own.
"""
from __future__ import annotations

import json
import math
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

X_AXES = ("step", "epoch", "wall_time", "relative_time")
MAX_POINTS = 2000  # per series sent to the browser: 20 runs of it keep plotly responsive
# First, last, the global extremes of two extra columns and one bucket's min, max and non-finite point.
MIN_POINTS = 10
PREPARED_COLUMNS = ["run_id", "name", "x", "value", "smoothed", "step", "epoch"]
BAND_COLUMNS = ["x", "mean", "lo", "hi", "n"]
BAND_KINDS = ("std", "ci95")
# Spec keys that name or describe a run without changing what it trains. "device" stays in: it changes speed.
NOT_EXPERIMENT_KEYS = frozenset({"seed", "name", "notes", "tags"})
# Student t 0.975 quantiles for 1..30 degrees of freedom (beyond, _t975 uses the Cornish-Fisher series).
T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
        2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
        2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)
Z975 = 1.959964
Z80 = 0.841621  # the normal 0.80 quantile: runs needed are for telling a difference 4 times in 5
# No speed interval below this many runs a side. At 2, each side's spread rests on one difference (1 degree
# of freedom): Welch's dof falls to 1-2 (t = 12.7 at 1) and, at a 15 % run-to-run CV, the interval spans a
# factor of 5.6 (median; 1.9 to 53 from the 10th to the 90th percentile of studies): its width says more about
# luck than about the frameworks. At 3, each side has 2 dof, Welch's at least 2 (t <= 4.30), the span is a
# factor of 2.0 (1.5 to 3.0), and tests/analysis/test_series.py checks 95 % coverage by simulation at exactly 3.
MIN_RUNS_PER_SIDE = 3
# Run-to-run CV of throughput assumed while a side has too few runs to measure it: bench/README.md finds
# separate runner processes of one spec on the 2-vCPU VM differ by up to ±30 %; read as two standard
# deviations, that is 15 %.
ASSUMED_RUN_CV = 0.15
MAX_RUNS_PER_SIDE = 100  # beyond this, "more than 100": a difference that small is not worth the seeds


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


def log_sd(cv: float) -> float:
    """Standard deviation of log throughput for a run-to-run coefficient of variation (log-normal)."""
    return math.sqrt(math.log1p(cv ** 2))


def welch_ratio(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float, float]:
    """a over b as exp of the difference of mean log throughputs, its Welch t 95% CI, and the Welch dof.

    One value per run (its steady samples/s): runs, not steps, are the unit, so the interval holds
    the run-to-run variation a rerun of the study would meet. Logs, because throughput is a rate:
    its spread scales with it, and a ratio's interval should not depend on which side is on top.
    """
    log_a, log_b = _log_rates(a, "a"), _log_rates(b, "b")
    var_a, var_b = log_a.var(ddof=1) / len(log_a), log_b.var(ddof=1) / len(log_b)
    difference, standard_error = log_a.mean() - log_b.mean(), math.sqrt(var_a + var_b)
    if standard_error == 0:  # identical runs: no spread to widen the interval, any dof will do
        dof = float(len(log_a) + len(log_b) - 2)
    else:  # Welch-Satterthwaite; never below the smaller side's n - 1, which rounding could nudge it under
        dof = (var_a + var_b) ** 2 / (var_a ** 2 / (len(log_a) - 1) + var_b ** 2 / (len(log_b) - 1))
        dof = max(dof, min(len(log_a), len(log_b)) - 1.0)
    half = _t975_fractional(dof) * standard_error
    return (math.exp(difference), math.exp(difference - half), math.exp(difference + half), float(dof))


def _log_rates(values: Sequence[float], label: str) -> np.ndarray:
    values = np.asarray(values, dtype=float).ravel()
    if len(values) < 2 or not (np.isfinite(values) & (values > 0)).all():
        raise ValueError(f"group {label}: expected at least 2 positive finite throughputs, got {values.tolist()}")
    return np.log(values)


def _t975_fractional(dof: float) -> float:
    """Student t 0.975 quantile at any dof >= 1 (Welch's is fractional): where the integrated density reaches 0.475.

    Interpolating the table instead is up to 18 % too wide between 1 and 2 dof, where 3 runs a side can land.
    """
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    grid = np.linspace(0.0, T975[0], 20_001)  # the quantile is 12.71 at 1 dof and shrinks towards z
    density = np.exp(log_norm - (dof + 1) / 2 * np.log1p(grid ** 2 / dof))
    # Trapezoid rule from 0: the quantile lands within 1e-5 of the exact one for 1 to 400 dof.
    mass = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2 * np.diff(grid))])
    return float(np.interp(0.475, mass, grid))


def _t80(dof: int) -> float:
    """Student t 0.80 quantile: Cornish-Fisher series (A&S 26.7.5), within 1e-3 of the exact value for dof >= 2."""
    z = Z80
    return (z + (z ** 3 + z) / (4 * dof) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * dof ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * dof ** 3))


def runs_to_tell(ratio: float, run_log_sd: float) -> int:
    """Fewest runs per side for a 95% interval of the log ratio to exclude 0 with 80% power, if ratio is the truth.

    The usual two-sample size formula with t quantiles: n per side is enough when
    sqrt(n / 2) * |log ratio| / sd >= t_0.975 + t_0.80 at 2n - 2 dof (sd: of one run's log throughput).
    Never below MIN_RUNS_PER_SIDE; MAX_RUNS_PER_SIDE + 1 means "more than MAX_RUNS_PER_SIDE".
    """
    if not (math.isfinite(ratio) and ratio > 0 and math.isfinite(run_log_sd) and run_log_sd >= 0):
        raise ValueError(f"ratio={ratio!r}, run_log_sd={run_log_sd!r}: expected positive finite numbers")
    distance = abs(math.log(ratio))
    effect = distance / run_log_sd if run_log_sd else (math.inf if distance else 0.0)
    for runs in range(MIN_RUNS_PER_SIDE, MAX_RUNS_PER_SIDE + 1):
        dof = 2 * runs - 2
        if math.sqrt(runs / 2) * effect >= float(_t975(np.array(dof))) + _t80(dof):
            return runs
    return MAX_RUNS_PER_SIDE + 1


def ratio_sentence(name_a: str, name_b: str, ratio: float, lo: float, hi: float, n_a: int, n_b: int,
                   runs_needed: Optional[int] = None) -> str:
    """"A is 1.21× B (95% CI 1.05–1.39×, Welch t over 4 and 4 runs)", the faster side first.

    When the interval holds 1 it says no difference can be told, and, given runs_needed, how many would tell it.
    """
    if not all(math.isfinite(v) and v > 0 for v in (ratio, lo, hi)):
        raise ValueError(f"ratio={ratio!r}, CI {lo!r}-{hi!r}: expected positive finite numbers")
    if ratio < 1:
        name_a, name_b, n_a, n_b = name_b, name_a, n_b, n_a
        ratio, lo, hi = 1 / ratio, 1 / hi, 1 / lo
    sentence = (f"{name_a} is {ratio:.2f}× {name_b} (95% CI {lo:.2f}–{hi:.2f}×, "
                f"Welch t over {n_a:,} and {n_b:,} runs)")
    if lo <= 1 <= hi:
        sentence += ": no difference can be told"
        if runs_needed is not None:
            sentence += f"; {_runs_phrase(runs_needed, ratio)} at the spread measured here"
    return sentence


def untold_ratio_sentence(name_a: str, name_b: str, ratio: float, n_a: int, n_b: int, runs_needed: int,
                          cv: float) -> str:
    """"No difference can be told yet from 1 run each: …; about 11 runs (seeds) per side would tell …": no interval.

    For fewer than MIN_RUNS_PER_SIDE runs a side; runs_needed comes from runs_to_tell at the assumed cv, stated.
    """
    if not (math.isfinite(ratio) and ratio > 0):
        raise ValueError(f"ratio={ratio!r}: expected a positive finite number")
    if ratio < 1:
        name_a, name_b, n_a, n_b, ratio = name_b, name_a, n_b, n_a, 1 / ratio
    counts = f"{n_a:,} run{'s' if n_a > 1 else ''} each" if n_a == n_b else f"{n_a:,} and {n_b:,} runs"
    return (f"No difference can be told yet from {counts}: {name_a} measured {ratio:.2f}× {name_b}, and an "
            f"interval needs {MIN_RUNS_PER_SIDE} runs per side; {_runs_phrase(runs_needed, ratio)}, assuming runs "
            f"vary by {cv:.0%} (CV) on this kind of machine")


def _runs_phrase(runs_needed: int, ratio: float) -> str:
    if runs_needed > MAX_RUNS_PER_SIDE:
        return (f"more than {MAX_RUNS_PER_SIDE} runs (seeds) per side would be needed to tell a difference as small "
                f"as {ratio:.2f}×")
    return f"about {runs_needed:,} runs (seeds) per side would tell a {ratio:.2f}× difference"
