"""engine/loop.py in-process on the fake backend (tests/fakes/backend.py): warm-up kept apart from the steady
state, divergence, draining to the sink, the timing summary and time to target.

The fake sleeps where a framework would compute, so every time asserted here is one the test chose;
the real frameworks run the same loop in tests/engine/test_runner.py and test_modes.py.
"""
from __future__ import annotations

import math
import time

import pytest

from engine import loop
from engine.data import load_spec
from engine.loop import Diverged, train
from engine.spec import RunSpec
from tests.fakes.backend import FakeBackend, RecordingSink

STEPS = 10  # steps per epoch (max_steps_per_epoch on digits, batch 32)
BATCH = 32


def fake_spec(**fields) -> RunSpec:
    return RunSpec("torch", "mlp", "digits", **{"epochs": 2, "max_steps_per_epoch": STEPS, "inference_iters": 0,
                                                "sample_hz": 0, "layer_stats": False, "calibration_steps": 0,
                                                "profile_steps": 0, **fields})


def run(spec: RunSpec, backend: FakeBackend, sink=None) -> tuple[dict, RecordingSink]:
    sink = sink or RecordingSink()
    return train(spec, backend, load_spec(spec), sink), sink


def test_warm_up_and_the_first_step_are_timed_apart_from_the_steady_state():
    # Step 1 "compiles" (50 ms), steps 2-3 are warm-up (20 ms), every later one takes 2 ms.
    backend = FakeBackend(step_s=0.002, slow_steps={1: 0.05, 2: 0.02, 3: 0.02})
    summary, sink = run(fake_spec(warmup_steps=3), backend)

    assert summary["warmup_steps"] == 3 and summary["steady_steps"] == 2 * STEPS - 3
    assert 0.05 <= summary["first_step_s"] < 0.08
    assert 0.09 <= summary["warmup_s"] < 0.15  # exactly the three warm-up steps, no steady one
    assert 0.045 < summary["compile_s"] < 0.08  # the first step beyond a steady one
    # No warm-up step leaks into the steady percentiles or the throughput.
    assert 2.0 <= summary["step_time_p50_ms"] <= summary["step_time_p95_ms"] <= summary["step_time_p99_ms"] < 10
    assert BATCH / 0.006 < summary["steady_samples_per_s"] <= BATCH / 0.002
    (_, _, first), (_, _, second) = sink.epochs
    assert BATCH / 0.006 < first["samples_per_s"] <= BATCH / 0.002  # epoch 1's steady steps only
    assert first["epoch_time_s"] >= 0.09 + 7 * 0.002  # while its epoch time holds everything it trained
    assert second["epoch_time_s"] < first["epoch_time_s"]


def test_every_loss_reaches_the_sink_once_in_order_and_soon_after_its_step(monkeypatch):
    monkeypatch.setattr(loop, "DRAIN_INTERVAL_S", 0.01)

    class TimedSink(RecordingSink):
        def __init__(self) -> None:
            super().__init__()
            self.delays: list[float] = []

        def step_metrics(self, name, points) -> None:
            now = time.time()
            self.delays += [now - ended_at for *_, ended_at in points]
            super().step_metrics(name, points)

    spec = fake_spec(epochs=3, max_steps_per_epoch=None)  # digits: 44 steps an epoch
    summary, sink = run(spec, FakeBackend(step_s=0.003), TimedSink())
    steps = 3 * summary["steps_per_epoch"]
    points = sink.steps["train_loss"]
    assert [step for step, *_ in points] == list(range(1, steps + 1))
    assert [epoch for _, epoch, *_ in points] == [1 + (step - 1) // 44 for step in range(1, steps + 1)]
    assert [loss for _, _, loss, _ in points] == pytest.approx([1.0 / step for step in range(1, steps + 1)])
    # Drained while the epoch trains, not only at its end: progress inside epoch 1, and no point kept long.
    assert any(epoch == 0 and 0 < step < 44 for epoch, step in sink.progressed)
    assert max(sink.delays) < 0.01 + 0.1
    assert sink.progressed[-1] == (3, steps)


def test_a_nan_loss_stops_the_run_at_its_step_with_what_was_trained_recorded(monkeypatch):
    monkeypatch.setattr(loop, "DRAIN_INTERVAL_S", 0.0)  # drain after every step: the loop sees the NaN at once
    losses = [1.0, 0.9, 0.8, 0.7, 0.6, math.nan, 0.5]
    backend = FakeBackend(losses=losses)
    with pytest.raises(Diverged, match=r"train_loss became nan at step 6: the run diverged \(lower lr, now 0\.001"):
        run(fake_spec(on_divergence="stop", lr=0.001), backend)
    assert backend.steps == 6
    points = RecordingSink()
    backend = FakeBackend(losses=losses)
    with pytest.raises(Diverged) as raised:
        run(fake_spec(on_divergence="stop"), backend, points)
    assert raised.value.step == 6
    recorded = [(step, loss) for step, _, loss, _ in points.steps["train_loss"]]
    assert recorded[:5] == [(1, 1.0), (2, 0.9), (3, 0.8), (4, 0.7), (5, 0.6)] and math.isnan(recorded[5][1])
    assert points.epochs == []  # the epoch never finished
    assert points.progressed[-1] == (0, 6)


def test_at_the_epochs_end_a_nan_drained_late_still_stops_the_run():
    backend = FakeBackend(losses=[1.0, 1.0, math.inf])  # one drain at the end of an epoch this short
    sink = RecordingSink()
    with pytest.raises(Diverged, match="train_loss became inf at step 3"):
        run(fake_spec(on_divergence="stop"), backend, sink)
    assert backend.steps == STEPS and len(sink.steps["train_loss"]) == STEPS  # the epoch's steps all recorded
    assert sink.progressed[-1] == (0, STEPS)


def test_continue_notes_the_first_divergence_and_trains_every_epoch():
    backend = FakeBackend(losses=[1.0] * 4 + [math.nan] + [1.0] * 20)
    summary, sink = run(fake_spec(on_divergence="continue"), backend)
    assert (summary["diverged_at_step"], summary["diverged_metric"]) == (5, "train_loss")
    assert backend.steps == 2 * STEPS and [epoch for epoch, _, _ in sink.epochs] == [1, 2]
    assert math.isnan(sink.epochs[0][2]["train_loss"]) and sink.epochs[1][2]["train_loss"] == 1.0


def test_a_test_metric_that_is_not_finite_is_a_divergence_too():
    class NaNTest(FakeBackend):
        def evaluate(self, x, y, batch_size):
            return {"test_loss": math.nan, "test_accuracy": 0.1}

    sink = RecordingSink()
    with pytest.raises(Diverged, match=f"test_loss became nan at step {STEPS}"):
        run(fake_spec(on_divergence="stop"), NaNTest(), sink)
    assert [epoch for epoch, _, _ in sink.epochs] == [1]  # the epoch's metrics are kept, NaN included
    assert sink.progressed[-1] == (1, STEPS)


def test_time_to_target_counts_training_time_up_to_the_first_epoch_at_the_target():
    summary, sink = run(fake_spec(target_accuracy=0.85), FakeBackend())  # the fake's test accuracy is 0.9
    assert (summary["epochs_to_target"], summary["steps_to_target"]) == (1, STEPS)
    assert summary["time_to_target_s"] == pytest.approx(sink.epochs[0][2]["epoch_time_s"])
    summary, _ = run(fake_spec(target_accuracy=0.95), FakeBackend())
    assert summary["time_to_target_s"] is None and "epochs_to_target" not in summary
