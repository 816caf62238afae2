"""The Compare page's Data tab: the loader alone, training and the ceiling, the data-wait share, what Keras
model.fit costs over a bare tf.function loop, augmentation samples side by side, and each run's pipeline."""
from __future__ import annotations

from typing import Any, Sequence

import streamlit as st

from analysis import input_pipelines as ip
from db import queries
from db.models import AUGMENT_SAMPLES_KIND, Run
from ui.database import sessions
from ui.router import LAUNCH_PAGE

SAMPLES_PER_ROW = 2  # runs whose augmentation samples sit side by side


def tab(runs: Sequence[Run], available: Sequence[str]) -> None:
    """The Data tab: reads the augmentation samples of the runs with input figures, then draws the section."""
    shown = ip.with_figures(runs)
    if not shown:
        empty_state()
        return
    section(shown, load_samples(shown), [run for run in runs if run not in shown])


def load_samples(runs: Sequence[Run]) -> dict[int, dict[str, Any]]:
    """Run id -> its augmentation samples (the newest artifact of the kind), for the runs that stored some."""
    with sessions().begin() as s:
        rows = {row["run_id"]: row for row in queries.list_artifacts(s, [run.id for run in runs],
                                                                      AUGMENT_SAMPLES_KIND)}
        documents = {}
        for run_id, row in rows.items():
            artifact = queries.get_artifact(s, row["id"])
            if artifact is not None:
                documents[run_id] = ip.load_samples(artifact.data)
    return documents


def empty_state() -> None:
    st.info("None of these runs recorded input figures (runs trained before Arena measured its input pipeline, or "
            "not finished yet). Launch a pair with **Pipeline** `native`, **Augmentation** `crop, flip` and the "
            "TensorFlow modes `tf.function (graph)` and `Keras model.fit` together: the tab then shows each "
            "framework's loader against its training and ceiling, the time steps wait for data, augmented samples "
            "of both frameworks, and what model.fit costs over a bare tf.function loop.", icon=":material/info:")
    st.code("python -m engine run --framework both --mode torch:eager graph fit --model mlp --dataset digits "
            "--pipeline native --augment crop,flip", language="bash")
    st.page_link(LAUNCH_PAGE, label="Launch runs with the native pipeline", icon=":material/rocket_launch:")


def section(runs: Sequence[Run], samples: dict[int, dict[str, Any]], without: Sequence[Run] = ()) -> None:
    """Every part of the tab for the runs with input figures (samples: their augmentation samples by run id)."""
    st.caption("**arrays**: one numpy pipeline feeds both frameworks the same device arrays (augmented by numpy with "
               "the same draws): the steps are compared. **native**: a PyTorch DataLoader against a tf.data "
               "pipeline, the same samples in the same order and as many loader workers on both sides: training is "
               "compared the way each framework's tutorials write it.")
    left, right = st.columns(2)
    left.plotly_chart(ip.throughput_figure(runs), key="chart_data_throughput")
    if any(ip.wait_share(run) is not None for run in runs):
        right.plotly_chart(ip.wait_figure(runs), key="chart_data_wait")
    else:
        right.info("No data wait timed apart for these runs: Keras model.fit takes its batches inside its step.",
                   icon=":material/info:")
    st.caption(f"Loader alone: the pipeline iterated without training after the run, {ip.batches_words(runs)}, "
               "each batch on the device; its start-up (a fresh iterator to its first batch: loader processes, "
               "tracing, the arrays' one copy) is timed apart and left out of the rate. Training: steady samples/s, "
               "warm-up excluded. Ceiling: the "
               "same step repeated on one batch already on the device, no loader and no copy. Data wait: the time "
               "a step was blocked waiting for its next batch, as a share of the steady training time."
               + (" " + ", ".join(f"#{run.id}" for run in without) + " recorded no input figures (trained before "
                  "Arena measured them, or not finished yet)." if without else ""))
    for sentence in ip.verdicts(runs):
        st.markdown(sentence)
    fit_cost(runs)
    augmentation_samples(runs, samples)
    st.dataframe(ip.settings_table(runs), hide_index=True, key="data_table")


def fit_cost(runs: Sequence[Run]) -> None:
    costs, alone = ip.fit_costs(runs)
    if not costs and not alone:
        return
    st.markdown("**What model.fit costs over a bare tf.function loop**")
    for cost in costs:
        throughput, step, words = st.columns([1, 1, 3])
        throughput.metric(f"#{cost.fit.id} ÷ #{cost.graph.id}: throughput", ip.ratio_text(cost.throughput_ratio),
                          help="Keras model.fit's steady samples/s over the tf.function (graph) run's, same spec: "
                               "below 1×, fit trains slower.")
        step.metric(f"#{cost.fit.id} ÷ #{cost.graph.id}: step time p50", ip.ratio_text(cost.step_ratio),
                    help="model.fit's median step time over the tf.function run's: above 1×, fit's step is longer.")
        fit_settings = cost.fit.summary.get("fit") if isinstance(cost.fit.summary, dict) else None
        words.caption(ip.fit_cost_words(cost) + (f" fit ran with: {fit_settings}." if fit_settings else ""))
    if alone:
        st.caption(", ".join(f"#{run.id}" for run in alone) + " has no tf.function (graph) run of the same spec among "
                   "the chosen runs: choose both TensorFlow modes, tf.function (graph) and Keras model.fit, on "
                   "Launch (Pipeline native) to queue the pair in one group.")


def augmentation_samples(runs: Sequence[Run], samples: dict[int, dict[str, Any]]) -> None:
    augmented = [run for run in runs if ip.input_of(run).get("augment")]
    if not augmented:
        st.caption("No augmentation in these runs: choose crop, flip or noise under **Input** on Launch (image "
                   "datasets) to see augmented samples of both frameworks here.")
        return
    st.markdown("**Augmentation samples**")
    shown = [run for run in augmented if run.id in samples]
    for start in range(0, len(shown), SAMPLES_PER_ROW):
        for run, column in zip(shown[start:start + SAMPLES_PER_ROW], st.columns(SAMPLES_PER_ROW)):
            document = samples[run.id]
            column.image(ip.sample_grid(document), caption=ip.samples_caption(run, document))
    note = ip.samples_note({run.id: samples[run.id] for run in shown}, runs)
    missing = [f"#{run.id}" for run in augmented if run.id not in samples]
    if missing:
        note += " " + ", ".join(missing) + " stored no samples."
    st.caption(note.strip())
