"""bench/loop_overhead.py and its references: the plan, the summary, the report and the loss check, never a timing."""
import json
import random
import subprocess
import sys

import numpy as np
import pytest

from bench import loop_overhead, loop_report
from bench.reference_loops import CHOICE_VARIANTS, UNCHECKED_CHOICES, cross_entropy, sinusoid
from engine.catalog import FRAMEWORKS
from engine.weights import sinusoidal_positions
from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("quick", [False, True])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_plan_times_every_model_in_every_mode(framework, quick):
    plan = loop_overhead.run_plan(framework, list(loop_overhead.LOOP_MODES[framework]), list(loop_overhead.MODELS),
                                  quick, {}, {})
    assert list(plan) == list(loop_overhead.LOOP_MODES[framework])
    for mode, by_model in plan.items():
        assert list(by_model) == list(loop_overhead.MODELS)
        for model, entry in by_model.items():
            assert entry["epochs"] > loop_report.warmup_epochs(framework, mode), (mode, model)
            spec = loop_overhead.engine_spec(framework, model, mode, entry["epochs"], entry["samples"])  # validates
            assert spec.dataset == loop_overhead.MODEL_DATASETS[model]
            assert (entry["samples"] is None) == (spec.dataset == "digits")
            assert spec.train_size() >= spec.batch_size and spec.inference_iters == 0


def test_overrides_apply_to_every_mode():
    plan = loop_overhead.run_plan("tensorflow", ["graph", "eager"], ["resnet"], False, {"resnet": 7}, {"resnet": 128})
    assert plan == {mode: {"resnet": {"epochs": 7, "samples": 128}} for mode in ("graph", "eager")}


@pytest.mark.parametrize("args, message", [
    (["--models", "powerlaw"], "model='powerlaw'"),
    (["--samples", "mlp=100"], "--samples names model 'mlp'"),
    (["--samples", "resnet=32"], "at least one full batch"),
    (["--epochs", "resnet=1", "--modes", "xla"], "need more than 2"),
])
def test_bad_arguments_are_named(args, message, capsys):
    with pytest.raises(SystemExit):
        loop_overhead.main(args)
    assert message in capsys.readouterr().err


def test_sinusoid_is_the_engines():
    np.testing.assert_array_equal(sinusoid(32, 32), sinusoidal_positions(32, 32))


def test_cross_entropy_of_logits_and_log_probabilities():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 0.0]])
    labels = np.array([0, 2])
    expected = -np.mean([logits[0, 0] - np.log(np.exp(logits[0]).sum()), -np.log(3.0)])
    assert cross_entropy(logits, labels) == pytest.approx(expected, abs=1e-12)
    log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))  # what MnistNet returns
    assert cross_entropy(log_probs, labels) == pytest.approx(expected, abs=1e-12)


def _worker(other_load: float = 0.0) -> dict:
    """A worker report as run_worker returns it: one (model, mode), three pairs, epoch 1 warm-up."""
    engine = [[9.0, 1.0, 1.0], [9.0, 2.0, 2.0], [9.0, 1.0, 1.0]]  # 100, 50, 100 samples/s after warm-up
    reference = [[9.0, 1.0, 1.0], [9.0, 1.0, 1.0], [9.0, 0.5, 0.5]]  # 100, 100, 200
    check = {"batch": 64, "tolerance": 1e-4, "initial": {"engine": 2.3, "reference": 2.3, "difference": 0.0},
             "jittered": {"engine": 2.4, "reference": 2.4, "difference": 1e-8}}
    return {"framework": "torch", "modes": ["eager"], "repeats": 3, "info": {"version": "x"},
            "data": {"resnet": {"dataset": "synthetic_images", "input_shape": [32, 32, 3]}},
            "hyperparameters": {"resnet": {"batch_size": 64, "lr": 1e-3}}, "loss_check": {"resnet": check},
            "samples_per_epoch": {"resnet": {"eager": 100}}, "compiler": {"resnet": {"eager": {}}},
            "epoch_time_s": {"resnet": {"eager": {"engine": engine, "reference": reference}}},
            "wall_s": 10.0, "other_load_cores": other_load}


def test_summary_is_the_median_of_pair_ratios():
    rows = {row["variant"]: row for row in loop_report.summarise(_worker())}
    engine = rows["engine"]
    assert engine["samples_per_s_runs"] == pytest.approx([100.0, 50.0, 100.0])
    assert engine["ratio_to_reference"] == pytest.approx(0.5)  # pairs 1.0, 0.5, 0.5
    assert (engine["ratio_min"], engine["ratio_max"]) == pytest.approx((0.5, 1.0))
    assert (engine["ratio_low"], engine["ratio_high"]) == pytest.approx((0.5, 1.0))  # 3 pairs: the interval is min-max
    assert engine["timed_epochs"] == 2 and engine["passed"] is False
    assert engine["verdict"] == "TOO NOISY"  # a pair at 0.5: the machine, not the engine, can be told from these


@pytest.mark.parametrize("ratio, lowest, said", [(0.99, 0.93, "PASS"), (0.95, 0.91, "FAIL"), (1.2, 0.9, "TOO NOISY")])
def test_a_row_is_told_only_when_its_interval_stays_above_0_9(ratio, lowest, said):
    assert loop_report.verdict(ratio, lowest) == said


@pytest.mark.parametrize("n, dropped", [(3, 0), (5, 0), (8, 0), (9, 1), (10, 1), (20, 5), (40, 13)])
def test_median_interval_drops_the_order_statistics_binomial_tails_allow(n, dropped):
    values = [float(i) for i in range(n)]
    random.Random(n).shuffle(values)
    assert loop_report.median_interval(values) == (float(dropped), float(n - 1 - dropped))


@pytest.mark.parametrize("n", [5, 10, 20])
def test_median_interval_covers_the_true_median_at_least_95_percent_of_the_time(n):
    # Skewed pair ratios, as a machine that sometimes slows one run of a pair gives them: lognormal, median 1.
    rng = np.random.default_rng(n)
    studies = 4000
    covered = sum(low <= 1.0 <= high for low, high in
                  (loop_report.median_interval(list(rng.lognormal(0.0, 0.15, n))) for _ in range(studies)))
    assert 0.94 <= covered / studies <= 1.0
    assert covered / studies <= 0.999 or n == 5  # not trivially wide: 10 and 20 pairs give a real interval


def test_one_outlying_pair_among_twenty_does_not_make_a_row_too_noisy():
    ratios = [0.98, 1.0, 1.01, 0.99, 1.02] * 4
    ratios[7] = 0.62  # a pair the machine slowed
    low, high = loop_report.median_interval(ratios)
    assert loop_report.verdict(1.0, low) == "PASS" and low > 0.9
    assert loop_report.verdict(1.0, min(ratios)) == "TOO NOISY"  # what a min-max range would have said


@pytest.mark.parametrize("load, warned", [(0.1, False), (0.9, True)])
def test_report_names_method_rows_and_noise(load, warned):
    worker = _worker(load)
    text = loop_report.format_report([worker], loop_report.summarise(worker), 12.0)
    assert "median of the per-pair ratios" in text and "AB BA" in text and "goal >= 0.97" in text
    assert "batch 64, engine loss 2.300000: difference 0.0e+00, jittered weights 1.0e-08" in text
    assert "torch      resnet      eager" in text and "TOO NOISY" in text
    assert "0 of 1 at or above the goal, 0 below it, 1 too noisy to tell" in text
    assert "rerun: .venv/bin/python bench/loop_overhead.py --frameworks torch --models resnet --modes eager" in text
    assert ("WARNING: other processes" in text) == warned


_CHECK_SCRIPT = """
import json, sys
from bench import loop_overhead, same_network
from engine.data import load_spec
from engine.weights import initial_weights
framework, results = sys.argv[1], {}
for model in loop_overhead.MODELS:
    samples = None if loop_overhead.MODEL_DATASETS[model] == "digits" else 64
    spec = loop_overhead.engine_spec(framework, model, "eager", 1, samples)
    data = load_spec(spec)
    weights = initial_weights(model, tuple(data.x_train.shape[1:]), data.num_outputs, 0)
    results[model] = same_network.check(framework, model, spec, data, weights, 0)
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def loss_checks() -> dict:
    """same_network.check for the whole zoo, one process per framework (they never share one), run side by side."""
    procs = {framework: subprocess.Popen([sys.executable, "-c", _CHECK_SCRIPT, framework], cwd=REPO_ROOT,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for framework in FRAMEWORKS}
    results = {}
    for framework, proc in procs.items():
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results[framework] = json.loads(out.strip().splitlines()[-1])
    return results


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_reference_computes_the_engines_loss(loss_checks, framework):
    checks = loss_checks[framework]
    assert list(checks) == list(loop_overhead.MODELS)
    for model, check in checks.items():
        for weights in ("initial", "jittered"):
            assert check[weights]["difference"] <= 1e-4, (model, weights)
            assert 1.0 < check[weights]["engine"] < 5.0, (model, weights)  # a real loss, not a vacuous match
        assert ("choice" in check) == ((framework, model) in CHOICE_VARIANTS)
        if "choice" in check and (framework, model) in UNCHECKED_CHOICES:
            assert check["choice"]["difference"] > 1e-4  # 'same' padding really computes another function
