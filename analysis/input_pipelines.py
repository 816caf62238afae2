"""The Compare page's Data tab without Streamlit: where each run's batches came from and whether they held it back.

A run's summary["input"] (engine/loop.py, engine/pipeline.py) holds the pipeline as it ran, the time its steps
waited for their next batch, and two figures measured after training, outside every timer: the loader iterated
alone (loader-only throughput) and the step repeated on one fixed batch (the synthetic-data ceiling). Read
together with the run's steady training throughput they say whether a run is input-bound. Keras model.fit runs
take their batches inside fit's step, so their wait is not timed apart; their cost over a bare tf.function loop
is the ratio of their throughput to a graph run of the same spec.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis import run_settings as rs
from analysis.figure_layout import base_figure, compact, translucent
from analysis.formatting import format_ms, format_rate
from analysis.run_styles import trace_styles
from db.models import Run
from engine.catalog import MODE_LABELS, framework_label

# A step that waits this share of its time for data is input-bound: the loader, not the model, sets its pace.
INPUT_BOUND_SHARE = 0.2
# Training below this share of the ceiling while hardly waiting for data: the step itself was slower in training.
SLOW_STEP_SHARE = 0.5
# The three throughputs of a run, as the bar chart draws them: (summary key or "training", legend name).
MEASURES = (("loader", "loader alone"), ("training", "training"), ("ceiling", "ceiling: step on one fixed batch"))
SAMPLE_HEIGHT_PX = 64  # augmentation samples are enlarged (nearest neighbour) to about this height
GAP_PX = 4  # white space between the sample images
FRAME_COLUMNS = ["run_id", "framework", "mode", "pipeline", "loader_samples_per_s", "training_samples_per_s",
                 "ceiling_samples_per_s", "data_wait_share", "data_wait_p50_ms"]


def input_of(run: Run) -> dict[str, Any]:
    """The run's summary["input"]; {} for runs trained before Arena measured its input (or not finished yet)."""
    value = rs.summary_value(run, "input")
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def loader_throughput(run: Run) -> Optional[float]:
    """Samples/s of the pipeline iterated alone, after training (start-up and the copy to the device included)."""
    return _number(input_of(run).get("loader_samples_per_s"))


def training_throughput(run: Run) -> Optional[float]:
    """Steady samples/s while training (warm-up excluded): the summary's, as the Speed tab shows it."""
    value = _number(rs.summary_value(run, "steady_samples_per_s"))
    return value if value and value > 0 else None


def ceiling_throughput(run: Run) -> Optional[float]:
    """Samples/s of the training step repeated on one batch already on the device: no loader, no copy."""
    return _number(input_of(run).get("ceiling_samples_per_s"))


def wait_share(run: Run) -> Optional[float]:
    """Share (0..1) of the steady training time the steps spent blocked on their next batch; None for fit runs."""
    return _number(input_of(run).get("data_wait_share"))


def has_figures(run: Run) -> bool:
    """Whether the run recorded anything the tab draws: a data wait, the loader alone or the ceiling."""
    figures = input_of(run)
    return any(_number(figures.get(key)) is not None for key in (
        "loader_samples_per_s", "ceiling_samples_per_s", "data_wait_share")) or bool(figures.get("data_wait"))


def with_figures(runs: Sequence[Run]) -> list[Run]:
    return [run for run in runs if has_figures(run)]


def is_fit(run: Run) -> bool:
    return rs.spec_value(run, "mode") == "fit"


def run_label(run: Run, separator: str = " ") -> str:
    """"#3 PyTorch eager", "#5 TensorFlow Keras model.fit"."""
    mode = rs.spec_value(run, "mode")
    return f"#{run.id} {framework_label(run.framework)}{separator}{MODE_LABELS.get(mode, mode or '')}".rstrip()


def frame(runs: Sequence[Run]) -> pd.DataFrame:
    """One row per run (FRAME_COLUMNS): the three throughputs and the data wait."""
    rows = [dict(run_id=run.id, framework=run.framework, mode=rs.spec_value(run, "mode"),
                 pipeline=input_of(run).get("pipeline") or rs.spec_value(run, "pipeline") or "arrays",
                 loader_samples_per_s=loader_throughput(run), training_samples_per_s=training_throughput(run),
                 ceiling_samples_per_s=ceiling_throughput(run), data_wait_share=wait_share(run),
                 data_wait_p50_ms=_number(input_of(run).get("data_wait_p50_ms"))) for run in runs]
    return pd.DataFrame(rows, columns=FRAME_COLUMNS)


def batches_words(runs: Sequence[Run]) -> str:
    """"over 50 batches" (the loader alone was timed over loader_batches; runs recorded before it, over `batches`)."""
    counts = sorted({int(figures.get("loader_batches") or figures["batches"]) for figures in map(input_of, runs)
                     if _number(figures.get("loader_batches") or figures.get("batches"))})
    if not counts:
        return "over an epoch's first batches"
    return f"over {counts[0]} batches" if len(counts) == 1 else f"over {'/'.join(map(str, counts))} batches"


# Figures ----------------------------------------------------------------------------------------------
def throughput_figure(runs: Sequence[Run]) -> go.Figure:
    """Per run, the loader alone, training and the ceiling in samples/s: bars grouped by run, each run in its
    framework's colour; the measure is the fill (hatched: loader, solid: training, light: ceiling). Log scale:
    the figures of one run can lie orders of magnitude apart, and their ratios are the point."""
    styles = trace_styles(runs)
    labels = [run_label(run, "<br>") for run in runs]
    colours = [styles[run.id]["color"] for run in runs]
    read = {"loader": loader_throughput, "training": training_throughput, "ceiling": ceiling_throughput}
    traces = []
    for key, name in MEASURES:
        values = [read[key](run) for run in runs]
        marker: dict[str, Any] = {"color": colours, "line": {"color": colours, "width": 1.5}}
        if key == "loader":
            marker.update(color="white", pattern={"shape": "/", "fgcolor": colours, "solidity": 0.45})
        elif key == "ceiling":
            marker.update(color=[translucent(colour, 0.25) for colour in colours])
        traces.append(go.Bar(
            x=labels, y=[np.nan if value is None else value for value in values], name=name, marker=marker,
            customdata=[format_rate(value) for value in values],
            hovertemplate=f"%{{x}}<br>{name}: %{{customdata}}<extra></extra>"))
    fig = base_figure("Loader alone, training and the ceiling", "", "samples/s (log)", log_y=True, data=traces)
    fig.update_layout(barmode="group", hovermode="closest", legend_traceorder="normal")
    values = [value for trace in traces for value in trace.y if value is not None and np.isfinite(value)]
    if values:
        ticks = log_ticks(min(values), max(values))
        fig.update_yaxes(tickvals=ticks, ticktext=[_short_count(tick) for tick in ticks])
    return fig


def log_ticks(low: float, high: float) -> list[float]:
    """1-2-5 ticks from the one at or below low to the one at or above high: every tick labelled in full, where
    plotly's own log ticks label 2 and 5 of each decade with their first digit only."""
    ticks = [mantissa * 10.0 ** exponent for exponent in range(int(np.floor(np.log10(low))),
                                                               int(np.floor(np.log10(high))) + 2)
             for mantissa in (1, 2, 5)]
    below = [tick for tick in ticks if tick <= low]
    above = [tick for tick in ticks if tick >= high]
    return [tick for tick in ticks if (below[-1] if below else ticks[0]) <= tick <= (above[0] if above else ticks[-1])]


def _short_count(value: float) -> str:
    """500, 1k, 20k, 1M."""
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:g}{suffix}"
    return f"{value:g}"


def wait_figure(runs: Sequence[Run]) -> go.Figure:
    """Share of each step spent waiting for the next batch, per run, against the input-bound line."""
    styles = trace_styles(runs)
    shown = [run for run in runs if wait_share(run) is not None]
    percent = [100 * float(wait_share(run)) for run in shown]
    bars = go.Bar(
        x=[run_label(run, "<br>") for run in shown], y=compact(percent), showlegend=False,
        marker_color=[styles[run.id]["color"] for run in shown],
        text=[f"{value:.0f} %" if value >= 1 else f"{value:.1f} %" for value in percent], textposition="auto",
        customdata=[format_ms(_number(input_of(run).get("data_wait_p50_ms"))) or "—" for run in shown],
        hovertemplate="%{x}<br>%{y:.1f} % of the step waiting for data<br>median wait %{customdata} a step"
                      "<extra></extra>")
    fig = base_figure("Data wait: share of each step blocked on the next batch", "", "% of the step", data=[bars])
    fig.add_hline(y=100 * INPUT_BOUND_SHARE, line=dict(color="#374151", dash="dot", width=1),
                  annotation_text="input-bound above", annotation_position="top left")
    fig.update_layout(hovermode="closest")
    fig.update_yaxes(range=[0, max([100 * INPUT_BOUND_SHARE, *percent]) * 1.2])
    return fig


# Words -------------------------------------------------------------------------------------------------
def verdicts(runs: Sequence[Run]) -> list[str]:
    """A sentence (markdown) per run that is input-bound, or whose wait cannot be timed apart (model.fit);
    then one sentence naming the runs whose steps hardly wait."""
    sentences, fine = [], []
    for run in runs:
        share = wait_share(run)
        name = f"**{run_label(run)}**"
        if share is not None and share >= INPUT_BOUND_SHARE:
            wait = format_ms(_number(input_of(run).get("data_wait_p50_ms")))
            sentences.append(f"{name} is input-bound: each step waits {100 * share:.0f} % of its time for the next "
                             f"batch" + (f" (median {wait})" if wait else "") + ". " + _ceiling_words(run))
        elif share is not None:
            fine.append(f"#{run.id}")
            training, ceiling = training_throughput(run), ceiling_throughput(run)
            if training and ceiling and training < SLOW_STEP_SHARE * ceiling:
                sentences.append(
                    f"{name} trains at {100 * training / ceiling:.0f} % of its ceiling ({format_rate(training)} "
                    f"against {format_rate(ceiling)}) although it waits only {100 * share:.0f} % of each step for "
                    "data: its steps took longer in training than alone on one batch (on a CPU, the loader's "
                    "workers share the cores with the step).")
        elif input_of(run).get("data_wait"):
            sentences.append(f"{name}: the wait for data happens inside model.fit's step and is not timed apart. "
                             + _ceiling_words(run))
    if fine:
        sentences.append(f"Not input-bound: {', '.join(fine)} wait{'s' if len(fine) == 1 else ''} less than "
                         f"{100 * INPUT_BOUND_SHARE:.0f} % of each step for data.")
    return [sentence.strip() for sentence in sentences]


def _ceiling_words(run: Run) -> str:
    """How far training stayed below the step alone: what the batches' supply (and, for fit, fit itself) cost."""
    training, ceiling = training_throughput(run), ceiling_throughput(run)
    if training is None or ceiling is None:
        return ""
    if ceiling <= training:
        return f"The step alone on one fixed batch ran no faster ({format_rate(ceiling)})."
    return (f"The step alone on one fixed batch runs at {format_rate(ceiling)}, {ceiling / training:.1f}× "
            f"training's {format_rate(training)}.")


@dataclass(frozen=True)
class FitCost:
    """A Keras model.fit run against the tf.function (graph) run of the same spec."""
    fit: Run
    graph: Run
    throughput_ratio: Optional[float]  # fit's steady samples/s over graph's: < 1 means fit is slower
    step_ratio: Optional[float]  # fit's step time p50 over graph's: > 1 means fit's step is longer


def _spec_but_mode(run: Run) -> str:
    return json.dumps({key: value for key, value in (run.spec or {}).items() if key != "mode"}, sort_keys=True,
                      default=str)


def fit_costs(runs: Sequence[Run]) -> tuple[list[FitCost], list[Run]]:
    """(each fit run against its graph run, the fit runs without one among `runs`). The graph run has the same
    spec but for the mode; one of the fit run's own group is preferred, then the lowest id."""
    graphs = [run for run in runs if rs.spec_value(run, "mode") == "graph" and run.framework == "tensorflow"]
    costs, alone = [], []
    for fit in (run for run in runs if is_fit(run)):
        same = [graph for graph in graphs if _spec_but_mode(graph) == _spec_but_mode(fit)]
        if not same:
            alone.append(fit)
            continue
        graph = min(same, key=lambda other: (other.group_tag != fit.group_tag or fit.group_tag is None, other.id))
        fit_rate, graph_rate = training_throughput(fit), training_throughput(graph)
        fit_ms = _number(rs.summary_value(fit, "step_time_p50_ms"))
        graph_ms = _number(rs.summary_value(graph, "step_time_p50_ms"))
        costs.append(FitCost(fit, graph, fit_rate / graph_rate if fit_rate and graph_rate else None,
                             fit_ms / graph_ms if fit_ms and graph_ms else None))
    return costs, alone


def ratio_text(ratio: Optional[float]) -> str:
    return "—" if ratio is None else f"{ratio:.2f}×"


def fit_cost_words(cost: FitCost) -> str:
    """What the two ratios mean, in one sentence with the figures they come from."""
    if cost.throughput_ratio is None:
        return f"#{cost.fit.id} or #{cost.graph.id} has not measured its steady throughput yet."
    change = (1 - cost.throughput_ratio) * 100
    direction = f"{change:.0f} % fewer" if change >= 0.5 else (f"{-change:.0f} % more" if change <= -0.5
                                                                else "as many")
    return (f"model.fit (#{cost.fit.id}) trains {direction} samples per second than the bare tf.function loop "
            f"(#{cost.graph.id}): {format_rate(training_throughput(cost.fit))} against "
            f"{format_rate(training_throughput(cost.graph))}, over the same tf.data pipeline.")


def settings_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Per run as shown: the pipeline, its loader, workers, augmentations and the figures, all text."""
    rows = []
    for run in runs:
        figures = input_of(run)
        augment = figures.get("augment") if isinstance(figures.get("augment"), dict) else {}
        training, ceiling = training_throughput(run), ceiling_throughput(run)
        share = wait_share(run)
        workers = figures.get("loader_workers")
        rows.append({
            "run": run_label(run),
            "pipeline": figures.get("pipeline") or rs.spec_value(run, "pipeline") or "arrays",
            "loader": figures.get("loader") or "—",
            "loader workers": "—" if workers is None else str(workers),
            "augmentation": "; ".join(f"{name}: {text}" for name, text in augment.items()) or "none",
            "augmented by": figures.get("augment_by") or "—",
            "source": figures.get("source") or "—",
            "loader alone, samples/s": _rate(loader_throughput(run)),
            "training, samples/s": _rate(training),
            "ceiling, samples/s": _rate(ceiling),
            "training ÷ ceiling": f"{100 * training / ceiling:.0f} %" if training and ceiling else "—",
            "data wait p50": format_ms(_number(figures.get("data_wait_p50_ms"))) or "—",
            "data-wait share": "—" if share is None else f"{100 * share:.1f} %",
            "notes": "; ".join(str(text) for text in (figures.get("data_wait"), figures.get("figures_skipped"),
                                                      rs.summary_value(run, "fit")) if text) or "—",
        })
    return pd.DataFrame(rows).astype(str)


def _rate(value: Optional[float]) -> str:
    return "—" if value is None else f"{value:,.0f}"


# Augmentation samples -----------------------------------------------------------------------------------
def load_samples(data: bytes) -> dict[str, Any]:
    """An augment_samples artifact (gzip JSON: epoch, indices, shape, augment, by, before, after) as a dict."""
    document = json.loads(gzip.decompress(data))
    if not isinstance(document, dict) or "before" not in document or "after" not in document:
        raise ValueError("an augment_samples artifact holds before and after images")
    return document


def sample_grid(document: dict[str, Any], height_px: int = SAMPLE_HEIGHT_PX) -> np.ndarray:
    """The samples as one RGB image: the originals in the top row, the same images augmented below, each enlarged
    by a whole factor (nearest neighbour: pixels stay sharp) to about height_px, on white."""
    before = np.asarray(document["before"], dtype=np.uint8)
    after = np.asarray(document["after"], dtype=np.uint8)
    if before.ndim != 4 or before.shape != after.shape:
        raise ValueError(f"expected before and after of one shape (N, H, W, C), got {before.shape} and {after.shape}")
    scale = max(1, round(height_px / before.shape[1]))
    count, height, width, _ = before.shape
    cell_h, cell_w = height * scale, width * scale
    grid = np.full((2 * cell_h + GAP_PX, count * cell_w + (count - 1) * GAP_PX, 3), 255, dtype=np.uint8)
    for row, images in enumerate((before, after)):
        for index, image in enumerate(images):
            rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]
            big = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
            top, left = row * (cell_h + GAP_PX), index * (cell_w + GAP_PX)
            grid[top:top + cell_h, left:left + cell_w] = big
    return grid


def samples_caption(run: Run, document: dict[str, Any]) -> str:
    """"#3 PyTorch eager · crop, flip by torch · training images 708, 84, ... of epoch 1 (seed 0): top before,
    bottom after"."""
    names = ", ".join(document.get("augment") or []) or "none"
    indices = ", ".join(str(index) for index in document.get("indices") or [])
    return (f"{run_label(run)} · {names} by {document.get('by', '?')} · training images {indices} of epoch "
            f"{document.get('epoch', 1)} (seed {rs.spec_value(run, 'seed')}): top before, bottom after")


def samples_note(documents: dict[int, dict[str, Any]], runs: Sequence[Run]) -> str:
    """What to expect when comparing the samples side by side: the same images, and whose random draws."""
    if not documents:
        return ""
    by_id = {run.id: run for run in runs}
    draws = {document.get("by") for document in documents.values()}
    same_images = len({json.dumps(document.get("indices")) for document in documents.values()}) == 1
    seeds = {rs.spec_value(by_id[run_id], "seed") for run_id in documents if run_id in by_id}
    parts = []
    if len(documents) > 1 and same_images and len(seeds) == 1:
        parts.append(f"The same training images of the same seed ({seeds.pop()}) in every run.")
    if draws == {"numpy"}:
        parts.append("The arrays pipeline augments with numpy from (seed, epoch, sample): both frameworks train on "
                     "identical augmented images.")
    elif "numpy" not in draws:
        parts.append("The native pipelines augment with each framework's own ops and random numbers, drawn from "
                     "(seed, epoch, sample): the same definition (engine/augment.py, shown equal on the same draws "
                     "by a test), different draws, so crops, flips and noise differ between the frameworks.")
    else:
        parts.append("numpy draws (arrays pipeline) are the same in both frameworks; a native pipeline draws with "
                     "its framework's own random numbers, so its crops and flips differ from the others'.")
    return " ".join(parts)
