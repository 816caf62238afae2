"""One model in both frameworks: layer tables side by side, whether the parameter counts match, both sources.

A section the Compare page calls with the model and dataset it shows. The tables come from
engine.architecture, which builds the models in child processes (never in the dashboard), and are
laid out by analysis/architecture_tables.py.
"""
from __future__ import annotations

import streamlit as st

from analysis.architecture_tables import parameter_sentence, side_frames, single_frame, table_caption
from analysis.run_styles import framework_color
from engine import architecture
from engine.architecture import ArchitectureError, LayerTable
from engine.catalog import FRAMEWORKS, framework_label

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


def _framework_header(framework: str) -> None:
    colour = framework_color(framework)
    # Markdown colours are a fixed palette; the framework's own colour needs a span.
    st.markdown(f"<span style='color:{colour}; font-size:1.2rem; font-weight:600'>{framework_label(framework)}</span>",
                unsafe_allow_html=True)


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
            st.caption(table_caption(table))
    if not failures:
        st.markdown(parameter_sentence(tables["torch"], tables["tensorflow"]))
    if any("" in frame.data["layer"].values for frame in frames.values()):
        st.caption(GAP_NOTE)
    with st.expander("Source code"):
        for column, fw in zip(st.columns(len(FRAMEWORKS)), FRAMEWORKS):
            with column:
                _framework_header(fw)
                st.code(_source(fw, model), language="python")

