"""TensorFlow's own implementation of engine/augment.py: the same crop, flip and noise in tf ops.

sample_augmenter's function runs inside tf.data.Dataset.map (graph mode, num_parallel_calls=AUTOTUNE):
its draws come from TensorFlow's stateless random ops, keyed by (seed, epoch, index) tensors, so they
hold no state and do not depend on parallelism, batch size or the order samples are mapped in.

tensorflow is imported inside the functions, so importing this module imports no framework
(tests/engine/test_imports.py imports every engine module and checks).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np

from engine.augment import FLIP_PROBABILITY, NOISE_STD, crop_padding, image_shape, parse_augment

if TYPE_CHECKING:
    import tensorflow as tf

_STREAM = 23  # as engine.augment.STREAM: augmentation draws stay apart from other streams of the seed


def apply(image: tf.Tensor, offset, flip, noise: Optional[tf.Tensor] = None) -> tf.Tensor:
    """An HWC tensor padded with P zeros and cropped at offset (dy, dx), then flipped if flip, then noise added.

    offset is two ints or an int tensor of shape [2]; flip a bool or a bool tensor. Python values build
    only the ops needed (offset (P, P) and flip False build none); tensors build both branches' ops.
    The image's static shape must be known (it is inside Dataset.map over fixed-shape images).
    """
    import tensorflow as tf

    height, width, channels = image_shape(image.shape)
    padding = crop_padding(height)
    static_offset = isinstance(offset, (tuple, list)) and all(isinstance(v, (int, np.integer)) for v in offset)
    if not (static_offset and tuple(offset) == (padding, padding)):
        padded = tf.pad(image, [[padding, padding], [padding, padding], [0, 0]])
        begin = tf.concat([tf.cast(offset, tf.int32), tf.zeros([1], tf.int32)], axis=0)
        # tf.slice raises on a window outside the padded image, so no separate range check.
        image = tf.slice(padded, begin, [height, width, channels])
    if isinstance(flip, (bool, np.bool_)):
        if flip:
            image = tf.reverse(image, axis=[1])
    else:
        unflipped = image
        image = tf.cond(tf.cast(flip, tf.bool), lambda: tf.reverse(unflipped, axis=[1]), lambda: unflipped)
    if noise is not None:
        image = image + tf.constant(NOISE_STD, image.dtype) * tf.cast(noise, image.dtype)
    return image


def sample_draws(augment, shape: Sequence[int], seed: int) -> Callable:
    """A function (epoch, index) -> (offset, flip, noise) tensors for one sample, neutral where switched off."""
    import tensorflow as tf

    names = parse_augment(augment)
    shape = image_shape(shape)
    padding = crop_padding(shape[0])
    base = tf.constant([seed, _STREAM], tf.int64)

    def draws(epoch, index):
        key = tf.random.fold_in(tf.random.fold_in(base, tf.cast(epoch, tf.int64)), tf.cast(index, tf.int64))
        # One independent key per draw: a stateless op's output depends on its key and shape alone,
        # so switching one augmentation off leaves the others' draws alone.
        crop_key, flip_key, noise_key = tf.unstack(tf.random.split(key, 3))
        if "crop" in names:
            offset = tf.random.stateless_uniform([2], crop_key, minval=0, maxval=2 * padding + 1, dtype=tf.int32)
        else:
            offset = (padding, padding)
        flip = tf.random.stateless_uniform([], flip_key) < FLIP_PROBABILITY if "flip" in names else False
        noise = tf.random.stateless_normal(shape, noise_key) if "noise" in names else None
        return offset, flip, noise

    return draws


def sample_augmenter(augment, shape: Sequence[int], seed: int) -> Callable:
    """A function (image, epoch, index) -> image for Dataset.map: draws from (seed, epoch, index), then apply."""
    names = parse_augment(augment)
    draws = sample_draws(names, shape, seed)

    def augmented(image, epoch, index):
        if not names:
            return image
        offset, flip, noise = draws(epoch, index)
        return apply(image, offset, flip, noise)

    return augmented


def augmented_samples(x_nhwc: np.ndarray, seed: int, epoch: int, indices: Sequence[int], augment) -> np.ndarray:
    """x_nhwc[k] (sample indices[k]) through sample_augmenter inside a parallel Dataset.map: for pictures and tests."""
    import tensorflow as tf

    if len(x_nhwc) != len(indices):
        raise ValueError(f"one index per image: {len(x_nhwc)} images, {len(indices)} indices")
    if not len(x_nhwc):
        return np.array(x_nhwc[:0])
    augmenter = sample_augmenter(augment, x_nhwc.shape[1:], seed)
    dataset = tf.data.Dataset.from_tensor_slices((x_nhwc, np.asarray(indices, dtype=np.int64)))
    dataset = dataset.map(lambda image, index: augmenter(image, epoch, index), num_parallel_calls=tf.data.AUTOTUNE)
    return np.stack([image.numpy() for image in dataset])
