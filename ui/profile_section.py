"""The Speed tab's "Where the time goes": phase bars, the top operators of each run side by side, and trace downloads.

ui/speed_section.py calls section(runs). The tables and figures are analysis/step_profile.py's.
"""
from __future__ import annotations

from functools import partial
from typing import Sequence

import streamlit as st
from sqlalchemy.orm import Session, sessionmaker

from analysis import compile_table, step_profile
from analysis.formatting import escape_markdown, format_number
from db import queries
from db.models import Run
from engine.calibration import TRACE_KIND
from engine.traces import trace_filename, viewer_hint
from ui.database import sessions as dashboard_sessions

TABLES_PER_ROW = 2


def section(runs: Sequence[Run]) -> None:
    """Phases of a step per run, then each run's top operators with its trace; a line where a run has neither."""
    st.subheader("Where the time goes")
    _phases(runs)
    _operators(runs)
    _compilation(runs)


def _compilation(runs: Sequence[Run]) -> None:
    """What each framework traced or compiled, and what a new input shape cost it."""
    frame = compile_table.compile_frame(runs, step_profile.short_labels(runs))
    st.markdown("**Compilation and input shapes**")
    if frame.empty:
        st.caption("No compile counts for these runs: runs trained before Arena counted them have none.")
        return
    st.dataframe(frame, hide_index=True, key="compile_table",
                 column_config={"compile s": st.column_config.NumberColumn(format="%.2f"),
                                "new-shape steps cost ms": st.column_config.NumberColumn(format="%.1f")})
    sentence = compile_table.compile_sentence(frame)
    st.caption((sentence + " " if sentence else "") +
               "Counted by each framework itself: TorchDynamo's frames and graph breaks, tf.function's traces (the "
               "step's signature leaves batch and sequence length free, so a new shape never retraces; XLA compiles "
               "one executable per shape). Every step has one shape unless the run kept the last, smaller batch or "
               "varied the sequence length; the first step of each new shape is timed alone.")


def _phases(runs: Sequence[Run]) -> None:
    table = step_profile.phase_table(runs)
    without = [run for run in runs if step_profile.phases(run) is None]
    if table.empty:
        st.caption("No phase breakdown for these runs: runs trained before Arena measured one, with 0 calibration "
                   "steps, or still training, have none.")
        return
    st.markdown(f"**{step_profile.phase_sentence(table)}**")
    st.plotly_chart(step_profile.phase_bars(table), key="chart_phases")
    notes = [(f"After training, outside the timed epochs, {int(table['steps'].max())} steps were split into phases "
              "with the device synchronised after each (medians), alternating with unsplit steps doing the same work "
              "(◆); the trained weights and optimizer state were put back afterwards.")]
    if table["backward_repeats_forward"].any():
        notes.append("TensorFlow graph and XLA runs split the step into three tf.functions (forward + loss, "
                     "gradients, update): the backward is the gradients graph minus a forward, and no fusion "
                     "crosses the phases, so their phases can add up to more than the unsplit step.")
    waits = step_profile.data_wait_note(table, runs)
    if waits:
        notes.append(waits)
    if without:
        notes.append(", ".join(f"#{run.id}" for run in without) + " has no phase breakdown (trained before Arena "
                     "measured one, or with 0 calibration steps).")
    st.caption(" ".join(notes))


def _operators(runs: Sequence[Run]) -> None:
    sessions = dashboard_sessions()
    with sessions.begin() as s:
        traces = {row["run_id"]: row for row in queries.list_artifacts(s, [run.id for run in runs], TRACE_KIND)}
    profiled = [run for run in runs if step_profile.operator_profile(run) is not None]
    if not profiled:
        st.caption("No operator profile for these runs: runs trained before Arena profiled, or with 0 profile "
                   "steps, have none.")
        return
    labels = step_profile.short_labels(runs)
    for start in range(0, len(profiled), TABLES_PER_ROW):
        row = profiled[start:start + TABLES_PER_ROW]
        for run, column in zip(row, st.columns(TABLES_PER_ROW)):
            with column:
                _operator_table(run, labels[run.id], traces.get(run.id), sessions)
    without = [run for run in runs if step_profile.operator_profile(run) is None]
    if without:
        st.caption(", ".join(f"#{run.id}" for run in without) + " has no operator profile (trained before Arena "
                   "profiled, or with 0 profile steps).")


def _operator_table(run: Run, label: str, trace: dict | None, sessions: sessionmaker[Session]) -> None:
    st.markdown(f"**#{run.id} {label}**: top operators by self time")
    profile = step_profile.operator_profile(run) or {}
    if profile.get("error"):
        st.caption(f"The profiler failed: {escape_markdown(str(profile['error']))}")
    else:
        st.dataframe(step_profile.operator_frame(run), hide_index=True, key=f"operators_{run.id}",
                     column_config={"self ms per step": st.column_config.NumberColumn(format="%.4f"),
                                    "calls per step": st.column_config.NumberColumn(format="%.1f"),
                                    "% of operator time": st.column_config.NumberColumn(format="%.1f %%")})
        st.caption(step_profile.operator_caption(run))
    if trace is None:
        return
    name = trace_filename(run.id, run.framework, trace["name"])
    # A callable: the trace is read from the database only when the button is clicked.
    st.download_button(f"Trace ({format_number(trace['stored_bytes'] / 1e3, 3)} kB)",
                       data=partial(_artifact_bytes, sessions, trace["id"]), file_name=name,
                       mime=trace["media_type"], icon=":material/download:", on_click="ignore",
                       key=f"trace_{run.id}_{trace['id']}")
    st.caption(f"`{name}`: {viewer_hint(run.framework)}.")


def _artifact_bytes(sessions: sessionmaker[Session], artifact_id: int) -> bytes:
    with sessions.begin() as s:
        artifact = queries.get_artifact(s, artifact_id)
        return artifact.data if artifact is not None else b""
