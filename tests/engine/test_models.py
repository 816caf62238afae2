"""torch_models.py and tensorflow_models.py: both build every model, count alike, and convert layouts.

Each framework runs in its own process (never both in one); the probes print JSON the tests read.
"""
import json
import subprocess
import sys

import pytest

from engine.catalog import EXPECTED_PARAM_COUNTS, FRAMEWORKS, MODELS
from engine.spec import RunSpec
from engine.weights import layer_shapes, parameter_count, trainable
from tests.conftest import REPO_ROOT

# Small shapes, odd sizes included: stride-2 padding and the option-A shortcut must agree there too.
SHAPES = {"mlp": (8, 8, 1), "cnn": (8, 8, 1), "mnist_cnn": (10, 10, 3), "resnet": (9, 9, 3),
          "lstm": (12,), "transformer": (12,), "powerlaw": (1,)}

_COMMON = f"""
import json, numpy as np
from engine.backends.count import count
from engine.weights import initial_weights, layer_shapes, trainable
SHAPES = {SHAPES!r}
def outputs(model):
    return 1 if model == "powerlaw" else 10
def batch(model, n=4):
    rng = np.random.default_rng(1)
    shape = SHAPES[model]
    if model in ("lstm", "transformer"):
        return rng.integers(0, 64, (n,) + shape)
    return rng.random((n,) + shape, dtype=np.float32) + (0.1 if model == "powerlaw" else 0.0)
def weights(model):
    return initial_weights(model, SHAPES[model], outputs(model), seed=0)
def trainable_names(model):
    return sorted(n for n, _ in layer_shapes(model, SHAPES[model], outputs(model)) if trainable(n))
def load_error(zoo, model):
    partial = dict(weights(model))
    partial.pop(next(iter(partial)))
    try:
        zoo.load_canonical(zoo.build_model(model, SHAPES[model], outputs(model)), model, partial)
    except ValueError as error:
        return str(error)
report = {{}}
"""

_TORCH_PROBE = _COMMON + """
import torch
from engine.backends import torch_models as zoo
torch.manual_seed(0)
for model in SHAPES:
    r = report[model] = {}
    image = len(SHAPES[model]) == 3
    x = torch.from_numpy(batch(model))
    x = x.permute(0, 3, 1, 2).contiguous() if image else x
    own = zoo.build_model(model, SHAPES[model], outputs(model))  # same_init=False: PyTorch's initialisers
    r["own_init_finite"] = bool(torch.isfinite(own.eval()(x)).all())
    module = zoo.build_model(model, SHAPES[model], outputs(model))
    zoo.load_canonical(module, model, weights(model))
    module.eval()
    out = module(x)
    out.sum().backward()
    grads = zoo.canonical_gradients(module, model)
    r["count"] = zoo.trainable_parameter_count(module)
    r["output_shape"] = list(out.shape)
    r["gradient_names_match"] = sorted(grads) == trainable_names(model)
    r["gradient_shapes_match"] = all(grads[n].shape == w.shape for n, w in weights(model).items() if n in grads)
    if image:  # the backend may run conv models in channels_last memory format
        module.zero_grad()
        module = module.to(memory_format=torch.channels_last)
        out_cl = module(x.to(memory_format=torch.channels_last))
        out_cl.sum().backward()
        grads_cl = zoo.canonical_gradients(module, model)
        r["channels_last_output_diff"] = float((out_cl - out).abs().max())
        r["channels_last_gradient_diff"] = max(float(np.abs(grads_cl[n] - grads[n]).max()) for n in grads)
    module.train()
    module.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what mixed precision does on CPU
        out16 = module(x)
    out16.float().sum().backward()
    r["bf16_finite"] = bool(torch.isfinite(out16.float()).all()) and all(
        np.isfinite(g).all() for g in zoo.canonical_gradients(module, model).values())
    r["load_error"] = load_error(zoo, model)
lstm = zoo.build_model("lstm", (12,), 10)
report["lstm"]["b_hh"] = [bool(lstm.lstm.bias_hh_l0.requires_grad), float(lstm.lstm.bias_hh_l0.abs().max())]
report["counts"] = count("torch")
print(json.dumps(report))
"""

_TENSORFLOW_PROBE = _COMMON + """
import keras, tensorflow as tf
from engine.backends import tensorflow_models as zoo
keras.utils.set_random_seed(0)
for model in SHAPES:
    r = report[model] = {}
    x = batch(model)
    own = zoo.build_model(model, SHAPES[model], outputs(model))  # same_init=False: Keras's initialisers
    r["own_init_finite"] = bool(np.isfinite(own(x, training=False).numpy()).all())
    module = zoo.build_model(model, SHAPES[model], outputs(model))
    zoo.load_canonical(module, model, weights(model))
    with tf.GradientTape() as tape:
        out = module(x, training=False)
        total = tf.reduce_sum(out)
    grads = zoo.canonical_gradients(module, model, tape.gradient(total, module.trainable_variables))
    r["count"] = zoo.trainable_parameter_count(module)
    r["output_shape"] = list(out.shape)
    r["gradient_names_match"] = sorted(grads) == trainable_names(model)
    r["gradient_shapes_match"] = all(grads[n].shape == w.shape for n, w in weights(model).items() if n in grads)
    if len(SHAPES[model]) == 3:
        # TensorFlow's CPU kernels run NHWC only; XLA compiles NCHW convolutions on CPU too.
        first = zoo.build_model(model, SHAPES[model], outputs(model), data_format="channels_first")
        zoo.load_canonical(first, model, weights(model))
        r["channels_first_count"] = zoo.trainable_parameter_count(first)
        run = tf.function(lambda t: first(t, training=False), jit_compile=True)
        r["channels_first_output_diff"] = float(np.abs(run(x.transpose(0, 3, 1, 2)).numpy() - out.numpy()).max())
    r["load_error"] = load_error(zoo, model)
keras.mixed_precision.set_global_policy("mixed_bfloat16")
for model in SHAPES:
    module = zoo.build_model(model, SHAPES[model], outputs(model))
    zoo.load_canonical(module, model, weights(model))
    with tf.GradientTape() as tape:
        out16 = module(batch(model), training=True)
        total = tf.reduce_sum(tf.cast(out16, tf.float32))
    grads = zoo.canonical_gradients(module, model, tape.gradient(total, module.trainable_variables))
    report[model]["bf16_finite"] = bool(np.isfinite(tf.cast(out16, tf.float32).numpy()).all()) and all(
        np.isfinite(g).all() for g in grads.values())
keras.mixed_precision.set_global_policy("float32")
report["counts"] = count("tensorflow")
print(json.dumps(report))
"""


def _run_both(scripts: dict[str, list[str]]) -> dict[str, str]:
    """Start one process per framework at once; return each one's last stdout line."""
    procs = {fw: subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for fw, args in scripts.items()}
    lines = {}
    for fw, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{fw} failed:\n{stderr[-4000:]}"
        lines[fw] = stdout.strip().splitlines()[-1]
    return lines


@pytest.fixture(scope="module")
def probes() -> dict[str, dict]:
    lines = _run_both({"torch": ["-c", _TORCH_PROBE], "tensorflow": ["-c", _TENSORFLOW_PROBE]})
    return {fw: json.loads(line) for fw, line in lines.items()}


@pytest.mark.parametrize("key", [f"{m.name}/{d}" for m in MODELS.values() for d in m.datasets])
def test_both_frameworks_count_the_canonical_parameters(probes, key):
    """engine.backends.count (what `python -m engine models` shows) on every model and dataset."""
    model, dataset = key.split("/")
    spec = RunSpec(framework="torch", model=model, dataset=dataset)
    expected = parameter_count(model, spec.input_shape(), spec.num_outputs())
    assert probes["torch"]["counts"][key] == probes["tensorflow"]["counts"][key] == expected
    if (model, dataset) in EXPECTED_PARAM_COUNTS:
        assert expected == EXPECTED_PARAM_COUNTS[(model, dataset)]


def test_count_rejects_an_unknown_framework():
    result = subprocess.run([sys.executable, "-m", "engine.backends.count", "jax"], cwd=REPO_ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "'jax'" in result.stderr


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("model", list(MODELS))
def test_model_builds_loads_and_returns_canonical_gradients(probes, framework, model):
    r = probes[framework][model]
    outputs = 1 if model == "powerlaw" else 10
    assert r["count"] == parameter_count(model, SHAPES[model], outputs)
    assert r["output_shape"] == [4, outputs]
    assert r["gradient_names_match"] and r["gradient_shapes_match"]
    assert r["own_init_finite"], "a model built without canonical weights must still run"
    assert r["bf16_finite"], "must run under mixed precision (bf16 autocast / mixed_bfloat16 policy)"
    missing = layer_shapes(model, SHAPES[model], outputs)[0][0]
    assert missing in r["load_error"]


@pytest.mark.parametrize("model", [m for m in MODELS if len(SHAPES[m]) == 3])
def test_memory_and_data_formats_compute_the_same_function(probes, model):
    torch_r, tf_r = probes["torch"][model], probes["tensorflow"][model]
    assert torch_r["channels_last_output_diff"] <= 1e-5 and torch_r["channels_last_gradient_diff"] <= 1e-5
    assert tf_r["channels_first_count"] == tf_r["count"]
    assert tf_r["channels_first_output_diff"] <= 1e-5


def test_torch_lstm_second_bias_is_frozen_at_zero(probes):
    assert probes["torch"]["lstm"]["b_hh"] == [False, 0.0]
    assert not any(trainable(n) is False for n, _ in layer_shapes("lstm", (12,), 10))
