"""The Runs page's table: every run's row from analysis/runs_table.py, ticks kept on the same runs as rows
come, go or move, framework and status as coloured labels."""
from __future__ import annotations

import hashlib
import math

import pandas as pd
import streamlit as st

from analysis.run_styles import FRAMEWORK_COLORS, UNKNOWN_FRAMEWORK_COLOR
from analysis.runs_table import status_colour, table_height
from engine.catalog import framework_label
from ui.widgets import RUNS_PARAM, requested_run_ids

TABLE_KEY = "runs_table"
GENERATION_KEY = "runs_table_generation"  # bumped after a delete so row selection starts afresh
SELECTED_KEY = "runs_selected"  # session state: (the ?runs= it was seeded from, the ticked run ids)

COLUMNS = {
    "id": st.column_config.NumberColumn("Run", format="#%d", width=60, pinned=True),
    "name": st.column_config.TextColumn("Name", width=140, help="Rename a run with Edit… (one run selected)"),
    "tags": st.column_config.ListColumn("Tags", width=130),
    "status": st.column_config.TextColumn("Status", width=150, help="Failed runs say why when Arena can tell "
                                                                     "(out of memory); diverged: the loss became "
                                                                     "NaN or infinite; lost: its runner stopped "
                                                                     "reporting (killed, machine gone)"),
    "framework": st.column_config.TextColumn("Framework", width=95),
    "experiment": st.column_config.TextColumn("Model / data", width=120),
    "workers": st.column_config.TextColumn("Workers", width=70, help="Data-parallel worker processes; blank: one"),
    "mode": st.column_config.TextColumn("Mode", width=70, help="How the training step ran (eager, graph, "
                                                                "compiled, xla)"),
    "precision": st.column_config.TextColumn("Precision", width=70),
    "device": st.column_config.TextColumn("Device", width=120, help="Where the scheduler placed the run; a queued "
                                                                    "run waits for the device it asked for"),
    "epochs": st.column_config.TextColumn("Epoch", width=65),
    "progress": st.column_config.ProgressColumn("Progress", min_value=0, max_value=100, format="%.0f%%",
                                                color="green", width=110,
                                                help="Optimizer steps done out of the run's total"),
    "eta": st.column_config.TextColumn("ETA", width=70, help="Estimated from elapsed time and progress"),
    "duration": st.column_config.TextColumn("Duration", width=80),
    "result": st.column_config.TextColumn("Result", width=150, help="Test accuracy, or φ estimate vs the true φ"),
    "train_loss": st.column_config.NumberColumn("Train loss", format="%.4f", width=85),
    "throughput": st.column_config.NumberColumn("Samples/s", format="localized", width=90,
                                                help="Median over epochs; training steps only, warm-up steps excluded"),
    "weights": st.column_config.TextColumn("Weights", width=75, help="The trained weights kept for deployment "
                                                                      "(Deploy page); empty: none kept"),
    "created": st.column_config.DatetimeColumn("Created", format="distance", width=120),
    "error": st.column_config.TextColumn("Error", width="large"),
}



# Left to right: the run, what it is, how it did, how far it got; the settings after. Results sit
# beside the run so they are on screen at 1500 px, not cut off at the right edge.
COLUMN_ORDER = ["id", "name", "framework", "experiment", "workers", "status", "result", "progress", "epochs", "eta",
                "duration", "train_loss", "throughput", "weights", "mode", "precision", "device", "tags", "created", "error"]
# Columns a user fills in (or that only failures fill): left out while every shown row has them empty.
GIVE_WAY_WHEN_EMPTY = ("name", "tags", "weights", "error", "workers")


def column_order(table: pd.DataFrame) -> list[str]:
    """COLUMN_ORDER without the optional columns that are empty in every row of `table`."""
    return [column for column in COLUMN_ORDER if column not in GIVE_WAY_WHEN_EMPTY or table[column].map(_filled).any()]


def _filled(value) -> bool:
    """A name, a non-empty tag list, an error text: not "", [], None or NaN."""
    return bool(value) and not (isinstance(value, float) and math.isnan(value))


def labelled(table: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The table and its column config with framework and status as coloured labels.

    Framework in its chart colour (one colour per framework everywhere), status in its own. A
    pandas Styler did this before: at 10,000 rows it took seconds, labels take milliseconds.
    """
    frameworks = sorted(set(table["framework"]))
    statuses = sorted(set(table["status"]))
    framework_colours = {framework_label(fw): colour for fw, colour in FRAMEWORK_COLORS.items()}
    config = {
        **COLUMNS,
        "framework": st.column_config.MultiselectColumn(
            "Framework", width=95, options=frameworks,
            color=[framework_colours.get(label, UNKNOWN_FRAMEWORK_COLOR) for label in frameworks]),
        "status": st.column_config.MultiselectColumn(
            "Status", width=150, help=COLUMNS["status"]["help"], options=statuses,
            color=[status_colour(text) for text in statuses]),
    }
    labels = table.assign(framework=[[label] for label in table["framework"]],
                          status=[[text] for text in table["status"]])
    return labels, config


def selected_rows(shown: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The table's rows of the shown runs, ticks kept on the same runs when rows come, go or move; the ticked runs."""
    ids = shown["id"].astype(int).tolist()
    requested = st.query_params.get(RUNS_PARAM)
    seeded_from, remembered = st.session_state.get(SELECTED_KEY, (None, None))
    if remembered is None or seeded_from != requested:  # opened anew with ?runs=...: those runs, ticked
        remembered = requested_run_ids()
    # A new widget whenever the rows change, so its ticks are set from run ids rather than left on
    # row positions that now hold other runs (a new run arrives at the top).
    signature = hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:12]
    key = f"{TABLE_KEY}.{st.session_state.get(GENERATION_KEY, 0)}.{signature}"
    position = {run_id: row for row, run_id in enumerate(ids)}
    data, config = labelled(table.loc[shown.index].reset_index(drop=True))
    event = st.dataframe(
        data, column_config=config, column_order=column_order(data), hide_index=True, placeholder="", key=key,
        on_select="rerun",
        selection_mode="multi-row",
        selection_default={"selection": {"rows": [position[i] for i in remembered if i in position], "columns": []}},
        height=table_height(len(ids)),
    )
    rows = sorted(row for row in event.selection.rows if row < len(ids))
    st.session_state[SELECTED_KEY] = (requested, [ids[row] for row in rows])
    return shown.iloc[rows]
