"""The new models really learn, in both frameworks, with their documented defaults on data that ships or is generated."""
import json

import pytest

from tests.conftest import NO_CALIBRATION_FLAGS, run_cli

QUICK = ["--inference-iters", "0", *NO_CALIBRATION_FLAGS, "--json"]


def last_json(stdout: str):
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
@pytest.mark.parametrize("model, dataset, extra, bar", [
    # The class is the marker token that occurs most often: chance is 1 in 10.
    ("lstm", "synthetic_text", ["--synthetic-size", "2048", "--epochs", "8"], 0.7),
    ("transformer", "synthetic_text", ["--synthetic-size", "2048", "--epochs", "8"], 0.7),
    ("mnist_cnn", "digits", ["--epochs", "5"], 0.9),
    ("resnet", "digits", ["--epochs", "3"], 0.9),
])
def test_model_learns(arena_db, framework, model, dataset, extra, bar):
    result = run_cli("run", "--framework", framework, "--model", model, "--dataset", dataset, *extra, *QUICK,
                     timeout=900)
    assert result.returncode == 0, result.stderr
    metrics = last_json(result.stdout)["metrics"]
    assert metrics["test_accuracy"] >= bar, metrics
