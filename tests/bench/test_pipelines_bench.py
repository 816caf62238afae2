"""bench/pipelines.py end to end at its tiniest: one round of real runner processes per framework, 5 steps an epoch,
and the loader-only processes; plus its argument checks and the interval's coverage."""
import json
import re
import subprocess
import sys

import pytest

from bench import pipelines
from tests.conftest import REPO_ROOT


def test_one_round_prints_every_ratio_and_the_loader_with_0_1_2_workers():
    done = subprocess.run([sys.executable, "bench/pipelines.py", "--pairs", "1", "--cases", "mlp/digits",
                           "--epochs", "2", "--max-steps-per-epoch", "5", "--calibration-steps", "2",
                           "--loader-seconds", "0.05", "--json"], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout
    assert "BOUND BY THIS MACHINE" in text and "pin_memory" in text and "other processes busy" in text
    for framework in pipelines.FRAMEWORKS:
        printed = re.search(rf"^mlp/digits +none +{framework} .* ([0-9.]+) \(", text, re.MULTILINE)
        assert printed and float(printed.group(1)) > 0, text
    assert re.search(r"^mlp/digits +none +[0-9,]+ +[0-9,]+ +[0-9.]+ \(.*fit is", text, re.MULTILINE), text

    report = json.loads(text.strip().splitlines()[-1])
    runs = {row["framework"]: row for row in report["runs"]}
    assert runs["torch"]["native_over_arrays"]["median"] > 0 and "fit_over_graph" not in runs["torch"]
    assert runs["tensorflow"]["fit_over_graph"]["median"] > 0 and runs["tensorflow"]["ceiling_samples_per_s"] > 0
    for framework in pipelines.FRAMEWORKS:
        (loader,) = report["loader_only"][framework]["rows"]
        assert sorted(loader["samples_per_s"]) == ["0", "1", "2"]
        assert all(rate["median"] > 0 for rate in loader["samples_per_s"].values())
        assert "num_parallel_calls=2" in report["loader_only"]["tensorflow"]["loaders"]["2"]
        assert "num_workers=2" in report["loader_only"]["torch"]["loaders"]["2"]


@pytest.mark.parametrize("args, message", [
    (["--cases", "resnet/cifar10"], "--cases names 'resnet/cifar10'"),
    (["--frameworks", "jax"], "--frameworks names 'jax'"),
    (["--pairs", "0"], "--pairs 0"),
    (["--augment", "blur"], "unknown augmentation 'blur'"),
    (["--augment", "none"], "--augment 'none'"),
    (["--loader-workers", "99"], "loader_workers"),
    (["--calibration-steps", "0"], "--calibration-steps 0"),
])
def test_bad_arguments_are_named(args, message, capsys):
    with pytest.raises(SystemExit):
        pipelines.main(args)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("pairs, coverage", [(1, 0.0), (3, 0.75), (5, 0.9375), (6, 0.96875)])
def test_interval_coverage_is_that_of_median_interval(pairs, coverage):
    assert pipelines.interval_coverage(pairs) == pytest.approx(coverage)


def test_every_kind_of_a_round_shares_the_spec_but_pipeline_and_mode():
    settings = pipelines.Settings(32, None, None, 2, 10)
    case = pipelines.CASES["cnn/synthetic_images"]
    specs = {kind: pipelines.build_spec("tensorflow", case, settings, kind).to_dict() for kind in
             pipelines.KINDS["tensorflow"]}
    assert (specs["arrays"]["pipeline"], specs["native"]["pipeline"], specs["fit"]["pipeline"]) == (
        "arrays", "native", "native")
    assert (specs["native"]["mode"], specs["fit"]["mode"]) == ("graph", "fit")
    rest = [{k: v for k, v in spec.items() if k not in ("pipeline", "mode")} for spec in specs.values()]
    assert rest[0] == rest[1] == rest[2]
    assert rest[0]["warmup_steps"] == 1024 // 32 and rest[0]["synthetic_shape"] == "32x32x3"
