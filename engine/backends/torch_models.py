"""The model zoo in PyTorch, and the conversions to and from the canonical (Keras) weight layout.

The mirror image of tensorflow_models.py, same function order. Image models take NCHW tensors
(any memory format: `.to(memory_format=torch.channels_last)` on module and input works), token
models (N, T) int64 ids, powerlaw (N, 1). Every model returns logits (N, num_outputs).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from engine.catalog import SYNTHETIC_TEXT_VOCAB
from engine.weights import (
    BN_MOMENTUM, EMBED_DIM, LSTM_UNITS, NORM_EPSILON, RESNET_BLOCKS, RESNET_FILTERS, TRANSFORMER_DROPOUT,
    TRANSFORMER_FEEDFORWARD, TRANSFORMER_HEADS, TRANSFORMER_LAYERS, layer_shapes, sinusoidal_positions,
)

# Whether oneDNN runs bf16 natively on this CPU (AVX512-BF16 / AMX); private but long-standing.
_ONEDNN_BF16 = bool(getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)())


class _PowerLaw(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.phi = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.pow(x, self.phi)


class _NHWCFlatten(nn.Module):
    """Flatten NCHW activations in NHWC order, so dense kernels match TensorFlow's layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A view, no copy, when x is in channels_last memory format.
        return x.permute(0, 2, 3, 1).flatten(1)


class _Shortcut(nn.Module):
    """ResNet "option A": subsample by the stride and zero-pad channels on both sides; no parameters."""

    def __init__(self, stride: int, pad_channels: int) -> None:
        super().__init__()
        self.stride, self.pad_channels = stride, pad_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad_channels:
            x = F.pad(x, (0, 0, 0, 0, self.pad_channels, self.pad_channels))
        return x


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = _batch_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, padding=1, bias=False)
        self.bn2 = _batch_norm(c_out)
        self.shortcut = _Shortcut(stride, (c_out - c_in) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _ResNet(nn.Module):
    def __init__(self, channels: int, num_outputs: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, RESNET_FILTERS[0], 3, 1, padding=1, bias=False)
        self.bn1 = _batch_norm(RESNET_FILTERS[0])
        c_in = RESNET_FILTERS[0]
        self.stages = nn.ModuleList()
        for index, filters in enumerate(RESNET_FILTERS):
            blocks = []
            for block in range(RESNET_BLOCKS):
                blocks.append(_BasicBlock(c_in, filters, 2 if index > 0 and block == 0 else 1))
                c_in = filters
            self.stages.append(nn.Sequential(*blocks))
        self.dense = nn.Linear(c_in, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            x = stage(x)
        return self.dense(x.mean(dim=(2, 3)))


class _LSTMClassifier(nn.Module):
    def __init__(self, num_outputs: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(SYNTHETIC_TEXT_VOCAB, EMBED_DIM)
        self.lstm = nn.LSTM(EMBED_DIM, LSTM_UNITS, batch_first=True)
        # Keras's LSTM has one bias, PyTorch's two (b_ih + b_hh). b_hh stays zero and frozen, so
        # both learn the same single bias and count the same parameters.
        with torch.no_grad():
            self.lstm.bias_hh_l0.zero_()
        self.lstm.bias_hh_l0.requires_grad_(False)
        self.dense = nn.Linear(LSTM_UNITS, num_outputs)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)
        if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") and not _ONEDNN_BF16:
            # CPU autocast hands the LSTM to oneDNN, which cannot build a bf16 LSTM without native
            # bf16 instructions. Do what autocast does (weights and input in the lower precision)
            # by hand, so PyTorch's own bf16 kernel runs; the casts pass gradients back to the fp32 weights.
            dtype = torch.get_autocast_dtype("cpu")
            with torch.autocast("cpu", enabled=False):
                params = {name: p.to(dtype) for name, p in self.lstm.named_parameters()}
                _, (hidden, _) = functional_call(self.lstm, params, (x.to(dtype),))
        else:
            _, (hidden, _) = self.lstm(x)
        return self.dense(hidden[-1])


class _Transformer(nn.Module):
    def __init__(self, length: int, num_outputs: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(SYNTHETIC_TEXT_VOCAB, EMBED_DIM)
        self.register_buffer("positions", torch.from_numpy(sinusoidal_positions(length, EMBED_DIM)), persistent=False)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                EMBED_DIM, TRANSFORMER_HEADS, TRANSFORMER_FEEDFORWARD, TRANSFORMER_DROPOUT,
                layer_norm_eps=NORM_EPSILON, batch_first=True, norm_first=False,
            )
            for _ in range(TRANSFORMER_LAYERS)
        )
        self.dense = nn.Linear(EMBED_DIM, num_outputs)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # Scaled by sqrt(d) as in "Attention is all you need", so positions do not drown the tokens.
        x = self.embedding(ids) * math.sqrt(EMBED_DIM) + self.positions[:ids.shape[1]]
        for layer in self.layers:
            x = layer(x)
        return self.dense(x.mean(dim=1))


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=NORM_EPSILON, momentum=1.0 - BN_MOMENTUM)


def build_model(model: str, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    """The model with PyTorch's own initialisers (seed torch first); image input_shape is (H, W, C)."""
    shapes = dict(layer_shapes(model, input_shape, num_outputs))  # validates model and shape
    if model == "mlp":
        return nn.Sequential(
            _NHWCFlatten(), nn.Linear(shapes["dense1/kernel"][0], 128), nn.ReLU(), nn.Linear(128, num_outputs)
        )
    if model == "cnn":
        channels = input_shape[2]
        return nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding="same"), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding="same"), nn.ReLU(),
            nn.MaxPool2d(2), _NHWCFlatten(),
            nn.Linear(shapes["dense1/kernel"][0], 128), nn.ReLU(),
            nn.Linear(128, num_outputs),
        )
    if model == "mnist_cnn":
        # pytorch/examples mnist/main.py, layer for layer (logits out; the loss applies log-softmax).
        channels = input_shape[2]
        return nn.Sequential(
            nn.Conv2d(channels, 32, 3, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Dropout(0.25), _NHWCFlatten(),
            nn.Linear(shapes["dense1/kernel"][0], 128), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(128, num_outputs),
        )
    if model == "resnet":
        return _ResNet(input_shape[2], num_outputs)
    if model == "lstm":
        return _LSTMClassifier(num_outputs)
    if model == "transformer":
        return _Transformer(input_shape[0], num_outputs)
    return _PowerLaw()


@dataclass(frozen=True)
class _Slot:
    """Where one canonical tensor lives in the module, and how its layout converts."""

    tensor: torch.Tensor  # a parameter or buffer
    rows: Optional[slice]  # a block of rows of tensor (q, k, v share one in_proj tensor)
    to_torch: Callable[[np.ndarray], np.ndarray]
    to_canonical: Callable[[np.ndarray], np.ndarray]

    def target(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.rows is None else tensor[self.rows]


def _same(array: np.ndarray) -> np.ndarray:
    return array


def _transpose(array: np.ndarray) -> np.ndarray:  # dense (in, out) <-> (out, in); its own inverse
    return array.T


def _hwio_to_oihw(kernel: np.ndarray) -> np.ndarray:
    return kernel.transpose(3, 2, 0, 1)


def _oihw_to_hwio(weight: np.ndarray) -> np.ndarray:
    return weight.transpose(2, 3, 1, 0)


def _linear(prefix: str, layer: nn.Linear | nn.Conv2d) -> dict[str, _Slot]:
    conv = isinstance(layer, nn.Conv2d)
    slots = {f"{prefix}/kernel": _Slot(layer.weight, None, _hwio_to_oihw if conv else _transpose,
                                       _oihw_to_hwio if conv else _transpose)}
    if layer.bias is not None:
        slots[f"{prefix}/bias"] = _Slot(layer.bias, None, _same, _same)
    return slots


def _norm(prefix: str, layer: nn.modules.batchnorm._BatchNorm | nn.LayerNorm) -> dict[str, _Slot]:
    slots = {f"{prefix}/gamma": _Slot(layer.weight, None, _same, _same),
             f"{prefix}/beta": _Slot(layer.bias, None, _same, _same)}
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):  # SyncBatchNorm too (a multi-worker run's)
        slots[f"{prefix}/moving_mean"] = _Slot(layer.running_mean, None, _same, _same)
        slots[f"{prefix}/moving_variance"] = _Slot(layer.running_var, None, _same, _same)
    return slots


def _attention(prefix: str, attention: nn.MultiheadAttention) -> dict[str, _Slot]:
    # PyTorch packs q, k, v as rows of one (3d, d) in_proj (out, in); output rows are head-major,
    # the same order as Keras's (heads, head_dim) axes, so a reshape plus transpose converts.
    d, heads = attention.embed_dim, attention.num_heads
    head_dim = d // heads
    slots = {}
    for index, projection in enumerate(("query", "key", "value")):
        rows = slice(index * d, (index + 1) * d)
        slots[f"{prefix}/{projection}/kernel"] = _Slot(
            attention.in_proj_weight, rows, lambda k: k.reshape(d, d).T, lambda w: w.T.reshape(d, heads, head_dim))
        slots[f"{prefix}/{projection}/bias"] = _Slot(
            attention.in_proj_bias, rows, lambda b: b.reshape(d), lambda b: b.reshape(heads, head_dim))
    slots[f"{prefix}/output/kernel"] = _Slot(
        attention.out_proj.weight, None, lambda k: k.reshape(d, d).T, lambda w: w.T.reshape(heads, head_dim, d))
    slots[f"{prefix}/output/bias"] = _Slot(attention.out_proj.bias, None, _same, _same)
    return slots


def _slots(module: nn.Module, model: str) -> dict[str, _Slot]:
    """Canonical name -> slot for every canonical tensor of the model."""
    if model == "powerlaw":
        return {"phi": _Slot(module.phi, None, _same, _same)}
    if model in ("mlp", "cnn", "mnist_cnn"):
        layers = [m for m in module if isinstance(m, (nn.Linear, nn.Conv2d))]
        convs = sum(isinstance(m, nn.Conv2d) for m in layers)
        names = [f"conv{i}" for i in range(1, convs + 1)] + [f"dense{i}" for i in range(1, len(layers) - convs + 1)]
        return {k: v for name, layer in zip(names, layers, strict=True) for k, v in _linear(name, layer).items()}
    if model == "resnet":
        slots = {**_linear("conv1", module.conv1), **_norm("bn1", module.bn1)}
        for stage_index, stage in enumerate(module.stages, start=1):
            for block_index, block in enumerate(stage, start=1):
                prefix = f"stage{stage_index}/block{block_index}"
                for part in ("conv1", "bn1", "conv2", "bn2"):
                    layer = getattr(block, part)
                    slots.update((_linear if part.startswith("conv") else _norm)(f"{prefix}/{part}", layer))
        return {**slots, **_linear("dense", module.dense)}
    slots = {"embedding/embeddings": _Slot(module.embedding.weight, None, _same, _same)}
    if model == "lstm":
        # PyTorch's gate order i, f, g, o is Keras's i, f, c, o (g is the cell candidate): no reordering.
        slots["lstm/kernel"] = _Slot(module.lstm.weight_ih_l0, None, _transpose, _transpose)
        slots["lstm/recurrent_kernel"] = _Slot(module.lstm.weight_hh_l0, None, _transpose, _transpose)
        slots["lstm/bias"] = _Slot(module.lstm.bias_ih_l0, None, _same, _same)
    else:
        for index, layer in enumerate(module.layers, start=1):
            prefix = f"layer{index}"
            slots.update(_attention(f"{prefix}/attention", layer.self_attn))
            slots.update(_norm(f"{prefix}/norm1", layer.norm1))
            slots.update(_linear(f"{prefix}/ffn1", layer.linear1))
            slots.update(_linear(f"{prefix}/ffn2", layer.linear2))
            slots.update(_norm(f"{prefix}/norm2", layer.norm2))
    return {**slots, **_linear("dense", module.dense)}


def load_canonical(module: nn.Module, model: str, weights: dict[str, np.ndarray]) -> None:
    """Copy canonical (Keras-layout) weights in, converting layouts; names must match exactly."""
    slots = _slots(module, model)
    if set(slots) != set(weights):
        missing, extra = sorted(set(slots) - set(weights)), sorted(set(weights) - set(slots))
        raise ValueError(f"{model} weights do not match the module: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for name, slot in slots.items():
            target = slot.target(slot.tensor)
            # np.array, not ascontiguousarray: that one turns phi's 0-d array into shape (1,).
            value = np.array(slot.to_torch(np.asarray(weights[name], dtype=np.float32)), order="C")
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"{name}: canonical shape {weights[name].shape} does not fit {tuple(target.shape)}")
            target.copy_(torch.from_numpy(value))


def canonical_gradients(module: nn.Module, model: str) -> dict[str, np.ndarray]:
    """The .grad of every trainable parameter under its canonical name and layout (zeros where unused)."""
    gradients = {}
    for name, slot in _slots(module, model).items():
        if not (isinstance(slot.tensor, nn.Parameter) and slot.tensor.requires_grad):
            continue  # moving statistics are buffers
        grad = slot.tensor.grad if slot.tensor.grad is not None else torch.zeros_like(slot.tensor)
        value = slot.target(grad).detach().float().cpu().numpy()
        gradients[name] = np.array(slot.to_canonical(value), dtype=np.float32, order="C")
    return gradients


def trainable_parameter_count(module: nn.Module) -> int:
    """Scalar parameters the optimizer updates (requires_grad only: the LSTM's frozen b_hh is not one)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
