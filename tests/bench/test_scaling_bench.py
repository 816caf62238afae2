"""bench/scaling.py end to end at its tiniest: one pair per framework of real runner processes, 10 steps a run."""
import json
import re
import subprocess
import sys

import pytest

from bench import scaling
from tests.conftest import REPO_ROOT


def test_one_pair_per_framework_prints_positive_efficiencies():
    done = subprocess.run([sys.executable, "bench/scaling.py", "--repeats", "1", "--epochs", "2",
                           "--max-steps-per-epoch", "5", "--json"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout
    assert "BOUND BY THIS MACHINE" in text and "other processes busy" in text
    for framework in scaling.FRAMEWORKS:
        printed = re.search(rf"^{framework}: efficiency ([0-9.]+): ", text, re.MULTILINE)
        assert printed and float(printed.group(1)) > 0, text
    ratio = re.search(r"^PyTorch efficiency / TensorFlow efficiency: ([0-9.]+) \(", text, re.MULTILINE)
    assert ratio and float(ratio.group(1)) > 0, text

    report = json.loads(text.strip().splitlines()[-1])
    for framework in scaling.FRAMEWORKS:
        row = report["frameworks"][framework]
        assert row["samples_per_s_1"] > 0 and row["samples_per_s_2"] > 0 and row["efficiency"] > 0
        assert row["threads_per_worker_2"] == max(1, report["cores"] // 2)
        assert list(row["rank_step_time_p50_ms"]) == ["0", "1"] and row["straggling"] >= 1.0
    assert report["torch_over_tensorflow"]["ratio"] > 0


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "33"], "--batch-size 33"),
    (["--frameworks", "jax"], "--frameworks names 'jax'"),
    (["--repeats", "0"], "--repeats 0"),
])
def test_bad_arguments_are_named(args, message, capsys):
    with pytest.raises(SystemExit):
        scaling.main(args)
    assert message in capsys.readouterr().err
