"""How much faster one setting trains than another, with a bootstrap 95 % CI, in words and in a chart.

Runs are pooled into comparison groups: runs that differ only by their seed form one group,
labelled by what sets it apart ("PyTorch eager", "TensorFlow graph"). Between two groups of
several seeds each, the runs are the unit resampled (their steady samples/s); between two single
runs, the steady steps are (each step's samples/s), which says how sure the ratio is for those two
runs, not across seeds — the sentence says which.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from db.models import Run
from engine.catalog import framework_label
from pages import common, series
from pages import run_settings as rs
from pages.charts import base_figure
from pages.speed_charts import STEP_TIME_METRIC, steady_step_times, translucent


@dataclass(frozen=True)
class Group:
    label: str  # "PyTorch eager", "TensorFlow graph fp32"
    runs: tuple[Run, ...]


def steady_rates(step_times: pd.DataFrame, run: Run) -> pd.Series:
    """Samples/s of each optimizer step after warm-up (batch size ÷ step time)."""
    milliseconds = steady_step_times(step_times, run)
    batch = int(rs.spec_value(run, "batch_size") or 0)
    milliseconds = milliseconds[milliseconds > 0]
    return batch * 1000.0 / milliseconds if batch else milliseconds.iloc[:0]


def run_throughput(run: Run, step_times: pd.DataFrame) -> Optional[float]:
    """One number per run: steady samples/s from its summary, else from its steady step times."""
    value = rs.summary_value(run, "steady_samples_per_s")
    if value:
        return float(value)
    rates = steady_rates(step_times, run)
    return float(len(rates) / (1.0 / rates).sum()) if len(rates) else None  # samples over time: harmonic mean


def comparison_groups(runs: Sequence[Run]) -> list[Group]:
    """Seed groups (and single runs) labelled by framework and what else varies among the groups."""
    specs = {run.id: run.spec or {} for run in runs}
    by_id = {run.id: run for run in runs}
    grouped = series.seed_groups(specs)
    in_group = {i for group in grouped for i in group}
    members = [tuple(by_id[i] for i in group) for group in grouped]
    members += [(run,) for run in runs if run.id not in in_group]
    members.sort(key=lambda group: group[0].id)
    labels = _labels([group[0] for group in members])
    return [Group(labels[group[0].id], group) for group in members]


def _labels(leaders: Sequence[Run]) -> dict[int, str]:
    """Framework and mode, plus precision, model and dataset where those vary; the run id only as a last resort."""
    parts = {run.id: [framework_label(run.framework), common.run_mode(run)] for run in leaders}
    for read in (common.run_precision, lambda run: run.model, lambda run: run.dataset,
                 lambda run: f"batch {rs.spec_value(run, 'batch_size')}", lambda run: f"lr {rs.spec_value(run, 'lr')}"):
        if len({read(run) for run in leaders}) > 1:
            for run in leaders:
                parts[run.id].append(read(run))
    labels = {run.id: " ".join(parts[run.id]) for run in leaders}
    if len(set(labels.values())) < len(labels):
        labels = {run.id: f"{label} (#{run.id})" for run, label in zip(leaders, labels.values())}
    return labels


@dataclass(frozen=True)
class Ratio:
    sentence: str
    ratio: float
    low: float
    high: float


def ratio_between(a: Group, b: Group, step_times: pd.DataFrame, seed: int = 0) -> Optional[Ratio]:
    """Throughput of a over b with a bootstrap 95 % CI; None when either side has nothing timed."""
    if len(a.runs) >= 2 and len(b.runs) >= 2:
        xs = [run_throughput(run, step_times) for run in a.runs]
        ys = [run_throughput(run, step_times) for run in b.runs]
        xs, ys = np.array([x for x in xs if x]), np.array([y for y in ys if y])
        unit = "seeds"
    else:
        xs = np.concatenate([steady_rates(step_times, run).to_numpy() for run in a.runs] or [np.array([])])
        ys = np.concatenate([steady_rates(step_times, run).to_numpy() for run in b.runs] or [np.array([])])
        unit = "steps"
    if len(xs) == 0 or len(ys) == 0:
        return None
    ratio, low, high = series.bootstrap_ratio(xs, ys, seed=seed)
    sentence = series.ratio_sentence(a.label, b.label, ratio, low, high, len(xs), len(ys), unit=unit)
    if unit == "steps":
        sentence += " (one run each: the interval is over its steady steps, not over seeds; run several seeds " \
                    "for that)"
    return Ratio(sentence, ratio, low, high)


def rate_distribution(step_times: pd.DataFrame, runs: Sequence[Run]) -> go.Figure:
    """Samples/s of every steady step, one violin per run in its colour: where throughput spreads, and how far."""
    fig = base_figure("Samples/s per step after warm-up (violin: distribution, box: quartiles)", "", "samples / s")
    styles = common.trace_styles(runs)
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


def has_step_times(step_times: pd.DataFrame) -> bool:
    return not step_times[step_times["name"] == STEP_TIME_METRIC].empty
