"""analysis/speed_ratio.py: the throughput ratio between comparison groups, with an interval only from enough runs."""
from __future__ import annotations

from typing import Optional

import numpy as np
import pandas as pd
import pytest

from db.models import Run
from analysis import series, speed_ratio
from analysis.step_times import STEP_TIME_METRIC

BATCH = 32


def make_run(run_id: int, framework: str, seed: int, samples_per_s: Optional[float]) -> Run:
    spec = {"framework": framework, "model": "mlp", "dataset": "digits", "seed": seed, "batch_size": BATCH,
            "mode": "eager" if framework == "torch" else "graph"}
    summary = {"warmup_steps": 2} | ({"steady_samples_per_s": samples_per_s} if samples_per_s else {})
    return Run(id=run_id, framework=framework, model="mlp", dataset="digits", spec=spec, summary=summary)


def groups_of(rates_torch: list[Optional[float]], rates_tensorflow: list[Optional[float]]):
    runs = [make_run(i, "torch", seed, rate) for i, (seed, rate) in enumerate(enumerate(rates_torch), start=1)]
    runs += [make_run(len(runs) + i, "tensorflow", seed, rate)
             for i, (seed, rate) in enumerate(enumerate(rates_tensorflow), start=1)]
    return speed_ratio.comparison_groups(runs)


def step_times_of(runs: list[Run], milliseconds: list[float]) -> pd.DataFrame:
    """Every run takes the same per-step times: two warm-up steps, then the steady ones."""
    rows = [dict(run_id=run.id, name=STEP_TIME_METRIC, step=step, value=value)
            for run in runs for step, value in enumerate([50.0, 20.0] + milliseconds, start=1)]
    return pd.DataFrame(rows)


NO_STEPS = pd.DataFrame({"run_id": [], "name": [], "step": [], "value": []})


def test_one_run_each_claims_no_interval_and_computes_the_seeds_that_would_tell():
    torch, tensorflow = groups_of([1210.0], [1000.0])
    assert (torch.label, tensorflow.label) == ("PyTorch eager", "TensorFlow graph")
    steps = step_times_of([*torch.runs, *tensorflow.runs], [10.0, 11.0, 9.0, 10.0])

    ratio = speed_ratio.ratio_between(torch, tensorflow, steps)

    assert ratio.ratio == pytest.approx(1.21) and ratio.low is None and ratio.high is None
    assert ratio.runs_needed == series.runs_to_tell(1.21, series.log_sd(series.ASSUMED_RUN_CV)) == 11
    assert ratio.sentence.startswith("No difference can be told yet from 1 run each: PyTorch eager measured 1.21× "
                                     "TensorFlow graph")
    assert "about 11 runs (seeds) per side" in ratio.sentence and "15% (CV)" in ratio.sentence
    assert "CI" not in ratio.sentence
    # The steps' spread is shown for what it is, and the assumption behind the runs needed is stated.
    assert "Within one run, steady steps vary by" in ratio.method and "not between runs" in ratio.method
    assert "runs vary by 15% (coefficient of variation, assumed)" in ratio.method


def test_two_runs_each_still_claim_no_interval():
    torch, tensorflow = groups_of([1200.0, 1250.0], [1000.0, 990.0])

    ratio = speed_ratio.ratio_between(torch, tensorflow, NO_STEPS)

    assert ratio.low is None and ratio.high is None and ratio.runs_needed >= series.MIN_RUNS_PER_SIDE
    assert ratio.ratio == pytest.approx(np.sqrt(1200.0 * 1250.0) / np.sqrt(1000.0 * 990.0))  # geometric means
    assert ratio.sentence.startswith("No difference can be told yet from 2 runs each")
    assert "Within one run" not in ratio.method


def test_enough_runs_get_a_welch_interval_over_runs():
    torch_rates, tensorflow_rates = [1180.0, 1260.0, 1210.0, 1240.0], [1000.0, 1030.0, 980.0, 1010.0]
    torch, tensorflow = groups_of(torch_rates, tensorflow_rates)

    ratio = speed_ratio.ratio_between(torch, tensorflow, NO_STEPS)

    expected = series.welch_ratio(torch_rates, tensorflow_rates)
    assert (ratio.ratio, ratio.low, ratio.high) == expected[:3] and 1 < ratio.low < ratio.high
    assert ratio.runs_needed is None  # the interval already tells the difference
    assert ratio.sentence == (f"PyTorch eager is {expected[0]:.2f}× TensorFlow graph (95% CI {expected[1]:.2f}–"
                              f"{expected[2]:.2f}×, Welch t over 4 and 4 runs)")
    assert "Welch t-interval on the log of each run's steady samples/s, runs as the unit" in ratio.method


def test_an_interval_that_holds_1_says_so_and_how_many_runs_would_tell():
    torch, tensorflow = groups_of([1250.0, 1050.0, 1400.0], [1000.0, 950.0, 1040.0])

    ratio = speed_ratio.ratio_between(torch, tensorflow, NO_STEPS)

    assert ratio.low < 1 < ratio.high
    assert series.MIN_RUNS_PER_SIDE < ratio.runs_needed <= series.MAX_RUNS_PER_SIDE
    assert f": no difference can be told; about {ratio.runs_needed} runs (seeds) per side" in ratio.sentence
    assert "at the spread measured here" in ratio.sentence


def test_runs_without_a_steady_throughput_are_left_out_and_a_side_with_none_gives_no_ratio():
    torch, tensorflow = groups_of([1200.0, None, 1250.0, 1220.0], [None, None])
    assert speed_ratio.ratio_between(torch, tensorflow, NO_STEPS) is None

    torch, tensorflow = groups_of([1200.0, None, 1250.0, 1220.0], [1000.0, 1010.0, 990.0])
    ratio = speed_ratio.ratio_between(torch, tensorflow, NO_STEPS)
    assert "Welch t over 3 and 3 runs" in ratio.sentence  # the untimed run is not counted

    # A run without a summary value falls back to its steady step times (the harmonic mean of their rates).
    torch, tensorflow = groups_of([None], [1000.0])
    steps = step_times_of(list(torch.runs), [16.0, 16.0])
    assert speed_ratio.ratio_between(torch, tensorflow, steps).ratio == pytest.approx(BATCH * 1000.0 / 16.0 / 1000.0)
