"""One model in both frameworks: layer tables side by side, whether the parameter counts match, both sources.

Not a page: a section a page calls with the model and dataset it shows. The tables come from
engine.architecture, which builds the models in child processes (never in the dashboard).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Optional, Sequence

import pandas as pd
import streamlit as st
from pandas.io.formats.style import Styler

from engine import architecture
from engine.architecture import ArchitectureError, LayerTable
from engine.catalog import FRAMEWORKS, framework_label
from pages import common
from pages.summary import DIFFERS_SHADE

COLUMNS = ["layer", "type", "output shape", "parameters"]
ROW_HEIGHT_PX = 35  # st.dataframe's row height: a table tall enough to show every row needs no scrolling
GAP_NOTE = ("A blank row: the other framework has a layer there and this one has none. Keras folds activations "
            "into Dense and Conv2D (activation=\"relu\"), and PyTorch's functional calls (F.relu, +, mean) are "
            "no modules, so neither shows them as layers.")
SPINNER_TEXT = ("Building the model in PyTorch and in TensorFlow to list its layers: a few seconds the first "
                "time (each framework starts in its own process), instant after that.")


@st.cache_data(show_spinner=False)
def _layer_tables(frameworks: tuple[str, ...], model: str, dataset: str) -> dict[str, LayerTable]:
    # A failure raises, and Streamlit caches no exception: the next rerun tries again.
    tables = architecture.layer_tables([(fw, model, dataset) for fw in frameworks])
    return {table.framework: table for table in tables}


@st.cache_data(show_spinner=False)
def _source(framework: str, model: str) -> str:
    return architecture.model_source(framework, model)


def _tables(model: str, dataset: str) -> tuple[dict[str, LayerTable], dict[str, str]]:
    """Both tables (both workers run at once the first time), and a message per framework that failed."""
    try:
        return _layer_tables(FRAMEWORKS, model, dataset), {}
    except ArchitectureError as error:
        # The framework that worked was cached on disk by that same call: reading it back is instant.
        tables = {fw: architecture.layer_table(fw, model, dataset) for fw in FRAMEWORKS if fw not in error.failures}
        return tables, error.failures


def shape_text(shape: Optional[tuple[Optional[int], ...]]) -> str:
    """(None, 32, 8, 8) -> "(None, 32, 8, 8)"; "—" for a layer that never ran."""
    return "—" if shape is None else "(" + ", ".join("None" if d is None else str(d) for d in shape) + ")"


def _frame(rows: Sequence[dict], prefix: str) -> pd.DataFrame:
    """Text cells, parameters with thousands separators; a layer this framework lacks is a blank row."""
    def cells(row: dict) -> list[str]:
        if row[f"{prefix}layer"] is None:
            return [""] * len(COLUMNS)
        return [row[f"{prefix}layer"], row[f"{prefix}type"], shape_text(row[f"{prefix}output_shape"]),
                f"{row[f'{prefix}params']:,}"]
    return pd.DataFrame([cells(row) for row in rows], columns=COLUMNS)


def side_frames(torch_table: LayerTable, tf_table: LayerTable) -> dict[str, Styler]:
    """One frame per framework, row i of each the same layer, so the two tables line up on screen;
    a blank row where one framework has a layer the other lacks, rows whose parameters differ shaded."""
    rows = architecture.side_by_side(torch_table, tf_table)
    shades = [DIFFERS_SHADE if row["params_differ"] else "" for row in rows]
    return {fw: _frame(rows, f"{fw}_").style.apply(lambda _column: shades, axis=0)
            for fw in (torch_table.framework, tf_table.framework)}


def single_frame(table: LayerTable) -> Styler:
    """One framework's table alone (when the other could not be built)."""
    return _frame([asdict(row) for row in table.rows], "").style


def parameter_sentence(torch_table: LayerTable, tf_table: LayerTable) -> str:
    """"Both have 269,722 trainable parameters." or how many more one framework has."""
    a, b = torch_table.total_params, tf_table.total_params
    if a == b:
        sentence = f"Both have {a:,} trainable parameters."
    else:
        more, less = (torch_table, tf_table) if a > b else (tf_table, torch_table)
        sentence = (f"{framework_label(more.framework)} has {more.total_params:,} trainable parameters, "
                    f"{framework_label(less.framework)} {less.total_params:,}: {abs(a - b):,} more.")
    differing = sum(row["params_differ"] for row in architecture.side_by_side(torch_table, tf_table))
    if differing:
        sentence += f" {differing} {'layer differs' if differing == 1 else 'layers differ'} in parameters (shaded)."
    if torch_table.total_non_trainable != tf_table.total_non_trainable:
        sentence += (f" Non-trainable values differ: {framework_label(torch_table.framework)} holds "
                     f"{torch_table.total_non_trainable:,}, {framework_label(tf_table.framework)} "
                     f"{tf_table.total_non_trainable:,}.")
    return sentence


def _framework_header(framework: str) -> None:
    colour = common.framework_color(framework)
    # Markdown colours are a fixed palette; the framework's own colour needs a span.
    st.markdown(f"<span style='color:{colour}; font-size:1.2rem; font-weight:600'>{framework_label(framework)}</span>",
                unsafe_allow_html=True)


def _caption(table: LayerTable) -> str:
    layout = f" · shapes in {table.layout}, batch as None" if table.layout else " · batch as None"
    return (f"Total: {table.total_params:,} trainable, {table.total_non_trainable:,} non-trainable"
            f"{layout} · {framework_label(table.framework)} {table.framework_version}")


def section(model: str, dataset: str) -> None:
    """The model's layers in both frameworks side by side, whether their parameters match, and both sources."""
    st.subheader(f"Model: {model} in both frameworks")
    try:
        with st.spinner(SPINNER_TEXT):
            tables, failures = _tables(model, dataset)
    except ValueError as exc:  # an unknown model or dataset, or one that does not fit the other
        st.error(f"Cannot show the architecture: {exc}.", icon=":material/error:")
        return
    frames = side_frames(tables["torch"], tables["tensorflow"]) if len(tables) == len(FRAMEWORKS) else {}
    for column, fw in zip(st.columns(len(FRAMEWORKS)), FRAMEWORKS):
        with column:
            _framework_header(fw)
            if fw in failures:
                st.error(f"{failures[fw]}. Reload the page once it is fixed.", icon=":material/error:")
                continue
            table = tables[fw]
            frame = frames[fw] if fw in frames else single_frame(table)
            # Every row shown, no inner scrolling: both tables scroll with the page and stay aligned.
            st.dataframe(frame, hide_index=True, height=ROW_HEIGHT_PX * (len(frame.data) + 1) + 3)
            st.caption(_caption(table))
    if not failures:
        st.markdown(parameter_sentence(tables["torch"], tables["tensorflow"]))
    if any("" in frame.data["layer"].values for frame in frames.values()):
        st.caption(GAP_NOTE)
    with st.expander("Source code"):
        for column, fw in zip(st.columns(len(FRAMEWORKS)), FRAMEWORKS):
            with column:
                _framework_header(fw)
                st.code(_source(fw, model), language="python")

