"""PyTorch's own input pipeline: a DataLoader over a map-style Dataset (engine/pipeline.py says what is held equal).

The Dataset returns one sample per key (epoch, index): read from the arrays in memory, or from its
record in the official file (numpy.memmap, opened lazily in each loader process), decoded to float32,
augmented by torch ops (engine/backends/torch_augment.py) with draws from (seed, epoch, index). The
batch sampler yields the epoch's order cut into steps, so the loader reads exactly the samples the
arrays pipeline would, in the same order, whatever its number of workers.
"""
from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from engine.backends.torch_augment import SampleAugmenter
from engine.data import Dataset as ArenaDataset
from engine.datafiles import RecordFile, TrainingRecords
from engine.pipeline import Batch, step_indices
from engine.spec import RunSpec

PREFETCH_FACTOR = 2  # the DataLoader's default: batches loaded ahead per worker


class Samples(Dataset):
    """The training samples by key (epoch, index): read, decoded to float32 HWC, augmented."""

    def __init__(self, data: ArenaDataset, spec: RunSpec) -> None:
        self.records: Optional[TrainingRecords] = data.records
        self.shape = tuple(data.x_train.shape[1:])
        # In memory: the arrays themselves (a forked loader process shares their pages).
        self.x = None if self.records is not None else data.x_train
        self.y = data.y_train if self.records is None else None
        self.count = len(data.x_train) if self.records is None else self.records.count
        self.augmenter = SampleAugmenter(spec.augment, self.shape, spec.seed) if spec.augment else None
        self._files: dict[str, np.memmap] = {}

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, Any]:
        epoch, index = key
        if self.records is None:
            x, y = torch.from_numpy(self.x[index]), torch.as_tensor(self.y[index])
        else:
            x, y = self._image(index), torch.tensor(int(self._record(self.records.labels, index)[0]), dtype=torch.int64)
        if self.augmenter is not None:
            x = self.augmenter(x, epoch, index)
        return x, y

    def _image(self, index: int) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(self._record(self.records.images, index)))  # a copy: memmap pages are read-only
        height, width, channels = self.shape
        if self.records.channels_first:  # CIFAR-10: a channel's pixels after another
            pixels = pixels.view(channels, height, width).permute(1, 2, 0)
        # float32 x / 255, as the arrays pipeline decodes (engine.datafiles): the same values, bit for bit.
        return pixels.reshape(height, width, channels).to(torch.float32).div_(255)

    def _record(self, record: RecordFile, index: int) -> np.ndarray:
        mapped = self._files.get(record.path)
        if mapped is None:  # opened in the process that reads it: a loader worker maps the file itself
            mapped = self._files[record.path] = np.memmap(record.path, dtype=np.uint8, mode="r")
        start = record.header + index * record.stride + record.offset
        return mapped[start:start + record.length]

    def __getstate__(self) -> dict:  # a spawned worker maps the files again rather than receive the maps
        return {**self.__dict__, "_files": {}}


class EpochBatches(Sampler):
    """Yields one epoch's steps as lists of keys (epoch, index): the order the loop set for this epoch."""

    def __init__(self) -> None:
        self.epoch, self.steps = 0, []

    def set(self, epoch: int, steps: list[np.ndarray]) -> None:
        self.epoch, self.steps = epoch, steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for indices in self.steps:
            yield [(self.epoch, int(i)) for i in indices]

    def __len__(self) -> int:
        return len(self.steps)


class DataLoaderPipeline:
    """The run's batches through a DataLoader; workers persist across epochs."""

    def __init__(self, spec: RunSpec, backend, data: ArenaDataset) -> None:
        self.spec, self.backend = spec, backend
        self.sampler = EpochBatches()
        workers = spec.loader_workers
        self.pin = backend.device.type == "cuda"
        self.loader = DataLoader(Samples(data, spec), batch_sampler=self.sampler, num_workers=workers,
                                 pin_memory=self.pin, persistent_workers=workers > 0,
                                 prefetch_factor=PREFETCH_FACTOR if workers else None)

    def batches(self, epoch: int, order: np.ndarray, steps: int) -> Iterator[Batch]:
        self.sampler.set(epoch, step_indices(order, steps, self.spec.batch_size))
        for x, y in self.loader:
            yield (*self.backend.host_tensors_to_device(x, y, non_blocking=self.pin), len(y))

    def settings(self) -> dict[str, Any]:
        workers = self.spec.loader_workers
        return {"pipeline": "native",
                "loader": f"torch.utils.data.DataLoader(num_workers={workers}, batch_sampler=the epoch's order, "
                          f"pin_memory={self.pin}, persistent_workers={workers > 0}, "
                          f"prefetch_factor={PREFETCH_FACTOR if workers else None})"
                          + ("" if workers else ": samples loaded in the training process, nothing ahead"),
                "augment_by": ("torch ops per sample in Dataset.__getitem__, torch.Generator draws from "
                               "(seed, epoch, index)") if self.spec.augment else None}

    def close(self) -> None:
        iterator = getattr(self.loader, "_iterator", None)  # persistent workers live in the loader's last iterator
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self.loader = None
