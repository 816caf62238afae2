"""Compare: chosen runs side by side — any metric, seed groups, speed with its uncertainty, memory, tables,
both implementations of the model, layer statistics and exports. Every setting lives in the URL."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import streamlit as st

from db import queries
from db.models import Run
from engine.launch import reap
from pages import (
    architecture,
    charts,
    common,
    comparison,
    export,
    learning_charts,
    memory_charts,
    profile_view,
    series,
    spec_diff,
    speed_charts,
    speed_ratio,
    summary,
    tensor_charts,
    url_state,
)
from pages import run_settings as rs
from pages.compare_picker import pick_runs

MANY_RUNS = 4  # beyond this many runs, bar and box charts take the full width
LEARNING_PARAMS = ("m", "x", "smooth", "log", "tt", "grp")  # this section's settings in the URL
GROUP_CHOICES = {"none": "Each run", "std": "Seed groups: mean ± std", "ci95": "Seed groups: mean, 95 % CI"}


TABS = ("Learning", "Speed", "Memory", "Summary", "Settings", "Model and layers", "Export")


def comparison_view(run_ids: list[int], live: bool) -> None:
    sessions = common.sessions()
    reap(sessions)
    with sessions.begin() as s:
        runs = [run for run in (queries.get_run(s, i) for i in run_ids) if run is not None]
        available = queries.metric_names(s, run_ids)
    if live and not any(common.is_active(run) for run in runs):
        st.rerun()  # the last active run ended: redraw once, without the refresh timer
    active = [run for run in runs if common.is_active(run)]
    if active:
        st.caption(", ".join(f"#{run.id} is {run.status} ({common.format_percent(common.progress_fraction(run))})"
                             for run in active) + f" — charts update every {common.REFRESH_INTERVAL}.")
    comparison.what_was_compared(runs)
    if not available:
        st.info("No metrics recorded yet: the charts appear after the first training steps.",
                icon=":material/hourglass:")
        return
    # Only the open tab is computed and sent: the first chart draws sooner, and a live refresh
    # redraws one tab, not the whole page.
    url_state.seed("compare_tab", "tab", TABS[0], choices=TABS)
    tabs = dict(zip(TABS, st.tabs(TABS, key="compare_tab", on_change="rerun")))
    url_state.sync("tab", st.session_state["compare_tab"], TABS[0])
    open_tab = next((name for name, tab in tabs.items() if tab.open), TABS[0])
    with tabs[open_tab]:
        SECTIONS[open_tab](runs, available)


def _speed_tab(runs: Sequence[Run], available: list[str]) -> None:
    run_ids = [run.id for run in runs]
    with common.sessions().begin() as s:
        metrics = common.epoch_metrics(s, run_ids)
        epochs = queries.metric_frame(s, run_ids, common.EPOCH_METRICS)
        step_times = queries.metric_frame(s, run_ids, [speed_charts.STEP_TIME_METRIC])
    speed(runs, metrics, epochs, step_times)
    inference(runs)
    profile_view.section(runs)  # phases of a step, top operators, traces


def _memory_tab(runs: Sequence[Run], available: list[str]) -> None:
    run_ids = [run.id for run in runs]
    with common.sessions().begin() as s:
        steps = queries.metric_frame(s, run_ids, ["step/train_loss"])
        samples = queries.sample_frame(s, run_ids)
        epoch_peaks = queries.metric_frame(s, run_ids, memory_charts.PEAK_METRICS)
    memory_charts.section(samples, steps, epoch_peaks, runs)


def _summary_tab(runs: Sequence[Run], available: list[str]) -> None:
    run_ids = [run.id for run in runs]
    with common.sessions().begin() as s:
        samples = queries.sample_frame(s, run_ids)
        every_metric = queries.metric_frame(s, run_ids)
    summary.summary_section(runs, every_metric, samples)


def _settings_tab(runs: Sequence[Run], available: list[str]) -> None:
    spec_diff.spec_diff_section(runs)
    with st.expander("Environment of each run (rows that differ are shaded)", icon=":material/computer:"):
        st.table(summary.highlight_differences(summary.environment_table(runs)))


def _export_tab(runs: Sequence[Run], available: list[str]) -> None:
    st.subheader("Export")
    export.export_buttons([run.id for run in runs])


def learning(runs: Sequence[Run], available: list[str]) -> None:
    """The chosen metrics against the chosen x axis, each in its own chart, with smoothing and seed groups."""
    groups = series.seed_groups({run.id: run.spec or {} for run in runs})
    url_state.seed_list("compare_metrics", "m", learning_charts.default_metrics(available), choices=available)
    url_state.seed("compare_x", "x", "step", choices=list(learning_charts.X_LABELS))
    url_state.seed("compare_smoothing", "smooth", 0.6, parse=url_state.parse_float)
    url_state.seed("compare_log_y", "log", False, parse=url_state.parse_bool)
    url_state.seed("compare_together", "tt", True, parse=url_state.parse_bool)
    url_state.seed("compare_groups", "grp", "none", choices=list(GROUP_CHOICES))
    st.session_state["compare_smoothing"] = min(max(float(st.session_state["compare_smoothing"]), 0.0), 0.99)

    chosen = st.multiselect("Metrics", available, key="compare_metrics", format_func=learning_charts.metric_label,
                            placeholder="Pick metrics to plot")
    controls = st.container(horizontal=True, vertical_alignment="center", gap="medium")
    x_axis = controls.segmented_control("Against", list(learning_charts.X_LABELS), key="compare_x",
                                        format_func=learning_charts.X_LABELS.get) or "step"
    smoothing = controls.slider("Smoothing", 0.0, 0.99, key="compare_smoothing", step=0.01, width=220,
                                help="TensorBoard's debiased exponential moving average of per-step values, "
                                     "computed on every point; 0 shows raw values. The raw curve stays faint "
                                     "behind.")
    log_y = controls.toggle("Log scale", key="compare_log_y")
    together = controls.toggle("Train and test together", key="compare_together",
                               help="Draw the test metric beside its train metric (and the other way round) in the "
                                    "same chart, fainter, with open markers.")
    group_mode = controls.selectbox("Runs", list(GROUP_CHOICES), key="compare_groups",
                                    format_func=GROUP_CHOICES.get, width=260,
                                    disabled=not groups,
                                    help="Runs that differ only in their seed, drawn as one mean line with a band. "
                                         + ("" if groups else "No runs here differ only by seed."))
    for param, value, default in (("m", chosen, learning_charts.default_metrics(available)), ("x", x_axis, "step"),
                                  ("smooth", round(smoothing, 2), 0.6), ("grp", group_mode, "none")):
        url_state.sync(param, value, default)
    url_state.sync("log", log_y, False, url_state.format_bool)
    url_state.sync("tt", together, True, url_state.format_bool)
    mine = [item for item in url_state.ignored() if item.split("=", 1)[0] in LEARNING_PARAMS]
    if mine:
        st.caption("Ignored in the link: " + ", ".join(common.escape_markdown(item) for item in mine) + ".")
    if not chosen:
        st.info("Pick one or more metrics above to plot them.", icon=":material/info:")
        return

    companions = {name: learning_charts.companion(name, available) if together else None for name in chosen}
    # A companion already chosen on its own gets its own chart: do not draw it twice.
    companions = {name: other if other not in chosen or chosen.index(other) > chosen.index(name) else None
                  for name, other in companions.items()}
    drawn = [name for name in chosen if not any(companions.get(other) == name for other in chosen)]
    needed = sorted({*drawn, *(c for c in companions.values() if c)})
    with common.sessions().begin() as s:
        frame = queries.metric_frame(s, [run.id for run in runs], needed)
    starts = {run.id: common.unix_time(run.started_at) for run in runs}
    prepared = series.prepare(frame, x_axis, smoothing=smoothing, max_points=learning_charts.MAX_POINTS,
                              starts=starts)
    active_groups = groups if group_mode != "none" else []
    grouped_ids = {run_id for group in active_groups for run_id in group}
    group_points = (series.prepare(frame[frame["run_id"].isin(grouped_ids)], x_axis, smoothing=smoothing,
                                   max_points=len(frame) + 1, starts=starts) if grouped_ids else None)
    for index, column in zip(range(0, len(drawn), 2), _rows(len(drawn))):
        for name, place in zip(drawn[index:index + 2], column):
            place.plotly_chart(learning_charts.metric_figure(
                prepared, runs, name, x_axis, log_y=log_y, smoothing=smoothing, with_companion=companions.get(name),
                groups=active_groups, band=group_mode if group_mode != "none" else "std", group_points=group_points),
                key=f"chart_metric_{name}")
    longest = int(frame.groupby(["run_id", "name"]).size().max()) if not frame.empty else 0
    notes = ["Colour: the run (a shade of its framework's colour); line: solid PyTorch, dashed TensorFlow."]
    if longest > learning_charts.MAX_POINTS:
        notes.append(f"Long series are drawn with at most {learning_charts.MAX_POINTS:,} points: each stretch keeps "
                     f"its lowest and highest value, so no spike is lost (longest series: {longest:,} points; the "
                     "export below has every one).")
    if active_groups:
        notes.append("Seed groups: " + "; ".join(", ".join(f"#{i}" for i in group) for group in active_groups)
                     + ". The band's n is how many runs have a value at that point.")
    st.caption(" ".join(notes))


def _rows(charts_count: int):
    """Two charts side by side per row (one per row when a single chart is chosen)."""
    for _ in range(0, charts_count, 2):
        yield st.columns(2) if charts_count > 1 else (st.container(),)


def speed(runs: Sequence[Run], metrics: dict[int, dict[str, list[float]]], epochs, step_times) -> None:
    """Throughput with its uncertainty, epoch time, start-up cost, and per-step distributions after warm-up."""
    throughput_ratio(runs, step_times)
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
    st.caption(f"Every optimizer step is timed with the device synchronised. The distributions leave out {excluded}: "
               "compilation, tf.function tracing and allocator warm-up, shaded in the per-step chart and counted "
               "in *start-up* above. Step-time percentiles are in the summary below.")
    too_short = [run for run in timed if speed_charts.steady_step_times(step_times, run).empty]
    if too_short:
        st.caption(", ".join(f"#{run.id}" for run in too_short) + " took no steps after warm-up: nothing to show in "
                   "the distribution. Train more steps, or lower the warm-up steps on Launch.")
    left, right = st.columns(2) if len(runs) <= MANY_RUNS else (st.container(),) * 2
    left.plotly_chart(speed_ratio.rate_distribution(step_times, runs), key="chart_rate_violin")
    right.plotly_chart(speed_charts.step_time_box(step_times, runs), key="chart_step_time_box")
    st.plotly_chart(speed_charts.step_time_per_step(step_times, runs), key="chart_step_time")


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
    if not speed_charts.has_inference(runs):
        return
    st.subheader("Inference")
    st.caption("After training, each run times forward passes (no gradients) with the device synchronised, "
               "at batch 1 and at its training batch size. Bar: median (p50); whisker: p95. Throughput and "
               "compile time are in the summary below.")
    left, right = st.columns(2) if len(runs) <= MANY_RUNS else (st.container(),) * 2
    left.plotly_chart(speed_charts.inference_latency(runs, "bs1"), key="chart_inference_bs1")
    right.plotly_chart(speed_charts.inference_latency(runs, "bsN"), key="chart_inference_bsN")


def model_and_layers(runs: Sequence[Run], available: Sequence[str] = ()) -> None:
    """Both implementations of the model, and per-layer weight and gradient statistics."""
    models = sorted({(run.model, run.dataset) for run in runs})
    url_state.seed("compare_show_model", "model", False, parse=url_state.parse_bool)
    show = st.toggle("Show the model in both frameworks (layers and source code)", key="compare_show_model",
                     help="Builds the model once per framework in a separate process the first time (a few "
                          "seconds); cached after that.")
    url_state.sync("model", show, False, url_state.format_bool)
    if show:
        for model, dataset in models:
            architecture.section(model, dataset)
    with common.sessions().begin() as s:
        stats = queries.tensor_stat_frame(s, [run.id for run in runs])
    tensor_charts.section(runs, stats)


SECTIONS = {"Learning": learning, "Speed": _speed_tab, "Memory": _memory_tab, "Summary": _summary_tab,
            "Settings": _settings_tab, "Model and layers": model_and_layers, "Export": _export_tab}

common.ensure_router()
st.title("Compare")
selected = pick_runs()
if selected:
    live = common.any_active(common.sessions(), selected)
    view = st.fragment(common.guarded(comparison_view), run_every=common.REFRESH_INTERVAL if live else None)
    view(sorted(selected), live)
