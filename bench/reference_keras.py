"""Keras references for bench/loop_overhead.py: the zoo as Keras's own examples write it, trained by model.fit.

Models take NHWC images or (N, T) integer token ids. Their sizes are read off the canonical
weights, which are Keras's layout already: each model takes them with set_weights. Import only
in a tensorflow worker process.
"""
from __future__ import annotations

import math
import os
import re
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402  (after the log level)
import numpy as np  # noqa: E402

from bench.reference_loops import EVAL_BATCH_SIZE, full_batch_samples, sinusoid  # noqa: E402

layers = keras.layers
# Keras's own switches for the engine's TensorFlow modes. jit_compile="auto" (Keras's default)
# means False on a CPU-only machine, so graph pins it to say what is measured.
_KERAS_COMPILE_ARGS = {
    "graph": {"jit_compile": False},
    "eager": {"run_eagerly": True, "jit_compile": False},
    "xla": {"jit_compile": True},
}
# Normalisation settings of the canonical model (PyTorch's defaults); Keras's own are 1e-3 / 0.99
# for batch norm and 1e-3 for layer norm, so the references pass them, as the engine does.
NORM_EPSILON = 1e-5
BN_MOMENTUM = 0.9
DROPOUT = 0.1  # the transformer's, as nn.TransformerEncoderLayer's default


class TokenAndPositionEmbedding(layers.Layer):
    """keras-io's text-classification embedding, with the tutorial's fixed sinusoid instead of learned positions."""

    def __init__(self, maxlen: int, vocab_size: int, embed_dim: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.token_emb = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.positions = sinusoid(maxlen, embed_dim)
        self.scale = math.sqrt(embed_dim)

    def call(self, x):
        return self.token_emb(x) * self.scale + self.positions[:x.shape[1]]


class TransformerBlock(layers.Layer):
    """keras-io's TransformerBlock (post-norm); dropouts where nn.TransformerEncoderLayer has them unless keras_io."""

    def __init__(self, embed_dim: int, num_heads: int, ff_dim: int, rate: float, keras_io: bool = False,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        # keras-io drops out after attention and after the feed-forward block only; PyTorch also
        # on the attention weights and after the feed-forward activation.
        inner = 0.0 if keras_io else rate
        self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim // num_heads, dropout=inner)
        self.ffn = keras.Sequential([layers.Dense(ff_dim, activation="relu"), layers.Dropout(inner),
                                     layers.Dense(embed_dim)])
        self.layernorm1 = layers.LayerNormalization(epsilon=NORM_EPSILON)
        self.layernorm2 = layers.LayerNormalization(epsilon=NORM_EPSILON)
        self.dropout1 = layers.Dropout(rate)
        self.dropout2 = layers.Dropout(rate)

    def call(self, inputs, training=None):
        attn_output = self.att(inputs, inputs, training=training)
        attn_output = self.dropout1(attn_output, training=training)
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.ffn(out1, training=training)
        ffn_output = self.dropout2(ffn_output, training=training)
        return self.layernorm2(out1 + ffn_output)


def _conv_bn(x, filters: int, stride: int, same_padding: bool):
    if stride > 1 and not same_padding:
        # keras.applications' way: explicit symmetric padding, as PyTorch's padding=1 (Keras's
        # 'same' at stride 2 pads 0 before and 1 after: a shifted function).
        x = layers.ZeroPadding2D(padding=((1, 1), (1, 1)))(x)
        padding = "valid"
    else:
        padding = "same"
    x = layers.Conv2D(filters, 3, strides=stride, padding=padding, use_bias=False)(x)
    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=NORM_EPSILON)(x)


def resnet20(input_shape: tuple[int, ...], num_classes: int, blocks: int, same_padding: bool = False) -> keras.Model:
    """ResNet-20 for CIFAR (He et al. 2016, option A shortcuts) in the functional API."""
    inputs = keras.Input(input_shape)
    x = layers.Activation("relu")(_conv_bn(inputs, 16, 1, same_padding))
    for stage, filters in enumerate((16, 32, 64)):
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            y = layers.Activation("relu")(_conv_bn(x, filters, stride, same_padding))
            y = _conv_bn(y, filters, 1, same_padding)
            shortcut = x
            if stride != 1 or x.shape[-1] != filters:
                pad = (filters - x.shape[-1]) // 2
                shortcut = keras.ops.pad(x[:, ::stride, ::stride, :], [[0, 0], [0, 0], [0, 0], [pad, pad]])
            x = layers.Activation("relu")(layers.add([y, shortcut]))
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(num_classes)(x))


def build(model: str, weights: dict, input_shape: tuple[int, ...], choice: bool = False) -> keras.Model:
    """The reference model loaded with the canonical weights; choice: the CHOICE_VARIANTS variant."""
    num_classes = weights[[name for name in weights if name.endswith("/bias")][-1]].shape[0]
    if model == "mlp":
        net = keras.Sequential([keras.Input(input_shape), layers.Flatten(),
                                layers.Dense(128, activation="relu"), layers.Dense(num_classes)])
    elif model == "cnn":
        net = keras.Sequential([
            keras.Input(input_shape),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2), layers.Flatten(),
            layers.Dense(128, activation="relu"), layers.Dense(num_classes),
        ])
    elif model == "mnist_cnn":
        net = keras.Sequential([
            keras.Input(input_shape),
            layers.Conv2D(32, 3, activation="relu"), layers.Conv2D(64, 3, activation="relu"),
            layers.MaxPooling2D(2), layers.Dropout(0.25), layers.Flatten(),
            layers.Dense(128, activation="relu"), layers.Dropout(0.5), layers.Dense(num_classes),
        ])
    elif model == "resnet":
        blocks = len({name.split("/")[1] for name in weights if name.startswith("stage1/")})
        net = resnet20(input_shape, num_classes, blocks, same_padding=choice)
    elif model == "lstm":
        vocab, embed_dim = weights["embedding/embeddings"].shape
        net = keras.Sequential([keras.Input(input_shape, dtype="int32"), layers.Embedding(vocab, embed_dim),
                                layers.LSTM(weights["lstm/recurrent_kernel"].shape[0]), layers.Dense(num_classes)])
    elif model == "transformer":
        return _transformer(weights, input_shape, num_classes, keras_io=choice)
    else:
        raise ValueError(f"model={model!r}: no Keras reference for it")
    # Keras's layout is the canonical one, and these models hold their weights in canonical order.
    net.set_weights([np.asarray(value, dtype=np.float32) for value in weights.values()])
    return net


def _transformer(weights: dict, input_shape: tuple[int, ...], num_classes: int, keras_io: bool) -> keras.Model:
    vocab, embed_dim = weights["embedding/embeddings"].shape
    num_heads = weights["layer1/attention/query/kernel"].shape[1]
    ff_dim = weights["layer1/ffn1/kernel"].shape[1]
    count = len({name.split("/")[0] for name in weights if re.match(r"layer\d+/", name)})
    inputs = keras.Input(input_shape, dtype="int32")
    embedding = TokenAndPositionEmbedding(input_shape[0], vocab, embed_dim)
    blocks = [TransformerBlock(embed_dim, num_heads, ff_dim, DROPOUT, keras_io=keras_io) for _ in range(count)]
    x = embedding(inputs)
    for block in blocks:
        x = block(x)
    dense = layers.Dense(num_classes)
    net = keras.Model(inputs, dense(layers.GlobalAveragePooling1D()(x)))
    # Named explicitly: a custom layer's weight order is its attribute order, not the canonical one.
    embedding.token_emb.set_weights([weights["embedding/embeddings"]])
    for index, block in enumerate(blocks, start=1):
        w = {name.split("/", 1)[1]: value for name, value in weights.items() if name.startswith(f"layer{index}/")}
        block.att.set_weights([w[f"attention/{part}/{kind}"] for part in ("query", "key", "value", "output")
                               for kind in ("kernel", "bias")])
        block.ffn.set_weights([w["ffn1/kernel"], w["ffn1/bias"], w["ffn2/kernel"], w["ffn2/bias"]])
        block.layernorm1.set_weights([w["norm1/gamma"], w["norm1/beta"]])
        block.layernorm2.set_weights([w["norm2/gamma"], w["norm2/beta"]])
    dense.set_weights([weights["dense/kernel"], weights["dense/bias"]])
    return net


def logits(model: str, weights: dict, x: np.ndarray, choice: bool = False) -> np.ndarray:
    """The reference model's outputs on x in inference mode (training=False)."""
    net = build(model, weights, x.shape[1:], choice)
    return keras.ops.convert_to_numpy(net(x, training=False))


def keras_reference(model: str, mode: str, epochs: int, data, weights: dict, hparams: dict, seed: int,
                    choice: bool = False) -> list[float]:
    """Keras's own way: compile(Adam, sparse CE from logits, the mode's switch), fit(shuffle=True), timed per epoch.

    fit validates on the test set after every epoch, as the engine evaluates; the epoch's time ends
    where that validation begins (on_test_begin), so validation is untimed on this side too.
    """
    if mode not in _KERAS_COMPILE_ARGS:
        raise ValueError(f"mode={mode!r}: tensorflow references run {', '.join(_KERAS_COMPILE_ARGS)}")

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        # Not on_train_batch_end: overriding a batch hook turns off Keras's asynchronous callback
        # dispatch and converts every step's logs to floats, a sync per step the reference never pays.
        def on_test_begin(self, logs=None):
            self._trained = time.perf_counter()  # fit's validation begins: the epoch's training is done

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(self._trained - self._start)

    keras.utils.set_random_seed(seed)
    net = build(model, weights, data.x_train.shape[1:], choice)
    net.compile(optimizer=keras.optimizers.Adam(hparams["lr"], epsilon=1e-8),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **_KERAS_COMPILE_ARGS[mode])
    # Keras may quietly fall back (jit_compile needs XLA support); a reference in the wrong mode is no reference.
    if net.jit_compile != (mode == "xla") or net.run_eagerly != (mode == "eager"):
        raise RuntimeError(f"keras compiled for {mode} gave jit_compile={net.jit_compile}, "
                           f"run_eagerly={net.run_eagerly}")
    batch = hparams["batch_size"]
    n_full = full_batch_samples(len(data.x_train), batch)
    timer = EpochTimer()
    # Only full batches, as the engine trains: fit shuffles these n_full samples every epoch.
    net.fit(data.x_train[:n_full], data.y_train[:n_full], batch_size=batch, epochs=epochs,
            shuffle=True, verbose=0, callbacks=[timer], validation_data=(data.x_test, data.y_test),
            validation_batch_size=EVAL_BATCH_SIZE)
    steps = int(net.optimizer.iterations.numpy())
    if steps != epochs * n_full // batch:
        raise RuntimeError(f"keras reference took {steps} optimizer steps, expected {epochs * n_full // batch}")
    return timer.times
