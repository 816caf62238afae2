"""Initial weights made once, in numpy, from the seed, and loaded into either framework.

The canonical layout is Keras's: dense kernels (in, out), conv kernels HWIO, and a flatten that
reads NHWC order. The PyTorch backend converts (dense transpose, conv HWIO -> OIHW, and flattens
in NHWC order), so both frameworks start from the very same function.
"""
from __future__ import annotations

import numpy as np

# Layer list per model: (name, kind, shape of the kernel). Biases follow each kernel.
# Shapes depend on the input, so they are computed in layer_shapes().


def layer_shapes(model: str, input_shape: tuple[int, ...], num_outputs: int) -> list[tuple[str, tuple[int, ...]]]:
    """(parameter name, canonical shape) for every parameter of a model, in a fixed order."""
    if model == "mlp":
        n_in = int(np.prod(input_shape))
        return [
            ("dense1/kernel", (n_in, 128)), ("dense1/bias", (128,)),
            ("dense2/kernel", (128, num_outputs)), ("dense2/bias", (num_outputs,)),
        ]
    if model == "cnn":
        height, width, channels = input_shape
        # 'same' padding keeps H x W through both convs; one 2x2 max-pool halves it.
        flat = (height // 2) * (width // 2) * 64
        return [
            ("conv1/kernel", (3, 3, channels, 32)), ("conv1/bias", (32,)),
            ("conv2/kernel", (3, 3, 32, 64)), ("conv2/bias", (64,)),
            ("dense1/kernel", (flat, 128)), ("dense1/bias", (128,)),
            ("dense2/kernel", (128, num_outputs)), ("dense2/bias", (num_outputs,)),
        ]
    if model == "powerlaw":
        return [("phi", ())]
    raise ValueError(f"unknown model {model!r}")


def initial_weights(model: str, input_shape: tuple[int, ...], num_outputs: int, seed: int) -> dict[str, np.ndarray]:
    """Glorot-uniform kernels and zero biases (Keras's defaults), drawn from the seed; phi starts at 1."""
    rng = np.random.default_rng([seed, 0x5EED])
    weights: dict[str, np.ndarray] = {}
    for name, shape in layer_shapes(model, input_shape, num_outputs):
        if name == "phi":
            weights[name] = np.array(1.0, dtype=np.float32)
        elif name.endswith("/bias"):
            weights[name] = np.zeros(shape, dtype=np.float32)
        else:
            receptive = int(np.prod(shape[:-2])) if len(shape) > 2 else 1
            fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            weights[name] = rng.uniform(-limit, limit, size=shape).astype(np.float32)
    return weights


def parameter_count(model: str, input_shape: tuple[int, ...], num_outputs: int) -> int:
    """Number of scalar parameters by the canonical layout."""
    return sum(int(np.prod(shape)) for _, shape in layer_shapes(model, input_shape, num_outputs))
