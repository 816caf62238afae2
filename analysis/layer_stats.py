"""Weight and gradient statistics per layer and epoch, run beside run: figures and the norms table.

ui/layers_section.py draws them on the Compare page. TensorBoard's histogram
view for two frameworks at once: a layer's norm per epoch, its distribution at one epoch overlaid
("overlay") and evolving over the epochs as a ridgeline per run ("offset"), and a table of every
layer's norms at the last epoch. Layers carry engine/weights.py's canonical names, the same in both
frameworks; gradients are of one fixed batch (the run's first), so they compare as well.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.figure_layout import HEIGHT_PX, add_run_line, base_figure
from analysis.run_styles import trace_name, trace_styles
from db.models import Run

KIND_LABELS = {"weight": "Weights", "grad": "Gradients"}
RIDGE_HEIGHT = 1.6  # a ridge's peak, in epochs: neighbours overlap a little, as in TensorBoard's offset view
EARLIEST_SHADE = 0.8  # the first epoch's ridge, towards white; later ones darken to the run's own colour
MAX_RIDGES = 40  # per chart: more epochs are thinned evenly (the chosen and the last one stay)
RIDGE_ROW_PX = 16  # extra height per drawn epoch beyond a dozen


def layer_names(stats: pd.DataFrame) -> list[str]:
    """Layers in the order the runs recorded them (weights.py's canonical order), each once."""
    return stats["layer"].drop_duplicates().tolist()


def _rows(stats: pd.DataFrame, run_id: int, layer: str, kind: str) -> pd.DataFrame:
    chosen = stats[(stats["run_id"] == run_id) & (stats["layer"] == layer) & (stats["kind"] == kind)]
    return chosen.sort_values("epoch")


def norm_figure(stats: pd.DataFrame, runs: Sequence[Run], layer: str, kind: str) -> go.Figure:
    """The layer's L2 norm per epoch, one line per run (epoch 0: the initial weights)."""
    fig = base_figure(f"{KIND_LABELS[kind]} norm per epoch · {layer}", "epoch", "L2 norm")
    styles = trace_styles(runs)
    for run in runs:
        rows = _rows(stats, run.id, layer, kind)
        if not rows.empty:
            add_run_line(fig, run, styles[run.id], rows["epoch"], rows["norm"].astype(float), markers=True)
    fig.update_xaxes(dtick=1 if stats["epoch"].max() <= 20 else None)
    return fig


def _density(histogram: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bin centres, bin widths, density): comparable between runs whose bins differ (each spans its own min..max)."""
    edges, counts = np.asarray(histogram["edges"], dtype=float), np.asarray(histogram["counts"], dtype=float)
    widths = np.diff(edges)
    total = counts.sum()
    density = counts / (total * widths) if total > 0 else counts
    return (edges[:-1] + edges[1:]) / 2, widths, density


def histogram_figure(stats: pd.DataFrame, runs: Sequence[Run], layer: str, kind: str, epoch: int) -> go.Figure:
    """The layer's distribution at one epoch, every run's histogram overlaid in its colour."""
    fig = base_figure(f"{KIND_LABELS[kind]} of {layer} at epoch {epoch}", "value", "density")
    styles = trace_styles(runs)
    for run in runs:
        rows = _rows(stats, run.id, layer, kind)
        rows = rows[rows["epoch"] == epoch]
        if rows.empty or not rows["histogram"].iloc[0]:
            continue
        centres, widths, density = _density(rows["histogram"].iloc[0])
        fig.add_trace(go.Bar(x=centres, y=density, width=widths, name=trace_name(run),
                             legendgroup=str(run.id), opacity=0.55, marker=dict(color=styles[run.id]["color"]),
                             hovertemplate="%{x:.4g}: %{y:.4g}<extra>" + trace_name(run) + "</extra>"))
    fig.update_layout(barmode="overlay", bargap=0, hovermode="closest")
    return fig


def towards_white(hex_colour: str, amount: float) -> str:
    """A "#RRGGBB" colour moved `amount` (0..1) of the way to white; 0 returns it as given."""
    if amount <= 0:
        return hex_colour
    channels = [int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(c + (255 - c) * min(amount, 1.0)):02x}" for c in channels)


def ridge_epochs(epochs: Sequence[int], chosen: int, limit: int = MAX_RIDGES) -> list[int]:
    """The epochs a ridgeline draws: all of them, or `limit` spread evenly plus the chosen one."""
    epochs = sorted(epochs)
    if len(epochs) <= limit:
        return epochs
    picked = {epochs[i] for i in np.linspace(0, len(epochs) - 1, limit).round().astype(int)}
    return sorted(picked | ({chosen} if chosen in epochs else set()))


def ridgeline_figure(stats: pd.DataFrame, run: Run, colour: str, layer: str, kind: str, epoch: int) -> go.Figure:
    """One run's histograms of the layer, one ridge per epoch offset downwards: later is lower and darker."""
    fig = base_figure(f"{trace_name(run)} · {KIND_LABELS[kind].lower()} over epochs", "value", "epoch")
    rows = _rows(stats, run.id, layer, kind)
    rows = rows[rows["histogram"].map(bool)]
    drawn = ridge_epochs(rows["epoch"].tolist(), epoch)
    rows = rows[rows["epoch"].isin(drawn)]
    last = max(drawn[-1], 1) if drawn else 1
    for row in rows.itertuples():
        edges = np.asarray(row.histogram["edges"], dtype=float)
        counts = np.asarray(row.histogram["counts"], dtype=float)
        heights = counts / counts.max() * RIDGE_HEIGHT if counts.max() > 0 else counts
        # A closed step outline: up at the first edge, across every bin, down at the last edge.
        x = np.repeat(edges, 2)
        y = np.r_[0.0, np.repeat(heights, 2), 0.0] - row.epoch
        chosen = row.epoch == epoch
        fig.add_trace(go.Scatter(
            x=x, y=y, mode="lines", fill="toself", showlegend=False, name=f"epoch {row.epoch}",
            fillcolor=towards_white(colour, EARLIEST_SHADE * (1 - row.epoch / last)),
            line=dict(color=colour if chosen else "white", width=2.5 if chosen else 0.6),
            hovertemplate=f"epoch {row.epoch}: %{{x:.4g}}<extra></extra>",
        ))
    ticks = drawn if len(drawn) <= 12 else drawn[::-(-len(drawn) // 12)]
    fig.update_yaxes(tickvals=[-e for e in ticks], ticktext=[str(e) for e in ticks], zeroline=False)
    fig.update_layout(hovermode="closest", showlegend=False,
                      height=HEIGHT_PX + RIDGE_ROW_PX * max(0, len(drawn) - 12))
    return fig


def last_common_epoch(stats: pd.DataFrame) -> int:
    """The last epoch every run with statistics reached (a run still training has fewer)."""
    return int(stats.groupby("run_id")["epoch"].max().min())


def relative_difference(a: Optional[float], b: Optional[float]) -> Optional[float]:
    """|a - b| / max(|a|, |b|): symmetric, 0 for equal values; None when either is missing."""
    if a is None or b is None or pd.isna(a) or pd.isna(b):
        return None
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale > 0 else 0.0


def norm_table(stats: pd.DataFrame, runs: Sequence[Run], epoch: int) -> pd.DataFrame:
    """Per layer (rows): weight and gradient norms per run at the epoch; the first two runs' relative differences."""
    at = stats[stats["epoch"] == epoch]
    norms = {(r.run_id, r.layer, r.kind): r.norm for r in at.itertuples()}
    layers = layer_names(at)
    table = pd.DataFrame(index=pd.Index(layers, name="layer"))
    for run in runs:
        for kind, symbol in (("weight", "‖W‖"), ("grad", "‖∇‖")):
            table[f"{trace_name(run)} {symbol}"] = [norms.get((run.id, layer, kind)) for layer in layers]
    if len(runs) >= 2:
        first, second = runs[0], runs[1]
        for kind, symbol in (("weight", "‖W‖"), ("grad", "‖∇‖")):
            table[f"rel. diff {symbol} #{first.id} vs #{second.id}"] = [
                relative_difference(norms.get((first.id, layer, kind)), norms.get((second.id, layer, kind)))
                for layer in layers]
    return table.astype(float)
