"""Plotly figures for speed: per-step time distributions, warm-up/compile time, inference latency.

Not a page: app.py registers only launch.py, runs.py and compare.py with st.navigation.
"""
from __future__ import annotations

from typing import Optional, Sequence

import pandas as pd
import plotly.graph_objects as go

from db.models import Run
from pages import common
from pages import run_settings as rs
from pages.charts import add_run_line, base_figure, fit_legend
from pages.summary import format_ms

STEP_TIME_METRIC = "step/step_time_ms"
WARMUP_SHADE = "#9CA3AF"
LOG_SPREAD = 10  # medians further apart than this put the step-time boxes on a log axis
INFERENCE_BATCHES = (("bs1", "batch 1"), ("bsN", "training batch size"))


def translucent(hex_colour: str, alpha: float = 0.3) -> str:
    """"#EE4C2C" -> "rgba(238, 76, 44, 0.3)": a box filled lightly keeps its median line visible."""
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def _warmup(run: Run) -> int:
    return int(rs.warmup_steps(run) or 0)


def steady_step_times(steps: pd.DataFrame, run: Run) -> pd.Series:
    """Step times (ms) of one run after its warm-up steps (steps are numbered from 1)."""
    points = steps[(steps["run_id"] == run.id) & (steps["name"] == STEP_TIME_METRIC)]
    return points[points["step"] > _warmup(run)]["value"].dropna()


def step_time_box(steps: pd.DataFrame, runs: Sequence[Run]) -> go.Figure:
    """Distribution of per-step time per run, warm-up steps excluded: one box per run in its framework colour."""
    distributions = {run.id: steady_step_times(steps, run) for run in runs}
    medians = [float(v.median()) for v in distributions.values() if not v.empty and v.median() > 0]
    # One framework can be 100x the other on a small model: a log axis keeps both boxes readable.
    log_y = bool(medians) and max(medians) > LOG_SPREAD * min(medians)
    fig = base_figure("Step time after warm-up (box: quartiles, whiskers 1.5 IQR)", "",
                      "ms per optimizer step" + (" (log)" if log_y else ""), log_y=log_y)
    labels = rs.distinguishing_labels(runs, separator="<br>")
    styles = common.trace_styles(runs)
    for run in runs:
        values = distributions[run.id]
        if values.empty:
            continue
        colour = styles[run.id]["color"]
        fig.add_trace(go.Box(
            y=values, name=labels[run.id], marker=dict(color=colour, size=4), line=dict(color=colour),
            fillcolor=translucent(colour), boxpoints="outliers", boxmean=True, showlegend=False,
            hovertemplate=f"{labels[run.id]}: %{{y:.3f}} ms<extra></extra>",
        ))
    fig.update_layout(hovermode="closest")
    if not log_y:
        fig.update_yaxes(rangemode="tozero")
    return fig


def step_time_per_step(steps: pd.DataFrame, runs: Sequence[Run]) -> go.Figure:
    """Every step's time against the step number, log scale, with the warm-up steps shaded."""
    fig = base_figure("Step time per step (shaded: warm-up, excluded)", "optimizer step", "ms (log)", log_y=True)
    styles = common.trace_styles(runs)
    for run in runs:
        points = steps[(steps["run_id"] == run.id) & (steps["name"] == STEP_TIME_METRIC)].sort_values("step")
        if not points.empty:
            add_run_line(fig, run, styles[run.id], points["step"], points["value"], markers=False, overlap=False)
    warmups = {_warmup(run) for run in runs if not steps[steps["run_id"] == run.id].empty}
    longest = max(warmups, default=0)
    if longest:
        label = f"warm-up: {longest} steps" if len(warmups) == 1 else f"warm-up: up to {longest} steps"
        fig.add_vrect(x0=0.5, x1=longest + 0.5, fillcolor=WARMUP_SHADE, opacity=0.2, line_width=0,
                      annotation_text=label, annotation_position="top left")
    return fig


# Start-up quantities: (summary key, legend name, what it is, bar opacity).
STARTUP_SERIES = (
    ("first_step_s", "first step", "the first optimizer step alone", 1.0),
    ("compile_s", "compile", "first step minus a median steady step: tracing or compiling", 0.6),
    ("warmup_s", "all warm-up steps", "the warm-up steps together: the time left out of throughput", 0.3),
)
LEGEND_SWATCH = "#4B5563"  # legend entries in grey: the bars themselves carry the framework colours


def warmup_bars(runs: Sequence[Run]) -> go.Figure:
    """First step, compile estimate and whole warm-up per run: the start-up kept out of throughput and step times.

    Bars in the run's framework colour, one shade per quantity; the legend explains the shades in grey.
    """
    fig = base_figure("Start-up, not in throughput or step times", "", "seconds")
    labels = rs.distinguishing_labels(runs, separator="<br>")
    highest = 0.0
    for key, name, meaning, opacity in STARTUP_SERIES:
        shown = [run for run in runs if rs.summary_value(run, key) is not None]
        if not shown:
            continue
        seconds = [float(run.summary[key]) for run in shown]
        highest = max(highest, *seconds)
        fig.add_trace(go.Bar(
            x=[labels[run.id] for run in shown], y=seconds, name=name, legendgroup=key, showlegend=False,
            marker=dict(color=[translucent(common.framework_color(run.framework), opacity) for run in shown],
                        line=dict(color=[common.framework_color(run.framework) for run in shown], width=1)),
            text=[common.format_duration(v) for v in seconds], textposition="outside", textfont=dict(size=10),
            hovertemplate=f"%{{x}}<br>{name}: %{{y:.3f}} s ({meaning})<extra></extra>",
        ))
        fig.add_trace(go.Bar(x=[None], y=[None], name=name, legendgroup=key, hoverinfo="skip",
                             marker=dict(color=translucent(LEGEND_SWATCH, opacity), line=dict(color=LEGEND_SWATCH,
                                                                                              width=1))))
    fig.update_layout(hovermode="closest", barmode="group")
    fig.update_yaxes(range=[0, (highest or 1) * 1.2])  # room for the labels above the bars
    fit_legend(fig)
    return fig


def has_inference(runs: Sequence[Run]) -> bool:
    return any(rs.summary_value(run, f"inference_{b}_p50_ms") is not None for run in runs for b, _ in INFERENCE_BATCHES)


def inference_latency(runs: Sequence[Run], batch: str) -> go.Figure:
    """Forward-pass latency per run at one batch size ("bs1" or "bsN"): bar = p50, whisker up to p95."""
    words = dict(INFERENCE_BATCHES)[batch]
    fig = base_figure(f"Inference latency at {words} (bar p50, whisker p95)", "", "ms per batch")
    shown = [run for run in runs if rs.summary_value(run, f"inference_{batch}_p50_ms") is not None]
    labels = rs.distinguishing_labels(runs, separator="<br>")
    p50 = [float(run.summary[f"inference_{batch}_p50_ms"]) for run in shown]
    p95 = [_float(rs.summary_value(run, f"inference_{batch}_p95_ms")) for run in shown]
    fig.add_trace(go.Bar(
        x=[_inference_name(run, batch, labels) for run in shown], y=p50,
        marker_color=[common.framework_color(run.framework) for run in shown],
        text=[format_ms(v) for v in p50], textposition="auto",
        error_y=dict(type="data", symmetric=False, array=[max(h - m, 0) if h is not None else 0
                                                           for m, h in zip(p50, p95)],
                     arrayminus=[0] * len(p50), color="#374151"),
        customdata=[format_ms(v) or "—" for v in p95],
        hovertemplate="%{x}: p50 %{y:.3f} ms, p95 %{customdata}<extra></extra>", showlegend=False,
    ))
    fig.update_layout(hovermode="closest")
    return fig


def _inference_name(run: Run, batch: str, labels: dict[int, str]) -> str:
    size = rs.summary_value(run, "inference_batch_size") if batch == "bsN" else 1
    return f"{labels[run.id]}<br>batch {size}" if size else labels[run.id]


def _float(value) -> Optional[float]:
    return None if value is None else float(value)
