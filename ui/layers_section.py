"""The Compare page's "Model and layers" tab: both implementations of the model, then weight and gradient
statistics per layer and epoch (TensorBoard's histograms, for two frameworks at once)."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import streamlit as st

from analysis.layer_stats import (
    KIND_LABELS, histogram_figure, last_common_epoch, layer_names, norm_figure, norm_table, ridgeline_figure,
)
from analysis.run_styles import trace_styles
from db import queries
from db.models import Run
from ui import url_state
from ui.database import sessions

RIDGES_PER_ROW = 2  # a PyTorch/TensorFlow pair side by side


def tab(runs: Sequence[Run], available: Sequence[str] = ()) -> None:
    """Both implementations of the model (on request: it builds them), and per-layer weight and gradient statistics."""
    models = sorted({(run.model, run.dataset) for run in runs})
    url_state.seed("compare_show_model", "model", False, parse=url_state.parse_bool)
    show = st.toggle("Show the model in both frameworks (layers and source code)", key="compare_show_model",
                     help="Builds the model once per framework in a separate process the first time (a few "
                          "seconds); cached after that.")
    url_state.sync("model", show, False, url_state.format_bool)
    if show:
        from ui import architecture_section  # only when asked: it reaches for engine.architecture's workers

        for model, dataset in models:
            architecture_section.section(model, dataset)
    with sessions().begin() as s:
        stats = queries.tensor_stat_frame(s, [run.id for run in runs])
    section(runs, stats)


def _keep_valid(key: str, options: list, default) -> None:
    """Reset a widget's remembered value that the current runs no longer offer (another run set, a new layer)."""
    if st.session_state.get(key) not in options:
        st.session_state[key] = default


def section(runs: Sequence[Run], stats: pd.DataFrame) -> None:
    """Weights and gradients per layer of the chosen runs (stats: db.queries.tensor_stat_frame of those runs)."""
    st.subheader("Weights and gradients per layer")
    if stats.empty:
        st.caption("These runs recorded no layer statistics: runs stored before Arena kept them, and runs launched "
                   "with **Layer statistics** switched off (Launch, Measurement), have none. Launch the runs again "
                   "with it on (the default) to compare every layer's weights and gradients here, epoch by epoch.")
        return
    recorded = set(stats["run_id"])
    with_stats = [run for run in runs if run.id in recorded]
    layers = layer_names(stats)
    url_state.seed("tensor_layer", "layer", layers[0], choices=layers)
    url_state.seed("tensor_kind", "kind", "weight", choices=list(KIND_LABELS))
    _keep_valid("tensor_layer", layers, layers[0])
    _keep_valid("tensor_kind", list(KIND_LABELS), "weight")
    controls = st.container(horizontal=True, vertical_alignment="center", gap="large")
    layer = controls.selectbox("Layer", layers, key="tensor_layer",
                               help="Canonical names (engine/weights.py): the same tensor in both frameworks, "
                                    "PyTorch's transposed into Keras's layout.")
    kind = controls.radio("Show", list(KIND_LABELS), format_func=KIND_LABELS.get, horizontal=True, key="tensor_kind")
    url_state.sync("layer", layer, layers[0])
    url_state.sync("kind", kind, "weight")
    chosen = stats[(stats["layer"] == layer) & (stats["kind"] == kind)]
    epochs = sorted(int(e) for e in chosen["epoch"].unique())
    if epochs:
        url_state.seed("tensor_epoch", "epoch", epochs[-1], parse=url_state.parse_int, choices=epochs)
        _keep_valid("tensor_epoch", epochs, epochs[-1])
        epoch = controls.select_slider("Epoch", epochs, key="tensor_epoch", disabled=len(epochs) == 1,
                                       help="Epoch 0: the initial weights, before the first step (gradients start "
                                            "at epoch 1: a pass before the first step would warm it up).")
        url_state.sync("epoch", epoch, epochs[-1])
        _charts(stats, with_stats, layer, kind, epoch)
    else:  # a run that has not finished its first epoch has weights of epoch 0 only
        st.caption(f"No {KIND_LABELS[kind].lower()} of {layer} yet: gradients come at the end of the first epoch.")
    _table(stats, with_stats)
    missing = [f"#{run.id}" for run in runs if run.id not in recorded]
    if missing:
        st.caption(f"{', '.join(missing)} recorded no layer statistics (stored before Arena kept them, or launched "
                   "with Layer statistics off).")


def _charts(stats: pd.DataFrame, runs: Sequence[Run], layer: str, kind: str, epoch: int) -> None:
    left, right = st.columns(2)
    left.plotly_chart(norm_figure(stats, runs, layer, kind), key="chart_tensor_norm")
    right.plotly_chart(histogram_figure(stats, runs, layer, kind, epoch), key="chart_tensor_histogram")
    styles = trace_styles(runs)
    for start in range(0, len(runs), RIDGES_PER_ROW):
        for column, run in zip(st.columns(RIDGES_PER_ROW), runs[start:start + RIDGES_PER_ROW]):
            column.plotly_chart(ridgeline_figure(stats, run, styles[run.id]["color"], layer, kind, epoch),
                                key=f"chart_tensor_ridge_{run.id}")
    st.caption("Gradients are of the loss on one fixed batch, the run's first training batch, at the weights at the "
               "end of each epoch, in inference mode (dropout off, batch norm on its moving statistics) and without "
               "an optimizer step: with the same initial weights both frameworks differentiate the same function at "
               "the same point. Ridgelines: one histogram per epoch, later epochs lower and darker; the outlined "
               "one is the chosen epoch. Overlaid histograms are densities, as each run's bins span its own range.")


def _table(stats: pd.DataFrame, runs: Sequence[Run]) -> None:
    last = last_common_epoch(stats)
    st.markdown(f"**Every layer at epoch {last}**" + (" (the last epoch all of these runs reached)"
                                                     if stats["epoch"].max() > last else ""))
    table = norm_table(stats, runs, last)
    st.dataframe(table, column_config={name: st.column_config.NumberColumn(
        format="%.2e" if name.startswith("rel. diff") else "%.4g") for name in table.columns})
