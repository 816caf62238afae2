"""The Compare page's Scaling tab: throughput against workers with the ideal line, scaling efficiency, per-rank
step times and memory, time to target, and what ran, for runs trained with several data-parallel workers."""
from __future__ import annotations

from typing import Optional, Sequence

import pandas as pd
import streamlit as st

from analysis import scaling
from db import queries
from db.models import Run
from ui.database import sessions
from ui.router import LAUNCH_PAGE


def tab(runs: Sequence[Run], available: Sequence[str]) -> None:
    """The Scaling tab: loads every rank's step times, then the section; says what to do without multi-worker runs."""
    if not scaling.multi_worker(runs):
        empty_state()
        return
    with sessions().begin() as s:
        rank_steps = queries.rank_step_times(s, [run.id for run in runs])
        losses = queries.metric_frame(s, [run.id for run in runs], ["step/train_loss"])
    section(runs, rank_steps, losses)


def empty_state() -> None:
    st.info("None of these runs trained with more than one worker, so there is no scaling to show. Launch a "
            "scaling study: on the Launch page enter **Workers** `1, 2` (or `1, 2, 4`) and queue them in one "
            "click. The runs differ only in their number of workers and land in one group; choose them here.",
            icon=":material/info:")
    st.page_link(LAUNCH_PAGE, label="Launch a scaling study", icon=":material/rocket_launch:")


def section(runs: Sequence[Run], rank_steps: pd.DataFrame, losses: Optional[pd.DataFrame] = None) -> None:
    """Every chart of the tab for the chosen runs (rank_steps: db.queries.rank_step_times of them; losses: their
    step/train_loss points, for the check against one worker)."""
    frame = scaling.run_frame(runs)
    with st.container(border=True):
        st.markdown(f"**What ran:** {scaling.what_ran(runs)}.")
        held = scaling.held_equal(runs)
        if held:
            st.markdown(f"**Held equal:** {held}" + ("; within a framework only the number of workers differs."
                                                     if scaling.workers_differ(runs) else "."))
    left, right = st.columns(2)
    left.plotly_chart(scaling.throughput_figure(runs), key="chart_scaling_throughput")
    if frame["efficiency"].notna().any():
        right.plotly_chart(scaling.efficiency_figure(frame, runs), key="chart_scaling_efficiency")
    else:
        right.info("Scaling efficiency needs a finished 1-worker run of the same framework and settings among the "
                   "chosen runs: add it above (a scaling study launched with Workers `1, 2` has one).",
                   icon=":material/info:")
    waiting = [f"#{run_id}" for run_id in frame.loc[frame["samples_per_s"].isna(), "run_id"]]
    st.caption("Throughput: steady samples/s of the whole run (the global batch over rank 0's step time, warm-up "
               "excluded); a line per framework through the median of its runs at each worker count. Efficiency: "
               "samples/s ÷ (N × the 1-worker run's samples/s), the same seed's run where there is one."
               + (f" No throughput yet for {', '.join(waiting)}: it is measured when a run finishes."
                  if waiting else ""))
    if not rank_steps.empty:
        st.plotly_chart(scaling.rank_step_time_figure(rank_steps, runs), key="chart_scaling_rank_step_time")
        st.caption("Rank 0 is the run's own step time; every other rank recorded its own. A rank whose box sits "
                   "lower waits for the slowest one at every gradient exchange: straggling (in the table) is the "
                   "slowest rank's median over the median of all ranks.")
    memory = scaling.rank_memory_frame(runs)
    charts = [(scaling.time_to_target_figure(runs), "chart_scaling_time_to_target")
              if scaling.has_time_to_target(runs) else None,
              (scaling.rank_memory_figure(memory, runs), "chart_scaling_rank_memory") if not memory.empty else None]
    charts = [chart for chart in charts if chart is not None]
    for column, (figure, key) in zip(st.columns(2) if charts else [], charts):
        column.plotly_chart(figure, key=key)
    agreement = scaling.loss_agreement(losses, frame) if losses is not None and not losses.empty else {}
    st.dataframe(scaling.table(frame, runs, agreement), hide_index=True, key="scaling_table")
    methods = sorted({(run.summary or {}).get("communication", {}).get("method") for run in runs
                      if isinstance((run.summary or {}).get("communication"), dict)} - {None})
    if methods:
        st.caption("Gradient all-reduce: " + "; ".join(methods) + ". Share of a step: that time over rank 0's median "
                   "step after warm-up, the part of each step the exchange takes where it does not overlap the "
                   "backward pass (DDP overlaps it bucket by bucket; TensorFlow's strategy exchanges after it).")
    if agreement:
        st.caption(f"Loss vs 1 worker: the largest relative difference of the first {scaling.AGREEMENT_STEPS} "
                   "per-step losses from the 1-worker run of the same seed. With deterministic kernels and a model "
                   "without dropout or batch norm, N workers take the same steps as one (float32 rounding: about "
                   "1e-7); a larger figure says what differs (batch norm statistics per worker, dropout masks, "
                   "non-deterministic kernels).")
