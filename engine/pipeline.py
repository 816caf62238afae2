"""Where a run's training batches come from: the shared arrays, or each framework's own input pipeline.

spec.pipeline = "arrays" (the default) feeds both frameworks the same numpy arrays: an epoch's samples,
in the epoch's order and augmented by numpy (engine/augment.py), copied to the device at once and
sliced. Only the step differs between the frameworks, so "arrays" compares steps.

spec.pipeline = "native" lets each framework load its batches the way its tutorials do: PyTorch a
`DataLoader` over a map-style `Dataset` (engine/backends/torch_pipeline.py), TensorFlow a `tf.data`
pipeline (engine/backends/tensorflow_pipeline.py). Held equal between the two:
- the samples and their order: the epoch's order (engine.data.epoch_order, this worker's shard of it)
  is the index stream both pipelines read: the DataLoader's batch sampler and tf.data's first
  dataset. So a native run sees the very batches an arrays run sees, augmentation apart;
- the source: file datasets (MNIST, Fashion-MNIST, CIFAR-10) are read record by record from the
  official files (engine.datafiles.TrainingRecords), every pixel decoded to float32 in the pipeline;
  datasets held in memory (digits, the generated ones) are indexed from the same arrays;
- the parallelism: spec.loader_workers DataLoader worker processes against as many parallel map calls
  on a tf.data private thread pool of that size; the augmentations, each framework's own ops on the
  same definition, drawn per sample from (seed, epoch, index).
What differs stays each framework's own, and is recorded (NativePipeline.settings): TensorFlow's
prefetch(AUTOTUNE) runs ahead on a background thread even with no parallel calls, where a DataLoader
with no workers loads in the training process; pin_memory applies to CUDA only.

A pipeline's batches are timed by the loop: the time blocked waiting for the next batch is the step's
data wait (engine/loop.py). After training, outside every timer, `input_figures` measures the
pipeline iterated alone (loader-only throughput) and the step on one fixed batch (the synthetic-data
ceiling): together they say whether a run is input-bound.
"""
from __future__ import annotations

import gzip
import json
import statistics
import time
from typing import Any, Iterator, Optional, Protocol

import numpy as np

from db.models import AUGMENT_SAMPLES_KIND
from engine import augment
from engine.calibration import Artifact
from engine.batches import epoch_batches
from engine.data import Dataset
from engine.spec import RunSpec

Batch = tuple[Any, Any, int]  # device inputs, device targets, samples


class Pipeline(Protocol):
    """A run's source of training batches, on the device."""

    def batches(self, epoch: int, order: np.ndarray, steps: int) -> Iterator[Batch]:
        """The epoch's `steps` batches of order's samples (this worker's, in step order), batch_size each."""

    def settings(self) -> dict[str, Any]:
        """What the pipeline is, as it ran: recorded on the run."""

    def close(self) -> None:
        """Stop what the pipeline started (loader processes)."""


class ArraysPipeline:
    """The shared numpy path: an epoch's samples (augmented by numpy) copied at once, then sliced per step."""

    def __init__(self, spec: RunSpec, backend, data: Dataset) -> None:
        self.spec, self.backend, self.data = spec, backend, data

    def batches(self, epoch: int, order: np.ndarray, steps: int) -> Iterator[Batch]:
        order = order[:steps * self.spec.batch_size]  # a capped epoch gathers (and augments) only what it trains on
        x = self.data.x_train[order]
        if self.spec.augment:
            x = augment.augment_batch_numpy(x, self.spec.seed, epoch, order, self.spec.augment)
        batch_at = epoch_batches(self.spec, self.backend, x, self.data.y_train[order], epoch, self.data.num_outputs)
        return (batch_at(i) for i in range(steps))

    def settings(self) -> dict[str, Any]:
        return {"pipeline": "arrays", "loader": "numpy: the epoch's samples gathered and copied to the device at "
                                                "once, sliced per step (the same arrays in both frameworks)",
                "augment_by": "numpy, the same draws in both frameworks" if self.spec.augment else None}

    def close(self) -> None:
        pass


def make(spec: RunSpec, backend, data: Dataset) -> Pipeline:
    """The run's pipeline; spec is this worker's (batch_size = its share of the global batch)."""
    if spec.pipeline == "native":
        return backend.native_pipeline(spec, data)
    return ArraysPipeline(spec, backend, data)


def step_indices(order: np.ndarray, steps: int, batch: int) -> list[np.ndarray]:
    """The sample indices of each of an epoch's steps: order cut into batches, the last one possibly smaller."""
    return [order[i * batch:(i + 1) * batch] for i in range(steps)]


def describe(spec: RunSpec, data: Dataset) -> dict[str, Any]:
    """The summary's facts about the input a run trained on: pipeline, augmentations and the source."""
    shape = tuple(data.x_train.shape[1:])
    source = ("the official record files, read record by record" if spec.pipeline == "native" and data.records
              else "arrays in memory")
    return {"pipeline": spec.pipeline, "loader_workers": spec.loader_workers if spec.pipeline == "native" else None,
            "augment": augment.describe(spec.augment, shape) if spec.augment else {}, "source": source}


LOADER_BATCHES = 50  # at least this many batches iterate the loader alone (fewer when an epoch has fewer)


def input_figures(spec: RunSpec, backend, pipeline: Pipeline, data: Dataset, order: np.ndarray, steps: int,
                  batches: int) -> dict[str, Optional[float]]:
    """Loader-only throughput and the synthetic-data ceiling, measured after training.

    Loader-only: the pipeline iterated without training over max(batches, LOADER_BATCHES) batches (at most an
    epoch's), each on the device as in training. Its start-up (a fresh iterator to its first batch: worker
    start, tracing, the arrays' one copy of the epoch) is timed apart from the batches after it, whose rate is
    the loader's throughput. Ceiling: the training step repeated `batches` times on one fixed batch already on
    the device: no loader, no copy. The model's state is put back afterwards: the run keeps the weights it trained.
    """
    batches = max(1, min(batches, steps))
    count = max(1, min(max(batches, LOADER_BATCHES), steps))
    used = order[:count * spec.batch_size]
    backend.synchronize()
    start = time.perf_counter()
    iterator = pipeline.batches(spec.epochs + 1, used, count)
    first = next(iterator)
    backend.synchronize()
    started = time.perf_counter()
    startup_ms, samples = (started - start) * 1e3, 0
    for _, _, size in iterator:
        samples += size
    backend.synchronize()
    loader_s = time.perf_counter() - started
    if not samples:  # a one-batch epoch: its only batch, start-up and all
        samples, loader_s = first[2], started - start
    # The step alone, on the first batch: once untimed (it may meet a fresh shape), then `batches` times.
    state = backend.snapshot_training_state()
    try:
        x, y, size = first
        backend.train_step(x, y)
        backend.synchronize()
        times = []
        for _ in range(batches):
            start = time.perf_counter()
            backend.train_step(x, y)
            backend.synchronize()
            times.append(time.perf_counter() - start)
    finally:
        backend.restore_training_state(state)
    step_s = statistics.median(times)
    return {"batches": batches, "loader_batches": count, "loader_startup_ms": startup_ms,
            "loader_samples_per_s": samples / loader_s if samples and loader_s > 0 else None,
            "ceiling_samples_per_s": size / step_s if step_s > 0 else None,
            "ceiling_step_ms": step_s * 1e3}


AUGMENT_SAMPLES = 8  # training images shown before and after augmentation


def augmentation_artifact(spec: RunSpec, data: Dataset, seed_order: np.ndarray) -> Artifact:
    """The first AUGMENT_SAMPLES images of epoch 1 (seed_order: that epoch's order), before and after the run's
    augmentations, as its pipeline applies them: numpy for the arrays pipeline, the framework's own ops for the
    native one. JSON of 0-255 integers, so a page draws them without a framework and without unpickling."""
    indices = seed_order[:AUGMENT_SAMPLES]
    before = data.x_train[indices]
    if spec.pipeline == "native":
        from engine.backends import augmented_samples

        after = augmented_samples(spec.framework, before, spec.seed, 1, indices, spec.augment)
    else:
        after = augment.augment_batch_numpy(before, spec.seed, 1, indices, spec.augment)
    document = {"epoch": 1, "indices": [int(i) for i in indices], "shape": list(before.shape[1:]),
                "augment": list(spec.augment), "by": "numpy" if spec.pipeline == "arrays" else spec.framework,
                "before": _bytes(before).tolist(), "after": _bytes(after).tolist()}
    raw = json.dumps(document, separators=(",", ":")).encode()
    return Artifact(AUGMENT_SAMPLES_KIND, "augment_samples.json.gz", "application/gzip",
                    gzip.compress(raw, mtime=0), len(raw))


def _bytes(images: np.ndarray) -> np.ndarray:
    """Images in about [0, 1] as 0-255 integers (noise can leave the range: clipped)."""
    return np.clip(np.rint(np.asarray(images, dtype=np.float32) * 255), 0, 255).astype(np.uint8)
