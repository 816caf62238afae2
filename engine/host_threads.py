"""While a framework trains, Arena's own numpy work runs on one thread: the cores belong to the framework.

numpy and scipy ship their own OpenBLAS, whose worker threads keep spinning for about 0.1 s after
every call they serve. On a 2-core machine one spinning thread stalls every OpenMP region PyTorch
runs: the per-epoch layer statistics (an np.dot over each layer's weights) left every following
cnn epoch about 35 % slower, outside the timers but inside what they measure (issue 15). Neither
framework trains through numpy's BLAS (PyTorch links MKL and its own OpenMP; TensorFlow uses Eigen
and oneDNN), so one thread for it costs training nothing. Only numpy's and scipy's own copies are
limited, by library name: a framework build that links an OpenBLAS of its own keeps its threads.
"""
from __future__ import annotations

from contextlib import AbstractContextManager

from threadpoolctl import ThreadpoolController

# File name prefixes of the OpenBLAS builds numpy and scipy wheels vendor (scipy-openblas, 64- and 32-bit ints).
NUMPY_BLAS_PREFIXES = ["libscipy_openblas", "libscipy_openblas64_"]


def numpy_blas_single_threaded() -> AbstractContextManager:
    """A context in which numpy's and scipy's BLAS use one thread (restored on exit)."""
    return ThreadpoolController().select(prefix=NUMPY_BLAS_PREFIXES).limit(limits=1)


def numpy_blas_threads() -> dict[str, int]:
    """{library file: threads} of the numpy/scipy BLAS builds loaded now: what a run records."""
    selected = ThreadpoolController().select(prefix=NUMPY_BLAS_PREFIXES)
    return {info["filepath"].rsplit("/", 1)[-1]: info["num_threads"] for info in selected.info()}
