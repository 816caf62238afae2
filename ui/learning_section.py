"""The Compare page's Learning tab: the chosen metrics against the chosen x axis, smoothing and seed groups,
every setting kept in the URL."""
from __future__ import annotations

from typing import Sequence

import streamlit as st

from analysis import learning_figures, series
from analysis.formatting import escape_markdown, unix_time
from db import queries
from db.models import Run
from ui import url_state
from ui.database import sessions

LEARNING_PARAMS = ("m", "x", "smooth", "log", "tt", "grp")  # this section's settings in the URL
GROUP_CHOICES = {"none": "Each run", "std": "Seed groups: mean ± std", "ci95": "Seed groups: mean, 95 % CI"}


def tab(runs: Sequence[Run], available: list[str]) -> None:
    """The chosen metrics against the chosen x axis, each in its own chart, with smoothing and seed groups."""
    groups = series.seed_groups({run.id: run.spec or {} for run in runs})
    url_state.seed_list("compare_metrics", "m", learning_figures.default_metrics(available), choices=available)
    url_state.seed("compare_x", "x", "step", choices=list(learning_figures.X_LABELS))
    url_state.seed("compare_smoothing", "smooth", 0.6, parse=url_state.parse_float)
    url_state.seed("compare_log_y", "log", False, parse=url_state.parse_bool)
    url_state.seed("compare_together", "tt", True, parse=url_state.parse_bool)
    url_state.seed("compare_groups", "grp", "none", choices=list(GROUP_CHOICES))
    st.session_state["compare_smoothing"] = min(max(float(st.session_state["compare_smoothing"]), 0.0), 0.99)

    # The controls' values are read from session state (seeded from the URL above), and the widgets are
    # drawn into this container after the charts: the first chart reaches the browser first, and the
    # browser starts loading plotly.js while the widgets follow, in their place above the charts.
    controls_area = st.container()
    state = st.session_state
    chosen = [name for name in state["compare_metrics"] if name in available]
    x_axis = state["compare_x"] or "step"
    smoothing, log_y, together = state["compare_smoothing"], state["compare_log_y"], state["compare_together"]
    group_mode = state["compare_groups"]
    if chosen:
        _charts(runs, available, chosen, x_axis, smoothing, log_y, together, groups, group_mode)
    with controls_area:
        _controls(available, groups)
        mine = [item for item in url_state.ignored() if item.split("=", 1)[0] in LEARNING_PARAMS]
        if mine:
            st.caption("Ignored in the link: " + ", ".join(escape_markdown(item) for item in mine) + ".")
        if not chosen:
            st.info("Pick one or more metrics above to plot them.", icon=":material/info:")
    for param, value, default in (("m", chosen, learning_figures.default_metrics(available)), ("x", x_axis, "step"),
                                  ("smooth", round(smoothing, 2), 0.6), ("grp", group_mode, "none")):
        url_state.sync(param, value, default)
    url_state.sync("log", log_y, False, url_state.format_bool)
    url_state.sync("tt", together, True, url_state.format_bool)


def _controls(available: list[str], groups) -> None:
    """The Learning tab's widgets; their values live in session state under the keys the charts read.

    The metrics are in view; the chart options sit behind one button whose label says their values,
    as a tracker's per-chart settings do: fewer widgets for the browser to draw before the charts.
    """
    state = st.session_state
    row = st.container(horizontal=True, vertical_alignment="bottom", gap="small")
    row.multiselect("Metrics", available, key="compare_metrics", format_func=learning_figures.metric_label,
                    placeholder="Pick metrics to plot", width="stretch")
    label = " · ".join([f"Against {learning_figures.X_LABELS[state['compare_x'] or 'step'].lower()}",
                        f"smoothing {float(state['compare_smoothing']):.2f}",
                        *(["log scale"] if state["compare_log_y"] else []),
                        *([GROUP_CHOICES[state["compare_groups"]].split(":")[0].lower()]
                          if state["compare_groups"] != "none" else [])])
    options = row.popover(label, icon=":material/tune:", width="content")
    options.segmented_control("Against", list(learning_figures.X_LABELS), key="compare_x",
                              format_func=learning_figures.X_LABELS.get)
    options.slider("Smoothing", 0.0, 0.99, key="compare_smoothing", step=0.01,
                   help="TensorBoard's debiased exponential moving average of per-step values, "
                        "computed on every point; 0 shows raw values. The raw curve stays faint behind.")
    options.toggle("Log scale", key="compare_log_y")
    options.toggle("Train and test together", key="compare_together",
                   help="Draw the test metric beside its train metric (and the other way round) in the "
                        "same chart, fainter, with open markers.")
    options.selectbox("Runs", list(GROUP_CHOICES), key="compare_groups", format_func=GROUP_CHOICES.get,
                      disabled=not groups,
                      help="Runs that differ only in their seed, drawn as one mean line with a band. "
                           + ("" if groups else "No runs here differ only by seed."))


def _charts(runs: Sequence[Run], available: list[str], chosen: list[str], x_axis: str, smoothing: float,
            log_y: bool, together: bool, groups, group_mode: str) -> None:
    """One chart per chosen metric (its companion beside it), two per row, and a note on how they are drawn."""
    companions = {name: learning_figures.companion(name, available) if together else None for name in chosen}
    # A companion already chosen on its own gets its own chart: do not draw it twice.
    companions = {name: other if other not in chosen or chosen.index(other) > chosen.index(name) else None
                  for name, other in companions.items()}
    drawn = [name for name in chosen if not any(companions.get(other) == name for other in chosen)]
    needed = sorted({*drawn, *(c for c in companions.values() if c)})
    with sessions().begin() as s:
        frame = queries.metric_frame(s, [run.id for run in runs], needed)
    starts = {run.id: unix_time(run.started_at) for run in runs}
    prepared = series.prepare(frame, x_axis, smoothing=smoothing, max_points=learning_figures.MAX_POINTS,
                              starts=starts)
    active_groups = groups if group_mode != "none" else []
    grouped_ids = {run_id for group in active_groups for run_id in group}
    group_points = (series.prepare(frame[frame["run_id"].isin(grouped_ids)], x_axis, smoothing=smoothing,
                                   max_points=len(frame) + 1, starts=starts) if grouped_ids else None)
    for index, column in zip(range(0, len(drawn), 2), _rows(len(drawn))):
        for name, place in zip(drawn[index:index + 2], column):
            place.plotly_chart(learning_figures.metric_figure(
                prepared, runs, name, x_axis, log_y=log_y, smoothing=smoothing, with_companion=companions.get(name),
                groups=active_groups, band=group_mode if group_mode != "none" else "std", group_points=group_points),
                key=f"chart_metric_{name}")
    longest = int(frame.groupby(["run_id", "name"]).size().max()) if not frame.empty else 0
    notes = ["Colour: the run (a shade of its framework's colour); line: solid PyTorch, dashed TensorFlow."]
    if longest > learning_figures.MAX_POINTS:
        notes.append(f"Long series are drawn with at most {learning_figures.MAX_POINTS:,} points: each stretch keeps "
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
