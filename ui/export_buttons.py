"""Download buttons for selected runs: CSV, JSON and TensorBoard files with every recorded point.

A page calls export_buttons(run_ids) where its runs are chosen; the Compare page's Export tab is tab().
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import streamlit as st

from db.models import Run
from engine.export import EXPORTERS, export_filename, open_tensorboard_command
from ui.database import sessions as dashboard_sessions
from ui.router import DEPLOY_PAGE

# (format, label, MIME type, icon), in the order the buttons appear.
BUTTONS = (
    ("csv", "CSV (zip)", "application/zip", ":material/table_view:"),
    ("json", "JSON", "application/json", ":material/data_object:"),
    ("tensorboard", "TensorBoard (zip)", "application/zip", ":material/insights:"),
)


def tab(runs: Sequence[Run], available: Sequence[str]) -> None:
    """The Compare page's Export tab."""
    st.subheader("Export")
    export_buttons([run.id for run in runs])
    st.page_link(DEPLOY_PAGE, label="Deploy these runs' trained models: export, check and time them",
                 icon=":material/deployed_code:", query_params={"runs": ",".join(str(run.id) for run in runs)})


def export_buttons(run_ids: list[int]) -> None:
    """CSV zip, JSON and TensorBoard zip download buttons for the runs; each file is built when clicked."""
    if not run_ids:
        return
    ids = [int(run_id) for run_id in dict.fromkeys(run_ids)]
    # Resolved here, not in the builders: Streamlit runs a callable's data on a thread without the
    # script's context, where the cached sessionmaker is out of reach.
    sessions = dashboard_sessions()
    with st.container(horizontal=True, vertical_alignment="center"):
        for fmt, label, mime, icon in BUTTONS:
            # A callable builds the file only on click: an export of long runs takes seconds and
            # megabytes that most page views never need. on_click="ignore": downloading needs no rerun.
            st.download_button(label, data=partial(EXPORTERS[fmt], sessions, ids), file_name=export_filename(ids, fmt),
                               mime=mime, icon=icon, on_click="ignore", key=f"export_{fmt}_{'_'.join(map(str, ids))}")
    st.caption(f"Every recorded point, no downsampling. To open the TensorBoard export: "
               f"`{open_tensorboard_command(export_filename(ids, 'tensorboard'))}` (without the last option "
               f"TensorBoard shows only 1,000 points per curve).")
