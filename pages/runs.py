"""Runs: every run with live progress; select rows to compare, stop or delete them."""
from __future__ import annotations

from datetime import datetime
from typing import Sequence

import pandas as pd
import streamlit as st

from db import queries
from db.models import DIVERGED, FAILED, QUEUED, Run
from engine.catalog import framework_label
from engine.launch import reap, stop_run
from pages import common

TABLE_KEY = "runs_table"
GENERATION_KEY = "runs_table_generation"  # bumped after a delete so row selection starts afresh
CONFIRM_DELETE_KEY = "runs_confirm_delete"
FAILURES_SHOWN = 5
ROWS_SHOWN = 15  # rows in view before the table scrolls
ROW_HEIGHT_PX = 35
ENDED_EARLY = (FAILED, DIVERGED)  # statuses whose error is worth reading

COLUMNS = {
    "id": st.column_config.NumberColumn("Run", format="#%d", width=60),
    "status": st.column_config.TextColumn("Status", width=150, help="Failed runs say why when Arena can tell "
                                                                     "(out of memory); diverged: the loss became "
                                                                     "NaN or infinite"),
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


def result_text(metrics: dict[str, list[float]]) -> str:
    accuracy = common.last(metrics, "test_accuracy")
    if accuracy is not None:
        return f"{common.format_percent(accuracy)} accuracy"
    phi, phi_true = common.last(metrics, "phi_estimate"), common.last(metrics, "phi_true")
    if phi is not None:
        return f"φ {phi:.4f}" + (f" (true {phi_true:.4f})" if phi_true is not None else "")
    return ""


def runs_table(runs: Sequence[Run], metrics: dict[int, dict[str, list[float]]], now: datetime) -> pd.DataFrame:
    """One row per run, newest first, in display units."""
    queued_ids = [run.id for run in runs if run.status == QUEUED]
    rows = []
    for run in runs:
        values = metrics.get(run.id, {})
        rows.append({
            "id": run.id,
            "status": common.status_text(run),
            "framework": framework_label(run.framework),
            "experiment": f"{run.model} / {run.dataset}",
            "mode": common.run_mode(run),
            "precision": common.run_precision(run),
            "device": common.device_text(run, queued_ids),
            "epochs": f"{run.epoch}/{run.total_epochs}",
            "progress": 100 * common.progress_fraction(run),
            "eta": common.format_duration(common.eta_s(run, now)) if run.status == "running" else "",
            "duration": common.format_duration(common.elapsed_s(run, now)),
            "result": result_text(values),
            "train_loss": common.last(values, "train_loss"),
            "throughput": _rounded(common.median(values, "samples_per_s")),
            "created": pd.Timestamp(run.created_at, tz="UTC"),
            "error": common.error_summary(run.error) if run.status in ENDED_EARLY else "",
        })
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _rounded(value):
    return None if value is None else round(value)


def styled(table: pd.DataFrame):
    """Framework in its chart colour (one colour per framework everywhere), status in its own."""
    framework_colours = {framework_label(fw): colour for fw, colour in common.FRAMEWORK_COLORS.items()}
    return (table.style
            .map(lambda label: f"color: {framework_colours.get(label, '')}; font-weight: 600", subset=["framework"])
            .map(lambda text: f"color: {_status_colour(text)}", subset=["status"]))


def _status_colour(text: str) -> str:
    """The colour of a status cell ("✗ failed · out of memory" is a failed one)."""
    words = text.split(" ")
    return common.STATUS_COLORS.get(words[1] if len(words) > 1 else "", "")


def selection_default(runs: Sequence[Run]) -> dict:
    """Rows of the runs this page was opened with (?runs=...), e.g. the ones just launched."""
    wanted = set(common.requested_run_ids())
    return {"selection": {"rows": [i for i, run in enumerate(runs) if run.id in wanted], "columns": []}}


def actions(sessions, selected: list[Run]) -> None:
    """Compare, stop or delete the selected runs."""
    if not selected:
        st.caption("Tick runs in the first column to compare, stop or delete them.")
        return
    ids = sorted(run.id for run in selected)
    active = [run for run in selected if common.is_active(run)]
    done = [run for run in selected if not common.is_active(run)]
    row = st.container(horizontal=True)
    if row.button(f"Compare {len(ids)} selected", icon=":material/compare_arrows:", type="primary"):
        st.switch_page(common.COMPARE_PAGE, query_params={common.RUNS_PARAM: common.format_run_ids(ids)})
    if active and row.button(f"Stop {len(active)} active", icon=":material/stop_circle:"):
        for run in active:
            stopped = stop_run(sessions, run.id)
            st.toast(f"Asked run #{run.id} to stop." if stopped else f"Run #{run.id} had already ended.")
    if done and row.button(f"Delete {len(done)}…", icon=":material/delete:",
                           help="Only runs that have ended can be deleted; stop active ones first."):
        st.session_state[CONFIRM_DELETE_KEY] = [run.id for run in done]


def confirm_delete(sessions) -> None:
    pending = st.session_state.get(CONFIRM_DELETE_KEY)
    if not pending:
        return
    names = ", ".join(f"#{i}" for i in pending)
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
            st.session_state[GENERATION_KEY] = st.session_state.get(GENERATION_KEY, 0) + 1
            st.query_params.pop(common.RUNS_PARAM, None)
            st.toast(f"Deleted {names}.")
            st.rerun()
        if c2.button("Cancel", key="confirm_delete_no"):
            st.session_state.pop(CONFIRM_DELETE_KEY)
            st.rerun()


def failures(runs: Sequence[Run]) -> None:
    """The latest failed and diverged runs: the error's last line in view, the whole traceback one click away."""
    failed = [run for run in runs if run.status in ENDED_EARLY]
    if not failed:
        return
    st.subheader("Failures")
    for run in failed[:FAILURES_SHOWN]:
        colour = "violet" if run.status == DIVERGED else "red"
        words = common.status_words(run)
        ended = "" if words == run.status else f"{words}: "  # "failed · out of memory: ", "diverged at step 12: "
        with st.expander(f":{colour}[**#{run.id} {framework_label(run.framework)} {run.model}/{run.dataset}**] — "
                         f"{common.escape_markdown(ended + common.error_summary(run.error))}",
                         icon=":material/error:"):
            st.code(run.error or "no error text was recorded", language=None)
            if run.log_path:
                st.caption(f"Runner log: `{run.log_path}`")
    if len(failed) > FAILURES_SHOWN:
        st.caption(f"{len(failed) - FAILURES_SHOWN} older failed or diverged runs: their last error line is in the "
                   "table.")


def panel(live: bool) -> None:
    sessions = common.sessions()
    reap(sessions)
    with sessions.begin() as s:
        runs = queries.list_runs(s)
        metrics = common.epoch_metrics(s, [run.id for run in runs])
    if not runs:
        common.no_runs_yet("Runs you launch appear here with live progress.")
        return
    if live and not any(common.is_active(run) for run in runs):
        st.rerun()  # everything has settled: redraw once, without the refresh timer
    key = f"{TABLE_KEY}.{st.session_state.get(GENERATION_KEY, 0)}"
    event = st.dataframe(
        styled(runs_table(runs, metrics, common.utc_now())), column_config=COLUMNS, hide_index=True, placeholder="",
        key=key, on_select="rerun", selection_mode="multi-row", selection_default=selection_default(runs),
        height=ROW_HEIGHT_PX * (min(len(runs), ROWS_SHOWN) + 1) + 3,
    )
    selected = [runs[i] for i in event.selection.rows if i < len(runs)]
    actions(sessions, selected)
    confirm_delete(sessions)
    failures(runs)


common.ensure_router()
st.title("Runs")
live = common.any_active(common.sessions())
if live:
    st.caption(f"Updating every {common.REFRESH_INTERVAL} while runs are active.")
st.fragment(panel, run_every=common.REFRESH_INTERVAL if live else None)(live)
