"""TensorFlow backend: the train step runs as a tf.function; the mirror image of torch_backend.py."""
from __future__ import annotations

import os
from typing import Any, Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import keras

from engine.backends.base import Backend


class _PowerLaw(keras.Model):
    def __init__(self) -> None:
        super().__init__(name="powerlaw")
        self.phi = self.add_weight(shape=(), initializer="ones", name="phi")

    def call(self, x):
        return tf.pow(x, self.phi)


def _make_model(model: str, input_shape: tuple[int, ...], num_outputs: int) -> keras.Model:
    layers = keras.layers
    if model == "mlp":
        return keras.Sequential([
            keras.Input(input_shape), layers.Flatten(),
            layers.Dense(128, activation="relu"), layers.Dense(num_outputs),
        ])
    if model == "cnn":
        return keras.Sequential([
            keras.Input(input_shape),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2), layers.Flatten(),
            layers.Dense(128, activation="relu"), layers.Dense(num_outputs),
        ])
    if model == "powerlaw":
        module = _PowerLaw()
        module.build((None,) + tuple(input_shape))
        return module
    raise ValueError(f"unknown model {model!r}")


def _load_canonical(module: keras.Model, model: str, weights: dict[str, np.ndarray]) -> None:
    """Canonical weights are Keras's own layout: assign them in order."""
    if model == "powerlaw":
        module.phi.assign(weights["phi"])
        return
    module.set_weights([weights[name] for name in weights])


class TensorFlowBackend(Backend):
    name = "tensorflow"

    def __init__(self, device: str) -> None:
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:
            # TensorFlow grabs all GPU memory by default; grow on demand like PyTorch's allocator.
            tf.config.experimental.set_memory_growth(gpu, True)
        if device == "auto":
            device = "cuda:0" if gpus else "cpu"
        if device.startswith("cuda"):
            index = int(device.split(":")[1])
            if index >= len(gpus):
                raise RuntimeError(
                    f"device {device!r} requested but TensorFlow sees {len(gpus)} GPU(s)"
                )
            self._tf_device = f"/GPU:{index}"
            self._index = index
        else:
            self._tf_device = "/CPU:0"
            self._index = None
        self.device = device

    def build(self, model, task, weights, input_shape, num_outputs, optimizer, lr, seed) -> int:
        keras.utils.set_random_seed(seed)
        self.task = task
        self.model_name = model
        with tf.device(self._tf_device):
            self.module = _make_model(model, input_shape, num_outputs)
            _load_canonical(self.module, model, weights)
            if optimizer == "sgd":
                self.optimizer = keras.optimizers.SGD(learning_rate=lr)
            elif optimizer == "momentum":
                self.optimizer = keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
            else:
                # Keras's default epsilon is 1e-7, PyTorch's 1e-8: pin it so both run the same Adam.
                self.optimizer = keras.optimizers.Adam(learning_rate=lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
            self.optimizer.build(self.module.trainable_variables)
        if task == "classification":
            self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            label_spec = tf.TensorSpec([None], tf.int64)
        else:
            self.loss_fn = keras.losses.MeanSquaredError()
            label_spec = tf.TensorSpec([None, num_outputs], tf.float32)
        input_spec = tf.TensorSpec([None, *input_shape], tf.float32)
        # A fixed signature with a free batch dimension: the last, smaller batch does not retrace.
        self._step = tf.function(self._train_step, input_signature=[input_spec, label_spec])
        self._predict = tf.function(lambda x: self.module(x, training=False), input_signature=[input_spec])
        return int(sum(np.prod(v.shape) for v in self.module.trainable_variables))

    def to_device(self, x, y):
        with tf.device(self._tf_device):
            return tf.constant(x), tf.constant(y)

    def _train_step(self, x, y):
        with tf.GradientTape() as tape:
            loss = self.loss_fn(y, self.module(x, training=True))
        variables = self.module.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def train_step(self, x, y):
        with tf.device(self._tf_device):
            return self._step(x, y)

    def losses_to_floats(self, losses: Sequence[Any]) -> list[float]:
        return tf.stack(list(losses)).numpy().astype(float).tolist() if losses else []

    def evaluate(self, x, y, batch_size):
        x_all, y_all = self.to_device(x, y)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            out = self._predict(x_all[start:start + batch_size])
            target = y_all[start:start + batch_size]
            loss_sum += float(self.loss_fn(target, out)) * int(target.shape[0])
            if self.task == "classification":
                correct += int(tf.reduce_sum(tf.cast(tf.argmax(out, axis=1) == target, tf.int32)))
        metrics = {"test_loss": loss_sum / len(x)}
        if self.task == "classification":
            metrics["test_accuracy"] = correct / len(x)
        else:
            metrics["phi_estimate"] = float(self.module.phi.numpy())
        return metrics

    def synchronize(self) -> None:
        # Eager TF ops return when done on CPU; on GPU, pulling a value to the host waits for
        # every op queued before it on the device stream.
        if self._index is not None:
            with tf.device(self._tf_device):
                tf.constant(0.0).numpy()

    def memory_stats(self):
        if self._index is None:
            return []
        info = tf.config.experimental.get_memory_info(f"GPU:{self._index}")
        return [
            ("allocated", float(info["current"]), "bytes"),
            ("peak_allocated", float(info["peak"]), "bytes"),
        ]

    def describe(self):
        build = tf.sysconfig.get_build_info()
        info: dict[str, Any] = {
            "framework": "tensorflow",
            "framework_version": tf.__version__,
            "keras_version": keras.__version__,
            "cuda_version": build.get("cuda_version"),
            "cudnn_version": build.get("cudnn_version"),
            "device": self.device,
            "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        }
        if self._index is not None:
            details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[self._index])
            info["device_name"] = details.get("device_name")
        return info

    @property
    def gpu_index(self):
        return self._index
