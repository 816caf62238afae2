"""engine/layer_stats.py on known arrays; both backends' canonical tensors on one batch; real runs recording them.

Each framework runs in its own process (never both in one): the backend probe writes .npz files the tests read.
"""
import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from db import queries
from db.models import FINISHED
from db.session import make_sessionmaker
from engine.catalog import MODELS
from engine.launch import launch
from engine.layer_stats import layer_rows, tensor_summary
from engine.parity import TOLERANCE
from engine.spec import RunSpec, SpecError
from engine.weights import layer_shapes, trainable
from tests.conftest import NO_CALIBRATION, REPO_ROOT

FRAMEWORKS = ("torch", "tensorflow")
TENSOR_STAT_KEYS = {"epoch", "step", "layer", "kind", "numel", "norm", "mean", "std", "min", "max", "histogram"}


# tensor_summary and layer_rows --------------------------------------------------------------------
def test_summary_of_a_known_array():
    summary = tensor_summary(np.array([[3.0, 4.0], [0.0, -1.0]], dtype=np.float32), bins=4)
    assert summary["numel"] == 4
    assert summary["norm"] == pytest.approx(math.sqrt(26))
    assert summary["mean"] == pytest.approx(1.5) and summary["std"] == pytest.approx(np.std([3, 4, 0, -1]))
    assert (summary["min"], summary["max"]) == (-1.0, 4.0)
    assert summary["histogram"] == {"edges": [-1.0, 0.25, 1.5, 2.75, 4.0], "counts": [2, 0, 0, 2]}


def test_histogram_counts_every_finite_value_once():
    values = np.random.default_rng(0).standard_normal((64, 33)).astype(np.float32)
    summary = tensor_summary(values, bins=30)
    edges, counts = summary["histogram"]["edges"], summary["histogram"]["counts"]
    assert len(edges) == 31 and len(counts) == 30 and sum(counts) == values.size
    assert edges[0] == summary["min"] and edges[-1] == summary["max"]
    assert np.allclose(np.diff(edges), (summary["max"] - summary["min"]) / 30)  # equal widths
    assert summary["norm"] == pytest.approx(float(np.linalg.norm(values.astype(np.float64))), rel=1e-12)


def test_nan_and_inf_are_left_out_of_the_statistics_but_counted_in_numel():
    summary = tensor_summary(np.array([1.0, np.nan, np.inf, -np.inf, 3.0]), bins=2)
    assert summary["numel"] == 5 and sum(summary["histogram"]["counts"]) == 2
    assert summary["norm"] == pytest.approx(math.sqrt(10)) and summary["mean"] == 2.0
    assert (summary["min"], summary["max"]) == (1.0, 3.0)


def test_a_tensor_without_finite_values_has_no_statistics():
    summary = tensor_summary(np.full(7, np.nan, dtype=np.float32), bins=10)
    assert summary == {"numel": 7, "norm": None, "mean": None, "std": None, "min": None, "max": None,
                       "histogram": None}


def test_a_constant_tensor_puts_every_value_in_one_bin():
    summary = tensor_summary(np.zeros(16, dtype=np.float32), bins=5)
    assert summary["norm"] == 0.0 and summary["std"] == 0.0
    assert sum(summary["histogram"]["counts"]) == 16 and max(summary["histogram"]["counts"]) == 16


def test_float32_extremes_do_not_overflow_the_norm():
    big = np.full(10, np.finfo(np.float32).max, dtype=np.float32)
    assert tensor_summary(big, bins=3)["norm"] == pytest.approx(float(np.finfo(np.float32).max) * math.sqrt(10))


@pytest.mark.parametrize("bins", [0, 201, 2.5, True])
def test_bad_bin_counts_are_named(bins):
    with pytest.raises(ValueError, match=rf"bins={bins!r}: expected a whole number in 1..200"):
        tensor_summary(np.ones(3), bins)


def test_layer_rows_hold_every_tensor_stat_column_weights_first():
    weights = [("dense1/kernel", np.ones((3, 2))), ("dense1/bias", np.zeros(2))]
    grads = [("dense1/kernel", np.full((3, 2), 0.5)), ("dense1/bias", np.array([np.nan, 1.0]))]
    rows = layer_rows(2, 40, weights, grads, bins=3)
    assert [(r["layer"], r["kind"]) for r in rows] == [
        ("dense1/kernel", "weight"), ("dense1/bias", "weight"), ("dense1/kernel", "grad"), ("dense1/bias", "grad")]
    assert all(set(r) == TENSOR_STAT_KEYS and (r["epoch"], r["step"]) == (2, 40) for r in rows)
    assert rows[2]["norm"] == pytest.approx(math.sqrt(6 * 0.25)) and rows[3]["numel"] == 2


# The spec fields ------------------------------------------------------------------------------------
@pytest.mark.parametrize("field, value, message", [
    ("histogram_bins", 0, r"histogram_bins=0: must be >= 1"),
    ("histogram_bins", 500, r"histogram_bins=500: must be <= 200"),
    ("histogram_bins", 3.0, r"histogram_bins=3.0: expected a whole number"),
    ("layer_stats", "on", r"layer_stats='on': expected true or false"),
])
def test_bad_layer_stat_settings_are_named(field, value, message):
    with pytest.raises(SpecError, match=message):
        RunSpec("torch", "mlp", "digits", **{field: value})


def test_specs_stored_before_layer_statistics_load_with_them_on():
    old = RunSpec("torch", "mlp", "digits").to_dict()
    del old["layer_stats"], old["histogram_bins"]
    spec = RunSpec.from_dict(old)
    assert (spec.layer_stats, spec.histogram_bins) == (True, 30)


# Both backends on one batch, every model ----------------------------------------------------------
# Text models on short sequences keep the probe quick; the image models take digits' 8x8x1.
CASES = {"mlp": ("digits", None), "cnn": ("digits", None), "mnist_cnn": ("digits", None), "resnet": ("digits", None),
         "lstm": ("synthetic_text", "12"), "transformer": ("synthetic_text", "12"), "powerlaw": ("powerlaw", None)}
_PROBE = """
import json, sys
import numpy as np
from engine.backends import get_backend
from engine.catalog import DATASETS
from engine.parity import fixed_batch, jittered
from engine.spec import RunSpec
from engine.weights import initial_weights

framework, out, cases = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
arrays = {}
for model, (dataset, shape) in cases.items():
    spec = RunSpec(framework=framework, model=model, dataset=dataset, synthetic_shape=shape, seed=5)
    input_shape, outputs = spec.input_shape(), spec.num_outputs()
    # Jittered: constant-initialised tensors (biases, norms) differ per element, so a mislaid one shows.
    weights = jittered(initial_weights(model, input_shape, outputs, 5), 5)
    backend = get_backend(framework, "cpu")
    backend.build(spec, DATASETS[dataset].task, weights, input_shape, outputs)
    x, y = fixed_batch(model, input_shape, outputs, 5, 8)
    before = backend.named_parameters_canonical()
    grads = backend.fixed_batch_gradients(x, y)
    after = backend.named_parameters_canonical()
    arrays[f"{model}:order"] = np.array([name for name, _ in before] + ["|"] + [name for name, _ in grads])
    arrays.update({f"{model}:weight:{name}": value for name, value in before})
    arrays.update({f"{model}:grad:{name}": value for name, value in grads})
    arrays[f"{model}:unchanged"] = np.array(all(np.array_equal(a, b) for (_, a), (_, b) in zip(before, after)))
np.savez(out, **arrays)
"""


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> dict[str, dict[str, np.ndarray]]:
    """Every model's canonical weights and fixed-batch gradients per framework, both processes at once."""
    directory = tmp_path_factory.mktemp("layer-probe")
    procs = {fw: subprocess.Popen([sys.executable, "-c", _PROBE, fw, str(directory / f"{fw}.npz"), json.dumps(CASES)],
                                  cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for fw in FRAMEWORKS}
    results = {}
    for fw, proc in procs.items():
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{fw} failed:\n{stderr[-4000:]}"
        with np.load(directory / f"{fw}.npz", allow_pickle=False) as data:
            results[fw] = {key: data[key] for key in data.files}
    return results


@pytest.mark.parametrize("model", list(CASES))
def test_both_backends_hand_over_the_same_tensors_under_the_same_names(probes, model):
    """Canonical names in weights.py's order, Keras's layout, the loaded weights exactly, gradients as parity finds
    them (within its tolerance), and the weights left as they were by the gradient pass."""
    dataset, shape = CASES[model]
    spec = RunSpec("torch", model, dataset, synthetic_shape=shape)
    names = [n for n, _ in layer_shapes(model, spec.input_shape(), spec.num_outputs()) if trainable(n)]
    torch_out, tf_out = probes["torch"], probes["tensorflow"]
    for out in (torch_out, tf_out):
        assert out[f"{model}:order"].tolist() == names + ["|"] + names
        assert bool(out[f"{model}:unchanged"])
    for name in names:
        assert np.array_equal(torch_out[f"{model}:weight:{name}"], tf_out[f"{model}:weight:{name}"]), name
        ours, theirs = torch_out[f"{model}:grad:{name}"], tf_out[f"{model}:grad:{name}"]
        assert ours.shape == theirs.shape and ours.dtype == np.float32
        assert np.max(np.abs(ours - theirs), initial=0.0) <= TOLERANCE, name
    assert any(np.abs(torch_out[f"{model}:grad:{name}"]).max() > 1e-3 for name in names)  # real gradients


def test_every_zoo_model_is_probed():
    assert set(CASES) == set(MODELS)


# Real runs through the runner ----------------------------------------------------------------------
MLP = dict(model="mlp", dataset="digits", epochs=2, max_steps_per_epoch=10, seed=7, inference_iters=0, **NO_CALIBRATION)
# Deterministic, so that a run with statistics and one without can be compared bit for bit; resnet has batch norm.
RESNET = dict(model="resnet", dataset="digits", epochs=2, max_steps_per_epoch=3, seed=3, batch_size=32,
              inference_iters=0, deterministic=True, histogram_bins=12, **NO_CALIBRATION)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An mlp pair, and resnet with and without statistics in both frameworks: six real runs, one after the other."""
    home = tmp_path_factory.mktemp("layer-stats")
    url = f"sqlite:///{home / 'arena.db'}"
    sessions = make_sessionmaker(url)
    specs = {("mlp", fw): RunSpec(framework=fw, **MLP) for fw in FRAMEWORKS}
    for fw in FRAMEWORKS:
        for on in (True, False):
            specs[("resnet" if on else "resnet_off", fw)] = RunSpec(framework=fw, layer_stats=on, **RESNET)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ARENA_HOME", str(home))
        run_ids = dict(zip(specs, launch(sessions, list(specs.values()), url)))
        deadline = time.monotonic() + 600
        while True:
            with sessions.begin() as s:
                found = {key: queries.get_run(s, run_id) for key, run_id in run_ids.items()}
                if all(run.status not in ("queued", "running") for run in found.values()):
                    break
            assert time.monotonic() < deadline, {k: r.status for k, r in found.items()}
            time.sleep(0.5)
    for key, run in found.items():
        assert run.status == FINISHED, (key, run.error)
    with sessions.begin() as s:
        stats = {key: queries.tensor_stat_frame(s, [run.id]) for key, run in found.items()}
        losses = {key: queries.metric_frame(s, [run.id], ["step/train_loss", "test_loss"])
                  for key, run in found.items()}
    return found, stats, losses


def canonical_trainable(model: str) -> list[str]:
    return [name for name, _ in layer_shapes(model, (8, 8, 1), 10) if trainable(name)]


@pytest.mark.parametrize("model", ["mlp", "resnet"])
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_every_epoch_every_trainable_tensor_and_both_kinds_are_stored(runs, model, framework):
    found, stats, _ = runs
    frame = stats[(model, framework)]
    names = canonical_trainable(model)
    # Weights at epochs 0 (the initial ones), 1 and 2; gradients after each epoch only (none before the first step).
    assert len(frame) == (3 + 2) * len(names)
    for (epoch, kind), rows in frame.groupby(["epoch", "kind"]):
        assert rows["layer"].tolist() == names, (epoch, kind)  # weights.py's order, in both frameworks
    assert frame.groupby("kind")["epoch"].unique().map(list).to_dict() == {"weight": [0, 1, 2], "grad": [1, 2]}
    steps = 10 if model == "mlp" else 3
    assert frame.groupby("epoch")["step"].first().tolist() == [0, steps, 2 * steps]
    sizes = dict(layer_shapes(model, (8, 8, 1), 10))
    assert all(row.numel == int(np.prod(sizes[row.layer])) for row in frame.itertuples())
    assert frame["norm"].notna().all()
    bins = 30 if model == "mlp" else 12
    for row in frame.itertuples():
        assert len(row.histogram["counts"]) == bins and sum(row.histogram["counts"]) == row.numel
    assert 0 < found[(model, framework)].summary["layer_stats_s"] < 30  # timed apart, and small


@pytest.mark.parametrize("model", ["mlp", "resnet"])
def test_a_pytorch_run_and_a_tensorflow_run_name_the_same_layers(runs, model):
    _, stats, _ = runs
    torch_layers, tf_layers = (set(stats[(model, fw)]["layer"]) for fw in FRAMEWORKS)
    assert torch_layers == tf_layers == set(canonical_trainable(model))


def test_same_initial_weights_give_the_same_statistics_in_both_frameworks(runs):
    """Epoch 0: the very same weights (PyTorch's transposed back into Keras's layout). After training on the same
    batches, weights and fixed-batch gradients stay within float error, which Adam spreads to ~1e-5 relative."""
    _, stats, _ = runs
    torch_rows, tf_rows = (stats[("mlp", fw)].set_index(["epoch", "kind", "layer"]) for fw in FRAMEWORKS)
    start = torch_rows.loc[0]
    assert start.loc["weight", "norm"].tolist() == pytest.approx(tf_rows.loc[0].loc["weight", "norm"].tolist(),
                                                                 rel=1e-12)
    assert start.loc["weight", "histogram"].tolist() == tf_rows.loc[0].loc["weight", "histogram"].tolist()
    for epoch in (1, 2):
        for kind in ("weight", "grad"):
            ours, theirs = torch_rows.loc[epoch].loc[kind], tf_rows.loc[epoch].loc[kind]
            assert ours["norm"].tolist() == pytest.approx(theirs["norm"].tolist(), rel=1e-4, abs=1e-5), (epoch, kind)
            # Not the mean: of values around zero it is a cancellation, and amplifies the float error.
            assert ours["std"].tolist() == pytest.approx(theirs["std"].tolist(), rel=1e-4, abs=1e-6), (epoch, kind)
    # Training moved the weights: the comparison above is not of untouched tensors.
    assert torch_rows.loc[2].loc["weight", "norm"].tolist() != pytest.approx(start.loc["weight", "norm"].tolist())


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_switched_off_records_nothing_and_switched_on_changes_no_result(runs, framework):
    """The extra pass takes no optimizer step and leaves batch norm's moving statistics alone: a deterministic
    run trains to the very same losses and test loss (which reads the moving statistics) either way."""
    found, stats, losses = runs
    assert stats[("resnet_off", framework)].empty
    assert "layer_stats_s" not in found[("resnet_off", framework)].summary
    on, off = losses[("resnet", framework)], losses[("resnet_off", framework)]
    assert len(on) == 2 * 3 + 2 and on["value"].tolist() == off["value"].tolist()
    with_stats = found[("resnet", framework)].summary
    assert with_stats["param_count"] == found[("resnet_off", framework)].summary["param_count"]


# The statistics pass leaves nothing running that would slow the next epoch ------------------------
SPIN_PROBE = """
import json, os, sys, time
from engine.backends import get_backend
from engine.data import load_spec
from engine.loop import train
from engine.spec import RunSpec

def thread_cpu_s():
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            fields = open(f"/proc/self/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu[tid] = (int(fields[11]) + int(fields[12])) / ticks
    return cpu

class Sink:
    busy_s = []
    def step_metrics(self, *args): pass
    def epoch_metrics(self, *args): pass
    def progress(self, *args): pass
    def tensor_stats(self, rows):
        # The pass is over and the loop waits here: only a thread left running by the pass can use CPU now.
        before = thread_cpu_s()
        time.sleep(0.4)
        after = thread_cpu_s()
        main = str(os.getpid())
        self.busy_s.append(sum(after[t] - before.get(t, 0.0) for t in after if t != main))

spec = RunSpec(framework="torch", model="cnn", dataset="digits", epochs=2, max_steps_per_epoch=5,
               inference_iters=0, sample_hz=0)
summary = train(spec, get_backend("torch", "cpu"), load_spec(spec), Sink())
print(json.dumps({"busy_s": Sink.busy_s, "blas": summary["numpy_blas_threads"]}))
"""


def test_a_statistics_pass_leaves_no_thread_spinning_into_the_next_epoch():
    """numpy's OpenBLAS threads once spun ~0.1 s after the pass's np.dot, and the next epochs ran 35 % slower.

    Measured as CPU time, not speed: the pass is followed by 0.4 s in which the loop waits; any
    thread still running then (a BLAS pool spinning) is time the next epoch's OpenMP threads lose.
    """
    result = subprocess.run([sys.executable, "-c", SPIN_PROBE], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    probe = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(probe["busy_s"]) == 3  # epoch 0 (weights), 1 and 2
    assert max(probe["busy_s"]) < 0.03, probe  # clock ticks are 10 ms: at most a tick or two of stray work
    assert probe["blas"] and set(probe["blas"].values()) == {1}  # recorded with the run
