"""What the Runs page does with the ticked runs: compare, edit, tag, cancel, delete; and its failures list."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import streamlit as st

from analysis.formatting import error_summary, escape_markdown
from analysis.run_facts import facts_of
from analysis.run_ids import format_run_ids
from db import queries, run_table
from db.models import ACTIVE_STATUSES, DIVERGED
from engine.catalog import framework_label
from engine.launch import ALREADY_ENDED, CANCEL_REQUESTED, CANCELLED_NOW, cancel_runs
from ui.database import sessions as dashboard_sessions
from ui.router import COMPARE_PAGE, toast_after_rerun
from ui.run_selection import GENERATION_KEY, SELECTED_KEY
from ui.widgets import RUNS_PARAM

CONFIRM_DELETE_KEY = "runs_confirm_delete"
EDIT_KEY = "runs_edit"  # session state: the run whose name, tags and notes are being edited
BULK_TAG_KEY = "runs_bulk_tag"  # session state: the runs tags are being added to
FAILURES_SHOWN = 5
NAMES_LISTED = 20  # run ids spelled out in a delete confirmation before "and N more"
CANCEL_TOASTS = {  # what cancel_runs did, per run
    CANCELLED_NOW: "Cancelled run #{run_id}; its points are kept.",
    CANCEL_REQUESTED: "Asked run #{run_id} to stop: its runner does at its next heartbeat.",
    ALREADY_ENDED: "Run #{run_id} had already ended.",
}


def actions(sessions, selected: pd.DataFrame) -> None:
    """Compare, edit, tag, cancel or delete the selected runs."""
    if selected.empty:
        st.caption("Tick runs in the first column to compare, edit, tag, cancel or delete them.")
        return
    ids = sorted(selected["id"].astype(int).tolist())
    active = selected.loc[selected["status"].isin(ACTIVE_STATUSES), "id"].astype(int).tolist()
    done = selected.loc[~selected["status"].isin(ACTIVE_STATUSES), "id"].astype(int).tolist()
    row = st.container(horizontal=True)
    if row.button(f"Compare {len(ids)} selected", icon=":material/compare_arrows:", type="primary"):
        st.switch_page(COMPARE_PAGE, query_params={RUNS_PARAM: format_run_ids(ids)})
    if len(ids) == 1 and row.button("Edit…", icon=":material/edit:", key="runs_edit_open",
                                    help="Rename the run, change its tags and notes"):
        _open(EDIT_KEY, ids[0])
    if row.button(f"Tag {len(ids)}…", icon=":material/sell:", key="runs_tag_open",
                  help="Add tags to every selected run"):
        _open(BULK_TAG_KEY, ids)
    if active and row.button(f"Cancel {len(active)} active", icon=":material/stop_circle:",
                             help="Stop them now, keeping every point they recorded: queued runs leave the queue"):
        for run_id, outcome in cancel_runs(sessions, active, via="Runs page").items():
            st.toast(CANCEL_TOASTS.get(outcome, "Run #{run_id} no longer exists.").format(run_id=run_id))
    if done and row.button(f"Delete {len(done)}…", icon=":material/delete:",
                           help="Only runs that have ended can be deleted; cancel active ones first."):
        st.session_state[CONFIRM_DELETE_KEY] = done


def _open(form_key: str, value) -> None:
    """Show one editing form (below the live table, which a refresh redraws without touching the form)."""
    for key in (EDIT_KEY, BULK_TAG_KEY):
        st.session_state.pop(key, None)
    st.session_state[form_key] = value
    st.rerun(scope="app")


def _id_list(run_ids: Sequence[int]) -> str:
    listed = ", ".join(f"#{i}" for i in run_ids[:NAMES_LISTED])
    return listed + (f" and {len(run_ids) - NAMES_LISTED} more" if len(run_ids) > NAMES_LISTED else "")


def confirm_delete(sessions) -> None:
    pending = st.session_state.get(CONFIRM_DELETE_KEY)
    if not pending:
        return
    names = _id_list(pending)
    with st.container(border=True):
        st.warning(f"Delete run{'s' if len(pending) > 1 else ''} {names} with all their metrics and samples? "
                   "This cannot be undone.", icon=":material/warning:")
        c1, c2, _ = st.columns([1, 1, 5])
        if c1.button("Delete", type="primary", key="confirm_delete_yes"):
            with sessions.begin() as s:
                for run_id in pending:
                    run = queries.get_run(s, run_id)
                    if run is not None and run.status not in ACTIVE_STATUSES:
                        queries.delete_run(s, run_id)
            st.session_state.pop(CONFIRM_DELETE_KEY)
            st.session_state.pop(SELECTED_KEY, None)
            st.session_state[GENERATION_KEY] = st.session_state.get(GENERATION_KEY, 0) + 1
            if st.session_state.get(EDIT_KEY) in pending:
                st.session_state.pop(EDIT_KEY)
            st.query_params.pop(RUNS_PARAM, None)
            toast_after_rerun(f"Deleted {names}.")
            st.rerun(scope="app")
        if c2.button("Cancel", key="confirm_delete_no"):
            st.session_state.pop(CONFIRM_DELETE_KEY)
            st.rerun()


def edit_form(sessions) -> None:
    """Name, tags and notes of one run; nothing is stored unless all of it is valid."""
    run_id = st.session_state.get(EDIT_KEY)
    if run_id is None:
        return
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        known_tags = run_table.known_tags(s)
    if run is None:  # deleted meanwhile
        st.session_state.pop(EDIT_KEY)
        return
    with st.form(f"runs_edit_form_{run_id}"):
        st.markdown(f"**Edit run #{run_id}** · {framework_label(run.framework)} "
                    f"{escape_markdown(f'{run.model}/{run.dataset}')}")
        name = st.text_input("Name", value=run.name or "", key=f"runs_edit_name_{run_id}",
                             placeholder="e.g. baseline, lr sweep 3")
        tags = st.multiselect("Tags", sorted(set(known_tags) | set(run.tags or [])), default=run.tags or [],
                              key=f"runs_edit_tags_{run_id}", accept_new_options=True,
                              placeholder="Pick or type tags", help="Type a new tag and press Enter to add it")
        notes = st.text_area("Notes", value=run.notes or "", key=f"runs_edit_notes_{run_id}", height=100)
        buttons = st.container(horizontal=True)
        save = buttons.form_submit_button("Save", type="primary", icon=":material/save:")
        cancel = buttons.form_submit_button("Cancel")
    if cancel:
        st.session_state.pop(EDIT_KEY)
        st.rerun()
    if save:
        try:
            with sessions.begin() as s:  # annotate_run validates name and tags before it writes
                queries.annotate_run(s, run_id, name=name, notes=notes, tags=tags)
        except ValueError as exc:
            st.error(f"Not saved: {escape_markdown(str(exc))}.", icon=":material/error:")
            return
        st.session_state.pop(EDIT_KEY)
        toast_after_rerun(f"Saved run #{run_id}.")
        st.rerun()


def bulk_tag_form(sessions) -> None:
    """Tags added to every selected run."""
    run_ids = st.session_state.get(BULK_TAG_KEY)
    if not run_ids:
        return
    with sessions.begin() as s:
        known_tags = run_table.known_tags(s)
    plural = "s" if len(run_ids) > 1 else ""
    with st.form("runs_bulk_tag_form"):
        st.markdown(f"**Tag {len(run_ids)} run{plural}**: {_id_list(run_ids)}")
        tags = st.multiselect("Tags to add", known_tags, key="runs_bulk_tag_value", accept_new_options=True,
                              placeholder="Pick or type tags", help="Type a new tag and press Enter to add it")
        buttons = st.container(horizontal=True)
        add = buttons.form_submit_button("Add tags", type="primary", icon=":material/sell:")
        cancel = buttons.form_submit_button("Cancel")
    if cancel:
        st.session_state.pop(BULK_TAG_KEY)
        st.rerun()
    if add:
        try:
            with sessions.begin() as s:
                run_table.add_tags(s, run_ids, tags)
        except ValueError as exc:
            st.error(f"Not tagged: {escape_markdown(str(exc))}.", icon=":material/error:")
            return
        st.session_state.pop(BULK_TAG_KEY)
        toast_after_rerun(f"Tagged {len(run_ids)} run{plural}.")
        st.rerun()


def failures() -> None:
    """The latest failed and diverged runs: the error's last line in view, the whole traceback one click away."""
    with dashboard_sessions().begin() as s:
        failed, count = run_table.ended_early(s, FAILURES_SHOWN)
    if not failed:
        return
    st.subheader("Failures")
    status_words = facts_of(failed)["status_words"]
    for run in failed:
        colour = "violet" if run.status == DIVERGED else "red"
        words = status_words[run.id]
        ended = "" if words == run.status else f"{words}: "  # "failed · out of memory: ", "diverged at step 12: "
        with st.expander(f":{colour}[**#{run.id} {framework_label(run.framework)} {run.model}/{run.dataset}**] — "
                         f"{escape_markdown(ended + error_summary(run.error))}",
                         icon=":material/error:"):
            st.code(run.error or "no error text was recorded", language=None)
            if run.log_path:
                st.caption(f"Runner log: `{run.log_path}`")
    if count > FAILURES_SHOWN:
        st.caption(f"{count - FAILURES_SHOWN} older failed or diverged runs: their last error line is in the "
                   "table.")
