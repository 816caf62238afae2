"""The Compare page's tables: per-run summary (settings, quality, speed, inference) and environments.

Not a page: app.py registers only launch.py, runs.py and compare.py with st.navigation.
"""
from __future__ import annotations

import json
import math
from typing import Any, Callable, Optional, Sequence

import pandas as pd

from db.models import FINISHED, Run
from pages import common
from pages import run_settings as rs

ENVIRONMENT_FIRST = (
    "framework_version", "device", "device_name", "cuda_version", "cudnn_version", "gpu_driver_version",
    "cpu_model", "cpu_count", "intra_op_threads", "memory_total_bytes", "hostname", "platform",
    "python_version", "numpy_version", "nvml",
)
Metrics = dict[str, list[float]]


def format_ms(milliseconds: Optional[float]) -> Optional[str]:
    """Step and inference latencies: "0.412 ms", "3.21 ms", "42.7 ms", "1,204 ms"; None stays None."""
    if milliseconds is None or not isinstance(milliseconds, (int, float)) or not math.isfinite(milliseconds):
        return None
    if milliseconds < 1:
        return f"{milliseconds:.3f} ms"
    if milliseconds < 10:
        return f"{milliseconds:.2f} ms"
    if milliseconds < 100:
        return f"{milliseconds:.1f} ms"
    return f"{milliseconds:,.0f} ms"


def time_to_target_text(run: Run) -> Optional[str]:
    """"4.2 s to 95.0 % (epoch 3)", "95.0 % not reached" once finished, None when nothing was timed."""
    target = rs.target_accuracy(run)
    summary = run.summary or {}
    if target is None or "time_to_target_s" not in summary:
        return None
    seconds, epochs = summary.get("time_to_target_s"), summary.get("epochs_to_target")
    if seconds is None:
        return f"{common.format_percent(target)} not reached" if run.status == FINISHED else None
    return (f"{common.format_duration(seconds)} to {common.format_percent(target)}"
            + (f" (epoch {epochs})" if epochs is not None else ""))


def _measured(key: str, fmt: Callable[[Any], Optional[str]]) -> Callable[[Run, Metrics], Optional[str]]:
    def read(run: Run, values: Metrics) -> Optional[str]:
        value = rs.summary_value(run, key)
        return None if value is None else fmt(value)
    return read


def _or_none(fmt, value):
    return None if value is None else fmt(value)


def _phi_error(values: Metrics) -> Optional[float]:
    phi, truth = common.last(values, "phi_estimate"), common.last(values, "phi_true")
    return None if phi is None or truth is None else abs(phi - truth)


def _batch_n(run: Run, values: Metrics) -> Optional[str]:
    size = rs.summary_value(run, "inference_batch_size")
    return None if size is None else f"{size:,}"


def _duration(seconds: Any) -> Optional[str]:
    return common.format_duration(float(seconds))


# Row label -> reader(run, per-epoch metrics) -> text or None; rows no run has are dropped.
ROWS: dict[str, Callable[[Run, Metrics], Optional[str]]] = {
    "status": lambda run, v: common.status_text(run),
    # How it ran
    "mode": lambda run, v: rs.mode_text(run),
    "precision (compute dtype)": lambda run, v: rs.precision_text(run),
    "layout": lambda run, v: rs.layout_text(run),
    "TF32": lambda run, v: rs.tf32_text(run),
    "deterministic": lambda run, v: rs.deterministic_text(run),
    "same initial weights": lambda run, v: rs.same_init_text(run),
    "warm-up steps (excluded)": lambda run, v: _or_none(str, rs.warmup_steps(run)),
    # What it learned
    "test accuracy": lambda run, v: _or_none(common.format_percent, common.last(v, "test_accuracy")),
    "φ estimate": lambda run, v: _or_none(lambda x: f"{x:.4f}", common.last(v, "phi_estimate")),
    "φ true": lambda run, v: _or_none(lambda x: f"{x:.4f}", common.last(v, "phi_true")),
    "|φ − φ true|": lambda run, v: _or_none(lambda x: f"{x:.2e}", _phi_error(v)),
    "test loss": lambda run, v: _or_none(common.format_number, common.last(v, "test_loss")),
    "train loss (last epoch)": lambda run, v: _or_none(common.format_number, common.last(v, "train_loss")),
    "time to target": lambda run, v: time_to_target_text(run),
    # How fast it trained
    "throughput (median)": lambda run, v: _or_none(common.format_rate, common.median(v, "samples_per_s")),
    "steady samples/s": _measured("steady_samples_per_s", common.format_rate),
    "epoch time (median)": lambda run, v: _or_none(common.format_duration, common.median(v, "epoch_time_s")),
    "first step (excluded)": _measured("first_step_s", _duration),
    "compile time (first step − median step)": _measured("compile_s", _duration),
    "warm-up time (excluded)": _measured("warmup_s", _duration),
    "step time p50": _measured("step_time_p50_ms", format_ms),
    "step time p95": _measured("step_time_p95_ms", format_ms),
    "step time p99": _measured("step_time_p99_ms", format_ms),
    "step time mean": _measured("step_time_mean_ms", format_ms),
    # Inference after training
    "inference batch size": _batch_n,
    "inference batch 1 p50": _measured("inference_bs1_p50_ms", format_ms),
    "inference batch 1 p95": _measured("inference_bs1_p95_ms", format_ms),
    "inference batch 1 samples/s": _measured("inference_bs1_samples_per_s", common.format_rate),
    "inference batch N p50": _measured("inference_bsN_p50_ms", format_ms),
    "inference batch N p95": _measured("inference_bsN_p95_ms", format_ms),
    "inference batch N samples/s": _measured("inference_bsN_samples_per_s", common.format_rate),
    "inference compile": _measured("inference_compile_s", _duration),
    # What it was
    "parameters": _measured("param_count", lambda n: f"{n:,}"),
    "duration": lambda run, v: common.format_duration(common.elapsed_s(run)) if run.started_at else None,
    "framework version": lambda run, v: (run.environment or {}).get("framework_version"),
    "device": lambda run, v: (run.environment or {}).get("device_name") or (run.environment or {}).get("device"),
}


def summary_table(runs: Sequence[Run], metrics: dict[int, Metrics]) -> pd.DataFrame:
    """Settings and results side by side: one column per run, one row per quantity (rows nobody has are dropped)."""
    table = pd.DataFrame(
        {common.trace_name(run): [read(run, metrics.get(run.id, {})) for read in ROWS.values()] for run in runs},
        index=list(ROWS),
    )
    return table.dropna(how="all").fillna("—")


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
