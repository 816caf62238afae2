"""The Compare page's Speed tab: throughput with its uncertainty, epoch and step times, start-up, inference,
and where a step's time goes."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import streamlit as st

from analysis import run_settings as rs
from analysis import speed_figures, speed_ratio
from analysis.step_times import STEP_TIME_METRIC, steady_step_times
from db import queries
from db.models import Run
from ui import profile_section, url_state
from ui.database import sessions

MANY_RUNS = 4  # beyond this many runs, bar and box charts take the full width
SPEED_EPOCH_METRICS = ("samples_per_s", "epoch_time_s")  # the per-epoch metrics this tab draws


def tab(runs: Sequence[Run], available: Sequence[str]) -> None:
    """The Speed tab: throughput and its ratio, step times, inference, then where the time goes."""
    run_ids = [run.id for run in runs]
    with sessions().begin() as s:
        epochs = queries.metric_frame(s, run_ids, SPEED_EPOCH_METRICS)
        step_times = queries.metric_frame(s, run_ids, [STEP_TIME_METRIC])
    speed(runs, epochs, step_times)
    inference(runs)
    profile_section.section(runs)  # phases of a step, top operators, traces


def speed(runs: Sequence[Run], epochs: pd.DataFrame, step_times: pd.DataFrame) -> None:
    """Throughput with its uncertainty, epoch time, start-up cost, and per-step distributions after warm-up."""
    throughput_ratio(runs, step_times)
    left, middle, right = st.columns(3) if len(runs) <= MANY_RUNS else (st.container(),) * 3
    left.plotly_chart(speed_figures.throughput_bars(epochs, runs), key="chart_throughput")
    middle.plotly_chart(speed_figures.per_epoch(epochs, runs, "epoch_time_s", "Epoch time (epoch 1 holds the warm-up)",
                                         "seconds", overlap=False), key="chart_epoch_time")
    right.plotly_chart(speed_figures.warmup_bars(runs), key="chart_warmup")
    timed = [run for run in runs if (step_times["run_id"] == run.id).any()]
    if not timed:
        st.caption("No per-step times recorded for these runs yet (runs trained before Arena timed every step "
                   "have none).")
        return
    warmups = sorted({int(rs.warmup_steps(run) or 0) for run in timed})
    excluded = (f"the first {warmups[0]} warm-up steps" if len(warmups) == 1
                else "each run's warm-up steps (" + ", ".join(
                    f"#{run.id}: {int(rs.warmup_steps(run) or 0)}" for run in timed) + ")")
    st.caption("Step times are of steps timed with the device synchronised at both ends: every step on a CPU, "
               "the sampled windows' steps of a run timed in windows (a GPU's default). "
               f"The distributions leave out {excluded}: "
               "compilation, tf.function tracing and allocator warm-up, shaded in the per-step chart and counted "
               "in *start-up* above. Step-time percentiles are in the summary below.")
    too_short = [run for run in timed if steady_step_times(step_times, run).empty]
    if too_short:
        st.caption(", ".join(f"#{run.id}" for run in too_short) + " took no steps after warm-up: nothing to show in "
                   "the distribution. Train more steps, or lower the warm-up steps on Launch.")
    left, right = st.columns(2) if len(runs) <= MANY_RUNS else (st.container(),) * 2
    left.plotly_chart(speed_figures.rate_distribution(step_times, runs), key="chart_rate_violin")
    right.plotly_chart(speed_figures.step_time_box(step_times, runs), key="chart_step_time_box")
    st.plotly_chart(speed_figures.step_time_per_step(step_times, runs), key="chart_step_time")


def throughput_ratio(runs: Sequence[Run], step_times: pd.DataFrame) -> None:
    """"PyTorch eager is 1.21× TensorFlow graph (95% CI 1.05–1.39×, Welch t over 4 and 4 runs)" for two groups.

    With fewer than series.MIN_RUNS_PER_SIDE runs a side it claims no interval and says how many seeds would tell.
    """
    groups = speed_ratio.comparison_groups(runs)
    if len(groups) < 2:
        return
    labels = [group.label for group in groups]
    first, second = groups[0], groups[1]
    if len(groups) > 2:
        url_state.seed("compare_ratio_a", "ra", labels[0], choices=labels)
        url_state.seed("compare_ratio_b", "rb", labels[1], choices=labels)
        row = st.container(horizontal=True, vertical_alignment="bottom")
        a = row.selectbox("Throughput of", labels, key="compare_ratio_a", width=300)
        b = row.selectbox("against", labels, key="compare_ratio_b", width=300)
        url_state.sync("ra", a, labels[0])
        url_state.sync("rb", b, labels[1])
        first, second = groups[labels.index(a)], groups[labels.index(b)]
        if first is second:
            st.caption("Pick two different groups to compare their throughput.")
            return
    ratio = speed_ratio.ratio_between(first, second, step_times)
    if ratio is None:
        st.caption("Throughput ratio: no steady throughput measured yet.")
        return
    st.markdown(f"**{ratio.sentence}.**")
    st.caption(f"Steady samples/s (warm-up excluded), one number per run. {ratio.method} "
               "Groups: " + "; ".join(f"{group.label} = " + ", ".join(f"#{run.id}" for run in group.runs)
                                      for group in groups) + ".")


def inference(runs: Sequence[Run]) -> None:
    """Forward-pass latency after training, at batch 1 and at the training batch size."""
    if not speed_figures.has_inference(runs):
        return
    st.subheader("Inference")
    st.caption("After training, each run times forward passes (no gradients) with the device synchronised, "
               "at batch 1 and at its training batch size. Bar: median (p50); whisker: p95. Throughput and "
               "compile time are in the summary below.")
    left, right = st.columns(2) if len(runs) <= MANY_RUNS else (st.container(),) * 2
    left.plotly_chart(speed_figures.inference_latency(runs, "bs1"), key="chart_inference_bs1")
    right.plotly_chart(speed_figures.inference_latency(runs, "bsN"), key="chart_inference_bsN")
