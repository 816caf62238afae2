"""TensorFlow's own input pipeline: tf.data (engine/pipeline.py says what is held equal).

The dataset's elements are keys (epoch, index): the epoch's order, `from_tensor_slices`. A `map` with
`num_parallel_calls` reads each sample (indexed from the arrays, or sliced from its record in the
official file, which `tf.io.read_file` reads into memory once), decodes it to float32, augments it with
TensorFlow's ops and stateless random draws from (seed, epoch, index)
(engine/backends/tensorflow_augment.py); then `batch` and `prefetch(AUTOTUNE)`. The map runs on a
private thread pool of spec.loader_workers threads, deterministic: batches come out in the order's
order, as the DataLoader's do.

Keras's model.fit trains over the same pipeline, every epoch in one dataset (TfDataPipeline.fit_dataset).
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np
import tensorflow as tf

from engine.backends.tensorflow_augment import sample_augmenter
from engine.data import Dataset as ArenaDataset
from engine.datafiles import RecordFile
from engine.pipeline import Batch
from engine.spec import RunSpec


class TfDataPipeline:
    """The run's batches through tf.data, a new dataset of keys per epoch over one traced reader."""

    def __init__(self, spec: RunSpec, backend, data: ArenaDataset) -> None:
        self.spec, self.backend = spec, backend
        self.shape = tuple(data.x_train.shape[1:])
        records = data.records
        augmenter = sample_augmenter(spec.augment, self.shape, spec.seed) if spec.augment else None
        if records is None:
            with tf.device("/CPU:0"):  # the source stays in host memory, as the DataLoader's does
                x_all, y_all = tf.constant(data.x_train), tf.constant(data.y_train)

            def read(index):
                return tf.gather(x_all, index), tf.gather(y_all, index)
        else:
            images, labels = self._file(records.images), self._file(records.labels)
            height, width, channels = self.shape

            def read(index):
                pixels = _record(images, records.images, index)
                if records.channels_first:  # CIFAR-10: a channel's pixels after another
                    pixels = tf.transpose(tf.reshape(pixels, [channels, height, width]), [1, 2, 0])
                # float32 x / 255, as the arrays pipeline decodes (engine.datafiles): the same values, bit for bit.
                image = tf.cast(tf.reshape(pixels, [height, width, channels]), tf.float32) / 255.0
                return image, tf.cast(_record(labels, records.labels, index)[0], tf.int64)

        def load(epoch, index):
            x, y = read(index)
            if augmenter is not None:
                x = augmenter(x, epoch, index)
            return x, y

        self._load = load
        self._channels_first = backend._images and backend._layout == "channels_first"

    @staticmethod
    def _file(record: RecordFile) -> tf.Tensor:
        with tf.device("/CPU:0"):
            return tf.io.decode_raw(tf.io.read_file(record.path), tf.uint8)

    def dataset(self, epoch: int, order: np.ndarray) -> tf.data.Dataset:
        """One epoch's batches of the samples in `order`: the map, batch and prefetch of the pipeline."""
        return self._finish(self._batched(tf.fill([len(order)], tf.constant(epoch, tf.int64)),
                                          tf.constant(order, tf.int64)))

    def fit_dataset(self, epochs: int, order_of: Callable[[int], np.ndarray]) -> tf.data.Dataset:
        """Every epoch's batches for model.fit, an epoch's order asked of order_of(epoch) when the pipeline reaches
        it (never all at once in memory); batches never span two epochs, so a kept last batch stays each epoch's."""
        def orders():
            for epoch in range(1, epochs + 1):
                yield epoch, np.asarray(order_of(epoch), np.int64)

        keys = tf.data.Dataset.from_generator(orders, output_signature=(tf.TensorSpec((), tf.int64),
                                                                         tf.TensorSpec((None,), tf.int64)))
        return self._finish(keys.flat_map(lambda epoch, order: self._batched(tf.fill(tf.shape(order), epoch), order)))

    def _batched(self, epochs: tf.Tensor, indices: tf.Tensor) -> tf.data.Dataset:
        workers = self.spec.loader_workers
        keys = tf.data.Dataset.from_tensor_slices((epochs, indices))
        # deterministic: parallel calls may finish out of order, the batches keep the keys' order.
        batches = (keys.map(self._load, num_parallel_calls=workers, deterministic=True) if workers
                   else keys.map(self._load))
        batches = batches.batch(self.spec.batch_size)
        if self._channels_first:  # the run's layout, as Backend.to_device gives it
            batches = batches.map(lambda x, y: (tf.transpose(x, [0, 3, 1, 2]), y))
        return batches

    def _finish(self, batches: tf.data.Dataset) -> tf.data.Dataset:
        options = tf.data.Options()
        options.deterministic = True
        if self.spec.loader_workers:
            options.threading.private_threadpool_size = self.spec.loader_workers
        return batches.prefetch(tf.data.AUTOTUNE).with_options(options)

    def batches(self, epoch: int, order: np.ndarray, steps: int) -> Iterator[Batch]:
        for x, y in self.dataset(epoch, order[:steps * self.spec.batch_size]):
            yield x, y, int(x.shape[0])

    def settings(self) -> dict[str, Any]:
        workers = self.spec.loader_workers
        return {"pipeline": "native",
                "loader": "tf.data: from_tensor_slices(the epoch's order).map(read"
                          + (f", num_parallel_calls={workers}, deterministic=True" if workers else "")
                          + f").batch({self.spec.batch_size})"
                          f".prefetch(AUTOTUNE), private thread pool of {workers or 'default'} threads"
                          + ("" if workers else ": map runs one sample at a time, prefetch on a background thread"),
                "augment_by": ("TensorFlow ops per sample in map, stateless random draws from (seed, epoch, index)"
                               if self.spec.augment else None)}

    def close(self) -> None:
        pass


def _record(data: tf.Tensor, record: RecordFile, index) -> tf.Tensor:
    start = record.header + tf.cast(index, tf.int64) * record.stride + record.offset
    return tf.slice(data, tf.reshape(start, [1]), tf.constant([record.length], tf.int64))
