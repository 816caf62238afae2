"""The reference side of bench/loop_overhead.py: each framework's own idiomatic training loop, per mode.

Self-contained on purpose: the models are written the way each framework's examples write them
(not with engine/backends/*_models.py), so the reference shares nothing with the engine but the
canonical initial weights (engine/weights.py) and the data. Every loop trains on full batches
only -- n_train // batch_size steps an epoch, the engine's steps_per_epoch -- so both sides do the
same work, and returns its epoch times in seconds.

Import this only in a worker process: it imports torch or tensorflow when a loop is called.
"""
from __future__ import annotations

import time

# What each reference runs, for the report.
REFERENCE_LABELS: dict[tuple[str, str], str] = {
    ("torch", "eager"): "shuffled index slicing of pre-made tensors (pytorch/examples)",
    ("torch", "compiled"): "the same loop with model = torch.compile(model)",
    ("tensorflow", "graph"): "keras compile(jit_compile=False) + fit(shuffle=True)",
    ("tensorflow", "eager"): "keras compile(run_eagerly=True) + fit(shuffle=True)",
    ("tensorflow", "xla"): "keras compile(jit_compile=True) + fit(shuffle=True)",
}
# Keras's own switches for the engine's TensorFlow modes. jit_compile="auto" (Keras's default)
# means False on a CPU-only machine, so graph pins it to say what is measured.
_KERAS_COMPILE_ARGS = {
    "graph": {"jit_compile": False},
    "eager": {"run_eagerly": True, "jit_compile": False},
    "xla": {"jit_compile": True},
}


def full_batch_samples(n_train: int, batch_size: int) -> int:
    """Samples one epoch trains on when the last partial batch is dropped (as the engine does)."""
    return (n_train // batch_size) * batch_size


# PyTorch ----------------------------------------------------------------------------------

def torch_net(model: str, weights: dict):
    """The model as a PyTorch user writes it (NCHW, plain nn.Flatten), loaded with the canonical weights."""
    import numpy as np
    import torch
    from torch import nn

    if model == "mlp":
        net = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    elif model == "cnn":
        net = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 64, 128), nn.ReLU(), nn.Linear(128, 10),
        )
    else:
        raise ValueError(f"model={model!r}: the reference loops are written for mlp and cnn on digits")
    canonical = dict(weights)
    if model == "cnn":
        # Canonical dense rows are in HWC order; a plain nn.Flatten reads CHW, so reorder them once.
        kernel = canonical["dense1/kernel"]
        canonical["dense1/kernel"] = kernel.reshape(4, 4, 64, 128).transpose(2, 0, 1, 3).reshape(-1, 128)
    layers = [m for m in net if isinstance(m, (nn.Linear, nn.Conv2d))]
    kernel_names = [name for name in canonical if name.endswith("/kernel")]
    with torch.no_grad():
        for layer, name in zip(layers, kernel_names, strict=True):
            kernel = canonical[name]
            kernel = kernel.T if kernel.ndim == 2 else kernel.transpose(3, 2, 0, 1)  # (out,in) / OIHW
            layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
            layer.bias.copy_(torch.from_numpy(canonical[name.replace("/kernel", "/bias")]))
    return net


def torch_reference(model: str, mode: str, epochs: int, data, weights: dict, hparams: dict, seed: int,
                    use_loader: bool = False) -> list[float]:
    """The pytorch/examples loop (train(); zero_grad; cross_entropy; backward; step), torch.compile'd in compiled mode."""
    import torch
    from torch.nn import functional as F

    if mode not in ("eager", "compiled"):
        raise ValueError(f"mode={mode!r}: torch references run eager or compiled")
    torch.manual_seed(seed)
    net = torch_net(model, weights)
    if mode == "compiled":
        net = torch.compile(net)  # the documented one-liner; the optimizer still sees the same parameters
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    if model == "cnn":
        x = x.permute(0, 3, 1, 2).contiguous()  # NCHW once, up front
    optimizer = torch.optim.Adam(net.parameters(), lr=hparams["lr"], eps=1e-8)
    batch = hparams["batch_size"]
    n_full = full_batch_samples(len(x), batch)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=batch, shuffle=True,
                                         drop_last=True)

    def batches():
        if use_loader:
            yield from loader
            return
        order = torch.randperm(len(x))
        for start in range(0, n_full, batch):  # full batches only
            index = order[start:start + batch]
            yield x[index], y[index]

    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        net.train()
        steps = 0
        for xb, yb in batches():
            optimizer.zero_grad()
            loss = F.cross_entropy(net(xb), yb)
            loss.backward()
            optimizer.step()
            steps += 1
        times.append(time.perf_counter() - start)
        if steps * batch != n_full:
            raise RuntimeError(f"torch reference trained {steps} batches of {batch}, expected {n_full} samples")
    return times


# Keras (TensorFlow) -----------------------------------------------------------------------

def keras_net(model: str, weights: dict):
    """The model as a Keras user writes it, loaded with the canonical (Keras-layout) weights."""
    import keras

    layers = keras.layers
    if model == "mlp":
        net = keras.Sequential([keras.Input((8, 8, 1)), layers.Flatten(),
                                layers.Dense(128, activation="relu"), layers.Dense(10)])
    elif model == "cnn":
        net = keras.Sequential([
            keras.Input((8, 8, 1)),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(2), layers.Flatten(),
            layers.Dense(128, activation="relu"), layers.Dense(10),
        ])
    else:
        raise ValueError(f"model={model!r}: the reference loops are written for mlp and cnn on digits")
    net.set_weights(list(weights.values()))
    return net


def keras_reference(model: str, mode: str, epochs: int, data, weights: dict, hparams: dict, seed: int) -> list[float]:
    """Keras's own way: compile(Adam, sparse CE from logits, the mode's switch), fit(shuffle=True), epochs timed by a callback."""
    import keras

    if mode not in _KERAS_COMPILE_ARGS:
        raise ValueError(f"mode={mode!r}: tensorflow references run {', '.join(_KERAS_COMPILE_ARGS)}")

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.times.append(time.perf_counter() - self._start)

    keras.utils.set_random_seed(seed)
    net = keras_net(model, weights)
    net.compile(optimizer=keras.optimizers.Adam(hparams["lr"], epsilon=1e-8),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), **_KERAS_COMPILE_ARGS[mode])
    # Keras may quietly fall back (jit_compile needs XLA support); a reference in the wrong mode is no reference.
    if net.jit_compile != (mode == "xla") or net.run_eagerly != (mode == "eager"):
        raise RuntimeError(f"keras compiled for {mode} gave jit_compile={net.jit_compile}, run_eagerly={net.run_eagerly}")
    batch = hparams["batch_size"]
    n_full = full_batch_samples(len(data.x_train), batch)
    timer = EpochTimer()
    # Only full batches, as the engine trains: fit shuffles these n_full samples every epoch.
    net.fit(data.x_train[:n_full], data.y_train[:n_full], batch_size=batch, epochs=epochs,
            shuffle=True, verbose=0, callbacks=[timer])
    steps = int(net.optimizer.iterations.numpy())
    if steps != epochs * n_full // batch:
        raise RuntimeError(f"keras reference took {steps} optimizer steps, expected {epochs * n_full // batch}")
    return timer.times
