"""The Compare page's Settings tab: every run's full spec side by side, then each run's environment."""
from __future__ import annotations

from typing import Sequence

import streamlit as st

from analysis.spec_diff import MISSING, difference_note, differing_rows, spec_table
from analysis.summary import environment_table, highlight_differences
from db.models import Run

SPEC_DIFF_PARAM = "spec_diff"  # query parameter: "diff" (only the rows that differ) or "all"


def tab(runs: Sequence[Run], available: Sequence[str]) -> None:
    """The Settings tab: the specs, then the environments in an expander."""
    spec_diff_section(runs)
    with st.expander("Environment of each run (rows that differ are shaded)", icon=":material/computer:"):
        st.table(highlight_differences(environment_table(runs)))


def spec_diff_section(runs: Sequence[Run], key: str = "spec_diff") -> None:
    """Subheader "Settings": the full specs, only the differing rows unless the toggle says all (?spec_diff=all)."""
    st.subheader("Settings")
    table = spec_table(runs)
    only_differences = st.toggle("Only differences", value=st.query_params.get(SPEC_DIFF_PARAM) != "all",
                                 key=f"{key}_only", help="Hide the settings every run shares.")
    st.query_params[SPEC_DIFF_PARAM] = "diff" if only_differences else "all"
    note = difference_note(table)
    if note:
        st.info(note, icon=":material/balance:")
    shown = differing_rows(table) if only_differences and len(runs) > 1 else table
    if shown.empty:
        return  # nothing differs: the note said so
    st.table(highlight_differences(shown))
    st.caption(f"Every run's spec as stored with it; shaded rows differ. {MISSING}: a run stored before the "
               "setting existed." + (f" {len(table) - len(shown)} identical rows hidden." if len(shown) < len(table)
                                     else ""))
