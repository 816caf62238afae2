"""analysis/summary.py and analysis/run_settings.py: summary values for new runs and old ones, against a baseline."""
from __future__ import annotations

import math
import re

import pandas as pd
import pytest

from analysis import run_settings, summary
from analysis.formatting import format_ms
from analysis.run_facts import STATUS_COLORS
from analysis.run_styles import trace_name
from db.models import Run

OLD_SPEC = {"framework": "tensorflow", "model": "mlp", "dataset": "digits", "epochs": 2, "batch_size": 32,
            "lr": 1e-3, "optimizer": "adam", "seed": 0, "device": "auto", "max_steps_per_epoch": 5, "noise": 0.0}


def make_run(spec: dict, summary_values: dict | None, status: str = "finished", run_id: int = 1) -> Run:
    return Run(id=run_id, framework=spec["framework"], model=spec["model"], dataset=spec["dataset"], status=status,
               spec=spec, summary=summary_values, total_epochs=spec["epochs"], epoch=2, step=10)


@pytest.mark.parametrize("ms, text", [(0.4123, "0.412 ms"), (3.214, "3.21 ms"), (42.71, "42.7 ms"),
                                      (1204.4, "1,204 ms"), (None, None), (float("nan"), None)])
def test_latencies_keep_three_significant_digits(ms, text):
    assert format_ms(ms) == text


def test_time_to_target_says_when_and_in_which_epoch_or_that_it_was_not_reached():
    spec = {**OLD_SPEC, "target_accuracy": 0.95}
    reached = make_run(spec, {"target_accuracy": 0.95, "time_to_target_s": 4.24, "epochs_to_target": 3})
    missed = make_run(spec, {"target_accuracy": 0.95, "time_to_target_s": None})
    running = make_run(spec, {"target_accuracy": 0.95, "time_to_target_s": None}, status="running")
    assert summary.time_to_target_text(reached) == "4.2 s to 95.0 % (epoch 3)"
    assert summary.time_to_target_text(missed) == "95.0 % not reached"
    assert summary.time_to_target_text(running) is None
    assert summary.time_to_target_text(make_run(OLD_SPEC, {})) is None


def test_runs_stored_before_modes_and_precisions_read_as_what_they_ran():
    old = make_run(OLD_SPEC, {"param_count": 9610, "first_step_s": 1.1})
    assert run_settings.mode_text(old) == "tf.function (graph)"
    assert run_settings.precision_text(old) == "fp32"
    assert run_settings.same_init_text(old) == "yes"
    assert run_settings.tf32_text(old) is None and run_settings.warmup_steps(old) is None

    assert summary.settings_frame([old]).loc["mode"].tolist() == ["tf.function (graph)"]


def test_mixed_precision_shows_the_compute_dtype_and_loss_scaling():
    spec = {**OLD_SPEC, "framework": "torch", "precision": "mixed", "mode": "eager"}
    assert run_settings.precision_text(make_run(spec, None)) == "mixed"
    assert run_settings.precision_text(make_run(spec, {"compute_dtype": "bfloat16"})) == "mixed (bfloat16)"
    assert run_settings.precision_text(make_run(spec, {"compute_dtype": "float16", "loss_scaling": True})) == \
        "mixed (float16, loss scaling)"


# The summary against a baseline ---------------------------------------------------------------------
NAN, INF = float("nan"), float("inf")
STEADY, LOSS, PARAMS = ("Speed", "steady samples/s"), ("Result", "final test loss"), ("Model", "trainable parameters")


def points(run_id: int, name: str, values: list, first_step: int = 1) -> pd.DataFrame:
    """Metric points as db.queries.metric_frame returns them, one per step (None: stored non-finite)."""
    steps = range(first_step, first_step + len(values))
    return pd.DataFrame({"run_id": run_id, "name": name, "step": list(steps), "epoch": list(steps),
                         "wall_time": 0.0, "value": values})


def row(frame: pd.DataFrame, section: str, quantity: str) -> pd.Series:
    """One row of a summary_frame (or its differences) by section and quantity, whatever its unit."""
    return frame.xs((section, quantity), level=["section", "quantity"]).iloc[0]


def test_metric_stats_take_the_best_by_direction_and_skip_non_finite_points():
    frame = pd.concat([
        points(1, "test_accuracy", [0.5, 0.9, 0.8]),
        points(1, "test_loss", [1.0, 0.4, None, INF]),  # diverged: NaN (stored as NULL), then inf
        points(1, "phi_estimate", [2.0, 2.5]),
        points(2, "step/train_loss", [3.0, 1.0, 2.0]),
    ]).sample(frac=1, random_state=0)  # the points' order in the frame must not matter: steps order them

    stats = summary.metric_stats(frame)

    assert stats.loc[(1, "test_accuracy")].to_dict() == {
        "last": 0.8, "best": 0.9, "min": 0.5, "max": 0.9, "median": 0.8, "count": 3, "non_finite": 0}
    loss = stats.loc[(1, "test_loss")]
    assert math.isnan(loss["last"])  # the run ended non-finite: no last value is invented
    assert (loss["best"], loss["min"], loss["max"], loss["count"], loss["non_finite"]) == (0.4, 0.4, 1.0, 4, 2)
    assert math.isnan(stats.loc[(1, "phi_estimate"), "best"])  # an estimate has no better direction
    assert stats.loc[(2, "step/train_loss"), ["last", "best"]].tolist() == [2.0, 1.0]
    assert stats.index.names == ["run_id", "metric"]


def test_metric_stats_of_no_points_is_an_empty_table_with_the_columns():
    stats = summary.metric_stats(points(1, "test_loss", [])[:0])
    assert stats.empty and list(stats.columns) == summary.STAT_COLUMNS


@pytest.mark.parametrize("name, direction, unit", [
    ("test_accuracy", summary.HIGHER, "fraction"), ("samples_per_s", summary.HIGHER, "samples/s"),
    ("test_loss", summary.LOWER, ""), ("step/train_loss", summary.LOWER, ""), ("epoch_time_s", summary.LOWER, "s"),
    ("step/step_time_ms", summary.LOWER, "ms"), ("peak_bytes/host_rss", summary.LOWER, "bytes"),
    ("energy_j", summary.LOWER, "J"), ("phi_estimate", summary.NEUTRAL, ""),
])
def test_each_metric_has_a_direction_and_a_unit(name, direction, unit):
    assert summary.metric_direction(name) == direction and summary.metric_unit(name) == unit


def fabricated_runs() -> list[Run]:
    torch = make_run({**OLD_SPEC, "framework": "torch"}, {
        "steady_samples_per_s": 1000.0, "step_time_p50_ms": 2.0, "compile_s": 0.5, "param_count": 9610,
        "inference_bs1_p50_ms": 0.4}, run_id=3)
    tensorflow = make_run(OLD_SPEC, {
        "steady_samples_per_s": 1100.0, "step_time_p50_ms": 2.2, "compile_s": 0.0, "param_count": 9610}, run_id=4)
    return [torch, tensorflow]


def fabricated_frame(runs: list[Run]) -> pd.DataFrame:
    metrics = pd.concat([
        points(3, "test_accuracy", [0.80, 0.90]), points(4, "test_accuracy", [0.85, 0.99]),
        points(3, "test_loss", [0.50, 0.40]), points(4, "test_loss", [0.50, 0.44]),
        points(3, "samples_per_s", [900.0, 950.0, 1000.0]), points(4, "samples_per_s", [1000.0, 1010.0, 1020.0]),
        points(3, "step/train_loss", [2.0, 1.0, 0.5]), points(4, "step/train_loss", [2.0, None, 0.6]),
    ])
    peaks = {3: {"host_rss": summary.Peak(1000 * 2**20, exact=True)},
             4: {"host_rss": summary.Peak(900 * 2**20, exact=True), "nvml_process": summary.Peak(2**30, exact=False)}}
    return summary.summary_frame(runs, summary.metric_stats(metrics), peaks, {run.id: run.summary for run in runs})


def test_the_summary_frame_holds_raw_numbers_by_section_with_a_unit_and_direction_per_row():
    frame = fabricated_frame(fabricated_runs())

    assert list(frame.columns) == [3, 4] and frame.index.names == summary.ROW_LEVELS
    assert list(dict.fromkeys(frame.index.get_level_values("section"))) == [
        "Result", "Speed", "Memory", "Inference", "Model", "Metrics"]
    assert row(frame, "Result", "final test accuracy").tolist() == [0.90, 0.99]
    assert row(frame, "Result", "best test accuracy").tolist() == [0.90, 0.99]
    assert row(frame, *STEADY).tolist() == [1000.0, 1100.0]
    assert row(frame, "Speed", "samples/s (median epoch)").tolist() == [950.0, 1010.0]
    assert row(frame, "Memory", "peak host RSS").tolist() == [1000 * 2**20, 900 * 2**20]
    nvml = row(frame, "Memory", "peak NVML process (sampled)")  # the only run with it has only samples
    assert math.isnan(nvml[3]) and nvml[4] == 2**30
    assert math.isnan(row(frame, "Inference", "batch 1 p50")[4])  # one run measured it, the other did not
    assert row(frame, "Metrics", "step/train_loss · min").tolist() == [0.5, 0.6]
    assert row(frame, "Metrics", "step/train_loss · non-finite points").tolist() == [0, 1]
    units = dict(zip(frame.index.get_level_values("quantity"), frame.index.get_level_values("unit")))
    better = dict(zip(frame.index.get_level_values("quantity"), frame.index.get_level_values("better")))
    assert (units["steady samples/s"], better["steady samples/s"]) == ("samples/s", "higher")
    assert (units["step time p50"], better["step time p50"]) == ("ms", "lower")
    assert (units["trainable parameters"], better["trainable parameters"]) == ("count", "neutral")
    quantities = set(frame.index.get_level_values("quantity"))
    # Nobody has these: dropped. Non-finite counts only where some run had a non-finite point.
    assert not {"φ estimate", "energy (training)", "peak allocator allocated"} & quantities
    assert "test_loss · non-finite points" not in quantities


def test_peaks_are_exact_from_the_summary_or_the_epochs_else_the_largest_sample():
    runs = [make_run(OLD_SPEC, {"peak_bytes": {"host_rss": 500.0}}, run_id=1), make_run(OLD_SPEC, {}, run_id=2),
            make_run(OLD_SPEC, None, run_id=3)]
    metrics = pd.concat([points(2, "peak_bytes/host_rss", [300.0, 400.0, None]), points(2, "test_loss", [1.0])])
    samples = pd.DataFrame({"run_id": [1, 3, 3], "time": [0.0, 0.0, 1.0], "source": "host", "name": "rss",
                            "value": [999.0, 250.0, 260.0], "unit": "bytes"})

    peaks = summary.memory_peaks(runs, samples, metrics)

    assert peaks == {1: {"host_rss": summary.Peak(500.0, True)}, 2: {"host_rss": summary.Peak(400.0, True)},
                     3: {"host_rss": summary.Peak(260.0, False)}}
    frame = summary.summary_frame(runs, summary.metric_stats(metrics), peaks, {})
    assert row(frame, "Memory", "peak host RSS (sampled for #3)").tolist() == [500.0, 400.0, 260.0]


def test_differences_are_relative_to_the_baseline_and_judged_by_the_rows_direction():
    frame = fabricated_frame(fabricated_runs())

    percent = summary.with_baseline(frame, 3)
    verdicts = summary.verdicts(frame, 3)

    assert list(percent.columns) == [4]
    assert row(percent, *STEADY)[4] == pytest.approx(10.0)  # +10 % throughput ...
    assert row(verdicts, *STEADY)[4] == "better"  # ... is better
    assert row(percent, "Speed", "step time p50")[4] == pytest.approx(10.0)  # +10 % step time ...
    assert row(verdicts, "Speed", "step time p50")[4] == "worse"  # ... is worse
    assert row(percent, "Result", "final test loss")[4] == pytest.approx(10.0)
    assert row(verdicts, "Result", "final test loss")[4] == "worse"
    assert row(percent, "Memory", "peak host RSS")[4] == pytest.approx(-10.0)
    assert row(verdicts, "Memory", "peak host RSS")[4] == "better"
    assert row(percent, *PARAMS)[4] == 0 and row(verdicts, *PARAMS)[4] == ""
    assert row(percent, "Speed", "compile time (first step − median step)")[4] == pytest.approx(-100.0)  # 0.5 -> 0

    reverse = summary.with_baseline(frame, 4)  # the other way round: relative to the other run's value
    assert row(reverse, *STEADY)[3] == pytest.approx(-100 / 11)
    assert row(summary.verdicts(frame, 4), *STEADY)[3] == "worse"


def test_a_zero_or_missing_baseline_gives_no_percentage_and_equal_zeros_give_zero():
    frame = pd.DataFrame([[0.0, 5.0], [0.0, 0.0], [NAN, 1.0]], columns=[1, 2], index=pd.MultiIndex.from_tuples(
        [("Speed", "a", "s", "lower"), ("Speed", "b", "s", "lower"), ("Speed", "c", "s", "lower")],
        names=summary.ROW_LEVELS))
    percent = summary.with_baseline(frame, 1)[2].tolist()
    assert math.isnan(percent[0]) and percent[1] == 0.0 and math.isnan(percent[2])


def test_a_baseline_that_is_not_in_the_table_is_refused_by_name():
    with pytest.raises(ValueError, match="baseline run #9 is not in the table, which holds #3, #4"):
        summary.with_baseline(fabricated_frame(fabricated_runs()), 9)


def test_cells_read_as_value_unit_and_difference():
    frame = fabricated_frame(fabricated_runs())
    table = summary.display_table(frame, 3, {3: "#3 PyTorch", 4: "#4 TensorFlow"})

    assert list(table.columns) == ["#3 PyTorch (baseline)", "#4 TensorFlow"]
    assert table.loc[STEADY].tolist() == ["1,000 samples/s", "1,100 samples/s (+10.0 %)"]
    assert table.loc[("Speed", "step time p50")].tolist() == ["2.00 ms", "2.20 ms (+10.0 %)"]
    assert table.loc[("Result", "final test accuracy")].tolist() == ["90.0 %", "99.0 % (+10.0 %)"]
    assert table.loc[("Memory", "peak host RSS")].tolist() == ["1,000.0 MiB", "900.0 MiB (-10.0 %)"]
    assert table.loc[PARAMS].tolist() == ["9,610", "9,610 (±0.0 %)"]
    assert table.loc[("Inference", "batch 1 p50")].tolist() == ["0.400 ms", "—"]


def cell_styles(styler, row_label: tuple, column: str) -> str:
    """The CSS a Styler gives one cell, read from its HTML."""
    styler.set_uuid("t")
    html = styler.to_html()
    r, c = styler.data.index.get_loc(row_label), styler.data.columns.get_loc(column)
    rules = re.findall(r"([^{}]+)\{([^}]*)\}", html.split("</style>")[0])
    return "; ".join(body.strip().rstrip(";") for selectors, body in rules
                    if f"#T_t_row{r}_col{c}" in [s.strip() for s in selectors.split(",")])


def test_the_styled_table_colours_better_green_worse_red_and_shades_differing_settings():
    runs = fabricated_runs()
    names = {run.id: trace_name(run) for run in runs}
    styler = summary.styled_table(fabricated_frame(runs), 3, names, summary.settings_frame(runs))

    assert styler.data.index[0] == ("Settings", "status")
    assert styler.data.loc[("Settings", "mode")].tolist() == ["eager", "tf.function (graph)"]
    assert "#FEF3C7" in cell_styles(styler, ("Settings", "mode"), "#4 TensorFlow")  # the modes differ
    assert cell_styles(styler, ("Settings", "status"), "#4 TensorFlow") == ""
    assert cell_styles(styler, STEADY, "#4 TensorFlow") == f"color: {STATUS_COLORS['finished']}"
    assert cell_styles(styler, ("Speed", "step time p50"), "#4 TensorFlow") == \
        f"color: {STATUS_COLORS['failed']}"
    assert cell_styles(styler, STEADY, "#3 PyTorch (baseline)") == ""  # the baseline is not judged
    assert cell_styles(styler, PARAMS, "#4 TensorFlow") == ""  # a count is neither better nor worse


def test_the_settings_rows_of_the_old_table_stay():
    settings = summary.settings_frame(fabricated_runs())
    assert list(settings.columns) == [3, 4]
    assert {"status", "mode", "precision (compute dtype)", "same initial weights"} <= set(settings.index)
    assert settings.loc["status"].tolist() == ["✓ finished", "✓ finished"]
