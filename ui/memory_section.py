"""The Compare page's Memory tab: memory per run and source over time or step, peaks, utilisation gauges."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import streamlit as st

from analysis.formatting import GIB
from analysis.memory import (
    PEAK_METRICS, UNITS, X_AXES, SampleSet, StepClock, drawn_series, gauge_figure, memory_figure, peaks_table,
    source_notes, step_clocks,
)
from db import queries
from db.models import Run
from ui import url_state
from ui.database import sessions


def tab(runs: Sequence[Run], available: Sequence[str]) -> None:
    """The Memory tab: loads the runs' samples, per-step clock and epoch peaks, then the section."""
    run_ids = [run.id for run in runs]
    with sessions().begin() as s:
        steps = queries.metric_frame(s, run_ids, ["step/train_loss"])
        samples = queries.sample_frame(s, run_ids)
        epoch_peaks = queries.metric_frame(s, run_ids, PEAK_METRICS)
    section(samples, steps, epoch_peaks, runs)


def section(sample_frame: pd.DataFrame, steps: pd.DataFrame, epoch_peaks: pd.DataFrame, runs: Sequence[Run]) -> None:
    """Memory and utilisation of the selected runs on the Compare page (frames as db.queries returns them)."""
    st.subheader("Memory")
    samples = SampleSet(sample_frame)
    if not any(drawn_series(samples, run) for run in runs):
        st.info("No memory samples for these runs. Runs record memory while they train (host RSS, and on a GPU the "
                "allocator and NVML figures); runs stored before Arena sampled memory have none. Launch a new run "
                "to see its memory here.", icon=":material/info:")
        return
    clocks = step_clocks(steps, runs)
    controls = st.container(horizontal=True, vertical_alignment="center", gap="large")
    largest = max(float(points["value"].max()) for run in runs for _, points in drawn_series(samples, run))
    default_unit = list(UNITS)[1 if largest >= 2 * GIB else 0]
    url_state.seed("memory_x_axis", "mx", "time", choices=list(X_AXES))
    url_state.seed("memory_unit", "unit", default_unit, choices=list(UNITS))
    x_axis = controls.radio("Memory against", list(X_AXES), format_func=X_AXES.get, horizontal=True,
                            key="memory_x_axis")
    unit = controls.radio("Unit", list(UNITS), horizontal=True, key="memory_unit")
    url_state.sync("mx", x_axis, "time")
    url_state.sync("unit", unit, default_unit)
    st.plotly_chart(memory_figure(samples, runs, clocks, x_axis, unit), key="chart_memory")
    without_steps = [run for run in runs if run.id not in clocks and drawn_series(samples, run)]
    st.caption("Colour: the run (its framework's colour); dash: the source. Faint vertical lines: epoch boundaries. "
               "Red ✕: where a run ran out of memory; diamond: the step its loss became NaN or infinite."
               + (" Against steps, samples before the first step and after the last sit at those steps."
                  if x_axis == "step" else "")
               + (" " + ", ".join(f"#{run.id}" for run in without_steps) + " recorded no steps: not drawn against "
                  "steps." if x_axis == "step" and without_steps else ""))
    left, right = st.columns([3, 2])
    left.table(peaks_table(samples, epoch_peaks, runs))
    left.caption("Exact: the allocator's peak counter (host RSS: the kernel's high-water mark), kept per epoch. "
                 "*sampled*: the largest sample, which a spike between samples escapes.")
    right.markdown("\n".join(f"- {line}" for line in source_notes(samples, runs)))
    utilisation(samples, runs, clocks, x_axis)


def utilisation(samples: SampleSet, runs: Sequence[Run], clocks: dict[int, StepClock], x_axis: str) -> None:
    """CPU use of the run's process, and GPU utilisation and power when NVML reported them."""
    gauges = [("host", "cpu_percent", "CPU use of the run's process", "% of one core", "chart_cpu"),
              ("nvml", "gpu_utilization", "GPU utilisation (NVML)", "%", "chart_gpu_util"),
              ("nvml", "gpu_power", "GPU power (NVML)", "W", "chart_gpu_power")]
    present = [g for g in gauges if samples.has(g[0], g[1])]
    if not present:
        return
    st.subheader("Utilisation")
    for column, (source, name, title, y_title, key) in zip(st.columns(len(present)), present):
        column.plotly_chart(gauge_figure(samples, runs, clocks, x_axis, source, name, title, y_title), key=key)
