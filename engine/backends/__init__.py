"""Backend registry: a framework name picks a backend; the framework is imported only then."""
from __future__ import annotations

import importlib
from typing import Optional

from engine.backends.base import Backend, exception_chain

_REGISTRY = {
    "torch": ("engine.backends.torch_backend", "TorchBackend"),
    "tensorflow": ("engine.backends.tensorflow_backend", "TensorFlowBackend"),
}


def get_backend(framework: str, device: str, tf_memory_growth: bool = True, threads: Optional[int] = None) -> Backend:
    """Import the framework's backend and create it on a device; unknown names fail loudly.

    tf_memory_growth (TensorFlow only, RunSpec.tf_memory_growth): grow GPU memory on demand
    rather than reserve nearly all of it when TensorFlow first touches the GPU. threads: intra-op
    threads (a data-parallel worker's share of the cores); None keeps the framework's default.
    """
    if framework not in _REGISTRY:
        raise ValueError(f"framework={framework!r}: expected one of {', '.join(_REGISTRY)}")
    module_name, class_name = _REGISTRY[framework]
    backend_class = getattr(importlib.import_module(module_name), class_name)
    if framework == "tensorflow":
        return backend_class(device, memory_growth=tf_memory_growth, threads=threads)
    return backend_class(device, threads=threads)


_AUGMENTERS = {"torch": "engine.backends.torch_augment", "tensorflow": "engine.backends.tensorflow_augment"}


def augmented_samples(framework: str, x_nhwc, seed: int, epoch: int, indices, augment):
    """Samples x_nhwc[i] for i in indices augmented as the framework's native pipeline does it, per sample."""
    return importlib.import_module(_AUGMENTERS[framework]).augmented_samples(x_nhwc, seed, epoch, indices, augment)


def is_out_of_memory(exc: BaseException, framework: Optional[str] = None) -> bool:
    """Whether exc means an allocation failed, by the rules of the framework's backend module.

    framework=None (no backend was created): only MemoryError counts. Names a framework whose
    backend this process already imported; importing one just to classify would load it.
    """
    if framework is None:
        return any(isinstance(link, MemoryError) for link in exception_chain(exc))
    if framework not in _REGISTRY:
        raise ValueError(f"framework={framework!r}: expected one of {', '.join(_REGISTRY)}")
    return importlib.import_module(_REGISTRY[framework][0]).is_out_of_memory(exc)
