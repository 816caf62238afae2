"""The Compare page's memory section: memory per run and source over time or step, peaks, GPU gauges.

ui/memory_section.py draws them on the Compare page's Memory tab.
Colour says which run (a shade of its framework's colour, as in every chart); dash says which source.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.figure_layout import LEGEND_ROW_PX, TOP_MARGIN_PX, base_figure, fit_legend
from analysis.formatting import GIB, MIB, error_summary, format_bytes, format_energy, unix_time
from analysis.run_facts import status_color
from analysis.run_styles import trace_name, trace_styles
from db.models import DIVERGED, OUT_OF_MEMORY, Run

MEMORY_HEIGHT_PX = 420  # full width and many lines: taller than the half-width charts
MAX_POINTS = 2000  # per series and run: a browser draws this many fast, and min/max buckets keep every peak
UNITS = {"MiB": MIB, "GiB": GIB}
X_AXES = {"time": "seconds since run start", "step": "optimizer step"}
OOM_COLOR = "#DC2626"
EPOCH_LINE_COLOR = "#9CA3AF"
FRAMEWORK_SOURCES = ("torch", "tensorflow")


@dataclass(frozen=True)
class Series:
    """One memory gauge as recorded: source(s) and name in system_samples, and how it is drawn."""

    key: str
    label: str
    dash: str
    sources: tuple[str, ...]
    name: str
    meaning: str


MEMORY_SERIES = (
    Series("nvml_process", "NVML process", "solid", ("nvml",), "process_gpu_memory",
           "GPU memory the driver gave the run's process, the CUDA context (~300–500 MiB) included: what the GPU "
           "really has reserved for it."),
    Series("allocated", "allocator allocated", "dot", FRAMEWORK_SOURCES, "allocated",
           "what the framework's GPU allocator holds in live tensors, nothing else."),
    Series("reserved", "allocator reserved", "dash", FRAMEWORK_SOURCES, "reserved",
           "allocated plus the cache the allocator keeps for reuse; NVML process ≈ reserved + CUDA context."),
    Series("host_rss", "host RSS", "dashdot", ("host",), "rss",
           "the process's resident memory in RAM (Python, the framework, the data set)."),
    Series("nvml_device", "NVML whole GPU", "longdash", ("nvml",), "gpu_memory_used",
           "everything on the run's GPU, other processes included; drawn only when the per-process figure is "
           "missing."),
)
PEAK_METRIC_PREFIX = "peak_bytes/"
# Per-epoch metrics the section reads: exact peaks per epoch (live runs have no run summary yet), energy.
PEAK_METRICS = tuple(f"{PEAK_METRIC_PREFIX}{source}_{series.name}" for series in MEMORY_SERIES
                     for source in series.sources)


# Pure helpers -----------------------------------------------------------------------------------
def downsample_min_max(x, y, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most max_points of (x, y) in x order: each of max_points/2 buckets keeps its min and its max.

    A plain stride would drop a one-sample spike; keeping both extremes draws the same envelope. y must
    hold no NaN (samples never do).
    """
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n = len(y)
    if n <= max_points:
        return x, y
    width = -(-n // (max_points // 2))  # samples per bucket, so that there are at most max_points / 2 buckets
    buckets = -(-n // width)
    pad = buckets * width - n  # the last bucket is filled up with values that never win
    offsets = np.arange(buckets) * width
    lows = np.r_[y, np.full(pad, np.inf)].reshape(buckets, width).argmin(axis=1) + offsets
    highs = np.r_[y, np.full(pad, -np.inf)].reshape(buckets, width).argmax(axis=1) + offsets
    keep = np.unique(np.r_[lows, highs])  # sorted indices: back in x order, a flat bucket's one point once
    return x[keep], y[keep]


def run_colors(runs: Sequence[Run]) -> dict[int, str]:
    """One colour per run, the same as in every other chart of the page (trace_styles)."""
    return {run_id: style["color"] for run_id, style in trace_styles(runs).items()}


@dataclass(frozen=True)
class StepClock:
    """When each optimizer step of one run ended: maps a sample's time to a (fractional) step."""

    times: np.ndarray
    steps: np.ndarray
    epochs: np.ndarray

    def step_at(self, times) -> np.ndarray:
        """Steps at these unix times; before the first step and after the last, those steps."""
        return np.interp(np.asarray(times, dtype=float), self.times, self.steps)

    def time_of(self, step: int) -> Optional[float]:
        found = np.flatnonzero(self.steps == step)
        return float(self.times[found[0]]) if found.size else None

    def epoch_ends(self) -> list[tuple[float, int]]:
        """(time, step) of the last step of every epoch but the last: where one epoch hands over to the next."""
        changes = np.flatnonzero(np.diff(self.epochs) != 0)
        return [(float(self.times[i]), int(self.steps[i])) for i in changes]


def step_clocks(steps: pd.DataFrame, runs: Sequence[Run]) -> dict[int, StepClock]:
    """A StepClock per run that recorded per-step metrics (one per-step metric's rows, e.g. step/train_loss)."""
    clocks = {}
    for run in runs:
        rows = steps[steps["run_id"] == run.id].sort_values("step")
        if rows.empty:
            continue
        # Runs recorded before step end times were kept share one time per flush: never let time run back.
        times = np.maximum.accumulate(rows["wall_time"].to_numpy(dtype=float))
        clocks[run.id] = StepClock(times, rows["step"].to_numpy(dtype=float), rows["epoch"].to_numpy())
    return clocks


SAMPLE_COLUMNS = ["run_id", "time", "source", "name", "value", "unit"]


class SampleSet:
    """System samples split once per (run, source, name): masking a long frame for every lookup was slow."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame.reset_index(drop=True)
        times = self._frame["time"].to_numpy(dtype=float)
        groups = self._frame.groupby(["run_id", "source", "name"], sort=False).indices if len(frame) else {}
        # Row positions per series, in time order.
        self._rows: dict[tuple[int, str, str], np.ndarray] = {
            (int(run_id), source, name): rows[np.argsort(times[rows], kind="stable")]
            for (run_id, source, name), rows in groups.items()
        }

    def points(self, run_id: int, sources: Sequence[str], names: Sequence[str]) -> pd.DataFrame:
        """One run's samples of these sources and names, in time order (empty when there are none)."""
        parts = [self._rows[key] for key in ((run_id, s, n) for s in sources for n in names) if key in self._rows]
        if not parts:
            return pd.DataFrame(columns=SAMPLE_COLUMNS)
        points = self._frame.take(np.concatenate(parts))
        return points if len(parts) == 1 else points.sort_values("time", kind="stable")

    def has(self, source: str, name: str) -> bool:
        return any(key[1:] == (source, name) for key in self._rows)

    def sources_of(self, run_id: int) -> set[str]:
        return {key[1] for key in self._rows if key[0] == run_id}

    def first_time(self, run_id: int) -> Optional[float]:
        times = [float(self._frame["time"].iat[rows[0]]) for key, rows in self._rows.items() if key[0] == run_id]
        return min(times, default=None)


def drawn_series(samples: SampleSet, run: Run) -> list[tuple[Series, pd.DataFrame]]:
    """The memory series a run has samples of; the whole-GPU figure only when the process figure is missing."""
    found = [(series, samples.points(run.id, series.sources, [series.name])) for series in MEMORY_SERIES]
    found = [(series, points) for series, points in found if not points.empty]
    if any(series.key == "nvml_process" for series, _ in found):
        found = [(series, points) for series, points in found if series.key != "nvml_device"]
    return found


def start_time(run: Run, samples: SampleSet) -> float:
    """Time zero of a run's charts: when it started, else its first sample."""
    started = unix_time(run.started_at)
    if started is not None:
        return started
    first = samples.first_time(run.id)
    return first if first is not None else 0.0


# Figures ----------------------------------------------------------------------------------------
class Placer:
    """Turns one run's sample times into x values for the chosen axis (None: the run has no steps)."""

    def __init__(self, run: Run, samples: SampleSet, clocks: dict[int, StepClock], x_axis: str) -> None:
        self.clock, self.x_axis = clocks.get(run.id), x_axis
        self.zero = start_time(run, samples)

    @property
    def usable(self) -> bool:
        return self.x_axis == "time" or self.clock is not None

    def x(self, times) -> np.ndarray:
        times = np.asarray(times, dtype=float)
        return times - self.zero if self.x_axis == "time" else self.clock.step_at(times)


def memory_figure(samples: SampleSet, runs: Sequence[Run], clocks: dict[int, StepClock], x_axis: str,
                  unit: str) -> go.Figure:
    """Memory per run (colour) and source (dash), with epoch boundaries and out-of-memory/divergence markers."""
    scale = UNITS[unit]
    fig = base_figure("Memory", X_AXES[x_axis], unit)
    colours = run_colors(runs)
    for run in runs:
        place = Placer(run, samples, clocks, x_axis)
        drawn = drawn_series(samples, run)
        if not place.usable or not drawn:
            continue
        for series, points in drawn:
            times, values = downsample_min_max(points["time"], points["value"])
            fig.add_trace(go.Scatter(
                x=place.x(times), y=values / scale, mode="lines", name=f"{trace_name(run)} · {series.label}",
                legendgroup=str(run.id), line=dict(color=colours[run.id], dash=series.dash, width=2),
                hovertemplate=f"{series.label}: %{{y:,.1f}} {unit}<extra>{trace_name(run)}</extra>",
            ))
        top = max(drawn, key=lambda item: item[1]["value"].max())[1]  # markers sit on the run's highest line
        _end_markers(fig, run, place, top, scale)
    _epoch_lines(fig, runs, samples, clocks, x_axis, colours)
    # A horizontal legend stacks each run's entries in a column: as many rows as the run with most entries.
    rows = max([sum(1 for trace in fig.data if trace.legendgroup == str(run.id)) for run in runs] + [1])
    extra_px = LEGEND_ROW_PX * (rows - 1)
    fig.update_layout(height=MEMORY_HEIGHT_PX + extra_px, margin=dict(t=TOP_MARGIN_PX + extra_px))
    return fig


def _end_markers(fig: go.Figure, run: Run, place: Placer, top: pd.DataFrame, scale: float) -> None:
    """A red ✕ at the last sample of a run that ran out of memory; a diamond where the loss went non-finite."""
    if run.reason == OUT_OF_MEMORY:
        # Plotly renders its own tags (<b>, <br>) in hover text: an error message is escaped to stay text.
        text = "out of memory: " + html.escape(error_summary(run.error) or "no error text recorded", quote=False)
        last = top.iloc[-1]
        fig.add_trace(go.Scatter(
            x=place.x([last["time"]]), y=[last["value"] / scale], mode="markers",
            name=f"{trace_name(run)} · out of memory", legendgroup=str(run.id),
            marker=dict(symbol="x", size=14, color=OOM_COLOR, line=dict(width=1, color=OOM_COLOR)),
            hovertext=[text], hovertemplate="%{hovertext}<extra></extra>",
        ))
    step = (run.summary or {}).get("diverged_at_step")
    when = place.clock.time_of(int(step)) if step is not None and place.clock is not None else None
    if when is not None:
        fig.add_trace(go.Scatter(
            x=place.x([when]), y=[float(np.interp(when, top["time"], top["value"])) / scale], mode="markers",
            name=f"{trace_name(run)} · loss not finite", legendgroup=str(run.id),
            marker=dict(symbol="diamond", size=12, color=status_color(DIVERGED)),
            hovertext=[f"loss not finite from step {int(step)}"], hovertemplate="%{hovertext}<extra></extra>",
        ))


def _epoch_lines(fig: go.Figure, runs: Sequence[Run], samples: SampleSet, clocks: dict[int, StepClock],
                 x_axis: str, colours: dict[int, str]) -> None:
    """Faint vertical lines at epoch boundaries: in the run's colour, grey where several runs share one."""
    owners: dict[float, set[int]] = {}
    for run in runs:
        clock = clocks.get(run.id)
        if clock is None:
            continue
        zero = start_time(run, samples)
        for time, step in clock.epoch_ends():
            owners.setdefault(round(time - zero, 3) if x_axis == "time" else float(step), set()).add(run.id)
    # Shapes in one go: fig.add_vline validates the whole layout on every call, slow with many epochs.
    fig.update_layout(shapes=[
        dict(type="line", xref="x", yref="paper", x0=x, x1=x, y0=0, y1=1, opacity=0.45, layer="below",
             line=dict(color=colours[next(iter(ids))] if len(ids) == 1 else EPOCH_LINE_COLOR, width=1, dash="dot"))
        for x, ids in sorted(owners.items())
    ])


def gauge_figure(samples: SampleSet, runs: Sequence[Run], clocks: dict[int, StepClock], x_axis: str,
                 source: str, name: str, title: str, y_title: str) -> go.Figure:
    """One sampled gauge (CPU %, GPU utilisation, power) per run, in the run's colour."""
    fig = base_figure(title, X_AXES[x_axis], y_title)
    fig.update_layout(showlegend=True)  # even for one run: its colour says which one
    colours = run_colors(runs)
    for run in runs:
        points = samples.points(run.id, [source], [name])
        place = Placer(run, samples, clocks, x_axis)
        if points.empty or not place.usable:
            continue
        times, values = downsample_min_max(points["time"], points["value"])
        fig.add_trace(go.Scatter(x=place.x(times), y=values, mode="lines", name=trace_name(run),
                                 legendgroup=str(run.id), line=dict(color=colours[run.id], width=2)))
    fit_legend(fig)
    return fig


# Tables -----------------------------------------------------------------------------------------
def peak_bytes(run: Run, series: Series, samples: SampleSet,
               epoch_peaks: pd.DataFrame) -> Optional[tuple[float, bool]]:
    """A run's peak of one series and whether it is exact: from the run summary or its epochs (exact),
    else the largest sample (sampled); None when nothing was recorded."""
    exact = (run.summary or {}).get("peak_bytes") or {}
    keys = [f"{source}_{series.name}" for source in series.sources]
    found = [float(exact[key]) for key in keys if exact.get(key) is not None]
    if not found and not epoch_peaks.empty:
        rows = epoch_peaks[(epoch_peaks["run_id"] == run.id)
                           & epoch_peaks["name"].isin([PEAK_METRIC_PREFIX + key for key in keys])]["value"].dropna()
        found = [float(rows.max())] if not rows.empty else []
    if found:
        return max(found), True
    names = [series.name] + (["peak_allocated"] if series.name == "allocated" else [])  # the allocator's own peak
    rows = samples.points(run.id, series.sources, names)["value"]
    return None if rows.empty else (float(rows.max()), False)


def peak_cell(run: Run, series: Series, samples: SampleSet, epoch_peaks: pd.DataFrame) -> Optional[str]:
    """peak_bytes as the peaks table shows it: "512.0 MiB", or "512.0 MiB (sampled)"."""
    peak = peak_bytes(run, series, samples, epoch_peaks)
    if peak is None:
        return None
    value, exact = peak
    return format_bytes(value) if exact else f"{format_bytes(value)} (sampled)"


def peaks_table(samples: SampleSet, epoch_peaks: pd.DataFrame, runs: Sequence[Run]) -> pd.DataFrame:
    """Peak memory per source (rows) and run (columns), energy and samples per joule; rows nobody has are dropped."""
    rows: dict[str, list[Optional[str]]] = {
        f"peak {series.label}": [peak_cell(run, series, samples, epoch_peaks) for run in runs]
        for series in MEMORY_SERIES
    }
    rows["energy (training)"] = [_summary_number(run, "energy_j", format_energy) for run in runs]
    rows["samples per joule"] = [_summary_number(run, "samples_per_j", lambda v: f"{v:,.1f}") for run in runs]
    table = pd.DataFrame(rows, index=[trace_name(run) for run in runs]).T
    return table.dropna(how="all").fillna("—")


def _summary_number(run: Run, key: str, fmt) -> Optional[str]:
    value = (run.summary or {}).get(key)
    return fmt(float(value)) if isinstance(value, (int, float)) else None


def on_gpu(run: Run, samples: SampleSet) -> bool:
    """True when the run trained on a GPU: placed on one, or a GPU gauge reported for it."""
    device = run.placed_device or str((run.environment or {}).get("device") or "")
    return device.startswith(("cuda", "gpu", "/gpu")) or bool(samples.sources_of(run.id) & {"nvml", *FRAMEWORK_SOURCES})


def source_notes(samples: SampleSet, runs: Sequence[Run]) -> list[str]:
    """Markdown lines: what each drawn line measures, how often it was sampled, TensorFlow's memory growth."""
    present = {series.key for run in runs for series, _ in drawn_series(samples, run)}
    lines = [f"**{series.label}** ({series.dash}): {series.meaning}" for series in MEMORY_SERIES
             if series.key in present]
    rates = {run.id: float((run.spec or {}).get("sample_hz") or 10) for run in runs}
    rate_text = (f"{next(iter(rates.values())):g} Hz" if len(set(rates.values())) == 1
                 else ", ".join(f"#{i} {hz:g} Hz" for i, hz in rates.items()))
    lines.append(f"**Sampling** at {rate_text} misses spikes shorter than the interval: the exact peaks in the table "
                 "come from the allocators' own peak counters and the kernel's high-water mark for host RSS.")
    growth = [f"#{run.id} {'on' if (run.spec or {}).get('tf_memory_growth', True) else 'off'}"
              + ("" if on_gpu(run, samples) else " (CPU: no effect)") for run in runs if run.framework == "tensorflow"]
    if growth:
        lines.append("**TensorFlow memory growth**: " + ", ".join(growth) + ". With growth off TensorFlow reserves "
                     "nearly the whole GPU at start, so its NVML figure says nothing about the model: compare the "
                     "allocator's figures instead.")
    return lines
