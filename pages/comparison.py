"""What a comparison holds equal, in words and tables: settings, summary metrics, environments."""
from __future__ import annotations

import json
from typing import Any, Sequence

import pandas as pd
import streamlit as st

from db.models import FINISHED, Run
from engine.catalog import DATASETS, framework_label
from pages import common

# Spec fields in the order a reader checks them; (field, words).
SPEC_FIELDS = (
    ("model", "model"), ("dataset", "dataset"), ("epochs", "epochs"), ("batch_size", "batch size"),
    ("lr", "learning rate"), ("optimizer", "optimizer"), ("seed", "seed"),
    ("max_steps_per_epoch", "steps per epoch"), ("noise", "target noise"), ("device", "device requested"),
)
ENVIRONMENT_FIRST = (
    "framework_version", "device", "device_name", "cuda_version", "cudnn_version", "gpu_driver_version",
    "cpu_model", "cpu_count", "intra_op_threads", "memory_total_bytes", "hostname", "platform",
    "python_version", "numpy_version", "nvml",
)
METHOD = (
    "**Method.** Runs with equal settings train on the same train/test split and see the samples in the same "
    "order every epoch, start from the same initial weights generated from the seed, and use the same "
    "optimizer settings (Adam's epsilon is 1e-8 in both). Throughput counts training steps only, timed with the "
    "device synchronised; the first step (tf.function tracing, allocator warm-up) is excluded from it and shown "
    "apart as *first step*. Test metrics are computed after each epoch on the held-out split."
)


def _spec_text(field: str, value: Any) -> str:
    if field == "max_steps_per_epoch":
        return "all" if value is None else f"at most {value}"
    if field == "lr":
        return f"{value:g}"
    return str(value)


def _fields_that_matter(runs: Sequence[Run]) -> list[tuple[str, str]]:
    regression = any(DATASETS.get(run.dataset) and DATASETS[run.dataset].task == "regression" for run in runs)
    return [(f, words) for f, words in SPEC_FIELDS if f != "noise" or regression]


def split_settings(runs: Sequence[Run]) -> tuple[list[tuple[str, str]], list[tuple[str, dict[int, str]]]]:
    """(identical: [(words, value)], different: [(words, {run_id: value})]) over spec and device/host."""
    identical, different = [], []
    fields = [(words, lambda run, f=f: _spec_text(f, run.spec.get(f))) for f, words in _fields_that_matter(runs)]
    fields += [
        ("device used", lambda run: (run.environment or {}).get("device", "not started")),
        ("machine", lambda run: run.hostname or (run.environment or {}).get("hostname", "—")),
    ]
    for words, read in fields:
        values = {run.id: read(run) for run in runs}
        if len(set(values.values())) == 1:
            identical.append((words, next(iter(values.values()))))
        else:
            different.append((words, values))
    return identical, different


def concurrent_training_s(runs: Sequence[Run]) -> float:
    """Longest time two of the runs trained at once on the same machine (they shared its CPU/GPU)."""
    longest = 0.0
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if a.started_at is None or b.started_at is None or a.hostname != b.hostname:
                continue
            now = common.utc_now()
            overlap = (min(a.finished_at or now, b.finished_at or now) - max(a.started_at, b.started_at))
            longest = max(longest, overlap.total_seconds())
    return longest


def what_was_compared(runs: Sequence[Run]) -> None:
    """Which settings are equal, which differ (a warning when that makes the match unequal), and the method."""
    frameworks = sorted({run.framework for run in runs})
    identical, different = split_settings(runs)
    with st.container(border=True):
        st.subheader("What was compared")
        lead = "Identical in all" if len(runs) > 1 else "Settings"
        st.markdown(" vs ".join(f"**{common.trace_name(run)}**" for run in runs) + f". {lead}: "
                    + ", ".join(f"{words} `{value}`" for words, value in identical) + ".")
        if different:
            st.markdown("\n".join(
                f"- **{words}** differs: " + " · ".join(f"#{run_id} `{value}`" for run_id, value in values.items())
                for words, values in different))
            names = ", ".join(words for words, _ in different)
            if len(frameworks) > 1:
                st.warning(f"**Not an equal comparison.** Besides the framework, these runs differ in {names}, so "
                           "their results differ for more than the framework's sake. For a fair match, launch "
                           "*Both (identical settings)* on the Launch page.", icon=":material/warning:")
        elif len(frameworks) > 1:
            st.success("Equal settings: only the framework differs.", icon=":material/balance:")
        if len(runs) == 1:
            st.info("One run selected: add a run of the other framework above to compare them.",
                    icon=":material/info:")
        elif len(frameworks) == 1:
            st.info(f"All selected runs use {framework_label(frameworks[0])}: this compares settings, "
                    "not frameworks.", icon=":material/info:")
        overlap_s = concurrent_training_s(runs)
        if overlap_s >= 1.0:
            st.warning(f"**Trained at the same time.** Runs overlapped for {common.format_duration(overlap_s)} on the "
                       "same machine and shared its processor, so speed and memory numbers include that contention; "
                       "learning curves are unaffected. For clean speed numbers, run them one after the other.",
                       icon=":material/timer:")
        unfinished = [run for run in runs if run.status != FINISHED]
        if unfinished:
            st.caption("Not finished: " + ", ".join(f"#{run.id} is {run.status} (epoch {run.epoch}/"
                                                   f"{run.total_epochs})" for run in unfinished)
                       + ". Their curves end where they stopped.")
        st.markdown(METHOD)


def summary_table(runs: Sequence[Run], metrics: dict[int, dict[str, list[float]]]) -> pd.DataFrame:
    """Final metrics side by side: one column per run, one row per quantity (rows nobody has are dropped)."""
    def phi_error(values):
        phi, truth = common.last(values, "phi_estimate"), common.last(values, "phi_true")
        return None if phi is None or truth is None else abs(phi - truth)

    rows = {
        "status": lambda run, v: common.status_badge(run.status),
        "test accuracy": lambda run, v: _or_none(common.format_percent, common.last(v, "test_accuracy")),
        "φ estimate": lambda run, v: _or_none(lambda x: f"{x:.4f}", common.last(v, "phi_estimate")),
        "φ true": lambda run, v: _or_none(lambda x: f"{x:.4f}", common.last(v, "phi_true")),
        "|φ − φ true|": lambda run, v: _or_none(lambda x: f"{x:.2e}", phi_error(v)),
        "test loss": lambda run, v: _or_none(common.format_number, common.last(v, "test_loss")),
        "train loss (last epoch)": lambda run, v: _or_none(common.format_number, common.last(v, "train_loss")),
        "throughput (median)": lambda run, v: _or_none(common.format_rate, common.median(v, "samples_per_s")),
        "epoch time (median)": lambda run, v: _or_none(common.format_duration, common.median(v, "epoch_time_s")),
        "first step (excluded)": lambda run, v: _or_none(common.format_duration,
                                                         (run.summary or {}).get("first_step_s")),
        "parameters": lambda run, v: _or_none(lambda n: f"{n:,}", (run.summary or {}).get("param_count")),
        "duration": lambda run, v: common.format_duration(common.elapsed_s(run)) if run.started_at else None,
        "framework version": lambda run, v: (run.environment or {}).get("framework_version"),
        "device": lambda run, v: (run.environment or {}).get("device_name") or (run.environment or {}).get("device"),
    }
    table = pd.DataFrame(
        {common.trace_name(run): [read(run, metrics.get(run.id, {})) for read in rows.values()] for run in runs},
        index=list(rows),
    )
    return table.dropna(how="all").fillna("—")


def _or_none(fmt, value):
    return None if value is None else fmt(value)


def environment_table(runs: Sequence[Run]) -> pd.DataFrame:
    """Every environment key (important ones first) by run; values as short text."""
    envs = {common.trace_name(run): run.environment or {} for run in runs}
    keys = [k for k in ENVIRONMENT_FIRST if any(k in env for env in envs.values())]
    keys += sorted({k for env in envs.values() for k in env} - set(keys) - {"framework"})
    return pd.DataFrame({name: [_env_text(k, env.get(k)) for k in keys] for name, env in envs.items()}, index=keys)


def _env_text(key: str, value: Any) -> str:
    if value is None:
        return "—"
    if key.endswith("_bytes") and isinstance(value, (int, float)):
        return f"{value / 2**30:.1f} GiB"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def highlight_differences(table: pd.DataFrame):
    """Shade rows whose values are not the same in every column."""
    differs = table.nunique(axis=1) > 1
    return table.style.apply(
        lambda row: ["background-color: #FEF3C7" if differs[row.name] else "" for _ in row], axis=1)
