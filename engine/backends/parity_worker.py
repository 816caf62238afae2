"""`python -m engine.backends.parity_worker FRAMEWORK DIR`: one framework's side of parity checks.

For every DIR/<job>.in.npz it builds the model from the canonical weights there, runs the fixed
batch forward in inference mode (dropout off, batch norm on moving statistics, so no randomness
enters), takes the loss and its gradients, and writes DIR/<job>.FRAMEWORK.npz. One framework per
process: engine/parity.py starts one of these for each, and several jobs share one start-up.

<job>.in.npz: "model" (text), "num_outputs", "x" (NHWC images, int token ids or (N, 1) scalars),
"y" (int labels or float targets), "weight/<canonical name>".
<job>.FRAMEWORK.npz: "output", "loss", "grad/<canonical name>".
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from engine.catalog import FRAMEWORKS


def _torch_runner():
    import torch
    from torch.nn import functional as F

    from engine.backends import torch_models

    torch.backends.cuda.matmul.allow_tf32 = False  # no-ops on CPU; pinned for a GPU host
    torch.backends.cudnn.allow_tf32 = False

    def run(model: str, num_outputs: int, x: np.ndarray, y: np.ndarray, weights: dict) -> dict[str, np.ndarray]:
        torch.manual_seed(0)
        module = torch_models.build_model(model, x.shape[1:], num_outputs)
        torch_models.load_canonical(module, model, weights)
        module.eval()
        inputs = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2) if x.ndim == 4 else x))
        output = module(inputs)
        target = torch.from_numpy(y)
        loss = F.cross_entropy(output, target) if y.dtype.kind == "i" else F.mse_loss(output, target)
        loss.backward()
        return {"output": output.detach().numpy(), "loss": loss.detach().numpy(),
                **{f"grad/{k}": v for k, v in torch_models.canonical_gradients(module, model).items()}}

    return run


def _tensorflow_runner():
    import keras
    import tensorflow as tf

    from engine.backends import tensorflow_models

    tf.config.experimental.enable_tensor_float_32_execution(False)

    def run(model: str, num_outputs: int, x: np.ndarray, y: np.ndarray, weights: dict) -> dict[str, np.ndarray]:
        keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        module = tensorflow_models.build_model(model, x.shape[1:], num_outputs)
        tensorflow_models.load_canonical(module, model, weights)
        if y.dtype.kind == "i":
            loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        else:
            loss_fn = keras.losses.MeanSquaredError()
        with tf.GradientTape() as tape:
            output = module(tf.constant(x), training=False)
            loss = loss_fn(tf.constant(y), output)
        grads = tape.gradient(loss, module.trainable_variables)
        return {"output": output.numpy(), "loss": loss.numpy(),
                **{f"grad/{k}": v for k, v in tensorflow_models.canonical_gradients(module, model, grads).items()}}

    return run


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in FRAMEWORKS:
        print(f"usage: python -m engine.backends.parity_worker {{{','.join(FRAMEWORKS)}}} DIR; got {argv!r}",
              file=sys.stderr)
        return 2
    framework, directory = argv[0], Path(argv[1])
    jobs = sorted(directory.glob("*.in.npz"))
    if not jobs:
        print(f"no *.in.npz jobs in {str(directory)!r}", file=sys.stderr)
        return 2
    run = _torch_runner() if framework == "torch" else _tensorflow_runner()
    for job in jobs:
        with np.load(job, allow_pickle=False) as data:
            model, num_outputs, x, y = str(data["model"]), int(data["num_outputs"]), data["x"], data["y"]
            weights = {k[len("weight/"):]: data[k] for k in data.files if k.startswith("weight/")}
        result = run(model, num_outputs, x, y, weights)
        out_path = job.with_name(job.name.replace(".in.npz", f".{framework}.npz"))
        np.savez(out_path, **{k: np.asarray(v, dtype=np.float32) for k, v in result.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
