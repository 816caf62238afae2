"""Plotly figures for the Compare page: one colour per framework, dash and marker per run."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import plotly.graph_objects as go

from db.models import Run
from pages import common, run_settings

HEIGHT_PX = 330
TOP_MARGIN_PX = 60  # title and a one-row legend
LEGEND_ROW_PX = 22
LEGEND_ROW_WIDTH_PX = 380  # what a legend row holds in the narrowest chart (a third of the page)
LEGEND_SWATCH_PX, LEGEND_CHAR_PX = 45, 7


def base_figure(title: str, x_title: str, y_title: str, log_y: bool = False) -> go.Figure:
    """An empty figure in the page's common layout: title left, legend on top."""
    fig = go.Figure()
    fig.update_layout(
        # The title is pinned to the top so a legend of many runs, growing upwards, never covers it.
        title=dict(text=title, x=0, xanchor="left", y=1, yref="container", yanchor="top", pad=dict(t=12)),
        height=HEIGHT_PX, margin=dict(l=10, r=10, t=TOP_MARGIN_PX, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1),
        hovermode="x unified", xaxis_title=x_title, yaxis_title=y_title,
    )
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def add_run_line(fig: go.Figure, run: Run, style: dict, x, y, markers: bool, overlap: bool = True, **extra) -> None:
    """One run's curve; overlap=False where curves rarely coincide (timings, gauges): uniform width."""
    if not overlap:
        style = {**style, "width": 2.0, "size": 7}
    fig.add_trace(go.Scatter(
        x=x, y=y, name=common.trace_name(run), legendgroup=str(run.id),
        mode="lines+markers" if markers else "lines",
        line=dict(color=style["color"], dash=style["dash"], width=style["width"]),
        marker=dict(symbol=style["symbol"], size=style["size"], color=style["color"]), **extra,
    ))
    fit_legend(fig)


def fit_legend(fig: go.Figure) -> None:
    """A short legend sits above the plot; a long one goes below it, a row per few entries, so it never
    covers the title or the curves."""
    names = [trace.name for trace in fig.data if trace.showlegend is not False and trace.name]
    # Rows by the space the entries take (a swatch and the text), not by their number: group names are long.
    width_px = sum(LEGEND_SWATCH_PX + LEGEND_CHAR_PX * len(name) for name in names)
    rows = max(1, -(-width_px // LEGEND_ROW_WIDTH_PX))
    if rows == 1:
        fig.update_layout(margin=dict(t=TOP_MARGIN_PX, b=10), height=HEIGHT_PX,
                          legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1))
        return
    legend_px = LEGEND_ROW_PX * rows
    # Pinned to the bottom of the figure, under the x axis title; the bottom margin makes the room.
    fig.update_layout(margin=dict(t=TOP_MARGIN_PX - 20, b=50 + legend_px), height=HEIGHT_PX + legend_px,
                      legend=dict(orientation="h", yref="container", yanchor="bottom", y=0.01, xanchor="left", x=0))


def per_epoch(epochs: pd.DataFrame, runs: Sequence[Run], name: str, title: str, y_title: str,
              percent: bool = False, overlap: bool = True) -> go.Figure:
    """One per-epoch metric against the epoch number."""
    fig = base_figure(title, "epoch", y_title)
    styles = common.trace_styles(runs)
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
    labels = run_settings.distinguishing_labels(runs, separator="<br>")
    for run in runs:
        values = epochs[(epochs["run_id"] == run.id) & (epochs["name"] == "samples_per_s")]["value"]
        if values.empty:
            continue
        med = float(values.median())
        names.append(labels[run.id])
        medians.append(med)
        lows.append(med - float(values.min()))
        highs.append(float(values.max()) - med)
        colours.append(common.framework_color(run.framework))
    fig.add_trace(go.Bar(
        x=names, y=medians, marker_color=colours, text=[f"{m:,.0f}" for m in medians], textposition="inside",
        insidetextanchor="start", textfont=dict(color="white"),
        error_y=dict(type="data", symmetric=False, array=highs, arrayminus=lows, color="#374151"),
        hovertemplate="%{x}: %{y:,.0f} samples/s<extra></extra>", showlegend=False,
    ))
    fig.update_layout(hovermode="closest")
    return fig
