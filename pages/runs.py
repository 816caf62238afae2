"""Runs: every run with live progress; filter, name, tag and note them; compare, cancel or delete selected ones."""
from __future__ import annotations

import hashlib
import math
from datetime import datetime
from typing import Optional, Sequence

import numpy as np
import pandas as pd
import streamlit as st

from db import queries, run_table
from db.models import ACTIVE_STATUSES, DIVERGED, FINISHED, NON_FINITE_LOSS, QUEUED, RUNNING
from engine.catalog import FRAMEWORKS, default_mode, framework_label
from engine.launch import ALREADY_ENDED, CANCEL_REQUESTED, CANCELLED_NOW, cancel_runs, reap
from engine.ray_executor import IN_RAY_QUEUE
from pages import common, run_filters

TABLE_KEY = "runs_table"
GENERATION_KEY = "runs_table_generation"  # bumped after a delete so row selection starts afresh
SELECTED_KEY = "runs_selected"  # session state: (the ?runs= it was seeded from, the ticked run ids)
CONFIRM_DELETE_KEY = "runs_confirm_delete"
EDIT_KEY = "runs_edit"  # session state: the run whose name, tags and notes are being edited
BULK_TAG_KEY = "runs_bulk_tag"  # session state: the runs tags are being added to
FILTER_KEY = "f"  # filters live in ?f_fw=...&f_tag=...
FAILURES_SHOWN = 5
ROWS_SHOWN = 15  # rows in view before the table scrolls; the table virtualises the rest
ROW_HEIGHT_PX = 35
NAMES_LISTED = 20  # run ids spelled out in a delete confirmation before "and N more"
CANCEL_TOASTS = {  # what cancel_runs did, per run
    CANCELLED_NOW: "Cancelled run #{run_id}; its points are kept.",
    CANCEL_REQUESTED: "Asked run #{run_id} to stop: its runner does at its next heartbeat.",
    ALREADY_ENDED: "Run #{run_id} had already ended.",
}
ENDED_EARLY = run_table.ENDED_EARLY

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
    "created": st.column_config.DatetimeColumn("Created", format="distance", width=120),
    "error": st.column_config.TextColumn("Error", width="large"),
}


# The table, from the overview frame: pure functions, one vectorised column at a time ---------------
def runs_table(frame: pd.DataFrame, now: datetime) -> pd.DataFrame:
    """One row per run of run_table.runs_overview, in its order and index, in display units."""
    status = frame["status"]
    fraction = progress_fractions(frame)
    elapsed = elapsed_seconds(frame, now)
    running = status == RUNNING
    # common.eta_s: elapsed time extrapolated by the fraction left; unknown before any progress.
    eta_s = (elapsed * (1.0 - fraction) / fraction.where(fraction > 0)).where(running & (elapsed > 0))
    eta = pd.Series("", index=frame.index, dtype=object)
    eta[running] = _durations(eta_s[running])
    return pd.DataFrame({
        "id": frame["id"],
        "name": frame["name"].fillna(""),
        "tags": frame["tags"],
        "status": status_texts(frame),
        "framework": frame["framework"].map(framework_label),
        "experiment": frame["model"] + " / " + frame["dataset"],
        "mode": modes(frame),
        "precision": _or(frame["precision"], "fp32"),
        "device": device_texts(frame),
        "epochs": _fractions(frame["epoch"], frame["total_epochs"]),
        "progress": 100 * fraction,
        "eta": eta,
        "duration": _durations(elapsed),
        "result": result_texts(frame),
        "train_loss": frame["train_loss"].astype(float),
        "throughput": frame["samples_per_s"].round(),
        "created": frame["created_at"].dt.tz_localize("UTC"),
        "error": frame["error"].where(status.isin(ENDED_EARLY), "").fillna(""),
    }, index=frame.index, columns=list(COLUMNS))


def _or(values: pd.Series, fallback) -> pd.Series:
    """values, with fallback where a value is missing or empty (as `value or fallback` would); NaN by default."""
    return values.mask(values.isna() | (values == ""), fallback)


def _fractions(done: pd.Series, total: pd.Series) -> list[str]:
    """"3/5" per row; each distinct pair is formatted once (most runs share a few)."""
    pairs = list(zip(done.astype(int).tolist(), total.astype(int).tolist()))
    texts = {pair: f"{pair[0]}/{pair[1]}" for pair in set(pairs)}
    return [texts[pair] for pair in pairs]


def _durations(seconds: pd.Series) -> list[str]:
    """common.format_duration of each value ("—" for NaN); a plain loop: pandas' map costs twice as much."""
    return [common.format_duration(None if math.isnan(value) else value) for value in seconds.tolist()]


def status_texts(frame: pd.DataFrame) -> pd.Series:
    """common.status_text per row: "✗ failed · out of memory", "△ diverged at step 12"."""
    status, reason = frame["status"], frame["reason"]
    diverged = status == DIVERGED
    words = status.copy()
    at_step = diverged & frame["diverged_at_step"].notna()
    words[at_step] = words[at_step] + " at step " + frame.loc[at_step, "diverged_at_step"].astype(int).astype(str)
    reason_words = reason.map(common.REASON_LABELS)
    said = reason_words.notna() & ~(diverged & (reason == NON_FINITE_LOSS))  # "diverged" says it already
    words[said] = words[said] + " · " + reason_words[said]
    symbols = {name: badge[:-len(name)] for name, badge in common.STATUS_BADGES.items() if badge.endswith(name)}
    return status.map(symbols).fillna("") + words


def modes(frame: pd.DataFrame) -> pd.Series:
    """common.run_mode per row: as reported, else as asked, else its framework's default."""
    defaults = frame["framework"].map({fw: default_mode(fw) for fw in FRAMEWORKS}).fillna("—")
    return _or(frame["summary_mode"], np.nan).fillna(_or(frame["spec_mode"], np.nan)).fillna(defaults)


def device_texts(frame: pd.DataFrame) -> pd.Series:
    """common.device_text per row; a queued run's place counts every queued run in the frame, oldest first."""
    queued = frame["status"] == QUEUED
    placed = _or(frame["placed_device"], np.nan)
    text = placed.fillna(frame["environment_device"].fillna("").astype(str))
    starting = queued & placed.notna()
    text[starting] = "starting on " + placed[starting]
    in_ray = queued & placed.isin(list(IN_RAY_QUEUE))
    text[in_ray] = placed[in_ray].map(IN_RAY_QUEUE)
    waiting = queued & placed.isna()
    if waiting.any():
        asked = _or(frame.loc[waiting, "asked_device"], "auto")
        place = frame.loc[queued, "id"].rank(method="first").astype(int)[waiting]
        text[waiting] = ("waiting for " + asked.mask(asked == "auto", "a free device") + " ("
                         + place.map(common.ordinal) + " in queue)")
    return text


def progress_fractions(frame: pd.DataFrame) -> pd.Series:
    """common.progress_fraction per row: by optimizer steps, else by epochs; 1.0 once finished."""
    steps = frame["total_steps"].astype(float).copy()
    for index in frame.index[(steps.fillna(0) == 0) & frame["spec"].notna()]:  # stored before total_steps was
        row = frame.loc[index]
        derived = common.total_steps(_LightRun(row))
        steps[index] = derived if derived else np.nan
    by_steps = (frame["step"] / steps).clip(upper=1.0)
    epochs = frame["total_epochs"].astype(float)
    by_epochs = (frame["epoch"] / epochs.where(epochs > 0)).clip(upper=1.0).fillna(0.0)
    fraction = by_steps.where(steps > 0, by_epochs)
    return fraction.mask(frame["status"] == FINISHED, 1.0).astype(float)


class _LightRun:
    """The few Run attributes common.total_steps reads, from an overview row."""

    def __init__(self, row: pd.Series) -> None:
        self.total_steps, self.spec, self.total_epochs = None, row["spec"], int(row["total_epochs"])


def elapsed_seconds(frame: pd.DataFrame, now: datetime) -> pd.Series:
    """common.elapsed_s per row: start to finish, or start to now while running; NaN before the start."""
    started = frame["started_at"].to_numpy(dtype="datetime64[ns]")
    ended = frame["finished_at"].to_numpy(dtype="datetime64[ns]").copy()
    ended[np.isnat(ended)] = np.datetime64(now, "ns")
    return pd.Series((ended - started) / np.timedelta64(1, "s"), index=frame.index).clip(lower=0.0)


def result_texts(frame: pd.DataFrame) -> pd.Series:
    """Test accuracy, else "φ estimate (true φ)"; NaN where recorded non-finite, nothing where never recorded."""
    texts = [_result_text(accuracy, phi, phi_true) for accuracy, phi, phi_true in
             zip(frame["test_accuracy"], frame["phi_estimate"], frame["phi_true"])]
    return pd.Series(texts, index=frame.index, dtype=object)


def _result_text(accuracy: Optional[float], phi: Optional[float], phi_true: Optional[float]) -> str:
    if accuracy is not None:
        return f"{common.format_percent(accuracy)} accuracy"
    if phi is not None:
        return f"φ {phi:.4f}" + (f" (true {phi_true:.4f})" if phi_true is not None else "")
    return ""


def labelled(table: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The table and its column config with framework and status as coloured labels.

    Framework in its chart colour (one colour per framework everywhere), status in its own. A
    pandas Styler did this before: at 10,000 rows it took seconds, labels take milliseconds.
    """
    frameworks = sorted(set(table["framework"]))
    statuses = sorted(set(table["status"]))
    framework_colours = {framework_label(fw): colour for fw, colour in common.FRAMEWORK_COLORS.items()}
    config = {
        **COLUMNS,
        "framework": st.column_config.MultiselectColumn(
            "Framework", width=95, options=frameworks,
            color=[framework_colours.get(label, common.UNKNOWN_FRAMEWORK_COLOR) for label in frameworks]),
        "status": st.column_config.MultiselectColumn(
            "Status", width=150, help=COLUMNS["status"]["help"], options=statuses,
            color=[_status_colour(text) for text in statuses]),
    }
    labels = table.assign(framework=[[label] for label in table["framework"]],
                          status=[[text] for text in table["status"]])
    return labels, config


def _status_colour(text: str) -> str:
    """The colour of a status cell ("✗ failed · out of memory" is a failed one)."""
    words = text.split(" ")
    return common.STATUS_COLORS.get(words[1] if len(words) > 1 else "", common.UNKNOWN_FRAMEWORK_COLOR)


# The page ------------------------------------------------------------------------------------
def selected_rows(shown: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """The table's rows of the shown runs, ticks kept on the same runs when rows come, go or move; the ticked runs."""
    ids = shown["id"].astype(int).tolist()
    requested = st.query_params.get(common.RUNS_PARAM)
    seeded_from, remembered = st.session_state.get(SELECTED_KEY, (None, None))
    if remembered is None or seeded_from != requested:  # opened anew with ?runs=...: those runs, ticked
        remembered = common.requested_run_ids()
    # A new widget whenever the rows change, so its ticks are set from run ids rather than left on
    # row positions that now hold other runs (a new run arrives at the top).
    signature = hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:12]
    key = f"{TABLE_KEY}.{st.session_state.get(GENERATION_KEY, 0)}.{signature}"
    position = {run_id: row for row, run_id in enumerate(ids)}
    data, config = labelled(table.loc[shown.index].reset_index(drop=True))
    event = st.dataframe(
        data, column_config=config, hide_index=True, placeholder="", key=key, on_select="rerun",
        selection_mode="multi-row",
        selection_default={"selection": {"rows": [position[i] for i in remembered if i in position], "columns": []}},
        height=table_height(len(ids)),
    )
    rows = sorted(row for row in event.selection.rows if row < len(ids))
    st.session_state[SELECTED_KEY] = (requested, [ids[row] for row in rows])
    return shown.iloc[rows]


def table_height(rows: int) -> int:
    """Pixels for the header and up to ROWS_SHOWN rows: more rows scroll inside the table."""
    return ROW_HEIGHT_PX * (min(rows, ROWS_SHOWN) + 1) + 3


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
        st.switch_page(common.COMPARE_PAGE, query_params={common.RUNS_PARAM: common.format_run_ids(ids)})
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
                    if run is not None and not common.is_active(run):
                        queries.delete_run(s, run_id)
            st.session_state.pop(CONFIRM_DELETE_KEY)
            st.session_state.pop(SELECTED_KEY, None)
            st.session_state[GENERATION_KEY] = st.session_state.get(GENERATION_KEY, 0) + 1
            if st.session_state.get(EDIT_KEY) in pending:
                st.session_state.pop(EDIT_KEY)
            st.query_params.pop(common.RUNS_PARAM, None)
            common.toast_after_rerun(f"Deleted {names}.")
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
                    f"{common.escape_markdown(f'{run.model}/{run.dataset}')}")
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
            st.error(f"Not saved: {common.escape_markdown(str(exc))}.", icon=":material/error:")
            return
        st.session_state.pop(EDIT_KEY)
        common.toast_after_rerun(f"Saved run #{run_id}.")
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
            st.error(f"Not tagged: {common.escape_markdown(str(exc))}.", icon=":material/error:")
            return
        st.session_state.pop(BULK_TAG_KEY)
        common.toast_after_rerun(f"Tagged {len(run_ids)} run{plural}.")
        st.rerun()


def failures() -> None:
    """The latest failed and diverged runs: the error's last line in view, the whole traceback one click away."""
    with common.sessions().begin() as s:
        failed, count = run_table.ended_early(s, FAILURES_SHOWN)
    if not failed:
        return
    st.subheader("Failures")
    for run in failed:
        colour = "violet" if run.status == DIVERGED else "red"
        words = common.status_words(run)
        ended = "" if words == run.status else f"{words}: "  # "failed · out of memory: ", "diverged at step 12: "
        with st.expander(f":{colour}[**#{run.id} {framework_label(run.framework)} {run.model}/{run.dataset}**] — "
                         f"{common.escape_markdown(ended + common.error_summary(run.error))}",
                         icon=":material/error:"):
            st.code(run.error or "no error text was recorded", language=None)
            if run.log_path:
                st.caption(f"Runner log: `{run.log_path}`")
    if count > FAILURES_SHOWN:
        st.caption(f"{count - FAILURES_SHOWN} older failed or diverged runs: their last error line is in the "
                   "table.")


def panel(live: bool) -> None:
    sessions = common.sessions()
    reap(sessions)
    with sessions.begin() as s:
        frame = run_table.runs_overview(s)
    if frame.empty:
        common.no_runs_yet("Runs you launch appear here with live progress.")
        return
    if live and not frame["status"].isin(ACTIVE_STATUSES).any():
        st.rerun()  # everything has settled: redraw once, without the refresh timer
    filters = run_filters.filter_controls(frame, key=FILTER_KEY)
    shown = run_filters.apply_filters(frame, filters)
    st.caption(f"{len(shown):,} of {len(frame):,} runs" + (" match the filters." if filters.active() else "."))
    # The whole table, not only the shown rows: a queued run's place counts every queued run.
    selected = selected_rows(shown, runs_table(frame, common.utc_now()))
    actions(sessions, selected)
    confirm_delete(sessions)


def main() -> None:
    common.ensure_router()
    st.title("Runs")
    live = common.any_active(common.sessions())
    if live:
        st.caption(f"Updating every {common.REFRESH_INTERVAL} while runs are active.")
    every = common.REFRESH_INTERVAL if live else None
    st.fragment(common.guarded(panel), run_every=every)(live)
    # Outside the refreshing fragment: a refresh every 2 s never drops a half-typed name or note.
    edit_form(common.sessions())
    bulk_tag_form(common.sessions())
    st.fragment(common.guarded(failures), run_every=every)()


if __name__ == "__main__":  # Streamlit runs a page as __main__; importing it (bench/runs_page.py) only defines
    main()
