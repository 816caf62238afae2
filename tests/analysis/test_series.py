"""analysis/series.py: TensorBoard smoothing, prepared (downsampled) series, seed groups, bands and speed ratios."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import series

SPEC = {"framework": "torch", "model": "mlp", "dataset": "digits", "epochs": 3, "lr": 1e-3, "seed": 0,
        "device": "auto", "mode": "eager"}


def tensorboard_ema(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing loop (vz_line_chart2), transcribed."""
    last, accumulated, out = 0.0, 0, []
    constant = all(v == values[0] for v in values)
    for value in values:
        if constant or not math.isfinite(value):
            out.append(value)
            continue
        last = last * weight + (1 - weight) * value
        accumulated += 1
        out.append(last / (1 - weight ** accumulated))
    return out


def student_t_cdf(t: float, dof: int) -> float:
    """P(T <= t) by integrating Student's t density numerically: a check independent of any table."""
    grid = np.linspace(0.0, t, 400_001)
    log_norm = math.lgamma((dof + 1) / 2) - math.lgamma(dof / 2) - 0.5 * math.log(dof * math.pi)
    density = np.exp(log_norm - (dof + 1) / 2 * np.log1p(grid ** 2 / dof))
    return 0.5 + float(np.trapezoid(density, grid))


def points(run_id: int, name: str, values, wall_start: float = 1_700_000_000.0, epoch_len: int = 10) -> pd.DataFrame:
    steps = np.arange(1, len(values) + 1)
    return pd.DataFrame({"run_id": run_id, "name": name, "step": steps, "epoch": (steps - 1) // epoch_len + 1,
                         "wall_time": wall_start + 0.5 * steps, "value": np.asarray(values, dtype=float)})


def test_importing_series_imports_neither_streamlit_nor_plotly():
    check = "import sys, analysis.series; print(sorted({'streamlit', 'plotly'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60,
                            cwd=Path(series.__file__).resolve().parents[1])
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


# EMA -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("weight", [0.3, 0.6, 0.95, 0.999])
def test_ema_matches_tensorboards_loop_and_passes_non_finite_values_through(weight):
    rng = np.random.default_rng(1)
    values = rng.normal(2.0, 0.5, 5000)
    values[[0, 17, 18, 4000]] = np.nan
    values[[300, 4999]] = [np.inf, -np.inf]
    smoothed = series.ema(values, weight)
    expected = np.array(tensorboard_ema(values.tolist(), weight))
    np.testing.assert_allclose(smoothed, expected, rtol=1e-12, atol=0)
    finite = np.isfinite(values)
    assert np.isnan(smoothed[[0, 17, 18, 4000]]).all() and smoothed[300] == np.inf and smoothed[4999] == -np.inf
    assert np.isfinite(smoothed[finite]).all()  # the infinities did not leak into the average


def test_ema_with_weight_zero_or_a_constant_series_returns_the_input_and_rejects_bad_weights():
    values = np.array([1.0, np.nan, 3.0])
    np.testing.assert_array_equal(series.ema(values, 0.0), values)
    np.testing.assert_array_equal(series.ema(np.full(1000, 0.1), 0.9), np.full(1000, 0.1))
    assert series.ema(np.array([]), 0.5).size == 0
    for weight in (-0.1, 1.0, 2.0):
        with pytest.raises(ValueError, match=f"weight={weight!r}"):
            series.ema(values, weight)


# prepare ---------------------------------------------------------------------------------------

def test_prepare_smooths_the_full_series_then_downsamples_raw_and_smoothed_together():
    rng = np.random.default_rng(4)
    loss = np.exp(-np.arange(20_000) / 5000) + rng.normal(0, 0.05, 20_000)
    loss[7_777] = 9.0  # a raw spike
    loss[15_000] = np.nan  # a non-finite step
    frame = pd.concat([points(1, "step/train_loss", loss, epoch_len=1000),
                       points(1, "train_loss", [1.0, 0.5]), points(2, "step/train_loss", loss[:500] * 2)])
    prepared = series.prepare(frame, "step", smoothing=0.9, max_points=500)

    assert list(prepared.columns) == series.PREPARED_COLUMNS
    one = prepared[(prepared.run_id == 1) & (prepared.name == "step/train_loss")]
    full_smoothed = series.ema(loss, 0.9)
    assert len(one) <= 500 and one.x.is_monotonic_increasing and one.x.tolist() == one.step.tolist()
    np.testing.assert_array_equal(one.smoothed, full_smoothed[one.step - 1])  # smoothed before downsampling
    np.testing.assert_array_equal(one.value.dropna(), loss[one.step - 1][np.isfinite(loss[one.step - 1])])
    assert one.value.max() == 9.0 and 15_001 in one.step.tolist()  # step = index + 1
    assert one.smoothed.max() == np.nanmax(full_smoothed) and one.smoothed.min() == np.nanmin(full_smoothed)
    assert one.epoch.tolist() == ((one.step - 1) // 1000 + 1).tolist()
    # Short series come through whole, raw and smoothed.
    epochs = prepared[prepared.name == "train_loss"]
    assert epochs.value.tolist() == [1.0, 0.5]
    assert epochs.smoothed.tolist() == pytest.approx([1.0, (0.9 * 0.1 * 1.0 + 0.1 * 0.5) / (1 - 0.9 ** 2)])
    assert (prepared[prepared.run_id == 2].value.to_numpy() == loss[:500] * 2).all()


def test_prepare_orders_a_shuffled_frame_and_gives_the_same_result_as_a_sorted_one():
    rng = np.random.default_rng(5)
    frame = pd.concat([points(run, name, rng.normal(size=3000)) for run in (3, 1) for name in ("b", "a")])
    prepared = series.prepare(frame, "step", smoothing=0.5, max_points=200)
    shuffled = series.prepare(frame.sample(frac=1.0, random_state=0), "step", smoothing=0.5, max_points=200)
    pd.testing.assert_frame_equal(prepared.sort_values(["run_id", "name", "x"]).reset_index(drop=True),
                                  shuffled.reset_index(drop=True))
    assert list(dict.fromkeys(zip(shuffled.run_id, shuffled.name))) == [(1, "a"), (1, "b"), (3, "a"), (3, "b")]


def test_prepare_relative_time_starts_each_run_at_its_first_point_over_all_its_series():
    frame = pd.concat([points(1, "step/train_loss", [3.0, 2.0, 1.0], wall_start=1000.0),
                       points(1, "train_loss", [2.0], wall_start=1001.0),
                       points(2, "step/train_loss", [3.0, 2.0], wall_start=5000.0)])
    prepared = series.prepare(frame, "relative_time")
    assert prepared.x.tolist() == [0.0, 0.5, 1.0, 1.0, 0.0, 0.5]
    assert series.prepare(frame, "wall_time").x.tolist()[:3] == [1000.5, 1001.0, 1001.5]
    # A run's recorded start (its started_at) wins where the page knows it.
    started = series.prepare(frame, "relative_time", starts={1: 999.5, 2: None, 8: 0.0})
    assert started.x.tolist() == [1.0, 1.5, 2.0, 2.0, 0.0, 0.5]


def test_prepare_of_an_empty_frame_and_bad_arguments():
    empty = points(1, "x", [])
    assert list(series.prepare(empty, "step").columns) == series.PREPARED_COLUMNS
    with pytest.raises(ValueError, match="smoothing=1.0"):
        series.prepare(empty, "step", smoothing=1.0)
    with pytest.raises(ValueError, match="x_axis='steps'"):
        series.prepare(empty, "steps")


def test_prepare_sends_at_most_max_points_per_series_for_20_runs_of_100k_points():
    rng = np.random.default_rng(6)
    n, runs = 100_000, 20
    frame = pd.DataFrame({"run_id": np.repeat(np.arange(1, runs + 1), n),
                          "name": np.array(["step/train_loss"] * (n * runs), dtype=object),
                          "step": np.tile(np.arange(1, n + 1), runs), "epoch": np.tile(np.arange(n) // 1000 + 1, runs),
                          "wall_time": np.tile(1.7e9 + 0.01 * np.arange(n), runs), "value": rng.random(n * runs)})
    prepared = series.prepare(frame, "step", smoothing=0.6)  # its speed is bench/compare_prep.py's to measure
    assert prepared.groupby("run_id").size().max() <= series.MAX_POINTS
    assert set(prepared["run_id"]) == set(range(1, runs + 1))


# Seed groups -----------------------------------------------------------------------------------

def test_seed_groups_group_runs_that_differ_only_by_seed_name_notes_or_tags():
    specs = {
        7: {**SPEC, "seed": 0}, 3: {**SPEC, "seed": 1, "name": "mine", "tags": ["x"]}, 9: {**SPEC, "seed": 2},
        4: {**SPEC, "seed": 0, "lr": 1e-2}, 5: {**SPEC, "seed": 1, "lr": 1e-2},
        6: {**SPEC, "seed": 0, "device": "cpu"},  # device pinning changes speed: not the same experiment
        1: {**SPEC, "framework": "tensorflow", "mode": "graph"},
    }
    assert series.seed_groups(specs) == [[3, 7, 9], [4, 5]]
    assert series.seed_group_key({**SPEC, "seed": 4}) == series.seed_group_key(dict(reversed({**SPEC}.items())))
    assert '"seed"' not in series.seed_group_key(SPEC) and series.seed_groups({1: SPEC}) == []


# Bands -----------------------------------------------------------------------------------------

def test_group_band_on_shared_steps_matches_a_hand_computation():
    x = np.array([1, 2, 3])
    members = [(x, np.array([1.0, 2.0, 3.0])), (x, np.array([3.0, 4.0, np.nan])), (x, np.array([2.0, 9.0, 5.0]))]
    std = series.group_band(members, "std")
    assert std.x.tolist() == [1, 2, 3] and std.n.tolist() == [3, 3, 2]
    assert std["mean"].tolist() == pytest.approx([2.0, 5.0, 4.0])
    # step 1: values 1, 2, 3 -> std 1; step 3: 3 and 5 -> std sqrt(2)
    assert (std.hi - std["mean"]).tolist() == pytest.approx([1.0, math.sqrt(13.0), math.sqrt(2.0)])
    ci = series.group_band(members, "ci95")
    assert (ci.hi - ci["mean"]).tolist() == pytest.approx(
        [4.3027 * 1 / math.sqrt(3), 4.3027 * math.sqrt(13.0) / math.sqrt(3), 12.7062 * math.sqrt(2.0) / math.sqrt(2)],
        rel=1e-4)
    assert (ci["mean"] - ci.lo).tolist() == pytest.approx((ci.hi - ci["mean"]).tolist())


def test_group_band_ci_narrows_as_seeds_are_added_and_uses_students_t():
    rng = np.random.default_rng(7)
    x = np.arange(100)
    widths, previous = {}, math.inf
    for n in (2, 3, 5, 10, 31, 41, 121):
        members = [(x, rng.normal(0.0, 1.0, 100)) for _ in range(n)]
        band = series.group_band(members, "ci95")
        values = np.vstack([y for _, y in members])
        t = (band.hi - band["mean"]).to_numpy() / (values.std(axis=0, ddof=1) / math.sqrt(n))
        np.testing.assert_allclose(t, t[0], rtol=1e-9)
        assert student_t_cdf(t[0], n - 1) == pytest.approx(0.975, abs=2e-5)
        widths[n] = float((band.hi - band.lo).mean())
        assert widths[n] < previous
        previous = widths[n]


def test_group_band_interpolates_over_the_shared_time_range_and_counts_finite_members():
    a = (np.array([0.0, 10.0, 20.0]), np.array([0.0, 10.0, 20.0]))
    b = (np.array([2.0, 12.0]), np.array([4.0, 24.0]))  # y = 2x
    c = (np.array([0.0, 5.0, 30.0]), np.array([1.0, np.nan, 1.0]))  # diverged between 0 and 30
    band = series.group_band([a, b, c], grid_points=11)
    assert band.x.tolist() == pytest.approx(np.linspace(2.0, 12.0, 11).tolist())
    assert band.n.tolist() == [2] * 11
    assert band["mean"].tolist() == pytest.approx((1.5 * np.linspace(2.0, 12.0, 11)).tolist())
    with pytest.raises(ValueError, match="latest start 100 > earliest end 20"):
        series.group_band([a, c, (np.array([100.0, 200.0]), np.array([1.0, 1.0]))])


def test_group_band_of_a_long_run_keeps_its_extremes_within_grid_points():
    rng = np.random.default_rng(8)
    x = np.arange(50_000)
    members = [(x, rng.normal(0.0, 1.0, 50_000)) for _ in range(3)]
    members[1][1][31_337] = 40.0
    band = series.group_band(members, "std", grid_points=1000)
    full = series.group_band(members, "std", grid_points=100_000)
    assert len(band) <= 1000 and len(full) == 50_000
    assert band.hi.max() == full.hi.max() and band.lo.min() == full.lo.min()
    assert band["mean"].max() == full["mean"].max() and 31_337 in band.x.tolist()
    with pytest.raises(ValueError, match="how='sem'"):
        series.group_band(members, "sem")
    with pytest.raises(ValueError, match="no member"):
        series.group_band([])


# Ratios ----------------------------------------------------------------------------------------

def simulated_intervals(rng: np.random.Generator, runs: int, true_ratio: float, cv_a: float, cv_b: float,
                        studies: int) -> np.ndarray:
    """(low, high) of welch_ratio over many studies of `runs` runs a side; throughputs log-normal around 100/s."""
    intervals = []
    for _ in range(studies):
        a = np.exp(rng.normal(math.log(100.0 * true_ratio), series.log_sd(cv_a), runs))
        b = np.exp(rng.normal(math.log(100.0), series.log_sd(cv_b), runs))
        intervals.append(series.welch_ratio(a, b)[1:3])
    return np.array(intervals)


@pytest.mark.parametrize("runs, cv_a, cv_b", [
    (series.MIN_RUNS_PER_SIDE, 0.10, 0.25),  # the fewest runs given an interval, and unequal spreads (Welch's case)
    (5, 0.15, 0.15),
])
def test_the_welch_interval_covers_the_true_ratio_in_95_percent_of_simulated_studies(runs, cv_a, cv_b):
    studies, true_ratio = 1000, 1.2
    intervals = simulated_intervals(np.random.default_rng(15), runs, true_ratio, cv_a, cv_b, studies)
    covered = ((intervals[:, 0] <= true_ratio) & (true_ratio <= intervals[:, 1])).mean()
    # Binomial sd of the share at 95 % over 1000 studies: 0.7 points; 0.92-0.98 is over 4 sd either way.
    assert 0.92 <= covered <= 0.98, covered
    # Misses fall on both sides: the interval is centred, not merely wide.
    assert (intervals[:, 0] > true_ratio).sum() > 5 and (intervals[:, 1] < true_ratio).sum() > 5


def test_the_welch_interval_is_exp_of_the_log_means_difference_plus_minus_t_at_welchs_dof():
    a, b = np.array([130.0, 118.0, 125.0, 140.0]), np.array([100.0, 104.0, 97.0])
    ratio, low, high, dof = series.welch_ratio(a, b)
    log_a, log_b = np.log(a), np.log(b)
    var_a, var_b = log_a.var(ddof=1) / 4, log_b.var(ddof=1) / 3
    assert ratio == pytest.approx(math.exp(log_a.mean() - log_b.mean()))
    assert dof == pytest.approx((var_a + var_b) ** 2 / (var_a ** 2 / 3 + var_b ** 2 / 2))
    assert 2 < dof < 5 and dof != round(dof)  # fractional: the quantile is not a table lookup
    t = (math.log(high) - math.log(ratio)) / math.sqrt(var_a + var_b)
    assert student_t_cdf(t, dof) == pytest.approx(0.975, abs=1e-4)
    assert math.log(high / ratio) == pytest.approx(math.log(ratio / low))  # symmetric in logs
    # Swapping the sides inverts the ratio and its interval.
    swapped = series.welch_ratio(b, a)
    assert swapped[:3] == pytest.approx((1 / ratio, 1 / high, 1 / low)) and swapped[3] == pytest.approx(dof)


def test_the_welch_interval_names_a_side_it_cannot_use():
    with pytest.raises(ValueError, match="group b: expected at least 2 positive finite throughputs, got \\[5.0\\]"):
        series.welch_ratio([1.0, 2.0], [5.0])
    with pytest.raises(ValueError, match="group a: .* got \\[1.0, 0.0\\]"):
        series.welch_ratio([1.0, 0.0], [1.0, 2.0])
    assert series.welch_ratio([2.0, 2.0, 2.0], [1.0, 1.0, 1.0])[:3] == pytest.approx((2.0, 2.0, 2.0))


@pytest.mark.parametrize("dof", [1, 2, 3, 7, 29])
def test_the_fractional_t_quantile_meets_the_table_at_whole_dof(dof):
    assert series._t975_fractional(dof) == pytest.approx(series.T975[dof - 1], abs=1e-4)
    assert series.T975[dof] < series._t975_fractional(dof + 0.5) < series.T975[dof - 1]


def test_the_runs_needed_tell_the_difference_in_80_percent_of_simulated_studies():
    true_ratio, cv = 1.3, series.ASSUMED_RUN_CV
    needed = series.runs_to_tell(true_ratio, series.log_sd(cv))
    assert series.MIN_RUNS_PER_SIDE < needed < 20
    rng = np.random.default_rng(16)
    told = {runs: (simulated_intervals(rng, runs, true_ratio, cv, cv, 1000)[:, 0] > 1).mean()
            for runs in (needed - 1, needed)}
    # At the figure given, a 95 % interval clears 1 about 80 % of the time; one run fewer does worse.
    assert 0.75 <= told[needed] <= 0.92, told
    assert told[needed - 1] < told[needed] and told[needed - 1] < 0.82, told


def test_the_runs_needed_grow_as_the_difference_shrinks_or_the_spread_grows():
    sd = series.log_sd(0.15)
    assert series.runs_to_tell(1.21, sd) == 11  # sqrt(11 / 2) * log(1.21) / sd = 3.00 >= 2.086 + 0.860 at 20 dof
    assert series.runs_to_tell(1 / 1.21, sd) == 11  # which side is faster does not matter
    assert series.runs_to_tell(2.0, sd) == series.MIN_RUNS_PER_SIDE  # never fewer than an interval needs
    assert series.runs_to_tell(1.5, sd) < series.runs_to_tell(1.21, sd) < series.runs_to_tell(1.1, sd)
    assert series.runs_to_tell(1.21, series.log_sd(0.30)) > series.runs_to_tell(1.21, sd)
    assert series.runs_to_tell(1.0, sd) == series.MAX_RUNS_PER_SIDE + 1  # no difference: no number of runs tells it
    with pytest.raises(ValueError, match="ratio=0.0"):
        series.runs_to_tell(0.0, sd)


@pytest.mark.parametrize("args, sentence", [
    (("PyTorch eager", "TensorFlow graph", 1.21, 1.05, 1.39, 4, 4),
     "PyTorch eager is 1.21× TensorFlow graph (95% CI 1.05–1.39×, Welch t over 4 and 4 runs)"),
    (("PyTorch eager", "TensorFlow graph", 1 / 1.18, 1 / 1.25, 1 / 1.1, 5, 3),
     "TensorFlow graph is 1.18× PyTorch eager (95% CI 1.10–1.25×, Welch t over 3 and 5 runs)"),
    (("PyTorch eager", "TensorFlow graph", 1.03, 0.97, 1.09, 5, 3),
     ("PyTorch eager is 1.03× TensorFlow graph (95% CI 0.97–1.09×, Welch t over 5 and 3 runs): "
      "no difference can be told")),
    (("A", "B", 1.03, 0.97, 1.09, 3, 3, 40),
     ("A is 1.03× B (95% CI 0.97–1.09×, Welch t over 3 and 3 runs): no difference can be told; about 40 runs "
      "(seeds) per side would tell a 1.03× difference at the spread measured here")),
    (("A", "B", 2.0, 1.5, 2.5, 3, 3, 40), "A is 2.00× B (95% CI 1.50–2.50×, Welch t over 3 and 3 runs)"),
])
def test_ratio_sentence_names_the_faster_side_first_and_says_when_nothing_can_be_told(args, sentence):
    assert series.ratio_sentence(*args) == sentence


def test_ratio_sentence_rejects_a_ratio_that_is_not_positive():
    with pytest.raises(ValueError, match="ratio=0.0"):
        series.ratio_sentence("A", "B", 0.0, 0.1, 0.2, 3, 3)


@pytest.mark.parametrize("args, sentence", [
    (("PyTorch eager", "TensorFlow graph", 1.21, 1, 1, 11, 0.15),
     ("No difference can be told yet from 1 run each: PyTorch eager measured 1.21× TensorFlow graph, and an interval "
      "needs 3 runs per side; about 11 runs (seeds) per side would tell a 1.21× difference, assuming runs vary by "
      "15% (CV) on this kind of machine")),
    (("PyTorch eager", "TensorFlow graph", 1 / 1.5, 2, 1, 4, 0.15),
     ("No difference can be told yet from 1 and 2 runs: TensorFlow graph measured 1.50× PyTorch eager, and an "
      "interval needs 3 runs per side; about 4 runs (seeds) per side would tell a 1.50× difference, assuming runs "
      "vary by 15% (CV) on this kind of machine")),
    (("A", "B", 1.004, 2, 2, 101, 0.15),
     ("No difference can be told yet from 2 runs each: A measured 1.00× B, and an interval needs 3 runs per side; "
      "more than 100 runs (seeds) per side would be needed to tell a difference as small as 1.00×, assuming runs "
      "vary by 15% (CV) on this kind of machine")),
])
def test_below_the_minimum_the_sentence_claims_no_interval_and_says_how_many_runs_would_tell(args, sentence):
    said = series.untold_ratio_sentence(*args)
    assert said == sentence and "CI" not in said
