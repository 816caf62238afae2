"""Compare: selected runs side by side — curves, throughput, memory, and what was held equal."""
from __future__ import annotations

from typing import Sequence

import streamlit as st

from db import queries
from db.models import Run
from engine.catalog import framework_label
from engine.launch import reap
from pages import charts, common, comparison, memory_charts, speed_charts, summary
from pages import run_settings as rs

SELECT_KEY = "compare_runs"
MANY_RUNS = 4  # beyond this many runs, bar and box charts take the full width


def default_selection(runs: Sequence[Run]) -> list[int]:
    """Runs asked for by URL, else the ones just launched, else the newest group, else the newest two."""
    known = {run.id for run in runs}
    for wanted in (common.requested_run_ids(), st.session_state.get(common.LAUNCHED_KEY) or []):
        chosen = [i for i in wanted if i in known]
        if chosen:
            return chosen
    newest = runs[0]
    if newest.group_tag:
        return sorted(run.id for run in runs if run.group_tag == newest.group_tag)
    return sorted(run.id for run in runs[:2])


def comparison_view(run_ids: list[int], live: bool) -> None:
    sessions = common.sessions()
    reap(sessions)
    with sessions.begin() as s:
        runs = [run for run in (queries.get_run(s, i) for i in run_ids) if run is not None]
        metrics = common.epoch_metrics(s, run_ids)
        epochs = queries.metric_frame(s, run_ids, common.EPOCH_METRICS)
        steps = queries.metric_frame(s, run_ids, ["step/train_loss"])
        step_times = queries.metric_frame(s, run_ids, [speed_charts.STEP_TIME_METRIC])
        samples = queries.sample_frame(s, run_ids)
        epoch_peaks = queries.metric_frame(s, run_ids, memory_charts.PEAK_METRICS)
    if live and not any(common.is_active(run) for run in runs):
        st.rerun()  # the last active run ended: redraw once, without the refresh timer
    active = [run for run in runs if common.is_active(run)]
    if active:
        st.caption(", ".join(f"#{run.id} is {run.status} ({common.format_percent(common.progress_fraction(run))})"
                             for run in active) + f" — charts update every {common.REFRESH_INTERVAL}.")

    comparison.what_was_compared(runs)
    if epochs.empty and steps.empty:
        st.info("No metrics recorded yet: the charts appear after the first training steps.",
                icon=":material/hourglass:")
        return

    st.subheader("Learning")
    st.caption("With identical settings the frameworks compute nearly the same numbers, so their curves can "
               "coincide: the earlier run is drawn wider underneath.")
    controls = st.container(horizontal=True, vertical_alignment="center", gap="large")
    log_y = controls.toggle("Log loss axis", key="compare_log_y")
    smoothing = controls.slider("Smoothing", 0.0, 0.95, 0.6, 0.05, key="compare_smoothing",
                          help="Exponential moving average of the per-step loss; 0 shows raw values.", width=300)
    left, right = st.columns(2)
    left.plotly_chart(charts.loss_vs_step(steps, runs, log_y, smoothing), key="chart_loss_step")
    if (epochs["name"] == "phi_estimate").any():
        right.plotly_chart(charts.phi_vs_epoch(epochs, runs), key="chart_phi")
    else:
        right.plotly_chart(charts.per_epoch(epochs, runs, "test_accuracy", "Test accuracy per epoch", "accuracy (%)",
                                            percent=True), key="chart_accuracy")
    left, right = st.columns(2)
    left.plotly_chart(charts.per_epoch(epochs, runs, "test_loss", "Test loss per epoch", "test loss"),
                      key="chart_test_loss")
    right.plotly_chart(charts.per_epoch(epochs, runs, "train_loss", "Training loss per epoch (mean over steps)",
                                        "train loss"), key="chart_train_loss")

    speed(runs, metrics, epochs, step_times)
    inference(runs)

    memory_charts.section(samples, steps, epoch_peaks, runs)

    st.subheader("Summary")
    st.table(summary.summary_table(runs, metrics))
    with st.expander("Environment of each run (rows that differ are shaded)", icon=":material/computer:"):
        st.table(summary.highlight_differences(summary.environment_table(runs)))


def speed(runs: Sequence[Run], metrics: dict[int, dict[str, list[float]]], epochs, step_times) -> None:
    """Throughput, epoch time, start-up cost, and the distribution of per-step times after warm-up."""
    st.subheader("Speed")
    throughput_headline(runs, metrics)
    # Side by side for a pair; a matrix of many runs needs the whole width per chart to stay legible.
    left, middle, right = st.columns(3) if len(runs) <= MANY_RUNS else (st.container(),) * 3
    left.plotly_chart(charts.throughput_bars(epochs, runs), key="chart_throughput")
    middle.plotly_chart(charts.per_epoch(epochs, runs, "epoch_time_s", "Epoch time (epoch 1 holds the warm-up)",
                                         "seconds", overlap=False), key="chart_epoch_time")
    right.plotly_chart(speed_charts.warmup_bars(runs), key="chart_warmup")
    timed = [run for run in runs if (step_times["run_id"] == run.id).any()]
    if not timed:
        st.caption("No per-step times recorded for these runs yet (runs trained before Arena timed every step "
                   "have none).")
        return
    warmups = sorted({int(rs.warmup_steps(run) or 0) for run in timed})
    excluded = (f"the first {warmups[0]} warm-up steps" if len(warmups) == 1
                else "each run's warm-up steps (" + ", ".join(
                    f"#{run.id}: {int(rs.warmup_steps(run) or 0)}" for run in timed) + ")")
    st.caption(f"Every optimizer step is timed with the device synchronised. The distribution leaves out {excluded}: "
               "compilation, tf.function tracing and allocator warm-up, shaded in the per-step chart and counted "
               "in *start-up* above. Step-time percentiles are in the summary below.")
    too_short = [run for run in timed if speed_charts.steady_step_times(step_times, run).empty]
    if too_short:
        st.caption(", ".join(f"#{run.id}" for run in too_short) + " took no steps after warm-up: nothing to show in "
                   "the distribution. Train more steps, or lower the warm-up steps on Launch.")
    left, right = st.columns(2) if len(runs) <= MANY_RUNS else (st.container(),) * 2
    left.plotly_chart(speed_charts.step_time_box(step_times, runs), key="chart_step_time_box")
    right.plotly_chart(speed_charts.step_time_per_step(step_times, runs), key="chart_step_time")


def inference(runs: Sequence[Run]) -> None:
    """Forward-pass latency after training, at batch 1 and at the training batch size."""
    if not speed_charts.has_inference(runs):
        return
    st.subheader("Inference")
    st.caption("After training, each run times forward passes (no gradients) with the device synchronised, "
               "at batch 1 and at its training batch size. Bar: median (p50); whisker: p95. Throughput and "
               "compile time are in the summary below.")
    left, right = st.columns(2) if len(runs) <= MANY_RUNS else (st.container(),) * 2
    left.plotly_chart(speed_charts.inference_latency(runs, "bs1"), key="chart_inference_bs1")
    right.plotly_chart(speed_charts.inference_latency(runs, "bsN"), key="chart_inference_bsN")


def throughput_headline(runs: Sequence[Run], metrics: dict[int, dict[str, list[float]]]) -> None:
    """For one run per framework: how many times faster the faster one trains."""
    by_framework = {}
    for run in runs:
        rate = common.median(metrics.get(run.id, {}), "samples_per_s")
        if rate:
            by_framework.setdefault(run.framework, []).append(rate)
    if len(by_framework) != 2 or any(len(rates) != 1 for rates in by_framework.values()):
        return
    (fast, fast_rate), (slow, slow_rate) = sorted(((fw, r[0]) for fw, r in by_framework.items()),
                                                  key=lambda item: -item[1])
    st.markdown(f"**{framework_label(fast)}** trained **{fast_rate / slow_rate:.2f}×** as many samples per second "
                f"as {framework_label(slow)} ({fast_rate:,.0f} vs {slow_rate:,.0f}, medians over epochs).")


common.ensure_router()
st.title("Compare")
sessions = common.sessions()
reap(sessions)
with sessions.begin() as s:
    all_runs = queries.list_runs(s)
if not all_runs:
    common.no_runs_yet("Launch a PyTorch and TensorFlow pair, then compare them here.")
    st.stop()

by_id = {run.id: run for run in all_runs}
missing = [i for i in common.requested_run_ids() if i not in by_id]
if missing:
    st.warning("Not found: " + ", ".join(f"#{i}" for i in missing) + " (deleted, or stored in another database). "
               "Pick runs below.", icon=":material/warning:")
selected = st.multiselect("Runs", list(by_id), default=default_selection(all_runs), key=SELECT_KEY,
                          format_func=lambda i: common.run_label(by_id[i]), placeholder="Pick runs to compare")
# Keep the URL in step with the selection, so a comparison can be bookmarked or shared.
if selected:
    st.query_params[common.RUNS_PARAM] = common.format_run_ids(selected)
else:
    st.query_params.pop(common.RUNS_PARAM, None)
    st.info("Pick one or more runs above to compare them.", icon=":material/info:")
    st.stop()

live = any(common.is_active(by_id[i]) for i in selected)
st.fragment(comparison_view, run_every=common.REFRESH_INTERVAL if live else None)(sorted(selected), live)
