"""Inference benchmark after training: latency at batch 1 and at the training batch size, in the run's mode."""
from __future__ import annotations

import time

import numpy as np

from engine.backends.base import Backend

WARMUP_CALLS = 3  # after the first (compiling) call: caches, allocator and thread pools settle


def percentile_ms(seconds: list[float], q: float) -> float:
    """The q-th percentile of durations in seconds, in milliseconds."""
    return float(np.percentile(np.asarray(seconds) * 1e3, q))


def benchmark(backend: Backend, x: np.ndarray, y: np.ndarray, batch_size: int, iters: int) -> dict[str, float]:
    """Timed device-synchronised forward passes; the first call (tracing/compiling) is reported apart."""
    results: dict[str, float] = {"inference_batch_size": batch_size, "inference_iters": iters}
    compile_s = 0.0
    for label, size in (("bs1", 1), ("bsN", batch_size)):
        reps = -(-size // len(x))  # a test set smaller than the batch is repeated to fill it
        xb = np.concatenate([x] * reps)[:size] if reps > 1 else x[:size]
        yb = np.concatenate([y] * reps)[:size] if reps > 1 else y[:size]
        xd, _ = backend.to_device(xb, yb)
        backend.synchronize()
        start = time.perf_counter()
        backend.predict(xd)
        backend.synchronize()
        compile_s += time.perf_counter() - start
        for _ in range(WARMUP_CALLS):
            backend.predict(xd)
        backend.synchronize()
        latencies = []
        for _ in range(iters):
            start = time.perf_counter()
            backend.predict(xd)
            backend.synchronize()
            latencies.append(time.perf_counter() - start)
        results[f"inference_{label}_p50_ms"] = percentile_ms(latencies, 50)
        results[f"inference_{label}_p95_ms"] = percentile_ms(latencies, 95)
        results[f"inference_{label}_samples_per_s"] = size * len(latencies) / sum(latencies)
    results["inference_compile_s"] = compile_s
    return results
