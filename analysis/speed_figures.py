"""Plotly figures for speed: throughput and epoch time, per-step time and rate distributions, start-up time,
inference latency."""
from __future__ import annotations

from typing import Optional, Sequence

import pandas as pd
import plotly.graph_objects as go

from analysis import run_settings as rs
from analysis.figure_layout import add_run_line, base_figure, fit_legend, translucent
from analysis.formatting import format_duration, format_ms
from analysis.run_styles import framework_color, trace_styles
from analysis.step_times import STEP_TIME_METRIC, steady_rates, steady_step_times, warmup_steps_of
from db.models import Run

WARMUP_SHADE = "#9CA3AF"
LOG_SPREAD = 10  # medians further apart than this put the step-time boxes on a log axis
INFERENCE_BATCHES = (("bs1", "batch 1"), ("bsN", "training batch size"))


def per_epoch(epochs: pd.DataFrame, runs: Sequence[Run], name: str, title: str, y_title: str,
              percent: bool = False, overlap: bool = True) -> go.Figure:
    """One per-epoch metric against the epoch number."""
    fig = base_figure(title, "epoch", y_title)
    styles = trace_styles(runs)
    for run in runs:
        points = epochs[(epochs["run_id"] == run.id) & (epochs["name"] == name)].sort_values("epoch")
        if not points.empty:
            add_run_line(fig, run, styles[run.id], points["epoch"], points["value"] * (100 if percent else 1),
                         markers=True, overlap=overlap)
    fig.update_xaxes(dtick=1 if epochs["epoch"].max() <= 20 else None)
    return fig


def throughput_bars(epochs: pd.DataFrame, runs: Sequence[Run]) -> go.Figure:
    """Median training throughput over epochs per run; the error bar spans the slowest to fastest epoch."""
    fig = base_figure("Throughput (median, bar = min–max epoch)", "", "samples / s")
    names, medians, lows, highs, colours = [], [], [], [], []
    labels = rs.distinguishing_labels(runs, separator="<br>")
    for run in runs:
        values = epochs[(epochs["run_id"] == run.id) & (epochs["name"] == "samples_per_s")]["value"]
        if values.empty:
            continue
        med = float(values.median())
        names.append(labels[run.id])
        medians.append(med)
        lows.append(med - float(values.min()))
        highs.append(float(values.max()) - med)
        colours.append(framework_color(run.framework))
    fig.add_trace(go.Bar(
        x=names, y=medians, marker_color=colours, text=[f"{m:,.0f}" for m in medians], textposition="inside",
        insidetextanchor="start", textfont=dict(color="white"),
        error_y=dict(type="data", symmetric=False, array=highs, arrayminus=lows, color="#374151"),
        hovertemplate="%{x}: %{y:,.0f} samples/s<extra></extra>", showlegend=False,
    ))
    fig.update_layout(hovermode="closest")
    return fig


def step_time_box(steps: pd.DataFrame, runs: Sequence[Run]) -> go.Figure:
    """Distribution of per-step time per run, warm-up steps excluded: one box per run in its framework colour."""
    distributions = {run.id: steady_step_times(steps, run) for run in runs}
    medians = [float(v.median()) for v in distributions.values() if not v.empty and v.median() > 0]
    # One framework can be 100x the other on a small model: a log axis keeps both boxes readable.
    log_y = bool(medians) and max(medians) > LOG_SPREAD * min(medians)
    fig = base_figure("Step time after warm-up (box: quartiles, whiskers 1.5 IQR)", "",
                      "ms per optimizer step" + (" (log)" if log_y else ""), log_y=log_y)
    labels = rs.distinguishing_labels(runs, separator="<br>")
    styles = trace_styles(runs)
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
    styles = trace_styles(runs)
    for run in runs:
        points = steps[(steps["run_id"] == run.id) & (steps["name"] == STEP_TIME_METRIC)].sort_values("step")
        if not points.empty:
            add_run_line(fig, run, styles[run.id], points["step"], points["value"], markers=False, overlap=False)
    warmups = {warmup_steps_of(run) for run in runs if not steps[steps["run_id"] == run.id].empty}
    longest = max(warmups, default=0)
    if longest:
        label = f"warm-up: {longest} steps" if len(warmups) == 1 else f"warm-up: up to {longest} steps"
        fig.add_vrect(x0=0.5, x1=longest + 0.5, fillcolor=WARMUP_SHADE, opacity=0.2, line_width=0,
                      annotation_text=label, annotation_position="top left")
    return fig


def rate_distribution(step_times: pd.DataFrame, runs: Sequence[Run]) -> go.Figure:
    """Samples/s of every steady step, one violin per run in its colour: where throughput spreads, and how far."""
    fig = base_figure("Samples/s per step after warm-up (violin: distribution, box: quartiles)", "", "samples / s")
    styles = trace_styles(runs)
    labels = rs.distinguishing_labels(runs, separator="<br>")
    for run in runs:
        rates = steady_rates(step_times, run)
        if rates.empty:
            continue
        colour = styles[run.id]["color"]
        fig.add_trace(go.Violin(
            y=rates, name=labels[run.id], line=dict(color=colour), fillcolor=translucent(colour, 0.3),
            box=dict(visible=True), meanline=dict(visible=True), points=False, showlegend=False,
            hovertemplate=f"{labels[run.id]}: %{{y:,.0f}} samples/s<extra></extra>",
        ))
    fig.update_layout(hovermode="closest")
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
            marker=dict(color=[translucent(framework_color(run.framework), opacity) for run in shown],
                        line=dict(color=[framework_color(run.framework) for run in shown], width=1)),
            text=[format_duration(v) for v in seconds], textposition="outside", textfont=dict(size=10),
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
        marker_color=[framework_color(run.framework) for run in shown],
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
