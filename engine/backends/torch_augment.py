"""PyTorch's own implementation of engine/augment.py: the same crop, flip and noise in torch ops.

A torch Dataset's __getitem__ calls SampleAugmenter per sample, in DataLoader workers: its draws
come from a torch.Generator seeded from (seed, epoch, index) alone, so they do not depend on the
worker count, the batch size or the order samples are asked for.

torch is imported inside the functions, so importing this module imports no framework
(tests/engine/test_imports.py imports every engine module and checks); once torch is loaded the
import statement is a dictionary lookup.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from engine.augment import FLIP_PROBABILITY, NOISE_STD, crop_padding, image_shape, parse_augment

if TYPE_CHECKING:
    import torch

_MASK64 = (1 << 64) - 1
_STREAM = 23  # as engine.augment.STREAM: augmentation draws stay apart from other streams of the seed


def apply(image: torch.Tensor, offset: tuple[int, int], flip: bool,
          noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """An HWC tensor padded with P zeros and cropped at offset (dy, dx), then flipped if flip, then noise added."""
    import torch
    from torch.nn import functional as F

    height, width = image.shape[0], image.shape[1]
    padding = crop_padding(height)
    dy, dx = int(offset[0]), int(offset[1])
    if (dy, dx) != (padding, padding):  # (P, P) is the unshifted window: nothing to do
        if not (0 <= dy <= 2 * padding and 0 <= dx <= 2 * padding):
            raise ValueError(f"crop offset should be within [0, {2 * padding}] each, got {offset!r}")
        # F.pad lists pads from the last dimension back: channels (none), width, height.
        padded = F.pad(image, (0, 0, padding, padding, padding, padding))
        image = padded[dy:dy + height, dx:dx + width]
    if flip:
        image = torch.flip(image, dims=(1,))
    if noise is not None:
        image = image + NOISE_STD * noise
    return image


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit generator seed for one sample of one epoch, mixed in pure Python (no numpy per sample)."""
    mixed = _STREAM
    for part in (seed, epoch, index):
        mixed = _splitmix64(mixed ^ part)
    return mixed


class SampleAugmenter:
    """Draws and applies one sample's augmentation from (seed, epoch, index): what Dataset.__getitem__ calls."""

    def __init__(self, augment, shape: Sequence[int], seed: int):
        self.augment = parse_augment(augment)
        self.shape = image_shape(shape)
        self.seed = int(seed)
        self.padding = crop_padding(self.shape[0])

    def draws(self, epoch: int, index: int) -> tuple[tuple[int, int], bool, Optional[torch.Tensor]]:
        """(offset, flip, noise) for the sample, neutral where switched off, as engine.augment.Draws."""
        import torch

        generator = torch.Generator().manual_seed(sample_seed(self.seed, int(epoch), int(index)))
        # Offset and flip always drawn, noise last: switching one off leaves the others' draws alone.
        dy, dx = torch.randint(0, 2 * self.padding + 1, (2,), generator=generator).tolist()
        flip = torch.rand((), generator=generator).item() < FLIP_PROBABILITY
        noise = torch.randn(self.shape, generator=generator) if "noise" in self.augment else None
        offset = (dy, dx) if "crop" in self.augment else (self.padding, self.padding)
        return offset, flip and "flip" in self.augment, noise

    def __call__(self, image_hwc: torch.Tensor, epoch: int, index: int) -> torch.Tensor:
        """The HWC float tensor augmented for sample `index` in `epoch`; the image itself if nothing is on."""
        if not self.augment:
            return image_hwc
        offset, flip, noise = self.draws(epoch, index)
        return apply(image_hwc, offset, flip, None if noise is None else noise.to(image_hwc.dtype))


def augmented_samples(x_nhwc: np.ndarray, seed: int, epoch: int, indices: Sequence[int], augment) -> np.ndarray:
    """x_nhwc[k] (sample indices[k]) through SampleAugmenter, the path a training run takes: for pictures and tests."""
    import torch

    if len(x_nhwc) != len(indices):
        raise ValueError(f"one index per image: {len(x_nhwc)} images, {len(indices)} indices")
    augmenter = SampleAugmenter(augment, x_nhwc.shape[1:], seed)
    out = [augmenter(torch.from_numpy(np.ascontiguousarray(image)), epoch, int(index)).numpy()
           for image, index in zip(x_nhwc, indices)]
    return np.stack(out) if out else np.array(x_nhwc[:0])
