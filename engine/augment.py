"""Image augmentation defined once: random crop with zero padding, horizontal flip, Gaussian noise.

This module is the definition and the numpy reference; engine/backends/torch_augment.py and
tensorflow_augment.py implement the same math with their framework's own ops. An augmentation is
split in two: the random draws for one image (a Draws), then a pure function of image and draws,
so the three implementations can be shown to agree by handing them the same draws.

For an H x W x C float32 image (values about [0, 1]) and P = crop_padding(H), in this fixed order:
  crop:  zero-pad P pixels on each spatial side, keep the H x W window at (dy, dx), each in [0, 2P];
  flip:  mirror the columns (left <-> right), with probability 1/2;
  noise: add NOISE_STD times a standard normal draw per value.
Offset and flip are always drawn (they are cheap), and switched off afterwards, so switching one
augmentation on or off leaves the others' draws as they were; noise is drawn last, and only when on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

AUGMENTATIONS = ("crop", "flip", "noise")
NOISE_STD = 0.05  # inputs are float32 scaled to about [0, 1]: a faint grain that leaves digits legible
FLIP_PROBABILITY = 0.5
# Mixed into every seed of the numpy path, so augmentation draws never coincide with another
# stream drawn from (seed, epoch), such as epoch_order's permutation or batch_lengths.
STREAM = 23


def crop_padding(height: int) -> int:
    """Pixels of zero padding on each side before the random crop: 4 on 32x32 (the CIFAR recipe), 1 on 8x8."""
    return max(1, height // 8)


def parse_augment(value) -> tuple[str, ...]:
    """The augmentations asked for, in AUGMENTATIONS order: "", "none", None, "crop,flip", "crop+flip" or a list."""
    if value is None:
        return ()
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("", "none"):
            return ()
        names = [part.strip() for part in text.replace("+", ",").split(",")]
    elif isinstance(value, (list, tuple)):
        names = list(value)
    else:
        raise ValueError(f"augment should be a text or a list of names, got {value!r} instead")
    for name in names:
        if name not in AUGMENTATIONS:
            raise ValueError(f"unknown augmentation {name!r} in {value!r}; expected 'none' or any of "
                             f"{', '.join(AUGMENTATIONS)} joined by ',' or '+'")
    return tuple(name for name in AUGMENTATIONS if name in names)


def image_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """(height, width, channels) of one image; augmentation is for images only."""
    dims = tuple(shape)
    if len(dims) != 3 or not all(isinstance(d, (int, np.integer)) and d > 0 for d in dims):
        raise ValueError(f"augmentation needs images of shape (height, width, channels), got {shape!r}")
    return int(dims[0]), int(dims[1]), int(dims[2])


def describe(augment, shape: Sequence[int]) -> dict[str, str]:
    """What runs on images of this shape, with its parameters: recorded on the run."""
    names = parse_augment(augment)
    if not names:
        return {}
    height, width, _ = image_shape(shape)
    text = {
        "crop": f"pad {crop_padding(height)} px with zeros, random {height}x{width} crop",
        "flip": f"horizontal, p={FLIP_PROBABILITY:g}",
        "noise": f"Gaussian, std {NOISE_STD:g}",
    }
    return {name: text[name] for name in names}


@dataclass(frozen=True, eq=False)
class Draws:
    """The random draws for one image; switched-off augmentations hold neutral values."""

    offset: tuple[int, int]  # (dy, dx) of the window in the padded image, each in [0, 2P]; (P, P) = no shift
    flip: bool
    noise: Optional[np.ndarray]  # (H, W, C) float32 standard normal; scaled by NOISE_STD when applied


def draw_numpy(rng: np.random.Generator, shape: Sequence[int], augment) -> Draws:
    """One image's draws from rng: offset and flip always drawn (then neutral if off), noise last and only if on."""
    return _draw(rng, image_shape(shape), parse_augment(augment))


def _draw(rng: np.random.Generator, shape: tuple[int, int, int], names: tuple[str, ...]) -> Draws:
    padding = crop_padding(shape[0])
    dy, dx = rng.integers(0, 2 * padding + 1, size=2)
    flip = rng.random() < FLIP_PROBABILITY
    noise = rng.standard_normal(shape, dtype=np.float32) if "noise" in names else None
    return Draws(offset=(int(dy), int(dx)) if "crop" in names else (padding, padding),
                 flip=bool(flip) and "flip" in names, noise=noise)


def apply_numpy(image_hwc: np.ndarray, draws: Draws, augment) -> np.ndarray:
    """The reference: pad P with zeros and take the window at the offset, then flip columns, then add noise."""
    names = parse_augment(augment)
    height, width, _ = image_shape(image_hwc.shape)
    out = image_hwc
    if "crop" in names:
        padding = crop_padding(height)
        dy, dx = draws.offset
        if not (0 <= dy <= 2 * padding and 0 <= dx <= 2 * padding):
            raise ValueError(f"crop offset should be within [0, {2 * padding}] each, got {draws.offset!r}")
        padded = np.pad(image_hwc, ((padding, padding), (padding, padding), (0, 0)))
        out = padded[dy:dy + height, dx:dx + width]
    if "flip" in names and draws.flip:
        out = out[:, ::-1]
    if "noise" in names:
        if draws.noise is None:
            raise ValueError("noise is switched on but the draws hold no noise")
        out = out + out.dtype.type(NOISE_STD) * draws.noise.astype(out.dtype, copy=False)
    return np.array(out)  # a fresh array, never a view of the caller's image


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The numpy generator for sample `index` in `epoch`: independent of batch size and order."""
    return np.random.default_rng([seed, epoch, STREAM, index])


def augment_batch_numpy(x_nhwc: np.ndarray, seed: int, epoch: int, indices: Sequence[int], augment) -> np.ndarray:
    """x_nhwc[k] (sample indices[k] of the dataset) augmented as in `epoch`; x_nhwc itself if nothing is on."""
    names = parse_augment(augment)
    if not names:
        return x_nhwc
    x = np.asarray(x_nhwc)
    if x.ndim != 4:
        raise ValueError(f"augment_batch_numpy takes an NHWC batch of images, got shape {x.shape!r}")
    indices = np.asarray(indices)
    if indices.shape != (len(x),):
        raise ValueError(f"one index per image: {len(x)} images, indices of shape {indices.shape!r}")
    shape = image_shape(x.shape[1:])
    if not len(x):
        return x.copy()
    draws = [_draw(sample_rng(seed, epoch, int(index)), shape, names) for index in indices]
    if "crop" in names or "flip" in names:
        out = _crop_and_flip(x, draws, names)
    else:
        out = x.copy()
    if "noise" in names:
        out += out.dtype.type(NOISE_STD) * np.stack([d.noise for d in draws]).astype(out.dtype, copy=False)
    return out


def _crop_and_flip(x: np.ndarray, draws: list[Draws], names: tuple[str, ...]) -> np.ndarray:
    """Crop and flip of a whole batch in one gather (a new array)."""
    # Output pixel (i, j) of image k reads row dy_k + i and column dx_k + j of the padded image, or
    # column dx_k + (W - 1 - j) when flipped: the crop first, then the flip, as apply_numpy does.
    # One np.take of whole pixels by flat position: 1.6x faster than indexing with three arrays.
    count, height, width, channels = x.shape
    if "crop" in names:
        padding = crop_padding(height)
        source = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
        origin = np.array([d.offset for d in draws], dtype=np.intp)
    else:
        source, origin = x, np.zeros((count, 2), dtype=np.intp)
    rows = origin[:, :1] + np.arange(height)
    cols = origin[:, 1:] + np.arange(width)
    if "flip" in names:
        flips = np.array([d.flip for d in draws], dtype=bool)
        cols = np.where(flips[:, None], cols[:, ::-1], cols)
    source_height, source_width = source.shape[1:3]
    flat = (np.arange(count)[:, None] * source_height + rows)[:, :, None] * source_width + cols[:, None, :]
    return np.take(source.reshape(-1, channels), flat, axis=0)
