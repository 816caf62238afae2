"""Initial weights made once, in numpy, from the seed, and loaded into either framework.

The canonical layout is Keras's: dense kernels (in, out), conv kernels HWIO, a flatten that reads
NHWC order, LSTM kernels (in, 4 * units) in gate order i, f, c, o, attention kernels (model, heads,
head_dim) and (heads, head_dim, model). torch_models.py converts to and from PyTorch's layouts, so
both frameworks start from the very same function.

The architecture's numbers live here too, so the two builders and the canonical shapes read one
source and cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine.catalog import SYNTHETIC_TEXT_VOCAB

EMBED_DIM = 32  # lstm and transformer token embeddings
LSTM_UNITS = 64
TRANSFORMER_LAYERS = 2
TRANSFORMER_HEADS = 2
TRANSFORMER_FEEDFORWARD = 64
TRANSFORMER_DROPOUT = 0.1
RESNET_FILTERS = (16, 32, 64)  # one stage each; every stage after the first halves H and W
RESNET_BLOCKS = 3  # basic blocks per stage: 1 + 3 * 3 * 2 + 1 = 20 layers
# PyTorch's normalisation defaults; Keras's are 1e-3, so both builders pass this one explicitly.
NORM_EPSILON = 1e-5
# Keras convention (new = momentum * old + (1 - momentum) * batch); PyTorch's momentum is 1 - this.
BN_MOMENTUM = 0.9

_IMAGE_MODELS = ("mlp", "cnn", "mnist_cnn", "resnet")
_TOKEN_MODELS = ("lstm", "transformer")


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]
    init: str  # glorot | zeros | ones | orthogonal | forget_bias | embedding


def input_kind(model: str) -> str:
    """What one sample is: "image" (H, W, C; NCHW in PyTorch), "tokens" (T int ids) or "scalar"."""
    if model in _IMAGE_MODELS:
        return "image"
    if model in _TOKEN_MODELS:
        return "tokens"
    if model == "powerlaw":
        return "scalar"
    raise ValueError(f"unknown model {model!r}")


def sinusoidal_positions(length: int, dim: int) -> np.ndarray:
    """(length, dim) float32 positional encoding of "Attention is all you need": sin on even, cos on odd."""
    position = np.arange(length, dtype=np.float64)[:, None]
    rate = np.exp(-np.log(10000.0) * np.arange(0, dim, 2, dtype=np.float64) / dim)
    table = np.zeros((length, dim))
    table[:, 0::2] = np.sin(position * rate)
    table[:, 1::2] = np.cos(position * rate)
    return table.astype(np.float32)


def layer_shapes(model: str, input_shape: tuple[int, ...], num_outputs: int) -> list[tuple[str, tuple[int, ...]]]:
    """(tensor name, canonical shape) for every tensor of a model, non-trainable ones included, in a fixed order."""
    return [(t.name, t.shape) for t in _tensors(model, input_shape, num_outputs)]


def trainable(name: str) -> bool:
    """Whether a canonical tensor is learned (batch-norm moving statistics are not)."""
    return not name.endswith(("/moving_mean", "/moving_variance"))


def initial_weights(model: str, input_shape: tuple[int, ...], num_outputs: int, seed: int) -> dict[str, np.ndarray]:
    """Keras's default initialisers, drawn in order from one generator seeded by the seed; phi starts at 1."""
    rng = np.random.default_rng([seed, 0x5EED])
    return {t.name: _INITIALISERS[t.init](rng, t.shape) for t in _tensors(model, input_shape, num_outputs)}


def parameter_count(model: str, input_shape: tuple[int, ...], num_outputs: int) -> int:
    """Number of trainable scalar parameters by the canonical layout."""
    return sum(int(np.prod(shape)) for name, shape in layer_shapes(model, input_shape, num_outputs) if trainable(name))


def _glorot(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # Keras's fans: the last two axes times the product of the others (conv receptive field, or
    # the model axis of an attention kernel).
    receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
    fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=shape).astype(np.float32)


def _orthogonal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # Keras's Orthogonal: QR of a tall Gaussian matrix, signs fixed by R's diagonal.
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    q, r = np.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
    q *= np.sign(np.diag(r))
    return (q.T if rows < cols else q).reshape(shape).astype(np.float32)


def _forget_bias(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    # Keras's unit_forget_bias: gates i, f, c, o; the forget gate starts open.
    bias = np.zeros(shape, dtype=np.float32)
    units = shape[0] // 4
    bias[units:2 * units] = 1.0
    return bias


_INITIALISERS: dict[str, Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]] = {
    "glorot": _glorot,
    "orthogonal": _orthogonal,
    "forget_bias": _forget_bias,
    "embedding": lambda rng, shape: rng.uniform(-0.05, 0.05, size=shape).astype(np.float32),
    "zeros": lambda rng, shape: np.zeros(shape, dtype=np.float32),
    "ones": lambda rng, shape: np.ones(shape, dtype=np.float32),
}


def _dense(name: str, n_in: int, n_out: int) -> list[_Tensor]:
    return [_Tensor(f"{name}/kernel", (n_in, n_out), "glorot"), _Tensor(f"{name}/bias", (n_out,), "zeros")]


def _conv(name: str, c_in: int, c_out: int, bias: bool = True) -> list[_Tensor]:
    kernel = [_Tensor(f"{name}/kernel", (3, 3, c_in, c_out), "glorot")]
    return kernel + [_Tensor(f"{name}/bias", (c_out,), "zeros")] if bias else kernel


def _batch_norm(name: str, channels: int) -> list[_Tensor]:
    return [_Tensor(f"{name}/{part}", (channels,), init) for part, init in
            (("gamma", "ones"), ("beta", "zeros"), ("moving_mean", "zeros"), ("moving_variance", "ones"))]


def _layer_norm(name: str, channels: int) -> list[_Tensor]:
    return [_Tensor(f"{name}/gamma", (channels,), "ones"), _Tensor(f"{name}/beta", (channels,), "zeros")]


def _image(model: str, input_shape: tuple[int, ...], smallest: int) -> tuple[int, int, int]:
    dims = tuple(input_shape)
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"model {model!r} takes images (height, width, channels); got input_shape={input_shape!r}")
    if min(dims[:2]) < smallest:
        raise ValueError(
            f"model {model!r} needs images of at least {smallest}x{smallest}; got input_shape={input_shape!r}")
    return dims


def _mlp(input_shape: tuple[int, ...], num_outputs: int) -> list[_Tensor]:
    n_in = int(np.prod(_image("mlp", input_shape, 1)))
    return _dense("dense1", n_in, 128) + _dense("dense2", 128, num_outputs)


def _cnn(input_shape: tuple[int, ...], num_outputs: int) -> list[_Tensor]:
    height, width, channels = _image("cnn", input_shape, 2)
    # 'same' padding keeps H x W through both convs; one 2x2 max-pool halves it.
    flat = (height // 2) * (width // 2) * 64
    return (_conv("conv1", channels, 32) + _conv("conv2", 32, 64)
            + _dense("dense1", flat, 128) + _dense("dense2", 128, num_outputs))


def _mnist_cnn(input_shape: tuple[int, ...], num_outputs: int) -> list[_Tensor]:
    height, width, channels = _image("mnist_cnn", input_shape, 6)
    # Two 'valid' 3x3 convs take 4 off each side length, then a 2x2 max-pool halves it (floor).
    flat = ((height - 4) // 2) * ((width - 4) // 2) * 64
    return (_conv("conv1", channels, 32) + _conv("conv2", 32, 64)
            + _dense("dense1", flat, 128) + _dense("dense2", 128, num_outputs))


def _resnet(input_shape: tuple[int, ...], num_outputs: int) -> list[_Tensor]:
    channels = _image("resnet", input_shape, 1)[2]
    # No conv biases: each conv feeds a batch norm whose beta does that job.
    tensors = _conv("conv1", channels, RESNET_FILTERS[0], bias=False) + _batch_norm("bn1", RESNET_FILTERS[0])
    c_in = RESNET_FILTERS[0]
    for stage, filters in enumerate(RESNET_FILTERS, start=1):
        for block in range(1, RESNET_BLOCKS + 1):
            prefix = f"stage{stage}/block{block}"
            tensors += _conv(f"{prefix}/conv1", c_in, filters, bias=False) + _batch_norm(f"{prefix}/bn1", filters)
            tensors += _conv(f"{prefix}/conv2", filters, filters, bias=False) + _batch_norm(f"{prefix}/bn2", filters)
            c_in = filters
    return tensors + _dense("dense", c_in, num_outputs)


def _tokens(model: str, input_shape: tuple[int, ...]) -> int:
    if len(tuple(input_shape)) != 1 or input_shape[0] < 1:
        raise ValueError(f"model {model!r} takes token sequences (length,); got input_shape={input_shape!r}")
    return int(input_shape[0])


def _lstm(input_shape: tuple[int, ...], num_outputs: int) -> list[_Tensor]:
    _tokens("lstm", input_shape)
    return [
        _Tensor("embedding/embeddings", (SYNTHETIC_TEXT_VOCAB, EMBED_DIM), "embedding"),
        _Tensor("lstm/kernel", (EMBED_DIM, 4 * LSTM_UNITS), "glorot"),
        _Tensor("lstm/recurrent_kernel", (LSTM_UNITS, 4 * LSTM_UNITS), "orthogonal"),
        _Tensor("lstm/bias", (4 * LSTM_UNITS,), "forget_bias"),
    ] + _dense("dense", LSTM_UNITS, num_outputs)


def _transformer(input_shape: tuple[int, ...], num_outputs: int) -> list[_Tensor]:
    _tokens("transformer", input_shape)
    heads, head_dim = TRANSFORMER_HEADS, EMBED_DIM // TRANSFORMER_HEADS
    tensors = [_Tensor("embedding/embeddings", (SYNTHETIC_TEXT_VOCAB, EMBED_DIM), "embedding")]
    for layer in range(1, TRANSFORMER_LAYERS + 1):
        attention = f"layer{layer}/attention"
        for projection in ("query", "key", "value"):
            tensors += [_Tensor(f"{attention}/{projection}/kernel", (EMBED_DIM, heads, head_dim), "glorot"),
                        _Tensor(f"{attention}/{projection}/bias", (heads, head_dim), "zeros")]
        tensors += [_Tensor(f"{attention}/output/kernel", (heads, head_dim, EMBED_DIM), "glorot"),
                    _Tensor(f"{attention}/output/bias", (EMBED_DIM,), "zeros")]
        tensors += _layer_norm(f"layer{layer}/norm1", EMBED_DIM)
        tensors += _dense(f"layer{layer}/ffn1", EMBED_DIM, TRANSFORMER_FEEDFORWARD)
        tensors += _dense(f"layer{layer}/ffn2", TRANSFORMER_FEEDFORWARD, EMBED_DIM)
        tensors += _layer_norm(f"layer{layer}/norm2", EMBED_DIM)
    return tensors + _dense("dense", EMBED_DIM, num_outputs)


def _powerlaw(input_shape: tuple[int, ...], num_outputs: int) -> list[_Tensor]:
    return [_Tensor("phi", (), "ones")]


_MODELS: dict[str, Callable[[tuple[int, ...], int], list[_Tensor]]] = {
    "mlp": _mlp, "cnn": _cnn, "mnist_cnn": _mnist_cnn, "resnet": _resnet,
    "lstm": _lstm, "transformer": _transformer, "powerlaw": _powerlaw,
}


def _tensors(model: str, input_shape: tuple[int, ...], num_outputs: int) -> list[_Tensor]:
    if model not in _MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(_MODELS)}")
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, (int, np.integer)) or num_outputs < 1:
        raise ValueError(f"num_outputs={num_outputs!r}: expected a whole number >= 1")
    return _MODELS[model](tuple(int(d) for d in input_shape), int(num_outputs))
