"""Steps that meet a new input shape: the last, smaller batch kept, variable sequence lengths (engine/batches.py).

What each framework then does is counted from its own counters (tf.function traces, TorchDynamo
frames) and timed: the step that meets a shape first is timed alone. Each real run is a process of
its own (one framework per process).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from engine.batches import batch_lengths, shortened, shortest_length, steps_per_epoch
from engine.data import load
from engine.spec import RunSpec, SpecError
from tests.conftest import REPO_ROOT

PROBE = """
import json, sys
from engine.backends import get_backend
from engine.data import load_spec
from engine.loop import train
from engine.spec import RunSpec
from tests.fakes.backend import RecordingSink

spec = RunSpec(**json.loads(sys.argv[1]))
summary = train(spec, get_backend(spec.framework, "cpu"), load_spec(spec), RecordingSink())
print(json.dumps({key: summary[key] for key in ("shapes", "compile_events", "steps_per_epoch")}))
"""
QUIET = dict(inference_iters=0, sample_hz=0, layer_stats=False, calibration_steps=0, profile_steps=0)


def trained(**fields) -> dict:
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps({**QUIET, **fields})], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# Batches, no framework ----------------------------------------------------------------------------
def test_keeping_the_last_batch_adds_a_step():
    assert steps_per_epoch(RunSpec("torch", "mlp", "digits"), 1437) == 44
    assert steps_per_epoch(RunSpec("torch", "mlp", "digits", last_batch="keep"), 1437) == 45
    assert steps_per_epoch(RunSpec("torch", "mlp", "digits", last_batch="keep", max_steps_per_epoch=10), 1437) == 10


def test_a_shortened_sequence_keeps_every_marker_so_its_label_still_holds():
    data = load("synthetic_text", seed=3, shape=(32,), num_classes=10, size=256)
    x, y = data.x_train, data.y_train
    shortest = shortest_length(x, 10)
    assert 16 <= shortest <= 32
    cut = shortened(x, shortest, 10)
    assert cut.shape == (256, shortest)
    for row, label in zip(cut, y):
        markers = row[row <= 10]
        counts = np.bincount(markers, minlength=11)
        assert counts.argmax() == label + 1 and (counts == counts.max()).sum() == 1  # still the strict majority
    np.testing.assert_array_equal(np.sort(x[x <= 10]), np.sort(cut[cut <= 10]))  # no marker lost


def test_batch_lengths_depend_on_seed_and_epoch_only():
    first = batch_lengths(seed=1, epoch=2, steps=50, full=32, shortest=16)
    assert (first == batch_lengths(seed=1, epoch=2, steps=50, full=32, shortest=16)).all()
    assert not (first == batch_lengths(seed=1, epoch=3, steps=50, full=32, shortest=16)).all()
    assert first.min() >= 16 and first.max() <= 32 and len(set(first.tolist())) > 5


def test_variable_length_is_for_sequences_only():
    with pytest.raises(SpecError, match=r"variable_length=True: digits holds no sequences"):
        RunSpec("torch", "mlp", "digits", variable_length=True)


# Real runs ----------------------------------------------------------------------------------------
def test_a_kept_last_batch_recompiles_torch_compile_and_is_timed_alone():
    result = trained(framework="torch", model="mlp", dataset="digits", mode="compiled", epochs=2, last_batch="keep")
    shapes, events = result["shapes"], result["compile_events"]
    assert result["steps_per_epoch"] == 45 and shapes["distinct"] == 2
    assert [entry["step"] for entry in shapes["first_seen"]] == [1, 45]
    assert shapes["first_seen"][1]["shape"][0] == 1437 - 44 * 32 and shapes["first_seen"][1]["ms"] > 0
    # The train graph, the new shape's graph (a recompile), the eval-mode forward: more than one frame compiled.
    assert events["tool"] == "torch.compile" and events["compiled_frames"] >= 2 and events["compile_s"] > 0
    assert shapes["later_shapes_extra_ms"] > 0


@pytest.mark.parametrize("mode", ["graph", "xla"])
def test_tensorflow_traces_once_and_xla_compiles_once_per_shape(mode):
    result = trained(framework="tensorflow", model="mlp", dataset="digits", mode=mode, epochs=2, last_batch="keep")
    events = result["compile_events"]
    assert events["tool"] == "tf.function" and events["traces"]["step"] == 1 and events["retraces"] == 0
    if mode == "xla":
        assert sorted(shape[0] for shape in events["xla_shapes"]["step"]) == [29, 32]
    else:
        assert "xla_shapes" not in events


def test_variable_lengths_reach_both_frameworks_as_the_same_shapes():
    runs = {framework: trained(framework=framework, model="lstm", dataset="synthetic_text", epochs=2,
                               variable_length=True, synthetic_size=512) for framework in ("torch", "tensorflow")}
    seen = {framework: [(entry["step"], entry["shape"]) for entry in run["shapes"]["first_seen"]]
            for framework, run in runs.items()}
    assert seen["torch"] == seen["tensorflow"] and len(seen["torch"]) > 3
    assert runs["tensorflow"]["compile_events"]["retraces"] == 0  # the length is free in the signature


def test_what_torch_compile_refuses_to_capture_is_named():
    """TorchDynamo (torch 2.13) does not capture nn.LSTM: a "compiled" lstm run trains eagerly, and says so."""
    events = trained(framework="torch", model="lstm", dataset="synthetic_text", mode="compiled", epochs=1,
                     synthetic_size=256)["compile_events"]
    assert events["compiled_frames"] == 0 and events["frames"] >= 1
    assert any("LSTM" in reason for reason in events["not_compiled"]), events
