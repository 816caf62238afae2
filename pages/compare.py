"""Compare: chosen runs side by side — any metric, seed groups, speed with its uncertainty, memory, tables,
both implementations of the model, layer statistics and exports. Every setting lives in the URL."""
from __future__ import annotations

from importlib import import_module

import streamlit as st

from analysis.formatting import format_percent
from analysis.run_facts import facts_of
from db import queries
from db.models import ACTIVE_STATUSES
from engine.launch import reap
from ui import url_state
from ui.database import any_active, sessions
from ui.fairness_panel import what_was_compared
from ui.page_errors import guarded
from ui.router import ensure_router
from ui.run_picker import pick_runs
from ui.widgets import REFRESH_INTERVAL

# Tab -> the ui module that draws it (its tab(runs, available)), imported when the tab first opens:
# a link to the Learning tab never loads the memory, layer or profile code.
TABS = {
    "Learning": "ui.learning_section",
    "Speed": "ui.speed_section",
    "Scaling": "ui.scaling_section",
    "Data": "ui.data_section",
    "Memory": "ui.memory_section",
    "Summary": "ui.summary_section",
    "Settings": "ui.settings_section",
    "Model and layers": "ui.layers_section",
    "Export": "ui.export_buttons",
}


def comparison_view(run_ids: list[int], live: bool) -> None:
    dashboard = sessions()
    reap(dashboard)
    with dashboard.begin() as s:
        runs = [run for run in (queries.get_run(s, i) for i in run_ids) if run is not None]
        available = queries.metric_names(s, run_ids)
    active = [run for run in runs if run.status in ACTIVE_STATUSES]
    if live and not active:
        st.rerun()  # the last active run ended: redraw once, without the refresh timer
    if active:
        progress = facts_of(active)["progress"]
        st.caption(", ".join(f"#{run.id} is {run.status} ({format_percent(progress[run.id])})" for run in active)
                   + f" — charts update every {REFRESH_INTERVAL}.")
    # "What was compared" sits above the tabs but is drawn into its place after the open tab: the first
    # chart's data reaches the browser before the header's elements, which React renders one message at a time.
    header = st.container()
    if not available:
        with header:
            what_was_compared(runs)
        st.info("No metrics recorded yet: the charts appear after the first training steps.",
                icon=":material/hourglass:")
        return
    # Only the open tab is computed and sent: the first chart draws sooner, and a live refresh
    # redraws one tab, not the whole page.
    names = tuple(TABS)
    url_state.seed("compare_tab", "tab", names[0], choices=names)
    tabs = dict(zip(names, st.tabs(names, key="compare_tab", on_change="rerun")))
    url_state.sync("tab", st.session_state["compare_tab"], names[0])
    open_tab = next((name for name, tab in tabs.items() if tab.open), names[0])
    with tabs[open_tab]:
        import_module(TABS[open_tab]).tab(runs, available)
    with header:
        what_was_compared(runs)


ensure_router()
st.title("Compare")
selected = pick_runs()
if selected:
    live = any_active(sessions(), selected)
    view = st.fragment(guarded(comparison_view), run_every=REFRESH_INTERVAL if live else None)
    view(sorted(selected), live)
