"""engine/parity.py: PyTorch and TensorFlow compute the same outputs, loss and gradients from one set of weights."""
import json
import subprocess
import sys

import numpy as np
import pytest

from engine import parity
from engine.catalog import MODELS
from engine.parity import TOLERANCE, Case
from engine.weights import initial_weights
from tests.conftest import REPO_ROOT


def _parity_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "parity", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def every_model() -> dict:
    """`python -m engine parity --model all --json`: one worker per framework checks the whole zoo."""
    result = _parity_cli("--model", "all", "--json")
    assert result.returncode in (0, 1), result.stderr
    return {"returncode": result.returncode, **json.loads(result.stdout)}


def _assert_within_tolerance(report: dict) -> None:
    where = f"{report['model']} on {report['dataset']}"
    assert report["max_abs_output_diff"] <= TOLERANCE, where
    assert report["abs_loss_diff"] <= TOLERANCE, where
    assert report["max_abs_gradient_diff"] <= TOLERANCE, f"{where}: {report['worst_gradient']}"
    assert report["passed"]
    # Not vacuous: the outputs and gradients compared are of ordinary size.
    assert report["max_abs_output"] > 0.05 and report["max_abs_gradient"] > 0.01, where


def test_every_model_on_its_default_dataset(every_model):
    assert every_model["returncode"] == 0 and every_model["passed"]
    assert [c["model"] for c in every_model["checks"]] == list(MODELS)
    for report in every_model["checks"]:
        assert report["dataset"] == parity.default_dataset(report["model"])
        _assert_within_tolerance(report)


def test_full_size_and_odd_shapes():
    """The shapes the models are known by (MNIST 28x28x1, CIFAR 32x32x3, longer sequences), and an odd
    image size: 9 -> 5 -> 3, where stride-2 padding and the option-A shortcut must agree too."""
    reports = parity.check_many([
        Case("mnist_cnn", "mnist"), Case("resnet", "cifar10"), Case("cnn", "synthetic_images"),
        Case("mlp", "cifar10"), Case("transformer", "synthetic_text", "64"),
        Case("resnet", "synthetic_images", "9x9x3"),
    ], seed=1)
    assert [r["input_shape"] for r in reports] == [[28, 28, 1], [32, 32, 3], [28, 28, 1], [32, 32, 3], [64], [9, 9, 3]]
    for report in reports:
        _assert_within_tolerance(report)


def test_text_report_names_each_figure(every_model):
    text = parity.format_report(every_model["checks"][3])
    assert text.startswith("resnet on digits (8x8x1, 10 outputs), batch 8, seed 0: PASS")
    assert "max |d output|" in text and "|d loss|" in text and "max |d gradient|" in text


@pytest.mark.parametrize("args, named", [
    (["--model", "vgg"], "'vgg'"),
    (["--model", "cnn", "--dataset", "imagenet"], "'imagenet'"),
    (["--model", "lstm", "--dataset", "digits"], "'digits'"),
    (["--model", "cnn", "--seed", "-1"], "seed=-1"),
    (["--model", "cnn", "--batch-size", "0"], "batch_size=0"),
    (["--model", "resnet", "--dataset", "synthetic_images", "--synthetic-shape", "big"], "'big'"),
    (["--model", "all", "--dataset", "digits"], "'digits'"),
])
def test_bad_arguments_exit_2_naming_the_value(args, named):
    result = _parity_cli(*args)
    assert result.returncode == 2
    assert named in result.stderr and "Traceback" not in result.stderr


def test_a_difference_fails_and_names_the_tensor():
    """The comparison itself, fed two results that differ in one gradient entry."""
    job = {"model": "mlp", "dataset": "digits", "seed": 0, "batch_size": 2, "input_shape": [8, 8, 1],
           "num_outputs": 10}
    same = {"output": np.ones((2, 10), np.float32), "loss": np.float32(2.3),
            "grad/dense1/kernel": np.ones((64, 128), np.float32), "grad/dense2/bias": np.ones(10, np.float32)}
    other = dict(same, **{"grad/dense2/bias": same["grad/dense2/bias"] + np.eye(10, dtype=np.float32)[3] * 1e-3})
    report = parity._compare(job, {"torch": same, "tensorflow": other})
    assert not report["passed"] and report["worst_gradient"] == "dense2/bias"
    assert report["max_abs_gradient_diff"] == pytest.approx(1e-3, rel=1e-3)
    assert report["max_abs_output_diff"] == 0 and "FAIL" in parity.format_report(report)


@pytest.mark.parametrize("model, shape, x_dtype", [
    ("resnet", (9, 9, 3), np.float32), ("transformer", (16,), np.int64), ("powerlaw", (1,), np.float32),
])
def test_fixed_batch_is_seeded_and_typed(model, shape, x_dtype):
    x, y = parity.fixed_batch(model, shape, 1 if model == "powerlaw" else 10, seed=5, batch_size=3)
    again, _ = parity.fixed_batch(model, shape, 1 if model == "powerlaw" else 10, seed=5, batch_size=3)
    assert x.shape == (3,) + shape and x.dtype == x_dtype and np.array_equal(x, again)
    if model == "powerlaw":
        assert y.shape == (3, 1) and x.min() > 0
    else:
        assert y.dtype == np.int64 and y.shape == (3,) and y.max() < 10


def test_jitter_moves_only_constant_tensors():
    weights = initial_weights("resnet", (8, 8, 1), 10, seed=0)
    jittered = parity.jittered(weights, seed=0)
    assert np.array_equal(jittered["conv1/kernel"], weights["conv1/kernel"])
    for name in ("bn1/gamma", "bn1/beta", "bn1/moving_mean", "bn1/moving_variance", "dense/bias"):
        assert np.unique(jittered[name]).size == jittered[name].size  # every entry distinct
    assert jittered["bn1/moving_variance"].min() >= 0.8
