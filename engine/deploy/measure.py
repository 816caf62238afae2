"""`python -m engine.deploy.measure ...`: load one exported artifact in this fresh process and measure it.

The process imports only the artifact's runtime (engine/deploy/runtime_<runtime>.py), so its
start-up, load time and memory are the runtime's own and no other framework's. It measures, in
this order:

- import_s: importing the runtime; load_s: loading the artifact; first_call_s: the first call at
  batch 1 (lazy initialisation, a JIT's first compile);
- parity: every test sample in batches of PARITY_BATCH, against the trained model's outputs the
  exporting process wrote (max |logit difference|, both accuracies, how many argmaxes agree);
- latency at each batch size: WARMUP_CALLS untimed calls, then calls until min_time_s has passed
  (at least MIN_CALLS, at most max_calls), each timed alone: p50/p95/p99 and samples/s;
- peak_rss_bytes: the process's peak resident memory (VmHWM), all of the above included.

Every call returns host numpy arrays, so a timed call is one that has finished computing. The
result is one JSON document written to --out.
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from engine.deploy import formats

PARITY_BATCH = 128
BATCH_SIZES = (1, 8, 32, 128)
WARMUP_CALLS = 3
MIN_CALLS = 10
QUANTILES = list(range(0, 101, 5))  # of each batch size's call times, kept for its latency CDF
# Distribution versions of each runtime, recorded with the figures.
_DISTRIBUTIONS = {"torch": "torch", "tensorflow": "tensorflow", "litert": "ai-edge-litert", "onnxruntime": "onnxruntime"}


def batch_of(x: np.ndarray, size: int) -> np.ndarray:
    """The first `size` samples of x, repeated when x holds fewer."""
    if len(x) >= size:
        return np.ascontiguousarray(x[:size])
    return np.ascontiguousarray(np.resize(x, (size, *x.shape[1:])))


def parity(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, reference: np.ndarray,
           y: Optional[np.ndarray], tolerance: Optional[float]) -> dict:
    """The artifact's outputs on every sample against the trained model's."""
    outputs = np.concatenate([np.asarray(predict(np.ascontiguousarray(x[i:i + PARITY_BATCH])), dtype=np.float32)
                              for i in range(0, len(x), PARITY_BATCH)])
    if outputs.shape != reference.shape:
        raise ValueError(f"the artifact returned {outputs.shape} for {len(x)} samples; the trained model {reference.shape}")
    difference = float(np.max(np.abs(outputs.astype(np.float64) - reference))) if outputs.size else 0.0
    result = {"samples": len(x), "max_abs_diff": difference, "tolerance": tolerance,
              "within_tolerance": None if tolerance is None else bool(difference <= tolerance)}
    if y is not None and reference.ndim == 2 and reference.shape[1] > 1:
        ours, theirs = outputs.argmax(axis=1), reference.argmax(axis=1)
        result.update(accuracy_reference=float(np.mean(theirs == y)), accuracy_artifact=float(np.mean(ours == y)),
                      argmax_agreement=float(np.mean(ours == theirs)))
    return result


def latency(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, size: int, min_time_s: float,
            max_calls: int) -> dict:
    """Per-call latency at one batch size: percentiles in ms and samples/s (size / mean call time)."""
    batch = batch_of(x, size)
    for _ in range(WARMUP_CALLS):
        predict(batch)
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < max_calls and (len(times) < MIN_CALLS or time.perf_counter() - started < min_time_s):
        t0 = time.perf_counter()
        predict(batch)
        times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3
    return {"batch": size, "calls": len(times), "quantiles_ms": [float(q) for q in np.percentile(ms, QUANTILES)],
            "p50_ms": float(np.percentile(ms, 50)),
            "p95_ms": float(np.percentile(ms, 95)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "samples_per_s": float(size / (ms.mean() / 1e3))}


def measure(framework: str, fmt: str, artifact: Path, inputs: Path, threads: int,
            batch_sizes: Sequence[int] = BATCH_SIZES, min_time_s: float = 1.0, max_calls: int = 500) -> dict:
    """Everything the module docstring lists, for one artifact; imports its runtime only."""
    spec = formats.get(framework, fmt)
    with np.load(inputs, allow_pickle=False) as data:
        x, reference = data["x"], data["reference"].astype(np.float64)
        y = data["y"] if "y" in data.files else None
    t0 = time.perf_counter()
    runtime = formats.runtime_module(framework, fmt)
    t1 = time.perf_counter()
    predict = runtime.load(fmt, artifact, threads)
    t2 = time.perf_counter()
    predict(batch_of(x, 1))
    t3 = time.perf_counter()
    result = {"framework": framework, "format": fmt, "runtime": spec.runtime, "threads": threads,
              "runtime_version": _version(spec.runtime), "import_s": t1 - t0, "load_s": t2 - t1,
              "first_call_s": t3 - t2, "parity": parity(predict, x, reference, y, spec.tolerance),
              "latency": [latency(predict, x, size, min_time_s, max_calls) for size in batch_sizes]}
    result["peak_rss_bytes"] = peak_rss_bytes()
    result["frameworks_loaded"] = sorted(name for name in ("torch", "tensorflow") if name in sys.modules)
    return result


def peak_rss_bytes() -> int:
    """This process's peak resident memory: VmHWM, which starts again at exec.

    Not getrusage's ru_maxrss: Linux keeps it across execve, so a process started by a large
    parent would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # no /proc: the best there is


def _version(runtime: str) -> Optional[str]:
    try:
        return metadata.version(_DISTRIBUTIONS[runtime])
    except metadata.PackageNotFoundError:
        return None


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batches {text!r}: expected whole numbers like 1,8,32,128") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--batches {text!r}: every batch size must be at least 1")
    return sizes


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.deploy.measure", description=__doc__.splitlines()[0])
    parser.add_argument("--framework", required=True)
    parser.add_argument("--format", required=True, dest="fmt")
    parser.add_argument("--artifact", required=True, type=Path)
    parser.add_argument("--inputs", required=True, type=Path, help=".npz with x, reference and (classifiers) y")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batches", type=_batch_sizes, default=BATCH_SIZES)
    parser.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls per batch size")
    parser.add_argument("--max-calls", type=int, default=500)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    result = measure(args.framework, args.fmt, args.artifact, args.inputs, args.threads, args.batches,
                     args.min_time, args.max_calls)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
