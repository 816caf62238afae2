"""Small widgets and session keys the pages share: run ids from the link, the empty state, the refresh rate."""
from __future__ import annotations

import streamlit as st

from analysis.run_ids import not_run_ids_message, split_run_ids
from ui.router import LAUNCH_PAGE

RUNS_PARAM = "runs"  # query parameter carrying run ids, e.g. /compare?runs=3,4
REFRESH_INTERVAL = "2s"  # how often live views poll the database while a run is active
LAUNCHED_KEY = "launched_run_ids"  # session state: the runs just launched, for Compare to pick up


def requested_run_ids(say_ignored: bool = True) -> list[int]:
    """Run ids this page was opened with (?runs=3,4); a warning names the parts that are not run ids."""
    ids, bad = split_run_ids(st.query_params.get(RUNS_PARAM))
    if bad and say_ignored:
        st.warning(not_run_ids_message(RUNS_PARAM, bad), icon=":material/warning:")
    return ids


def no_runs_yet(what: str) -> None:
    """Empty state: nothing is stored yet, so say what to do next."""
    st.info(f"No runs yet. {what}", icon=":material/info:")
    st.page_link(LAUNCH_PAGE, label="Launch your first run", icon=":material/rocket_launch:")
