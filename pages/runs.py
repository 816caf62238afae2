"""Runs: every run with live progress; filter, name, tag and note them; compare, cancel or delete selected ones."""
from __future__ import annotations

import streamlit as st

from analysis.run_filters import apply_filters
from analysis.runs_table import runs_table
from db import queries, run_table
from db.models import ACTIVE_STATUSES
from engine.launch import reap
from ui.database import any_active, sessions
from ui.page_errors import guarded
from ui.router import ensure_router
from ui.run_actions import actions, bulk_tag_form, confirm_delete, edit_form, failures
from ui.run_filter_controls import filter_controls
from ui.run_selection import selected_rows
from ui.widgets import REFRESH_INTERVAL, no_runs_yet

FILTER_KEY = "f"  # filters live in ?f_fw=...&f_tag=...


def panel(live: bool) -> None:
    dashboard = sessions()
    reap(dashboard)
    with dashboard.begin() as s:
        frame = run_table.runs_overview(s)
    if frame.empty:
        no_runs_yet("Runs you launch appear here with live progress.")
        return
    if live and not frame["status"].isin(ACTIVE_STATUSES).any():
        st.rerun()  # everything has settled: redraw once, without the refresh timer
    filters = filter_controls(frame, key=FILTER_KEY)
    shown = apply_filters(frame, filters)
    st.caption(f"{len(shown):,} of {len(frame):,} runs" + (" match the filters." if filters.active() else "."))
    # The whole table, not only the shown rows: a queued run's place counts every queued run.
    selected = selected_rows(shown, runs_table(frame, queries.utcnow()))
    actions(dashboard, selected)
    confirm_delete(dashboard)


ensure_router()
st.title("Runs")
live = any_active(sessions())
if live:
    st.caption(f"Updating every {REFRESH_INTERVAL} while runs are active.")
every = REFRESH_INTERVAL if live else None
st.fragment(guarded(panel), run_every=every)(live)
# Outside the refreshing fragment: a refresh every 2 s never drops a half-typed name or note.
edit_form(sessions())
bulk_tag_form(sessions())
st.fragment(guarded(failures), run_every=every)()
