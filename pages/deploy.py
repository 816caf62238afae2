"""Deploy: export finished runs' trained models the ways each framework ships them, prove each export equal, and
time loading, inference and serving — PyTorch and TensorFlow under the same rules."""
from __future__ import annotations

import streamlit as st

from db import deployments
from db.models import ACTIVE_STATUSES, FINISHED
from ui.database import sessions
from ui.deploy_section import choose_runs, deploy_form, live_panel
from ui.page_errors import guarded
from ui.router import ensure_router
from ui.widgets import REFRESH_INTERVAL


def has_results(run_ids: list[int]) -> bool:
    with sessions().begin() as s:
        return any(job["status"] == FINISHED for job in deployments.jobs(s, run_ids))


def active_jobs() -> bool:
    with sessions().begin() as s:
        return bool(deployments.jobs(s, statuses=list(ACTIVE_STATUSES)))


ensure_router()
st.title("Deploy")
st.caption("Each format is exported from the run's kept weights, loaded in a fresh process that holds only its own "
           "runtime, checked against the trained model on the test set, and timed at batch 1 to 128.")
selected = choose_runs()
if selected:
    deploy_form(selected, expanded=not has_results(selected))
live = active_jobs()
st.fragment(guarded(live_panel), run_every=REFRESH_INTERVAL if live else None)(selected, live)
