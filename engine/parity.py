"""`python -m engine parity --model M`: do both frameworks compute the same function from the same weights?

One fixed batch, one set of canonical weights (the seed's initial weights, jittered), one worker
process per framework (torch and tensorflow never share a process). Each runs the batch forward in
inference mode and takes the loss and its gradients; this module compares outputs, loss and every
gradient. It imports no framework.

A caveat for large inputs: the more units, the likelier one pre-activation sits within float32
rounding of a ReLU or max-pool kink and takes the other branch in one framework; its gradient then
differs by that unit's upstream gradient, a real but harmless difference. A FAIL names the
tensor; another --seed tells such a kink (it moves) from a layout error (it stays).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from engine import PROJECT_ROOT, child_env
from engine.catalog import DATASETS, FRAMEWORKS, MODELS, SYNTHETIC_TEXT_VOCAB
from engine.spec import RunSpec
from engine.weights import initial_weights, input_kind

# Max absolute difference. float32 rounds at ~1e-7 relative; summation order differs between the
# frameworks' kernels, and on the default shapes the differences measure 1e-8 to 1e-6.
TOLERANCE = 1e-5
# Datasets whose shape is known without reading files; the default is the model's first of these.
_FILELESS = ("digits", "powerlaw", "synthetic_images", "synthetic_text")
WORKER_TIMEOUT_S = 300
MAX_BATCH_SIZE = 1024  # one fixed batch compares kernels; a larger one only costs memory (a typo: all of it)


@dataclass(frozen=True)
class Case:
    """One model on one input shape: the dataset's (None = default_dataset) or a synthetic one."""

    model: str
    dataset: Optional[str] = None
    synthetic_shape: Optional[str] = None  # "HxWxC" or "T", as in a run spec; synthetic datasets only


def default_dataset(model: str) -> str:
    """The model's first dataset that needs no files."""
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
    return next(d for d in MODELS[model].datasets if d in _FILELESS)


def fixed_batch(model: str, input_shape: tuple[int, ...], num_outputs: int, seed: int,
                batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A random batch of the right shape and dtype, from the seed: images in [0, 1), token ids, or x in (0, 1]."""
    rng = np.random.default_rng([seed, 0xBA7C])
    kind = input_kind(model)
    if kind == "scalar":
        x = (1.0 - rng.random((batch_size,) + tuple(input_shape))).astype(np.float32)
        return x, (x ** 1.5 + 0.01 * rng.standard_normal(x.shape)).astype(np.float32)
    if kind == "tokens":
        x = rng.integers(0, SYNTHETIC_TEXT_VOCAB, (batch_size,) + tuple(input_shape), dtype=np.int64)
    else:
        x = rng.random((batch_size,) + tuple(input_shape), dtype=np.float32)
    return x, rng.integers(0, num_outputs, batch_size, dtype=np.int64)


def jittered(weights: dict[str, np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The weights with each constant-initialised tensor nudged, so ones and zeros cannot hide a mislaid tensor."""
    # Biases, norms, moving statistics and phi start constant: swap gamma with a moving variance
    # and nothing would show. Random tensors stay as drawn, so activations keep a real run's scale.
    rng = np.random.default_rng([seed, 0x717])
    out = {}
    for name, value in weights.items():
        if np.unique(value).size > 2:  # drawn at random: already tells positions apart
            out[name] = value
        elif name.endswith("/moving_variance"):  # stays positive
            out[name] = (value * rng.uniform(0.8, 1.25, value.shape)).astype(np.float32)
        else:
            out[name] = (value + rng.uniform(-0.1, 0.1, value.shape)).astype(np.float32)
    return out


def check(model: str, dataset: Optional[str] = None, seed: int = 0, batch_size: int = 8,
          synthetic_shape: Optional[str] = None) -> dict:
    """Run both frameworks on one batch and return the largest differences and whether they pass."""
    return check_many([Case(model, dataset, synthetic_shape)], seed, batch_size)[0]


def check_many(cases: list[Case], seed: int = 0, batch_size: int = 8) -> list[dict]:
    """check() for several cases, sharing one worker start-up per framework (framework imports dominate)."""
    jobs = [_job(case, seed, batch_size) for case in cases]  # every case validated before a worker starts
    return [_compare(job, result) for job, result in zip(jobs, _run_workers(jobs), strict=True)]


def _job(case: Case, seed: int, batch_size: int) -> dict:
    model = case.model
    default = default_dataset(model)  # validates the model
    dataset = default if case.dataset is None else case.dataset
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {', '.join(DATASETS)}")
    if dataset not in MODELS[model].datasets:
        allowed = ", ".join(MODELS[model].datasets)
        raise ValueError(f"dataset {dataset!r} does not fit model {model!r}; it trains on {allowed}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size={batch_size!r}: expected a whole number in 1..{MAX_BATCH_SIZE}")
    # The spec validates seed and shape, and gives the shape the runs use.
    spec = RunSpec(framework=FRAMEWORKS[0], model=model, dataset=dataset, seed=seed,
                   synthetic_shape=case.synthetic_shape)
    input_shape, num_outputs = spec.input_shape(), spec.num_outputs()
    x, y = fixed_batch(model, input_shape, num_outputs, seed, batch_size)
    return {"model": model, "dataset": dataset, "seed": seed, "batch_size": batch_size,
            "input_shape": list(input_shape), "num_outputs": num_outputs, "x": x, "y": y,
            "weights": jittered(initial_weights(model, input_shape, num_outputs, seed), seed)}


def _compare(job: dict, results: dict[str, dict[str, np.ndarray]]) -> dict:
    torch_out, tf_out = results["torch"], results["tensorflow"]
    if set(torch_out) != set(tf_out):
        raise RuntimeError(f"{job['model']}: the frameworks returned different tensors: "
                           f"{sorted(set(torch_out) ^ set(tf_out))}")
    grads = [name for name in torch_out if name.startswith("grad/")]
    grad_diffs = {name[len("grad/"):]: float(np.max(np.abs(torch_out[name] - tf_out[name]), initial=0.0))
                  for name in grads}
    worst = max(grad_diffs, key=grad_diffs.get)
    report = {key: job[key] for key in ("model", "dataset", "seed", "batch_size", "input_shape", "num_outputs")}
    report.update({
        "loss": {fw: float(results[fw]["loss"]) for fw in FRAMEWORKS},
        "max_abs_output_diff": float(np.max(np.abs(torch_out["output"] - tf_out["output"]))),
        "abs_loss_diff": float(abs(torch_out["loss"] - tf_out["loss"])),
        "max_abs_gradient_diff": grad_diffs[worst],
        "worst_gradient": worst,
        # Scales, so a reader sees what the differences are small against.
        "max_abs_output": float(np.max(np.abs(torch_out["output"]))),
        "max_abs_gradient": max(float(np.max(np.abs(torch_out[name]), initial=0.0)) for name in grads),
        "tolerance": TOLERANCE,
    })
    largest = max(report["max_abs_output_diff"], report["abs_loss_diff"], report["max_abs_gradient_diff"])
    report["passed"] = bool(largest <= TOLERANCE)
    return report


def _run_workers(jobs: list[dict]) -> list[dict[str, dict[str, np.ndarray]]]:
    """Both workers at once, data through .npz files (no pickle); fail loudly with a worker's stderr."""
    env = child_env()
    with tempfile.TemporaryDirectory(prefix="arena-parity-") as tmp:
        directory = Path(tmp)
        for index, job in enumerate(jobs):
            np.savez(directory / f"job{index:03d}.in.npz", model=np.array(job["model"]),
                     num_outputs=np.array(job["num_outputs"]), x=job["x"], y=job["y"],
                     **{f"weight/{k}": v for k, v in job["weights"].items()})
        procs = {
            fw: subprocess.Popen(
                [sys.executable, "-m", "engine.backends.parity_worker", fw, tmp],
                cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for fw in FRAMEWORKS
        }
        try:
            for fw, proc in procs.items():
                _, stderr = proc.communicate(timeout=WORKER_TIMEOUT_S)
                if proc.returncode != 0:
                    raise RuntimeError(f"{fw} parity worker exited with {proc.returncode}:\n{stderr}")
        finally:
            for proc in procs.values():  # a failed or timed-out side must not outlive the check
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        results = []
        for index in range(len(jobs)):
            per_framework = {}
            for fw in FRAMEWORKS:
                with np.load(directory / f"job{index:03d}.{fw}.npz", allow_pickle=False) as data:
                    per_framework[fw] = {k: data[k] for k in data.files}
            results.append(per_framework)
    return results


def format_report(report: dict) -> str:
    """Human-readable lines for one check."""
    verdict = "PASS" if report["passed"] else "FAIL"
    shape = "x".join(str(d) for d in report["input_shape"])
    return "\n".join([
        f"{report['model']} on {report['dataset']} ({shape}, {report['num_outputs']} outputs), "
        f"batch {report['batch_size']}, seed {report['seed']}: {verdict} (tolerance {report['tolerance']:g})",
        f"  max |d output|   {report['max_abs_output_diff']:.3g}   (outputs up to {report['max_abs_output']:.3g})",
        f"  |d loss|         {report['abs_loss_diff']:.3g}   "
        f"(PyTorch {report['loss']['torch']:.6f}, TensorFlow {report['loss']['tensorflow']:.6f})",
        f"  max |d gradient| {report['max_abs_gradient_diff']:.3g}   ({report['worst_gradient']}; "
        f"gradients up to {report['max_abs_gradient']:.3g})",
    ])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine parity",
        description="Check that PyTorch and TensorFlow compute the same outputs, loss and gradients "
                    "from the same initial weights on one fixed batch.")
    parser.add_argument("--model", required=True,
                        help=f"one of {', '.join(MODELS)}, or 'all' (each on its default dataset)")
    parser.add_argument("--dataset",
                        help="sets the input shape; default: the model's first dataset that needs no files")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--synthetic-shape", help="synthetic datasets: 'HxWxC' or 'T'; default: the model's")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object instead of text (with --model all: {passed, checks})")
    return parser


def main(argv: list[str]) -> int:
    """Exit 0 when every check passes, 1 when one does not, 2 for a bad argument."""
    args = build_parser().parse_args(argv)
    if args.model == "all" and (args.dataset or args.synthetic_shape):
        print(f"parity: --dataset/--synthetic-shape ({args.dataset or args.synthetic_shape!r}) need one --model, "
              "not 'all'", file=sys.stderr)
        return 2
    models = list(MODELS) if args.model == "all" else [args.model]
    try:
        reports = check_many([Case(m, args.dataset, args.synthetic_shape) for m in models], args.seed, args.batch_size)
    except ValueError as error:  # SpecError is one: both name the bad value
        print(f"parity: {error}", file=sys.stderr)
        return 2
    passed = all(r["passed"] for r in reports)
    if args.json:
        print(json.dumps({"passed": passed, "checks": reports} if args.model == "all" else reports[0]))
    else:
        print("\n".join(format_report(r) for r in reports))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
