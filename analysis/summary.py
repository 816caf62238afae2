"""The Compare page's tables: per-run summary against a baseline (settings, results, speed, memory) and environments.

ui/summary_section.py draws them; everything here is pandas (a Styler at most).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import pandas as pd
from pandas.io.formats.style import Styler

from analysis import memory
from analysis import run_settings as rs
from analysis.formatting import (
    format_bytes, format_duration, format_energy, format_ms, format_number, format_percent, format_rate,
)
from analysis.run_facts import STATUS_COLORS, facts_of
from analysis.run_styles import trace_name
from db.models import FAILED, FINISHED, Run

ENVIRONMENT_FIRST = (
    "framework_version", "device", "device_name", "cuda_version", "cudnn_version", "gpu_driver_version",
    "cpu_model", "cpu_count", "intra_op_threads", "memory_total_bytes", "hostname", "platform",
    "python_version", "numpy_version", "nvml",
)
DIFFERS_SHADE = "background-color: #FEF3C7"  # a row whose runs disagree


def time_to_target_text(run: Run) -> Optional[str]:
    """"4.2 s to 95.0 % (epoch 3)", "95.0 % not reached" once finished, None when nothing was timed."""
    target = rs.target_accuracy(run)
    summary = run.summary or {}
    if target is None or "time_to_target_s" not in summary:
        return None
    seconds, epochs = summary.get("time_to_target_s"), summary.get("epochs_to_target")
    if seconds is None:
        return f"{format_percent(target)} not reached" if run.status == FINISHED else None
    return (f"{format_duration(seconds)} to {format_percent(target)}"
            + (f" (epoch {epochs})" if epochs is not None else ""))


def _or_none(fmt, value):
    return None if value is None else fmt(value)


def environment_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Every environment key (important ones first) by run; values as short text."""
    envs = {trace_name(run): run.environment or {} for run in runs}
    keys = [k for k in ENVIRONMENT_FIRST if any(k in env for env in envs.values())]
    keys += sorted({k for env in envs.values() for k in env} - set(keys) - {"framework"})
    return pd.DataFrame({name: [_env_text(k, env.get(k)) for k in keys] for name, env in envs.items()}, index=keys)


def _env_text(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if key.endswith("_bytes") and isinstance(value, (int, float)):
        return f"{value / 2**30:.1f} GiB"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def highlight_differences(table: pd.DataFrame) -> Styler:
    """Shade rows whose values are not the same in every column."""
    differs = table.nunique(axis=1) > 1
    return table.style.apply(lambda row: [DIFFERS_SHADE if differs[row.name] else "" for _ in row], axis=1)


# The summary against a baseline -------------------------------------------------------------------
HIGHER, LOWER, NEUTRAL = "higher", "lower", "neutral"  # which way a row is better
ROW_LEVELS = ["section", "quantity", "unit", "better"]
STAT_COLUMNS = ["last", "best", "min", "max", "median", "count", "non_finite"]
COLORS = {"better": f"color: {STATUS_COLORS[FINISHED]}", "worse": f"color: {STATUS_COLORS[FAILED]}"}
# Which way a metric is better, by a part of its name (first match wins); any other metric (losses, times,
# bytes) is better lower. An estimate of φ is neither: how close it came is the row |φ − φ true|.
METRIC_DIRECTIONS = (("accuracy", HIGHER), ("samples_per_", HIGHER), ("phi_", NEUTRAL))
METRIC_UNITS = (("samples_per_s", "samples/s"), ("samples_per_j", "samples/J"), ("_ms", "ms"), ("_s", "s"),
                ("_j", "J"))  # by the end of the name
# The rows that say how each run ran: kept above the numbers, they make a comparison fair or not.
SETTINGS_ROWS = ("status", "mode", "precision (compute dtype)", "layout", "TF32", "deterministic",
                 "same initial weights", "warm-up steps (excluded)", "time to target", "framework version", "device")
FORMATS: dict[str, Callable[[float], str]] = {
    "fraction": format_percent,
    "samples/s": format_rate,
    "samples/J": lambda v: f"{v:,.1f} samples/J",
    "s": format_duration,
    "ms": lambda v: format_ms(v) or "—",
    "bytes": format_bytes,
    "J": format_energy,
    "count": lambda v: f"{v:,.0f}",
    "": format_number,
}


def metric_direction(name: str) -> str:
    """HIGHER, LOWER or NEUTRAL: which way a metric is better (METRIC_DIRECTIONS)."""
    return next((direction for part, direction in METRIC_DIRECTIONS if part in name), LOWER)


def metric_unit(name: str) -> str:
    """The unit of a metric's values, read from its name: "fraction" for accuracies, "bytes" for peaks, "s" ..."""
    if "accuracy" in name:
        return "fraction"
    if name.startswith(memory.PEAK_METRIC_PREFIX):
        return "bytes"
    return next((unit for suffix, unit in METRIC_UNITS if name.endswith(suffix)), "")


def metric_stats(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (run_id, metric) of a metric_frame: last, best, min, max, median, count and non-finite points.

    min, max, median and best skip NaN and infinite points (a diverged run's NaN is no minimum); last is the
    final point, NaN when it was not finite; non_finite counts the points that were not.
    """
    if frame.empty:
        index = pd.MultiIndex.from_arrays([[], []], names=["run_id", "metric"])
        return pd.DataFrame(columns=STAT_COLUMNS, index=index, dtype=float)
    values = frame["value"].astype(float)  # a non-finite value is stored as NULL and arrives as None
    finite = np.isfinite(values)
    points = frame.assign(value=values.where(finite), non_finite=~finite)
    groups = points.sort_values(["run_id", "name", "step"], kind="stable").groupby(["run_id", "name"])["value"]
    stats = groups.agg(["min", "max", "median"])
    stats["last"] = groups.agg(lambda v: v.iloc[-1])
    stats["count"] = groups.size()
    stats["non_finite"] = points.groupby(["run_id", "name"])["non_finite"].sum()
    directions = np.array([metric_direction(name) for name in stats.index.get_level_values("name")])
    stats["best"] = np.select([directions == HIGHER, directions == LOWER], [stats["max"], stats["min"]], np.nan)
    stats.index = stats.index.set_names(["run_id", "metric"])
    return stats[STAT_COLUMNS].astype(float)


@dataclass(frozen=True)
class Peak:
    """A run's peak of one memory series, in bytes: exact (a peak counter) or the largest sample."""

    bytes: float
    exact: bool


def memory_peaks(runs: Sequence[Run], samples_frame: pd.DataFrame,
                 metrics_frame: pd.DataFrame) -> dict[int, dict[str, Peak]]:
    """{run_id: {series key: Peak}} for memory.MEMORY_SERIES, read as the memory section's peaks table."""
    samples = memory.SampleSet(samples_frame)
    epoch_peaks = metrics_frame[metrics_frame["name"].str.startswith(memory.PEAK_METRIC_PREFIX)] \
        if not metrics_frame.empty else metrics_frame
    result: dict[int, dict[str, Peak]] = {}
    for run in runs:
        found = {series.key: _peak(run, series, samples, epoch_peaks) for series in memory.MEMORY_SERIES}
        result[run.id] = {key: peak for key, peak in found.items() if peak is not None}
    return result


def _peak(run: Run, series: memory.Series, samples: memory.SampleSet,
          epoch_peaks: pd.DataFrame) -> Optional[Peak]:
    peak = memory.peak_bytes(run, series, samples, epoch_peaks)  # the memory section's own reading
    return None if peak is None else Peak(peak[0], exact=peak[1])


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return math.nan
    return float(value)


def summary_frame(runs: Sequence[Run], stats: pd.DataFrame, peaks: dict[int, dict[str, Peak]],
                  summaries: dict[int, dict]) -> pd.DataFrame:
    """The runs' numbers side by side: one float column per run id, rows indexed by ROW_LEVELS.

    stats: metric_stats of the runs' metrics; peaks: memory_peaks; summaries: {run_id: the run's summary}.
    Sections: Result, Speed, Memory, Inference, Model, then Metrics (every metric's last/best/min/max, long,
    so last). Rows no run has are dropped, and so are non-finite counts that are 0 for every run.
    """
    def stat(metric: str, column: str) -> Callable[[Run], Any]:
        return lambda run: stats[column].get((run.id, metric))

    def measured(key: str) -> Callable[[Run], Any]:
        return lambda run: (summaries.get(run.id) or {}).get(key)

    elapsed_s = facts_of(runs)["elapsed_s"]

    def phi_error(run: Run) -> float:
        return abs(_number(stat("phi_estimate", "last")(run)) - _number(stat("phi_true", "last")(run)))

    rows: list[tuple[str, str, str, str, Callable[[Run], Any]]] = [
        ("Result", "final test accuracy", "fraction", HIGHER, stat("test_accuracy", "last")),
        ("Result", "best test accuracy", "fraction", HIGHER, stat("test_accuracy", "best")),
        ("Result", "final test loss", "", LOWER, stat("test_loss", "last")),
        ("Result", "final train loss (epoch mean)", "", LOWER, stat("train_loss", "last")),
        ("Result", "φ estimate", "", NEUTRAL, stat("phi_estimate", "last")),
        ("Result", "|φ − φ true|", "", LOWER, phi_error),
        ("Speed", "steady samples/s", "samples/s", HIGHER, measured("steady_samples_per_s")),
        ("Speed", "samples/s (median epoch)", "samples/s", HIGHER, stat("samples_per_s", "median")),
        ("Speed", "epoch time (median)", "s", LOWER, stat("epoch_time_s", "median")),
        *[("Speed", f"step time {q}", "ms", LOWER, measured(f"step_time_{q}_ms")) for q in ("p50", "p95", "p99")],
        ("Speed", "step time mean", "ms", LOWER, measured("step_time_mean_ms")),
        ("Speed", "compile time (first step − median step)", "s", LOWER, measured("compile_s")),
        ("Speed", "first step (excluded)", "s", LOWER, measured("first_step_s")),
        ("Speed", "warm-up time (excluded)", "s", LOWER, measured("warmup_s")),
        ("Speed", "energy (training)", "J", LOWER, measured("energy_j")),
        ("Speed", "samples per joule", "samples/J", HIGHER, measured("samples_per_j")),
        # A running run's time so far would read as "faster": only finished runs have a duration to compare.
        ("Speed", "duration (wall clock)", "s", LOWER, lambda run: elapsed_s[run.id] if run.finished_at else None),
        *_memory_rows(runs, peaks),
        *[row for batch, words in (("bs1", "batch 1"), ("bsN", "batch N")) for row in (
            ("Inference", f"{words} p50", "ms", LOWER, measured(f"inference_{batch}_p50_ms")),
            ("Inference", f"{words} p95", "ms", LOWER, measured(f"inference_{batch}_p95_ms")),
            ("Inference", f"{words} samples/s", "samples/s", HIGHER, measured(f"inference_{batch}_samples_per_s")))],
        ("Inference", "batch size N", "count", NEUTRAL, measured("inference_batch_size")),
        ("Inference", "compile", "s", LOWER, measured("inference_compile_s")),
        ("Model", "trainable parameters", "count", NEUTRAL, measured("param_count")),
    ]
    metrics = sorted({name for name in stats.index.get_level_values("metric")
                      if not name.startswith(memory.PEAK_METRIC_PREFIX)},  # the Memory rows hold them
                     key=lambda name: (name.startswith("step/"), name))  # per-epoch metrics first
    for name in metrics:
        unit, better = metric_unit(name), metric_direction(name)
        rows += [("Metrics", f"{name} · {column}", unit, better, stat(name, column))
                 for column in ("last", "best", "min", "max")]
        rows.append(("Metrics", f"{name} · non-finite points", "count", LOWER, stat(name, "non_finite")))
    index = pd.MultiIndex.from_tuples([row[:4] for row in rows], names=ROW_LEVELS)
    frame = pd.DataFrame([[_number(row[4](run)) for run in runs] for row in rows], index=index,
                         columns=[run.id for run in runs], dtype=float)
    none_finite = frame.index.get_level_values("quantity").str.endswith("non-finite points") & \
        frame.fillna(0).eq(0).all(axis=1)
    return frame[~none_finite].dropna(how="all")


def _memory_rows(runs: Sequence[Run], peaks: dict[int, dict[str, Peak]]) -> list[tuple]:
    """One row per memory series; its label says which runs' peaks are only the largest sample."""
    rows = []
    for series in memory.MEMORY_SERIES:
        found = {run.id: peaks.get(run.id, {}).get(series.key) for run in runs}
        sampled = [run_id for run_id, peak in found.items() if peak is not None and not peak.exact]
        known = [peak for peak in found.values() if peak is not None]
        label = f"peak {series.label}"
        if sampled:
            label += " (sampled)" if len(sampled) == len(known) else \
                f" (sampled for {', '.join(f'#{i}' for i in sampled)})"
        rows.append(("Memory", label, "bytes", LOWER,
                     lambda run, key=series.key: getattr(peaks.get(run.id, {}).get(key), "bytes", None)))
    return rows


def with_baseline(frame: pd.DataFrame, baseline_run_id: int) -> pd.DataFrame:
    """Every other run's difference to the baseline per row, in % of the baseline: 100 (v − base) / |base|."""
    if baseline_run_id not in frame.columns:
        raise ValueError(f"baseline run #{baseline_run_id} is not in the table, which holds "
                         + ", ".join(f"#{run_id}" for run_id in frame.columns))
    base = frame[baseline_run_id]
    others = frame.drop(columns=baseline_run_id)
    percent = others.sub(base, axis=0).div(base.abs(), axis=0).mul(100).replace([np.inf, -np.inf], np.nan)
    return percent.mask(others.eq(base, axis=0), 0.0)  # equal is 0 %, even where both are 0


def verdicts(frame: pd.DataFrame, baseline_run_id: int) -> pd.DataFrame:
    """"better", "worse" or "" per other run and row, by the row's direction.

    Differences that print as ±0.0 % are neither: a colour the reader cannot see in the number would mislead.
    """
    signs = np.sign(with_baseline(frame, baseline_run_id).round(1))
    better = frame.index.get_level_values("better")
    up = signs.mul(np.select([better == HIGHER, better == LOWER], [1.0, -1.0], 0.0), axis=0)
    return up.apply(lambda column: column.map(lambda s: "better" if s > 0 else "worse" if s < 0 else ""))


def format_value(value: float, unit: str) -> str:
    """A summary number as text in its row's unit; "—" when missing."""
    return "—" if value is None or not math.isfinite(value) else FORMATS[unit](value)


def _percent(difference: float) -> str:
    rounded = round(difference, 1)
    return "±0.0 %" if rounded == 0 else f"{rounded:+,.1f} %"


def display_table(frame: pd.DataFrame, baseline_run_id: int, names: dict[int, str]) -> pd.DataFrame:
    """Text cells, "1,234 samples/s (+12.3 %)": each value in its unit with its difference to the baseline.

    names: column title per run id ("#3 PyTorch"); the baseline's adds "(baseline)" when there are others.
    Index: section, quantity.
    """
    percent = with_baseline(frame, baseline_run_id)
    units = frame.index.get_level_values("unit")
    columns = {}
    for run_id in frame.columns:
        cells = [format_value(value, unit) for value, unit in zip(frame[run_id], units)]
        if run_id == baseline_run_id:
            columns[names[run_id] + (" (baseline)" if len(frame.columns) > 1 else "")] = cells
            continue
        columns[names[run_id]] = [cell if cell == "—" or math.isnan(change) else f"{cell} ({_percent(change)})"
                                  for cell, change in zip(cells, percent[run_id])]
    return pd.DataFrame(columns, index=frame.index.droplevel(["unit", "better"]))


def styled_table(frame: pd.DataFrame, baseline_run_id: int, names: dict[int, str],
                 settings: Optional[pd.DataFrame] = None) -> Styler:
    """display_table coloured green where a run beats the baseline and red where it does worse.

    settings: settings_frame of the same runs, put on top as section "Settings", rows that differ shaded.
    """
    text = display_table(frame, baseline_run_id, names)
    css = pd.DataFrame("", index=text.index, columns=text.columns)
    judged = verdicts(frame, baseline_run_id)
    for run_id in judged.columns:
        css[names[run_id]] = [COLORS.get(verdict, "") for verdict in judged[run_id]]
    if settings is not None and not settings.empty:
        rows = settings[list(frame.columns)].set_axis(list(text.columns), axis=1)
        rows.index = pd.MultiIndex.from_product([["Settings"], rows.index], names=text.index.names)
        shade = pd.DataFrame([[DIFFERS_SHADE if differs else ""] * len(rows.columns)
                              for differs in rows.nunique(axis=1) > 1], index=rows.index, columns=rows.columns)
        text, css = pd.concat([rows, text]), pd.concat([shade, css])
    return text.style.apply(lambda _: css, axis=None)


def settings_frame(runs: Sequence[Run]) -> pd.DataFrame:
    """How each run ran (SETTINGS_ROWS) as text, one column per run id; rows no run has are dropped."""
    runs = list(runs)
    status, modes = facts_of(runs)["status"], rs.mode_texts(runs)
    readers: dict[str, Callable[[Run], Optional[str]]] = {
        "status": lambda run: status[run.id],
        "mode": lambda run: modes[run.id],
        "precision (compute dtype)": rs.precision_text,
        "layout": rs.layout_text,
        "TF32": rs.tf32_text,
        "deterministic": rs.deterministic_text,
        "same initial weights": rs.same_init_text,
        "warm-up steps (excluded)": lambda run: _or_none(str, rs.warmup_steps(run)),
        "time to target": time_to_target_text,
        "framework version": lambda run: (run.environment or {}).get("framework_version"),
        "device": lambda run: (run.environment or {}).get("device_name") or (run.environment or {}).get("device"),
    }
    table = pd.DataFrame({run.id: [readers[row](run) for row in SETTINGS_ROWS] for run in runs},
                         index=list(SETTINGS_ROWS))
    return table.dropna(how="all").fillna("—")
