"""pages/summary.py and pages/run_settings.py: formatting of summary values, for new runs and old ones."""
from __future__ import annotations

import pytest

from db.models import Run
from pages import run_settings, summary

OLD_SPEC = {"framework": "tensorflow", "model": "mlp", "dataset": "digits", "epochs": 2, "batch_size": 32,
            "lr": 1e-3, "optimizer": "adam", "seed": 0, "device": "auto", "max_steps_per_epoch": 5, "noise": 0.0}


def make_run(spec: dict, summary_values: dict | None, status: str = "finished", run_id: int = 1) -> Run:
    return Run(id=run_id, framework=spec["framework"], model=spec["model"], dataset=spec["dataset"], status=status,
               spec=spec, summary=summary_values, total_epochs=spec["epochs"], epoch=2, step=10)


@pytest.mark.parametrize("ms, text", [(0.4123, "0.412 ms"), (3.214, "3.21 ms"), (42.71, "42.7 ms"),
                                      (1204.4, "1,204 ms"), (None, None), (float("nan"), None)])
def test_latencies_keep_three_significant_digits(ms, text):
    assert summary.format_ms(ms) == text


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

    table = summary.summary_table([old], {})
    assert table.loc["mode"].tolist() == ["tf.function (graph)"]
    assert "step time p50" not in table.index and "inference batch 1 p50" not in table.index
    assert table.loc["first step (excluded)"].tolist() == ["1.1 s"]


def test_mixed_precision_shows_the_compute_dtype_and_loss_scaling():
    spec = {**OLD_SPEC, "framework": "torch", "precision": "mixed", "mode": "eager"}
    assert run_settings.precision_text(make_run(spec, None)) == "mixed"
    assert run_settings.precision_text(make_run(spec, {"compute_dtype": "bfloat16"})) == "mixed (bfloat16)"
    assert run_settings.precision_text(make_run(spec, {"compute_dtype": "float16", "loss_scaling": True})) == \
        "mixed (float16, loss scaling)"
