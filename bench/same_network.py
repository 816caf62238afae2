"""Before timing: the reference computes the engine's loss from the same weights on one fixed batch.

bench/loop_overhead.py calls `check` in its worker for each model before timing it. Both sides
build their model from the canonical weights and run the run's first training samples forward
in inference mode (dropout off, batch norm on its moving statistics); the losses are compared in
float64. Twice: with the initial weights the runs train from, and with a jittered copy
(engine.parity.jittered), whose constant tensors -- biases, norms, moving statistics -- are nudged
so a mislaid one shows. The variants of reference_loops.CHOICE_VARIANTS are checked too, except
those that compute another function on purpose.

Runs in a worker process: the engine's backend and the reference import the worker's framework.
"""
from __future__ import annotations

import numpy as np

from bench.reference_loops import CHOICE_VARIANTS, UNCHECKED_CHOICES, cross_entropy, reference_logits
from engine.parity import jittered

LOSS_TOLERANCE = 1e-4  # absolute; float32 kernels of the two sides differ by ~1e-7 on these losses


def check(framework: str, model: str, spec, data, weights: dict[str, np.ndarray], seed: int) -> dict:
    """Engine and reference losses on data's first batch_size training samples; raises if they differ."""
    x, y = data.x_train[:spec.batch_size], data.y_train[:spec.batch_size]
    result: dict = {"batch": len(x), "tolerance": LOSS_TOLERANCE}
    for label, tensors in (("initial", weights), ("jittered", jittered(weights, seed))):
        engine_loss = cross_entropy(_engine_logits(framework, spec, data, tensors, x, y), y)
        reference_loss = cross_entropy(reference_logits(framework, model, tensors, x), y)
        result[label] = {"engine": engine_loss, "reference": reference_loss,
                         "difference": abs(engine_loss - reference_loss)}
    if (framework, model) in CHOICE_VARIANTS:
        choice_loss = cross_entropy(reference_logits(framework, model, weights, x, choice=True), y)
        result["choice"] = {"reference": choice_loss, "difference": abs(result["initial"]["engine"] - choice_loss),
                            "checked": (framework, model) not in UNCHECKED_CHOICES}
    failed = [f"{label} weights: engine {entry['engine']:.7f}, reference {entry['reference']:.7f}"
              for label, entry in result.items() if label in ("initial", "jittered")
              and not entry["difference"] <= LOSS_TOLERANCE]  # "not <=": a NaN fails too
    choice = result.get("choice")
    if choice and choice["checked"] and not choice["difference"] <= LOSS_TOLERANCE:
        failed.append(f"choice variant: engine {result['initial']['engine']:.7f}, variant {choice['reference']:.7f}")
    if failed:
        raise RuntimeError(f"{framework} {model}: the reference does not compute the engine's loss "
                           f"(tolerance {LOSS_TOLERANCE:g}): {'; '.join(failed)}")
    return result


def _engine_logits(framework: str, spec, data, weights: dict, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The engine backend's predict() on x, built from these weights as a run builds it."""
    from engine.backends import get_backend

    backend = get_backend(framework, "cpu")
    backend.build(spec, data.task, weights, tuple(data.x_train.shape[1:]), data.num_outputs)
    x_device, _ = backend.to_device(x, y)
    return np.asarray(backend.predict(x_device), dtype=np.float64)
