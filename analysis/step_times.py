"""Per-step times after warm-up: the steady steps every speed number of a run comes from."""
from __future__ import annotations

from typing import Optional

import pandas as pd

from analysis import run_settings as rs
from db.models import Run

STEP_TIME_METRIC = "step/step_time_ms"


def warmup_steps_of(run: Run) -> int:
    """Steps left out of step times and throughput (0 when the run does not say)."""
    return int(rs.warmup_steps(run) or 0)


def steady_step_times(steps: pd.DataFrame, run: Run) -> pd.Series:
    """Step times (ms) of one run after its warm-up steps (steps are numbered from 1)."""
    points = steps[(steps["run_id"] == run.id) & (steps["name"] == STEP_TIME_METRIC)]
    return points[points["step"] > warmup_steps_of(run)]["value"].dropna()


def steady_rates(step_times: pd.DataFrame, run: Run) -> pd.Series:
    """Samples/s of each optimizer step after warm-up (batch size ÷ step time)."""
    milliseconds = steady_step_times(step_times, run)
    batch = int(rs.spec_value(run, "batch_size") or 0)
    milliseconds = milliseconds[milliseconds > 0]
    return batch * 1000.0 / milliseconds if batch else milliseconds.iloc[:0]


def run_throughput(run: Run, step_times: pd.DataFrame) -> Optional[float]:
    """One number per run: steady samples/s from its summary, else from its steady step times."""
    value = rs.summary_value(run, "steady_samples_per_s")
    if value:
        return float(value)
    rates = steady_rates(step_times, run)
    return float(len(rates) / (1.0 / rates).sum()) if len(rates) else None  # samples over time: harmonic mean
