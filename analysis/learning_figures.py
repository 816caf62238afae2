"""Any recorded metric of the chosen runs against step, epoch, wall time or relative time.

Series arrive prepared by analysis.series (smoothed on every point, then cut to at most
MAX_POINTS with each bucket's min and max kept), so a chart of 100,000 steps draws fast and
still shows every spike. Runs that differ only in their seed can be drawn as one mean line with
a ±std or 95 % CI band.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis import series
from analysis.figure_layout import base_figure, compact, translucent
from analysis.run_settings import run_mode
from analysis.run_styles import trace_name, trace_styles
from db.models import Run
from engine.catalog import framework_label

MAX_POINTS = 2000
X_TITLES = {"step": "optimizer step", "epoch": "epoch", "wall_time": "wall time (UTC)",
            "relative_time": "seconds since the run's first point"}
X_LABELS = {"step": "Step", "epoch": "Epoch", "wall_time": "Wall time", "relative_time": "Relative time"}
BANDS = {"std": "mean ± std", "ci95": "mean, 95 % CI"}
COMPANION_OPACITY = 0.55  # the test curve beside a train curve (or the other way round) in the same colour


def metric_label(name: str) -> str:
    """"step/train_loss" -> "train loss (per step)", "test_accuracy" -> "test accuracy"."""
    per_step = name.startswith("step/")
    words = name.removeprefix("step/").replace("_", " ")
    return f"{words} (per step)" if per_step else words


def companion(name: str, available: Sequence[str]) -> Optional[str]:
    """The test metric for a train metric and the other way round, when recorded: train and test together."""
    bare = name.removeprefix("step/")
    for this, other in (("train_", "test_"), ("test_", "train_")):
        if bare.startswith(this):
            wanted = other + bare.removeprefix(this)
            for candidate in (wanted, "step/" + wanted):
                if candidate in available and candidate != name:
                    return candidate
    return None


def default_metrics(available: Sequence[str]) -> list[str]:
    """What a first look at a comparison wants: the per-step loss, then test accuracy (or φ) and test loss."""
    preferred = ("step/train_loss", "test_accuracy", "phi_estimate", "test_loss")
    return [name for name in preferred if name in available][:3] or list(available[:2])


def accuracy_like(name: str) -> bool:
    return "accuracy" in name


def metric_figure(prepared: pd.DataFrame, runs: Sequence[Run], name: str, x_axis: str, *, log_y: bool = False,
                  smoothing: float = 0.0, with_companion: Optional[str] = None,
                  groups: Sequence[Sequence[int]] = (), band: str = "std",
                  group_points: Optional[pd.DataFrame] = None) -> go.Figure:
    """One metric (and its train/test companion) per run, or per seed group as a mean with a band.

    group_points: the grouped runs' series at full resolution (prepared without downsampling), so the
    mean and band are computed from every point and downsampled once, as a band.
    """
    title = metric_label(name) + (f" and {metric_label(with_companion)}" if with_companion else "")
    percent = accuracy_like(name)
    styles = trace_styles(runs)
    by_id = {run.id: run for run in runs}
    traces: list[go.Scatter] = []
    for metric, faint in ((name, False), (with_companion, True)):
        if metric is None:
            continue
        by_run = dict(tuple(prepared[prepared["name"] == metric].groupby("run_id", sort=False)))
        full_by_run = by_run if group_points is None else dict(tuple(
            group_points[group_points["name"] == metric].groupby("run_id", sort=False)))
        grouped = set()
        for group in groups:
            band_traces = _group_traces(full_by_run, [by_id[i] for i in group], styles[group[0]], metric, x_axis,
                                        band, faint, percent)
            if band_traces:
                traces += band_traces
                grouped.update(group)
        for run in runs:
            if run.id not in grouped and run.id in by_run:
                traces += _run_traces(by_run[run.id], run, styles[run.id], metric, x_axis, smoothing, faint, percent)
    fig = base_figure(title[0].upper() + title[1:], X_TITLES[x_axis],
                      metric_label(name).split(" (")[0] + (" (%)" if percent else ""), log_y, data=traces,
                      x_type="date" if x_axis == "wall_time" else None)
    return fig


def _run_traces(points: pd.DataFrame, run: Run, style: dict, metric: str, x_axis: str, smoothing: float,
                faint: bool, percent: bool) -> list[go.Scatter]:
    """One run's curve (and, when smoothed, its raw values faint behind it)."""
    scale = 100.0 if percent else 1.0
    x = compact(_x(points["x"], x_axis))
    name = trace_name(run) + (f" · {metric_label(metric)}" if faint else "")
    per_epoch = not metric.startswith("step/")
    traces = []
    if smoothing > 0 and not per_epoch:
        traces.append(go.Scatter(x=x, y=compact(points["value"] * scale), legendgroup=str(run.id), showlegend=False,
                                 hoverinfo="skip", mode="lines", opacity=0.25,
                                 line=dict(color=style["color"], width=1)))
        y = compact(points["smoothed"] * scale)
    else:
        y = compact(points["value"] * scale)
    traces.append(go.Scatter(
        x=x, y=y, name=name, legendgroup=str(run.id), mode="lines+markers" if per_epoch else "lines",
        opacity=COMPANION_OPACITY if faint else 1.0,
        line=dict(color=style["color"], dash=style["dash"], width=2.0 if faint else style["width"]),
        marker=dict(symbol="circle-open" if faint else style["symbol"], size=style["size"], color=style["color"]),
    ))
    return traces


def _group_traces(by_run: dict[int, pd.DataFrame], members: list[Run], style: dict, metric: str, x_axis: str,
                  band: str, faint: bool, percent: bool) -> list[go.Scatter]:
    """A seed group: the mean of its runs as a line, the spread as a filled band, the group size in the legend.

    No traces when the runs share no stretch of x (seeds run one after another, against wall time):
    each run is then drawn on its own.
    """
    members_points = [by_run[run.id] for run in members if run.id in by_run]
    if not members_points:
        return []
    column = "smoothed" if "smoothed" in members_points[0].columns and metric.startswith("step/") else "value"
    try:
        frame = series.group_band([(p["x"].to_numpy(dtype=float), p[column].to_numpy(dtype=float))
                                   for p in members_points], how=band, grid_points=MAX_POINTS)
    except ValueError:  # no common stretch of x
        return []
    if frame.empty:
        return []
    scale = 100.0 if percent else 1.0
    first = members[0]
    n = int(frame["n"].max())
    name = (f"{framework_label(first.framework)} {run_mode(first)} {first.model} "
            f"(n={n}, {BANDS[band]})") + (f" · {metric_label(metric)}" if faint else "")
    x = compact(_x(frame["x"], x_axis).to_numpy())
    group_id = "group-" + "-".join(str(run.id) for run in members)
    return [
        go.Scatter(
            x=np.r_[x, x[::-1]], y=compact(np.r_[frame["hi"] * scale, (frame["lo"] * scale)[::-1]]), fill="toself",
            mode="lines", fillcolor=translucent(style["color"], 0.12 if faint else 0.22), line=dict(width=0),
            hoverinfo="skip", legendgroup=group_id, showlegend=False,
        ),
        go.Scatter(
            x=x, y=compact(frame["mean"] * scale), name=name, legendgroup=group_id, mode="lines",
            opacity=COMPANION_OPACITY if faint else 1.0, customdata=compact(frame["n"]),
            line=dict(color=style["color"], dash=style["dash"], width=2.5),
            hovertemplate="%{y:.4g} (n=%{customdata})",
        ),
    ]


def _x(x: pd.Series, x_axis: str) -> pd.Series:
    """Wall time (unix seconds) as dates, so the axis reads as clock time; other axes as they are."""
    return pd.to_datetime(x, unit="s") if x_axis == "wall_time" else x
