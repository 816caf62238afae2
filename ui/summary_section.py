"""The Compare page's Summary tab: every run's numbers against a baseline picked here and kept in the URL."""
from __future__ import annotations

from typing import Sequence

import pandas as pd
import streamlit as st

from analysis.run_ids import not_run_ids_message, split_run_ids
from analysis.run_styles import trace_name
from analysis.summary import memory_peaks, metric_stats, settings_frame, styled_table, summary_frame
from db import queries
from db.models import Run
from ui.database import sessions

BASELINE_PARAM = "baseline"  # query parameter: the run the others are measured against, e.g. ?baseline=3


def tab(runs: Sequence[Run], available: Sequence[str]) -> None:
    """The Summary tab: loads every metric and sample of the runs, then the table."""
    run_ids = [run.id for run in runs]
    with sessions().begin() as s:
        samples = queries.sample_frame(s, run_ids)
        every_metric = queries.metric_frame(s, run_ids)
    summary_section(runs, every_metric, samples)


def summary_section(runs: Sequence[Run], metrics_frame: pd.DataFrame, samples_frame: pd.DataFrame,
                    key: str = "summary") -> None:
    """The Compare page's summary: every run against a baseline picked here and kept in the URL (?baseline=3).

    metrics_frame: db.queries.metric_frame of the runs (per-epoch metrics, step/train_loss and
    analysis.memory.PEAK_METRICS at least); samples_frame: db.queries.sample_frame of the runs.
    """
    st.subheader("Summary")
    if not runs:
        return
    names = {run.id: trace_name(run) for run in runs}
    ids = list(names)
    baseline = ids[0]
    if len(ids) > 1:
        asked, bad = split_run_ids(st.query_params.get(BASELINE_PARAM))
        if bad:
            st.warning(not_run_ids_message(BASELINE_PARAM, bad), icon=":material/warning:")
        baseline = st.selectbox("Baseline", ids, index=ids.index(asked[0]) if asked and asked[0] in ids else 0,
                                format_func=names.get, key=f"{key}_baseline",
                                help="The run every other run is measured against.")
        st.query_params[BASELINE_PARAM] = str(baseline)
    frame = summary_frame(runs, metric_stats(metrics_frame), memory_peaks(runs, samples_frame, metrics_frame),
                          {run.id: run.summary or {} for run in runs})
    st.dataframe(styled_table(frame, baseline, names, settings_frame(runs)), height="content")
    if len(ids) > 1:
        st.caption(f"% = difference to the baseline run {names[baseline]}, relative to its value: "
                   "(run − baseline) / |baseline|. Green: better than the baseline, red: worse — higher is better "
                   "for accuracy and throughput, lower for loss, time and memory; counts and estimates are not "
                   "coloured. Shaded settings differ between the runs. A *sampled* peak is the largest memory "
                   "sample, which a spike between samples escapes.")
