"""Where the time goes: each run's phase breakdown and top operators (engine/calibration.py) as figures and tables.

ui/profile_section.py draws these on the Compare page's Speed tab; tests call them directly.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import pandas as pd
import plotly.graph_objects as go

from analysis.figure_layout import base_figure, fit_legend
from analysis.run_settings import run_modes
from analysis.run_styles import framework_color
from db.models import Run
from engine.calibration import PHASES
from engine.catalog import framework_label

PHASE_LABELS = {"data": "data", "copy": "host→device copy", "forward": "forward + loss", "backward": "backward",
                "optimizer": "optimizer"}
# One colour per phase on every run, none of them a framework's hue: moving data in greys, computing in colour.
PHASE_COLORS = {"data": "#D1D5DB", "copy": "#9CA3AF", "forward": "#34D399", "backward": "#F59E0B",
                "optimizer": "#8B5CF6"}
BAR_HEIGHT_PX = 48  # per run: the chart grows with the runs compared
OPERATOR_COLUMNS = ["operator", "self ms per step", "calls per step", "% of operator time"]


def phases(run: Run) -> Optional[dict[str, Any]]:
    """The run's stored phase breakdown, or None (runs from before it, or with 0 calibration steps)."""
    value = (run.summary or {}).get("phases")
    return value if isinstance(value, dict) and value.get("median_ms") else None


def operator_profile(run: Run) -> Optional[dict[str, Any]]:
    """The run's stored operator profile (it may hold only an "error"), or None."""
    value = (run.summary or {}).get("operator_profile")
    return value if isinstance(value, dict) else None


def short_labels(runs: Sequence[Run]) -> dict[int, str]:
    """"PyTorch eager", "TensorFlow graph"; with "#id" added where two runs would read the same."""
    modes = run_modes(runs)
    labels = {run.id: f"{framework_label(run.framework)} {modes[run.id]}" for run in runs}
    repeated = {label for label in labels.values() if list(labels.values()).count(label) > 1}
    return {run_id: f"{label} #{run_id}" if label in repeated else label for run_id, label in labels.items()}


def phase_table(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run with phases: median ms of each phase, their sum, the fused step, and each phase's share."""
    runs = [run for run in runs if phases(run) is not None]
    labels = short_labels(runs)
    rows = []
    for run in runs:
        stored = phases(run)
        medians = {phase: float(stored["median_ms"].get(phase) or 0.0) for phase in PHASES}
        total = sum(medians.values())
        rows.append({"run_id": run.id, "label": labels[run.id], "framework": run.framework, **medians,
                     "sum_ms": total, "fused_ms": stored.get("fused_step_median_ms"),
                     "steps": stored.get("steps"),
                     "backward_repeats_forward": bool(stored.get("backward_repeats_forward")),
                     **{f"{phase}_share": medians[phase] / total if total > 0 else 0.0 for phase in PHASES}})
    return pd.DataFrame(rows)


def data_wait_note(table: pd.DataFrame, runs: Sequence[Run]) -> Optional[str]:
    """What the phases' "data" does not show: in training, how long each step waited for its batch (engine.pipeline)."""
    by_id = {run.id: run for run in runs}
    parts = []
    for row in table.itertuples():
        figures = (by_id[row.run_id].summary or {}).get("input") or {}
        median, share = figures.get("data_wait_p50_ms"), figures.get("data_wait_share")
        if median is not None and share is not None:
            parts.append(f"{row.label} {median:.3g} ms a step ({share * 100:.0f} % of training, "
                         f"{figures.get('pipeline', 'arrays')} pipeline)")
    if not parts:
        return None
    return ("In training, waiting for the next batch (the loop's own timer, not a phase above): " + "; ".join(parts)
            + ". The Data tab has the loader alone and the ceiling.")


def phase_sentence(table: pd.DataFrame) -> Optional[str]:
    """"PyTorch eager spends 41 % of a step in backward, TensorFlow graph 28 %." for the phase that takes
    the largest share on average over the runs; None without runs."""
    if table.empty:
        return None
    phase = max(PHASES, key=lambda name: table[f"{name}_share"].mean())
    shares = [(row["label"], 100 * row[f"{phase}_share"]) for _, row in table.iterrows()]
    (first, share), rest = shares[0], shares[1:]
    return (f"{first} spends {share:.0f} % of a step in {PHASE_LABELS[phase]}"
            + "".join(f", {label} {other:.0f} %" for label, other in rest) + ".")


def phase_bars(table: pd.DataFrame) -> go.Figure:
    """A stacked horizontal bar per run (a colour per phase) with the unsplit step's median marked in the
    run's framework colour."""
    fig = base_figure("Where a step's time goes (median of each phase; ◆ the unsplit step)", "ms per step", "")
    names = [f"#{row.run_id} {row.label}" for row in table.itertuples()]
    for phase in PHASES:
        fig.add_trace(go.Bar(
            y=names, x=table[phase], orientation="h", name=PHASE_LABELS[phase], marker_color=PHASE_COLORS[phase],
            customdata=100 * table[f"{phase}_share"],
            hovertemplate=f"%{{y}}<br>{PHASE_LABELS[phase]}: %{{x:.3f}} ms (%{{customdata:.0f}} %)<extra></extra>",
        ))
    fused = table[table["fused_ms"].notna()]
    fig.add_trace(go.Scatter(
        y=[f"#{row.run_id} {row.label}" for row in fused.itertuples()], x=fused["fused_ms"], mode="markers",
        name="unsplit step", marker=dict(symbol="diamond", size=13, line=dict(color="#111827", width=1),
                                         color=[framework_color(f) for f in fused["framework"]]),
        hovertemplate="%{y}<br>unsplit step: %{x:.3f} ms<extra></extra>",
    ))
    fig.update_layout(barmode="stack", hovermode="closest", height=140 + BAR_HEIGHT_PX * len(table))
    fig.update_yaxes(autorange="reversed")  # the first run on top, as listed
    fit_legend(fig)
    return fig


def operator_frame(run: Run) -> pd.DataFrame:
    """The run's top operators, per profiled step: self ms, calls, and share of all operator time."""
    profile = operator_profile(run) or {}
    steps = max(int(profile.get("steps") or 1), 1)
    rows = [(row["name"], row["self_ms"] / steps, row["calls"] / steps, row["percent"])
            for row in profile.get("top") or []]
    return pd.DataFrame(rows, columns=OPERATOR_COLUMNS)


def operator_caption(run: Run) -> str:
    """What the table measured: "torch.profiler 2.13.0+cpu, CPU self time over 5 steps: 0.48 ms of operators per
    step (0.66 ms wall)"."""
    profile = operator_profile(run) or {}
    steps = max(int(profile.get("steps") or 1), 1)
    text = f"{profile.get('profiler', 'profiler')}, {profile.get('measure', 'self time')} over {steps} steps"
    if profile.get("total_ms") is not None:
        text += f": {profile['total_ms'] / steps:.3g} ms of operators per step"
        if profile.get("wall_ms"):
            text += f" ({profile['wall_ms'] / steps:.3g} ms wall, profiler included)"
    return text + f"; top {len(profile.get('top') or [])} of {profile.get('operators', '?')} operators."
