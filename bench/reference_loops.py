"""The reference side of bench/loop_overhead.py: each framework's own idiomatic training loop, per mode.

Self-contained on purpose: the models are written the way each framework's examples write them
(bench/reference_torch.py, bench/reference_keras.py; never engine/backends/*_models.py), so the
reference shares nothing with the engine but the canonical initial weights (engine/weights.py) and
the data. Every loop trains on full batches only -- n_train // batch_size steps an epoch, the
engine's steps_per_epoch -- so both sides do the same work, and returns its epoch times in seconds.
After every epoch each loop evaluates the test set, untimed, in batches of the engine's
EVAL_BATCH_SIZE, as the engine does and as the frameworks' examples do (pytorch/examples' test(),
Keras's fit(validation_data=...)): a pause between epochs that lets the framework's threads sleep
and its caches cool is then on both sides, not on the engine's alone.

This module imports no framework; `train_reference` and `reference_logits` import the one asked for.
"""
from __future__ import annotations

import importlib

import numpy as np

from engine.loop import EVAL_BATCH_SIZE  # noqa: F401  (the references import it from here)

# What each reference runs, for the report.
REFERENCE_LABELS: dict[tuple[str, str], str] = {
    ("torch", "eager"): "pytorch/examples loop: shuffled index slicing of pre-made tensors, test() each epoch",
    ("torch", "compiled"): "the same loop with model = torch.compile(model)",
    ("tensorflow", "graph"): "keras compile(jit_compile=False) + fit(shuffle=True, validation_data)",
    ("tensorflow", "eager"): "keras compile(run_eagerly=True) + fit(shuffle=True, validation_data)",
    ("tensorflow", "xla"): "keras compile(jit_compile=True) + fit(shuffle=True, validation_data)",
}

# The reference model of each framework, for the report and the README.
REFERENCE_MODELS: dict[tuple[str, str], str] = {
    ("torch", "mlp"): "nn.Sequential(Flatten, Linear 64-128, ReLU, Linear 128-10)",
    ("torch", "cnn"): "nn.Sequential of Conv2d/ReLU/MaxPool2d/Flatten/Linear, NCHW contiguous",
    ("torch", "mnist_cnn"): "pytorch/examples mnist Net (log_softmax out, nll_loss), NCHW contiguous",
    ("torch", "resnet"): "ResNet-20, basic blocks, option-A LambdaLayer shortcuts (akamaster/pytorch_resnet_cifar10)",
    ("torch", "lstm"): "nn.Embedding, nn.LSTM(batch_first=True), nn.Linear on the last hidden state; b_hh frozen at 0",
    ("torch", "transformer"): "nn.Embedding * sqrt(d) + sinusoid, nn.TransformerEncoder of 2 "
                              "nn.TransformerEncoderLayer (batch_first, post-norm, ReLU), mean pool, nn.Linear",
    ("tensorflow", "mlp"): "keras.Sequential(Flatten, Dense 128 relu, Dense 10)",
    ("tensorflow", "cnn"): "keras.Sequential(Conv2D x2 same, MaxPooling2D, Flatten, Dense x2)",
    ("tensorflow", "mnist_cnn"): "keras.Sequential of the same Net (Conv2D valid x2, MaxPooling2D, Dropout, Dense)",
    ("tensorflow", "resnet"): "functional ResNet-20, keras.applications style (ZeroPadding2D + valid Conv2D "
                              "at stride 2), keras.ops slice+pad shortcuts",
    ("tensorflow", "lstm"): "keras.Sequential(Embedding, LSTM 64, Dense)",
    ("tensorflow", "transformer"): "functional model of keras-io's TokenAndPositionEmbedding (fixed sinusoid) and "
                                   "TransformerBlock (MultiHeadAttention + LayerNormalization)",
}

# The engine's fairness choices that cost one framework speed, per (framework, model), and the
# informational "choice" variant that shows each cost on its own: the reference with that one
# choice flipped. Where the reference must make the engine's choice to compute the same function
# (PyTorch's frozen LSTM b_hh, Keras's symmetric stride-2 padding), the variant drops it instead.
CHOICE_VARIANTS: dict[tuple[str, str], str] = {
    ("torch", "cnn"): "reference + the engine's layout: channels_last memory format, NHWC-order flatten",
    ("torch", "mnist_cnn"): "reference + the engine's layout: channels_last memory format, NHWC-order flatten",
    ("torch", "resnet"): "reference + the engine's layout: channels_last memory format",
    ("torch", "lstm"): "reference with LSTM b_hh trainable (PyTorch's default; engine and reference freeze it)",
    ("tensorflow", "resnet"): "reference with padding='same' at stride 2 (keras-io's; shifted: not loss-checked)",
    ("tensorflow", "transformer"): "reference with keras-io's 2 dropouts a block (engine and reference: PyTorch's 4)",
}
# Variants whose model computes another function than the engine's (the loss check skips them).
UNCHECKED_CHOICES = {("tensorflow", "resnet")}

_MODULES = {"torch": "bench.reference_torch", "tensorflow": "bench.reference_keras"}


def full_batch_samples(n_train: int, batch_size: int) -> int:
    """Samples one epoch trains on when the last partial batch is dropped (as the engine does)."""
    return (n_train // batch_size) * batch_size


def sinusoid(length: int, dim: int) -> np.ndarray:
    """(length, dim) float32 positions of the PyTorch transformer tutorial's PositionalEncoding."""
    position = np.arange(length, dtype=np.float64)[:, None]
    div_term = np.exp(np.arange(0, dim, 2, dtype=np.float64) * (-np.log(10000.0) / dim))
    table = np.zeros((length, dim))
    table[:, 0::2] = np.sin(position * div_term)
    table[:, 1::2] = np.cos(position * div_term)
    return table.astype(np.float32)


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean softmax cross-entropy in float64: the loss both sides' outputs are compared by."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def train_reference(framework: str, model: str, mode: str, epochs: int, data, weights: dict, hparams: dict,
                    seed: int, choice: bool = False, use_loader: bool = False) -> list[float]:
    """Epoch times of the framework's reference loop; choice: the CHOICE_VARIANTS variant of the model."""
    module = importlib.import_module(_MODULES[framework])
    if framework == "torch":
        return module.torch_reference(model, mode, epochs, data, weights, hparams, seed, choice, use_loader)
    if use_loader:
        raise ValueError("use_loader: the DataLoader variant is PyTorch's; Keras's fit has its own data adapter")
    return module.keras_reference(model, mode, epochs, data, weights, hparams, seed, choice)


def reference_logits(framework: str, model: str, weights: dict, x: np.ndarray, choice: bool = False) -> np.ndarray:
    """The reference model's outputs on x (NHWC images or token ids) in inference mode, as numpy."""
    return importlib.import_module(_MODULES[framework]).logits(model, weights, x, choice)
