"""Where a step's time goes, measured after training: its phases, and its operators under each framework's profiler.

Both run after the last epoch and before the inference benchmark, outside every timed epoch, on
batches of the run's own training data, and leave the trained model as they found it: weights,
buffers (batch-norm statistics), optimizer state and random-number state are copied before and put
back after, because the final weights are what a run keeps and exports.

Phases: a step split into data (the batch's samples gathered out of the host arrays), copy (host
to device), forward (with the loss), backward and optimizer, the device synchronised after each, so
each phase's time is its own. The unsplit step (the same data and copy, then backend.train_step,
synchronised once) is timed in the same window, alternating with the split one: their medians side
by side show what the phases add up to and what splitting costs. In training the loop copies an
epoch's samples to the device at once and slices them, so a training step pays its data and copy
phases once per epoch, not per step; here they are shown per step, as a loader feeding each step
would pay them.

Operator profile: a few fused steps under the framework's own profiler (torch.profiler,
tf.profiler), its trace kept as a file (engine.calibration.Artifact, stored by the runner) and its
operators ranked by self time.
"""
from __future__ import annotations

import gzip
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from engine.backends.base import Backend
from engine.data import Dataset, epoch_order
from engine.spec import RunSpec

PHASES = ("data", "copy", "forward", "backward", "optimizer")
TOP_OPERATORS = 20  # rows of the stored table: enough for the operators that matter, small in the summary
TRACE_KIND = "trace"
GZIP_LEVEL = 6  # traces are repetitive JSON or protobuf: 6 gets nearly all of 9's ratio, much faster


@dataclass(frozen=True)
class Artifact:
    """A file a run produced, gzip-compressed, for the runner to store with the run (db run_artifacts)."""

    kind: str  # "trace"
    name: str  # the stored file's name, e.g. "trace.json.gz"
    media_type: str  # of the stored (compressed) bytes
    data: bytes
    size_bytes: int  # of the file before compression


def after_training(spec: RunSpec, backend: Backend, data: Dataset, artifacts: Optional[list[Artifact]] = None) -> dict:
    """Summary keys "phases" (spec.calibration_steps) and "operator_profile" (spec.profile_steps); {} when both are 0.

    The profiler's trace is appended to artifacts (dropped when None). Training state is restored
    afterwards, whatever happens in between.
    """
    if not (spec.calibration_steps or spec.profile_steps):
        return {}
    batches = HostBatches(data, spec)
    state = backend.snapshot_training_state()
    result: dict = {}
    try:
        if spec.calibration_steps:
            result["phases"] = measure_phases(backend, batches, spec.calibration_steps)
        if spec.profile_steps:
            try:
                result["operator_profile"], trace = profile_operators(backend, batches, spec.profile_steps)
            except Exception as exc:  # noqa: BLE001 - a profiler that fails costs the run its table, not its training
                print(f"operator profile failed: {exc!r}", file=sys.stderr, flush=True)
                result["operator_profile"] = {"steps": spec.profile_steps, "error": f"{type(exc).__name__}: {exc}"}
            else:
                if artifacts is not None:
                    artifacts.append(trace)
    finally:
        backend.restore_training_state(state)
    return result


class HostBatches:
    """Training batches of a next epoch (the order epoch spec.epochs + 1 would have), taken out of the host arrays."""

    def __init__(self, data: Dataset, spec: RunSpec) -> None:
        n = len(data.x_train)
        self.x, self.y = data.x_train, data.y_train
        self.size = min(spec.batch_size, n)
        self.count = max(1, n // self.size)  # full batches only, as the loop trains by default
        self.order = epoch_order(n, spec.seed, spec.epochs + 1)

    def take(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch i (wrapping around): its samples gathered into new, contiguous host arrays."""
        lo = (i % self.count) * self.size
        picked = self.order[lo:lo + self.size]
        return self.x[picked], self.y[picked]


def measure_phases(backend: Backend, batches: HostBatches, steps: int) -> dict:
    """Median milliseconds of each phase and of the unsplit step over `steps` alternating pairs."""
    # One untimed pair first: it traces and compiles what the split step runs (TensorFlow's three
    # phase graphs) and whatever the fused step meets for the first time.
    _split_step(backend, batches, 0)
    _fused_step(backend, batches, 0)
    samples: dict[str, list[float]] = {phase: [] for phase in PHASES}
    fused: list[float] = []
    for i in range(steps):
        for phase, seconds in zip(PHASES, _split_step(backend, batches, i)):
            samples[phase].append(seconds)
        fused.append(_fused_step(backend, batches, i))
    # A backward that ran the forward again can come out a hair below zero on a tiny model: the
    # median of the differences, floored at 0.
    medians = {phase: max(0.0, statistics.median(values)) * 1e3 for phase, values in samples.items()}
    return {
        "steps": steps,
        "median_ms": medians,
        "fused_step_median_ms": statistics.median(fused) * 1e3,
        "sum_median_ms": sum(medians.values()),
        "backward_repeats_forward": backend.backward_repeats_forward,
    }


def _split_step(backend: Backend, batches: HostBatches, i: int) -> list[float]:
    """Seconds of each phase of one step, in PHASES order, the device synchronised after each."""
    start = time.perf_counter()
    x, y = batches.take(i)
    data_s = _seconds(start)  # host work: nothing queued on the device to wait for
    start = time.perf_counter()
    x_device, y_device = backend.to_device(x, y)
    copy_s = _synchronised_seconds(backend, start)
    start = time.perf_counter()
    forward = backend.forward_loss(x_device, y_device)
    forward_s = _synchronised_seconds(backend, start)
    repeated_s = 0.0
    if backend.backward_repeats_forward:
        # The backward call will run the forward pass again: time one more forward on the same,
        # now warm, inputs and take it off. (The first forward also pays for inputs fresh from the
        # copy; subtracting it would leave the backward too little.)
        start = time.perf_counter()
        forward = backend.forward_loss(x_device, y_device)
        repeated_s = _synchronised_seconds(backend, start)
    start = time.perf_counter()
    gradients = backend.backward(forward)
    backward_s = _synchronised_seconds(backend, start) - repeated_s
    start = time.perf_counter()
    backend.apply_gradients(gradients)
    optimizer_s = _synchronised_seconds(backend, start)
    return [data_s, copy_s, forward_s, backward_s, optimizer_s]


def _seconds(start: float) -> float:
    return time.perf_counter() - start


def _synchronised_seconds(backend: Backend, start: float) -> float:
    backend.synchronize()
    return time.perf_counter() - start


def _fused_step(backend: Backend, batches: HostBatches, i: int) -> float:
    """Seconds of the same work in one piece: the batch taken and copied, then backend.train_step, one sync."""
    start = time.perf_counter()
    x, y = batches.take(i)
    backend.train_step(*backend.to_device(x, y))
    backend.synchronize()
    return time.perf_counter() - start


def profile_operators(backend: Backend, batches: HostBatches, steps: int) -> tuple[dict, Artifact]:
    """`steps` fused steps under the framework's profiler: the summary's operator table and the trace file."""
    # Copied before the profiler starts: the profile is of training steps, not of host-to-device copies.
    on_device = [backend.to_device(*batches.take(i)) for i in range(steps)]
    backend.synchronize()
    wall: list[float] = []

    def run_steps() -> None:
        start = time.perf_counter()
        for x, y in on_device:
            backend.train_step(x, y)
        backend.synchronize()
        wall.append(time.perf_counter() - start)

    with tempfile.TemporaryDirectory(prefix="arena-profile-") as directory:
        profile = backend.profile(run_steps, Path(directory))
        raw = profile.trace_path.read_bytes()
    top, total_ms, count = top_operators(profile.operators)
    table = {"steps": steps, "profiler": profile.profiler, "measure": profile.measure, "top": top,
             "total_ms": total_ms, "operators": count, "wall_ms": wall[0] * 1e3 if wall else None}
    trace = Artifact(TRACE_KIND, profile.trace_name + ".gz", "application/gzip",
                     gzip.compress(raw, compresslevel=GZIP_LEVEL, mtime=0), len(raw))
    return table, trace


def top_operators(operators: list[tuple[str, float, int]], limit: int = TOP_OPERATORS) -> tuple[list[dict], float, int]:
    """(the `limit` operators with the most self time, the self time of all, how many operators) from
    (name, self milliseconds, calls) rows; a name given twice is one operator."""
    merged: dict[str, list] = {}
    for name, self_ms, calls in operators:
        entry = merged.setdefault(name, [0.0, 0])
        entry[0] += float(self_ms)
        entry[1] += int(calls)
    total_ms = sum(self_ms for self_ms, _ in merged.values())
    ranked = sorted(merged.items(), key=lambda item: (-item[1][0], item[0]))[:limit]
    top = [{"name": name, "self_ms": self_ms, "calls": calls,
            "percent": 100.0 * self_ms / total_ms if total_ms > 0 else 0.0}
           for name, (self_ms, calls) in ranked]
    return top, total_ms, len(merged)

