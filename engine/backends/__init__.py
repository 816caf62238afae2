"""Backend registry: a framework name picks a backend; the framework is imported only then."""
from __future__ import annotations

import importlib

from engine.backends.base import Backend

_REGISTRY = {
    "torch": ("engine.backends.torch_backend", "TorchBackend"),
    "tensorflow": ("engine.backends.tensorflow_backend", "TensorFlowBackend"),
}


def get_backend(framework: str, device: str) -> Backend:
    """Import the framework's backend and create it on a device; unknown names fail loudly."""
    if framework not in _REGISTRY:
        raise ValueError(f"framework={framework!r}: expected one of {', '.join(_REGISTRY)}")
    module_name, class_name = _REGISTRY[framework]
    backend_class = getattr(importlib.import_module(module_name), class_name)
    return backend_class(device)
