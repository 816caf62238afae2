"""Choosing the runs to compare: filters and a selectable table, the choice kept in the URL (?runs=3,4)."""
from __future__ import annotations

import hashlib
from typing import Sequence

import pandas as pd
import streamlit as st

from analysis.run_filters import apply_filters
from analysis.run_ids import format_run_ids
from analysis.runs_table import ROW_HEIGHT_PX, picker_table
from db import run_table
from engine.launch import reap
from ui.database import sessions as dashboard_sessions
from ui.run_filter_controls import filter_controls
from ui.widgets import LAUNCHED_KEY, RUNS_PARAM, no_runs_yet, requested_run_ids

SELECTED_KEY = "compare_selected"  # session state: the chosen run ids, in the order they were chosen
TABLE_ROWS = 8  # rows in view before the table scrolls
COLUMNS = {
    "id": st.column_config.NumberColumn("Run", format="#%d", width=60),
    "name": st.column_config.TextColumn("Name", width=140),
    "framework": st.column_config.TextColumn("Framework", width=95),
    "experiment": st.column_config.TextColumn("Model / data", width=130),
    "mode": st.column_config.TextColumn("Mode", width=80),
    "precision": st.column_config.TextColumn("Precision", width=70),
    "seed": st.column_config.NumberColumn("Seed", width=55),
    "status": st.column_config.TextColumn("Status", width=120),
    "group": st.column_config.TextColumn("Group", width=110),
    "tags": st.column_config.ListColumn("Tags", width=150),
    "created": st.column_config.DatetimeColumn("Created", format="distance", width=110),
}


def default_selection(s) -> list[int]:
    """Runs asked for by URL, else the ones just launched, else the newest group, else the newest two.

    The asked-for ids are looked up alone: a shared link never reads the runs table for its default."""
    for wanted in (requested_run_ids(say_ignored=False), st.session_state.get(LAUNCHED_KEY) or []):
        known = run_table.existing_run_ids(s, wanted)
        chosen = [int(i) for i in wanted if i in known]
        if chosen:
            return chosen
    frame = run_table.newest_runs(s)
    newest = frame.iloc[0]
    if isinstance(newest["group_tag"], str) and newest["group_tag"]:
        return sorted(frame.loc[frame["group_tag"] == newest["group_tag"], "id"].astype(int).tolist())
    return sorted(frame["id"].head(2).astype(int).tolist())


def pick_runs() -> list[int]:
    """Filters, the table to tick runs in, and the chosen ids (also written to ?runs=).

    While the picker is closed (a shared link opens straight onto its charts) only the chosen ids are
    looked up; the whole runs table is read when the picker opens.
    """
    sessions = dashboard_sessions()
    reap(sessions)
    requested = requested_run_ids()
    with sessions.begin() as s:
        total = run_table.count_runs(s)
        if not total:
            no_runs_yet("Launch a PyTorch and TensorFlow pair, then compare them here.")
            return []
        if SELECTED_KEY not in st.session_state:
            st.session_state[SELECTED_KEY] = default_selection(s)
        known = run_table.existing_run_ids(s, [*requested, *st.session_state[SELECTED_KEY]])
    missing = [i for i in requested if i not in known]
    if missing:
        st.warning("Not found: " + ", ".join(f"#{i}" for i in missing) + " (deleted, or stored in another "
                   "database). Pick runs below.", icon=":material/warning:")
    selected = [i for i in st.session_state[SELECTED_KEY] if i in known]

    # The table is built only while the expander is open: a shared link opens straight onto its charts.
    picker = st.expander(f"Runs: {_count(len(selected))} selected of {total:,}", expanded=not selected,
                         icon=":material/checklist:", key="compare_picker_open", on_change="rerun")
    if not picker.open:
        _remember(selected)
        return selected
    with sessions.begin() as s:
        frame = run_table.runs_overview(s)
    with picker:
        filters = filter_controls(frame, key="c")
        shown = apply_filters(frame, filters)
        selected = table(shown, selected)
        hidden = [i for i in selected if i not in set(shown["id"].tolist())]
        row = st.container(horizontal=True, vertical_alignment="center")
        row.caption(f"{len(shown):,} of {len(frame):,} runs shown"
                    + (f"; also selected, hidden by the filters: {', '.join(f'#{i}' for i in hidden)}" if hidden
                       else ""))
        if selected and row.button("Clear selection", icon=":material/deselect:", key="compare_clear"):
            selected = []
            st.session_state[SELECTED_KEY] = []
            _bump()
            st.rerun()
    _remember(selected)
    return selected


def _remember(selected: list[int]) -> None:
    """Keep the choice for the next rerun and in the URL (?runs=), so the comparison can be shared."""
    st.session_state[SELECTED_KEY] = selected
    if selected:
        st.query_params[RUNS_PARAM] = format_run_ids(selected)
    else:
        st.query_params.pop(RUNS_PARAM, None)
        st.info("Tick one or more runs in the table above to compare them.", icon=":material/info:")


def table(shown: pd.DataFrame, selected: Sequence[int]) -> list[int]:
    """The filtered runs with the chosen ones ticked; returns the new choice (runs hidden by filters stay chosen)."""
    ids = shown["id"].astype(int).tolist()
    # A new key whenever the rows change, so the ticks are set afresh from the chosen ids rather than
    # left on row positions that now hold other runs.
    signature = hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:12]
    key = f"compare_table.{signature}.{st.session_state.get('compare_table_generation', 0)}"
    position = {run_id: row for row, run_id in enumerate(ids)}
    event = st.dataframe(
        picker_table(shown), column_config=COLUMNS, hide_index=True, key=key, on_select="rerun",
        selection_mode="multi-row",
        selection_default={"selection": {"rows": [position[i] for i in selected if i in position], "columns": []}},
        height=ROW_HEIGHT_PX * (min(len(shown), TABLE_ROWS) + 1) + 3,
    )
    ticked = [ids[row] for row in event.selection.rows if row < len(ids)]
    kept = [i for i in selected if i not in position or i in ticked]  # hidden ones stay; unticked ones go
    return kept + [i for i in ticked if i not in kept]


def _bump() -> None:
    st.session_state["compare_table_generation"] = st.session_state.get("compare_table_generation", 0) + 1


def _count(n: int) -> str:
    return f"{n:,} run" + ("" if n == 1 else "s")
