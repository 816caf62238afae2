"""engine/weights.py: canonical shapes, parameter counts and initial values, without a framework."""
import hashlib
import subprocess
import sys

import numpy as np
import pytest

from engine.catalog import DATASETS, EXPECTED_PARAM_COUNTS, MODELS
from engine.weights import (
    initial_weights, input_kind, layer_shapes, parameter_count, sinusoidal_positions, trainable,
)
from tests.conftest import REPO_ROOT

DEFAULT_SHAPES = {
    "mlp": (8, 8, 1), "cnn": (8, 8, 1), "mnist_cnn": (28, 28, 1), "resnet": (32, 32, 3),
    "lstm": (32,), "transformer": (32,), "powerlaw": (1,),
}


@pytest.mark.parametrize("model, input_shape, num_outputs, expected", [
    ("mlp", (8, 8, 1), 10, 9_610),
    ("cnn", (8, 8, 1), 10, 151_306),
    ("mnist_cnn", (28, 28, 1), 10, 1_199_882),  # pytorch/examples mnist/main.py's count
    ("mnist_cnn", (8, 8, 1), 10, 53_002),
    ("mnist_cnn", (32, 32, 3), 10, 1_626_442),
    ("resnet", (32, 32, 3), 10, 269_722),  # ResNet-20 with option-A shortcuts: He et al.'s 0.27M
    ("resnet", (8, 8, 1), 10, 269_434),  # only conv1 sees the channels
    ("lstm", (32,), 10, 27_530),
    ("transformer", (32,), 10, 19_466),
    ("transformer", (64,), 10, 19_466),  # positions are fixed, not learned
    ("powerlaw", (1,), 1, 1),
])
def test_parameter_counts(model, input_shape, num_outputs, expected):
    assert parameter_count(model, input_shape, num_outputs) == expected


@pytest.mark.parametrize("key", sorted(EXPECTED_PARAM_COUNTS))
def test_catalog_counts_agree(key):
    model, dataset = key
    info = DATASETS[dataset]
    assert parameter_count(model, info.input_shape, info.num_outputs) == EXPECTED_PARAM_COUNTS[key]


# sha256 over (name, float32 bytes) of every tensor, taken from the code before the model zoo
# grew: runs started before must start from the very same weights.
_CHECKSUMS = {
    ("mlp", (8, 8, 1), 0): "c6a288c6a23cae11",
    ("mlp", (8, 8, 1), 7): "00a4b3bf352e924c",
    ("mlp", (28, 28, 1), 0): "b87d55cedcc2d850",
    ("cnn", (8, 8, 1), 0): "14a1b0be791eeb0a",
    ("cnn", (8, 8, 1), 7): "7fedc62611c1fc28",
    ("powerlaw", (1,), 0): "a151bfdc89736c33",
}


@pytest.mark.parametrize("model, input_shape, seed", sorted(_CHECKSUMS))
def test_existing_models_keep_their_initial_weights(model, input_shape, seed):
    digest = hashlib.sha256()
    for name, value in initial_weights(model, input_shape, 1 if model == "powerlaw" else 10, seed).items():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    assert digest.hexdigest()[:16] == _CHECKSUMS[(model, input_shape, seed)]


@pytest.mark.parametrize("model", list(MODELS))
def test_weights_match_shapes_are_float32_and_follow_the_seed(model):
    shape, n = DEFAULT_SHAPES[model], 1 if model == "powerlaw" else 10
    weights = initial_weights(model, shape, n, seed=3)
    assert [(k, v.shape) for k, v in weights.items()] == layer_shapes(model, shape, n)
    assert all(v.dtype == np.float32 and np.all(np.isfinite(v)) for v in weights.values())
    again, other = initial_weights(model, shape, n, seed=3), initial_weights(model, shape, n, seed=4)
    assert all(np.array_equal(weights[k], again[k]) for k in weights)
    if model != "powerlaw":
        assert any(not np.array_equal(weights[k], other[k]) for k in weights)


def test_resnet_batch_norm_tensors_and_what_counts():
    shapes = dict(layer_shapes("resnet", (32, 32, 3), 10))
    weights = initial_weights("resnet", (32, 32, 3), 10, seed=0)
    stats = [n for n in shapes if not trainable(n)]
    assert len(stats) == 2 * 19  # moving mean and variance of 19 batch norms
    assert all(n.endswith(("/moving_mean", "/moving_variance")) for n in stats)
    total = sum(int(np.prod(s)) for s in shapes.values())
    assert total - parameter_count("resnet", (32, 32, 3), 10) == 2 * (16 * 7 + 32 * 6 + 64 * 6)
    for prefix in ("bn1", "stage2/block1/bn1", "stage3/block3/bn2"):
        assert np.all(weights[f"{prefix}/gamma"] == 1) and np.all(weights[f"{prefix}/beta"] == 0)
        assert np.all(weights[f"{prefix}/moving_mean"] == 0) and np.all(weights[f"{prefix}/moving_variance"] == 1)
    assert shapes["stage2/block1/conv1/kernel"] == (3, 3, 16, 32) and "stage2/block1/conv1/bias" not in shapes
    assert shapes["dense/kernel"] == (64, 10)


def test_lstm_uses_keras_initialisers():
    weights = initial_weights("lstm", (32,), 10, seed=0)
    bias = weights["lstm/bias"]
    assert np.all(bias[64:128] == 1) and np.all(bias[:64] == 0) and np.all(bias[128:] == 0)  # gates i, f, c, o
    recurrent = weights["lstm/recurrent_kernel"]
    assert recurrent.shape == (64, 256)
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(64), atol=1e-5)  # orthogonal rows
    embeddings = weights["embedding/embeddings"]
    assert np.abs(embeddings).max() <= 0.05 and embeddings.std() > 0.02


def test_transformer_attention_layout_and_glorot_fans():
    shapes = dict(layer_shapes("transformer", (32,), 10))
    assert shapes["layer1/attention/query/kernel"] == (32, 2, 16)
    assert shapes["layer1/attention/query/bias"] == (2, 16)
    assert shapes["layer2/attention/output/kernel"] == (2, 16, 32)
    assert shapes["layer1/ffn1/kernel"] == (32, 64) and shapes["layer1/ffn2/kernel"] == (64, 32)
    weights = initial_weights("transformer", (32,), 10, seed=0)
    # Keras's fans for (32, 2, 16): fan_in 2 * 32, fan_out 16 * 32.
    limit = np.sqrt(6.0 / (64 + 512))
    query = weights["layer1/attention/query/kernel"]
    assert np.abs(query).max() <= limit and np.abs(query).max() > 0.9 * limit
    assert np.all(weights["layer2/norm1/gamma"] == 1) and np.all(weights["layer2/norm1/beta"] == 0)


def test_sinusoidal_positions():
    table = sinusoidal_positions(50, 32)
    assert table.shape == (50, 32) and table.dtype == np.float32
    np.testing.assert_array_equal(table[0], np.tile([0.0, 1.0], 16))
    np.testing.assert_allclose(table[7, 0], np.sin(7.0), rtol=1e-6)


def test_input_kinds():
    assert [input_kind(m) for m in MODELS] == ["image"] * 4 + ["tokens"] * 2 + ["scalar"]


@pytest.mark.parametrize("call, match", [
    (lambda: layer_shapes("vgg", (8, 8, 1), 10), "unknown model 'vgg'"),
    (lambda: input_kind("vgg"), "unknown model 'vgg'"),
    (lambda: layer_shapes("cnn", (64,), 10), r"input_shape=\(64,\)"),
    (lambda: layer_shapes("lstm", (8, 8, 1), 10), r"input_shape=\(8, 8, 1\)"),
    (lambda: layer_shapes("mnist_cnn", (5, 5, 1), 10), r"at least 6x6; got input_shape=\(5, 5, 1\)"),
    (lambda: parameter_count("mlp", (8, 8, 1), 0), "num_outputs=0"),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_weights_and_parity_import_no_framework():
    code = ("import sys, engine.weights, engine.parity, engine.backends.count\n"
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
