"""The layout every figure shares: title left, legend on top (or below when long), one line per run."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import plotly.graph_objects as go

from analysis.run_styles import trace_name
from db.models import Run

HEIGHT_PX = 330
TOP_MARGIN_PX = 60  # title and a one-row legend
LEGEND_ROW_PX = 22
LEGEND_ROW_WIDTH_PX = 380  # what a legend row holds in the narrowest chart (a third of the page)
LEGEND_SWATCH_PX, LEGEND_CHAR_PX = 45, 7


def base_figure(title: str, x_title: str, y_title: str, log_y: bool = False, data: Sequence = (),
                x_type: Optional[str] = None) -> go.Figure:
    """A figure in the page's common layout: title left, legend on top; `data`, its traces, if known already.

    Built in one call from plain dicts: plotly validates a layout given whole in a fraction of the time
    that update_layout and add_trace take, property by property (7 ms against 1 ms for the layout).
    """
    data = list(data)
    return go.Figure(data=data, layout=dict(
        # The title is pinned to the top so a legend of many runs, growing upwards, never covers it.
        title=dict(text=title, x=0, xanchor="left", y=1, yref="container", yanchor="top", pad=dict(t=12)),
        hovermode="x unified", xaxis=dict(title=dict(text=x_title), **({"type": x_type} if x_type else {})),
        yaxis=dict(title=dict(text=y_title), **({"type": "log"} if log_y else {})),
        **legend_layout(data),
    ))


def compact(values):
    """Numbers as the browser gets them: float32, integers as int32; anything else (dates, text) as it is.

    Plotly sends numpy arrays as typed arrays, so this halves a chart's bytes on the wire, and with them
    the time to send, decode and draw it. Seven significant digits are more than a chart or its hover
    text shows; the recorded values themselves are float32 in both frameworks.
    """
    array = np.asarray(values)
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    if array.dtype.kind in "iu" and (array.size == 0 or (array.min() >= -2**31 and array.max() < 2**31)):
        return array.astype(np.int32)
    return values


def add_run_line(fig: go.Figure, run: Run, style: dict, x, y, markers: bool, overlap: bool = True, **extra) -> None:
    """One run's curve; overlap=False where curves rarely coincide (timings, gauges): uniform width."""
    if not overlap:
        style = {**style, "width": 2.0, "size": 7}
    fig.add_trace(go.Scatter(
        x=compact(x), y=compact(y), name=trace_name(run), legendgroup=str(run.id),
        mode="lines+markers" if markers else "lines",
        line=dict(color=style["color"], dash=style["dash"], width=style["width"]),
        marker=dict(symbol=style["symbol"], size=style["size"], color=style["color"]), **extra,
    ))
    fit_legend(fig)


def fit_legend(fig: go.Figure) -> None:
    """The legend placed for the traces a figure has now (see legend_layout)."""
    fig.update_layout(**legend_layout(fig.data))


def legend_layout(traces: Sequence) -> dict:
    """A short legend sits above the plot; a long one goes below it, a row per few entries, so it never
    covers the title or the curves. The layout's margin, height and legend for these traces."""
    names = [trace.name for trace in traces if trace.showlegend is not False and trace.name]
    # Rows by the space the entries take (a swatch and the text), not by their number: group names are long.
    width_px = sum(LEGEND_SWATCH_PX + LEGEND_CHAR_PX * len(name) for name in names)
    rows = max(1, -(-width_px // LEGEND_ROW_WIDTH_PX))
    if rows == 1:
        return dict(margin=dict(l=10, r=10, t=TOP_MARGIN_PX, b=10), height=HEIGHT_PX,
                    legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="right", x=1))
    legend_px = LEGEND_ROW_PX * rows
    # Pinned to the bottom of the figure, under the x axis title; the bottom margin makes the room.
    return dict(margin=dict(l=10, r=10, t=TOP_MARGIN_PX - 20, b=50 + legend_px), height=HEIGHT_PX + legend_px,
                legend=dict(orientation="h", yref="container", yanchor="bottom", y=0.01, xanchor="left", x=0))


def translucent(hex_colour: str, alpha: float = 0.3) -> str:
    """"#EE4C2C" -> "rgba(238, 76, 44, 0.3)": a box filled lightly keeps its median line visible."""
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"
