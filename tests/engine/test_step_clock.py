"""How steps are timed (engine/step_clock.py): every step on a CPU, windows on a device that runs ahead.

The loop runs in-process on tests/fakes/backend.py (no framework): it counts the synchronisations
the loop asks for, so the windowed path is tested on a machine without a GPU. Real runs of both
frameworks in windows mode are in tests/engine/test_runner.py.
"""
from __future__ import annotations

import pytest

from engine.data import load_spec
from engine.loop import train
from engine.spec import RunSpec, SpecError
from engine.step_clock import SAMPLE_EVERY, WINDOW_STEPS, StepClock
from tests.fakes.backend import FakeBackend, RecordingSink

STEPS = 44  # digits: 1,437 training samples, batch 32


def run(step_timing: str, asynchronous: bool, epochs: int = 2, warmup_steps: int = 10):
    spec = RunSpec("torch", "mlp", "digits", epochs=epochs, step_timing=step_timing, warmup_steps=warmup_steps,
                   inference_iters=0, sample_hz=0, layer_stats=False, calibration_steps=0, profile_steps=0)
    backend, sink = FakeBackend(asynchronous=asynchronous), RecordingSink()
    summary = train(spec, backend, load_spec(spec), sink)
    return summary, backend, sink


def timed_steps(sink: RecordingSink) -> list[int]:
    return [step for step, *_ in sink.steps["step_time_ms"]]


def test_on_a_cpu_every_step_is_timed_alone():
    summary, backend, sink = run("auto", asynchronous=False)
    assert summary["step_timing"]["method"] == "every_step"
    assert timed_steps(sink) == list(range(1, 2 * STEPS + 1))
    assert summary["steady_steps"] == 2 * STEPS - 10 and summary["warmup_steps"] == 10
    assert backend.synchronizations >= 2 * STEPS  # free where the host waits for each step anyway


def test_on_a_device_that_runs_ahead_steps_are_timed_in_windows_and_a_sample_of_them_alone():
    summary, backend, sink = run("auto", asynchronous=True)
    assert summary["step_timing"] == {"method": "windows", "window_steps": WINDOW_STEPS, "sampled_every": SAMPLE_EVERY}
    timed = timed_steps(sink)
    assert timed[0] == 1  # the first step alone: its time is the compile estimate
    assert 0.15 < len(timed) / (2 * STEPS) < 0.5  # about a quarter of the steps timed alone
    assert len(sink.steps["train_loss"]) == 2 * STEPS  # every step's loss is still recorded
    # Far fewer synchronisations than steps: one per window end plus one per step timed alone.
    assert backend.synchronizations < 2 * STEPS * 0.6
    assert summary["steady_samples_per_s"] > 0 and summary["step_time_p50_ms"] > 0
    # Every epoch reports throughput from its windows, warm-up excluded.
    assert all(metrics["samples_per_s"] > 0 for _, _, metrics in sink.epochs)


def test_windows_can_be_asked_for_on_a_cpu_too():
    summary, _, sink = run("windows", asynchronous=False)
    assert summary["step_timing"]["method"] == "windows" and len(timed_steps(sink)) < 2 * STEPS


def test_warm_up_ends_a_window_so_no_steady_window_holds_a_warm_up_step():
    clock = StepClock(lambda: None, every_step=False, warmup_steps=5)
    clock.start_epoch(0.0)
    for step in range(1, 41):
        clock.before_step(step)
        clock.after_step(step, 32)
    clock.end_epoch()
    totals = clock.totals
    assert totals.warmup_samples == 5 * 32  # exactly the warm-up steps
    assert totals.steady_samples + totals.sampled_steady_samples == 35 * 32


def test_an_unknown_step_timing_is_named():
    with pytest.raises(SpecError, match=r"step_timing='sometimes': expected one of auto, every_step, windows"):
        RunSpec("torch", "mlp", "digits", step_timing="sometimes")
