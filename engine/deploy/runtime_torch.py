"""Load PyTorch's own artifacts (TorchScript, torch.export, AOTInductor) for measuring; imports torch and nothing else.

Imported only in a process that measures one of these formats, so that process holds one framework.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

FORMATS = ("torchscript", "torch_export", "aoti")  # the torch runtime's rows of engine.deploy.formats.FORMATS


def load(fmt: str, path: Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """Load the artifact with intra-op threads = threads (inter-op 1) and return predict(x) -> float32 logits."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one the torch runtime loads: expected one of {', '.join(FORMATS)}")
    if threads < 1:
        raise ValueError(f"threads={threads}: expected at least 1")
    _set_threads(threads)
    if fmt == "torchscript":
        loaded = torch.jit.load(str(path), map_location="cpu")
    elif fmt == "torch_export":
        loaded = torch.export.load(str(path)).module()
    else:
        # An AOTInductor package needs no Python model: the compiled .so runs the graph, its kernels on
        # OpenMP threads (exported with dynamic threads, so set_num_threads above governs them).
        loaded = torch._inductor.aoti_load_package(str(path))

    def predict(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return loaded(torch.from_numpy(x)).numpy()

    def predict_row_major(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return loaded(_row_major(torch.from_numpy(x))).numpy()

    # An AOTInductor package reads its input with the strides it was compiled for, unchecked; the other
    # two run eager kernels, which read any strides.
    return predict_row_major if fmt == "aoti" else predict


def _row_major(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor with plain row-major strides, also on size-1 dimensions: a view when it is contiguous."""
    if not tensor.is_contiguous():
        return tensor.contiguous()  # a copy, laid out row-major
    strides, step = [], 1
    for size in reversed(tensor.shape):
        strides.append(step)
        step *= max(size, 1)
    return tensor.as_strided(tensor.shape, tuple(reversed(strides)))


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)
    # Settable once per process, before any inter-op work; a second load in the same process finds it set.
    if torch.get_num_interop_threads() != 1:
        torch.set_num_interop_threads(1)
