"""The model zoo in Keras (TensorFlow backend); weights are already in the canonical layout.

The mirror image of torch_models.py, same function order. Image models take NHWC input, or NCHW
with data_format="channels_first" (TensorFlow's CPU convolutions run NHWC only); token models
(N, T) integer ids; powerlaw (N, 1). Every model returns logits (N, num_outputs). Layers are named
after the canonical tensors ("stage1.block1.conv1" holds "stage1/block1/conv1/kernel": Keras
forbids "/" in layer names).
"""
from __future__ import annotations

import contextlib
import math
import os
import re

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import keras

from engine.catalog import SYNTHETIC_TEXT_VOCAB
from engine.weights import (
    BN_MOMENTUM, EMBED_DIM, LSTM_UNITS, NORM_EPSILON, RESNET_BLOCKS, RESNET_FILTERS, TRANSFORMER_DROPOUT,
    TRANSFORMER_FEEDFORWARD, TRANSFORMER_HEADS, TRANSFORMER_LAYERS, layer_shapes, sinusoidal_positions,
)

layers = keras.layers


class _PowerLaw(keras.Model):
    def __init__(self) -> None:
        super().__init__(name="powerlaw")
        self.phi = self.add_weight(shape=(), initializer="ones", name="phi")

    def call(self, x):
        return keras.ops.power(x, keras.ops.cast(self.phi, x.dtype))


class _PositionalEncoding(layers.Layer):
    """Token embeddings scaled by sqrt(d) plus the fixed sinusoidal table; no parameters."""

    def __init__(self, length: int, dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.table = sinusoidal_positions(length, dim)

    def call(self, x):
        # The table is cast to the compute dtype, so a mixed_bfloat16 policy adds bf16 to bf16.
        if x.shape[1] is not None:
            table = self.table[None, :x.shape[1]]
        else:  # a free sequence length (variable-length batches): sliced at run time
            table = keras.ops.convert_to_tensor(self.table)[None, :keras.ops.shape(x)[1]]
        positions = keras.ops.cast(table, x.dtype)
        return x * math.sqrt(self.table.shape[1]) + positions


class _Shortcut(layers.Layer):
    """ResNet "option A": subsample by the stride and zero-pad channels on both sides; no parameters."""

    def __init__(self, stride: int, pad_channels: int, data_format: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.stride, self.pad_channels, self.data_format = stride, pad_channels, data_format

    def call(self, x):
        s, p = self.stride, self.pad_channels
        if self.data_format == "channels_last":
            return keras.ops.pad(x[:, ::s, ::s, :], [[0, 0], [0, 0], [0, 0], [p, p]])
        return keras.ops.pad(x[:, :, ::s, ::s], [[0, 0], [p, p], [0, 0], [0, 0]])


_SYNCHRONIZED = [False]  # set by synchronized_batch_norm while a model is built


@contextlib.contextmanager
def synchronized_batch_norm(on: bool):
    """Batch norm layers built inside take their statistics over every worker (Keras's synchronized=True)."""
    _SYNCHRONIZED[0] = on
    try:
        yield
    finally:
        _SYNCHRONIZED[0] = False


def _conv_bn(x, prefix: str, index: int, filters: int, stride: int, data_format: str):
    """conv{index} (3x3, no bias) then bn{index}, named under prefix."""
    if stride > 1:
        # 'same' with stride 2 pads 0 before and 1 after; PyTorch's padding=1 pads 1 on both sides.
        x = layers.ZeroPadding2D(1, data_format=data_format, name=f"{prefix}conv{index}.pad")(x)
    x = layers.Conv2D(filters, 3, strides=stride, padding="same" if stride == 1 else "valid",
                      data_format=data_format, use_bias=False, name=f"{prefix}conv{index}")(x)
    axis = -1 if data_format == "channels_last" else 1
    return layers.BatchNormalization(axis=axis, momentum=BN_MOMENTUM, epsilon=NORM_EPSILON,
                                     synchronized=_SYNCHRONIZED[0], name=f"{prefix}bn{index}")(x)


def _resnet(inputs, num_outputs: int, data_format: str):
    x = layers.ReLU()(_conv_bn(inputs, "", 1, RESNET_FILTERS[0], 1, data_format))
    c_in = RESNET_FILTERS[0]
    for index, filters in enumerate(RESNET_FILTERS):
        for block in range(RESNET_BLOCKS):
            stride = 2 if index > 0 and block == 0 else 1
            prefix = f"stage{index + 1}.block{block + 1}."
            out = layers.ReLU()(_conv_bn(x, prefix, 1, filters, stride, data_format))
            out = _conv_bn(out, prefix, 2, filters, 1, data_format)
            shortcut = x if stride == 1 and c_in == filters else _Shortcut(
                stride, (filters - c_in) // 2, data_format, name=f"{prefix}shortcut")(x)
            x = layers.ReLU()(layers.Add()([out, shortcut]))
            c_in = filters
    x = layers.GlobalAveragePooling2D(data_format=data_format)(x)
    return layers.Dense(num_outputs, name="dense")(x)


def _transformer(inputs, length: int, num_outputs: int):
    x = layers.Embedding(SYNTHETIC_TEXT_VOCAB, EMBED_DIM, name="embedding")(inputs)
    x = _PositionalEncoding(length, EMBED_DIM, name="positions")(x)
    for index in range(1, TRANSFORMER_LAYERS + 1):
        # Post-norm, dropouts where nn.TransformerEncoderLayer has them: attention weights,
        # attention output, after the feed-forward activation and after its output.
        attention = layers.MultiHeadAttention(TRANSFORMER_HEADS, EMBED_DIM // TRANSFORMER_HEADS,
                                              dropout=TRANSFORMER_DROPOUT, name=f"layer{index}.attention")(x, x)
        attention = layers.Dropout(TRANSFORMER_DROPOUT)(attention)
        x = layers.LayerNormalization(epsilon=NORM_EPSILON, name=f"layer{index}.norm1")(layers.Add()([x, attention]))
        ffn = layers.Dense(TRANSFORMER_FEEDFORWARD, activation="relu", name=f"layer{index}.ffn1")(x)
        ffn = layers.Dropout(TRANSFORMER_DROPOUT)(ffn)
        ffn = layers.Dropout(TRANSFORMER_DROPOUT)(layers.Dense(EMBED_DIM, name=f"layer{index}.ffn2")(ffn))
        x = layers.LayerNormalization(epsilon=NORM_EPSILON, name=f"layer{index}.norm2")(layers.Add()([x, ffn]))
    x = layers.GlobalAveragePooling1D()(x)
    return layers.Dense(num_outputs, name="dense")(x)


def build_model(model: str, input_shape: tuple[int, ...], num_outputs: int,
                data_format: str = "channels_last", free_length: bool = False) -> keras.Model:
    """The model, built, with Keras's own initialisers (seed Keras first); image input_shape is (H, W, C).

    free_length: a sequence model takes any length up to input_shape[0] (variable-length batches).
    """
    layer_shapes(model, input_shape, num_outputs)  # validates model and shape
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(f"data_format={data_format!r}: expected channels_last or channels_first")
    if model == "powerlaw":
        module = _PowerLaw()
        module.build((None,) + tuple(input_shape))
        return module
    if model in ("lstm", "transformer"):
        inputs = keras.Input((None,) if free_length else tuple(input_shape), dtype="int32")
        if model == "lstm":
            x = layers.Embedding(SYNTHETIC_TEXT_VOCAB, EMBED_DIM, name="embedding")(inputs)
            x = layers.LSTM(LSTM_UNITS, name="lstm")(x)  # the last hidden state
            return keras.Model(inputs, layers.Dense(num_outputs, name="dense")(x), name=model)
        return keras.Model(inputs, _transformer(inputs, input_shape[0], num_outputs), name=model)

    height, width, channels = input_shape
    shape = (height, width, channels) if data_format == "channels_last" else (channels, height, width)
    inputs = keras.Input(shape)
    if model == "resnet":
        return keras.Model(inputs, _resnet(inputs, num_outputs, data_format), name=model)
    fmt = {"data_format": data_format}
    # Flatten(data_format=...) reads channels_first activations in NHWC order: one kernel layout.
    if model == "mlp":
        stack = [layers.Flatten(**fmt)]
    elif model == "cnn":
        stack = [layers.Conv2D(32, 3, padding="same", activation="relu", name="conv1", **fmt),
                 layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2", **fmt),
                 layers.MaxPooling2D(2, **fmt), layers.Flatten(**fmt)]
    else:  # mnist_cnn: pytorch/examples mnist/main.py, layer for layer
        stack = [layers.Conv2D(32, 3, activation="relu", name="conv1", **fmt),
                 layers.Conv2D(64, 3, activation="relu", name="conv2", **fmt),
                 layers.MaxPooling2D(2, **fmt), layers.Dropout(0.25), layers.Flatten(**fmt)]
    stack.append(layers.Dense(128, activation="relu", name="dense1"))
    if model == "mnist_cnn":
        stack.append(layers.Dropout(0.5))
    stack.append(layers.Dense(num_outputs, name="dense2"))
    x = inputs
    for layer in stack:
        x = layer(x)
    return keras.Model(inputs, x, name=model)


def _canonical_name(variable) -> str:
    # "stage1.block1.bn1/gamma" -> "stage1/block1/bn1/gamma"; sub-layers Keras adds are dropped
    # or renamed: "lstm/lstm_cell/kernel" -> "lstm/kernel", ".../attention_output/..." -> ".../output/...".
    path = variable.path.replace(".", "/")
    path = re.sub(r"/lstm_cell(_\d+)?/", "/", path)
    path = path.replace("/attention_output/", "/output/")
    return "phi" if path.endswith("/phi") else path


def _variables(module: keras.Model) -> dict:
    variables = {}
    for variable in module.weights:
        name = _canonical_name(variable)
        if name in variables:
            raise RuntimeError(f"two variables map to canonical name {name!r}")
        variables[name] = variable
    return variables


def load_canonical(module: keras.Model, model: str, weights: dict[str, np.ndarray]) -> None:
    """Assign canonical weights by name (Keras's layout is the canonical one); names must match exactly."""
    variables = _variables(module)
    if set(variables) != set(weights):
        missing, extra = sorted(set(variables) - set(weights)), sorted(set(weights) - set(variables))
        raise ValueError(f"{model} weights do not match the module: missing {missing}, unexpected {extra}")
    for name, variable in variables.items():
        if tuple(variable.shape) != tuple(np.shape(weights[name])):
            raise ValueError(f"{name}: canonical shape {np.shape(weights[name])} does not fit {tuple(variable.shape)}")
        variable.assign(np.asarray(weights[name], dtype=np.float32))


def canonical_gradients(module: keras.Model, model: str, grads: list) -> dict[str, np.ndarray]:
    """Gradients (in the order of module.trainable_variables) by canonical name (zeros where None)."""
    variables = module.trainable_variables
    if len(grads) != len(variables):
        raise ValueError(f"{model}: {len(grads)} gradients for {len(variables)} trainable variables")
    gradients = {}
    for variable, grad in zip(variables, grads, strict=True):
        # An embedding's gradient arrives as IndexedSlices; convert_to_tensor densifies it.
        value = np.zeros(variable.shape, np.float32) if grad is None else tf.convert_to_tensor(grad).numpy()
        gradients[_canonical_name(variable)] = np.asarray(value, dtype=np.float32)
    return gradients


def trainable_parameter_count(module: keras.Model) -> int:
    """Scalar parameters the optimizer updates (batch-norm moving statistics are not)."""
    return int(sum(np.prod(v.shape) for v in module.trainable_variables))
