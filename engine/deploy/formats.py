"""The deployment formats of each framework, as data: what exports them, what runtime loads them, how equal they must be.

Framework-neutral: importing this imports neither framework nor any runtime. The exporters live in
torch_formats.py and tensorflow_formats.py (mirror images, run in a process of that framework); the
loaders in runtime_<runtime>.py, each importing only its own runtime, so a fresh measuring process
holds exactly one.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional


class NotExportable(Exception):
    """This model cannot be expressed in this format; the message names the cause."""


@dataclass(frozen=True)
class Format:
    framework: str  # the framework that exports it
    name: str  # unique within its framework; "onnx" exists for both
    runtime: str  # torch | tensorflow | litert | onnxruntime
    file: str  # the artifact's name in its directory (a directory for the SavedModel)
    tolerance: Optional[float]  # max |logit difference| allowed against the trained model; None: quantized
    label: str  # what a screen calls it

    @property
    def key(self) -> str:
        return f"{self.framework}/{self.name}"


FORMATS: tuple[Format, ...] = (
    Format("torch", "torchscript", "torch", "model.torchscript.pt", 1e-5, "TorchScript"),
    Format("torch", "torch_export", "torch", "model.pt2", 1e-5, "torch.export (.pt2)"),
    Format("torch", "aoti", "torch", "model.aoti.pt2", 1e-5, "AOTInductor package"),
    Format("torch", "onnx", "onnxruntime", "model.onnx", 1e-5, "ONNX (torch.onnx)"),
    Format("tensorflow", "savedmodel", "tensorflow", "savedmodel", 1e-5, "SavedModel"),
    Format("tensorflow", "tflite", "litert", "model.tflite", 1e-4, "LiteRT fp32"),
    Format("tensorflow", "tflite_int8", "litert", "model_int8.tflite", None, "LiteRT int8 (dynamic range)"),
    Format("tensorflow", "onnx", "onnxruntime", "model.onnx", 1e-5, "ONNX (tf2onnx)"),
)
_BY_KEY = {f.key: f for f in FORMATS}
RUNTIMES = ("torch", "tensorflow", "litert", "onnxruntime")
_RUNTIME_MODULES = {"torch": "engine.deploy.runtime_torch", "tensorflow": "engine.deploy.runtime_tensorflow",
                    "litert": "engine.deploy.runtime_litert", "onnxruntime": "engine.deploy.runtime_onnx"}
_EXPORTER_MODULES = {"torch": "engine.deploy.torch_formats", "tensorflow": "engine.deploy.tensorflow_formats"}


# Model x format combinations the format cannot express, with the cause: checked when a job is
# queued, and named on the page. The exporters raise NotExportable with the same cause.
UNSUPPORTED: dict[tuple[str, str, str], str] = {}


def unsupported(framework: str, name: str, model: str) -> Optional[str]:
    """Why this model cannot be exported to this format, or None when it can."""
    return UNSUPPORTED.get((framework, name, model))


def names(framework: str) -> tuple[str, ...]:
    """The format names of one framework, in the table's order."""
    if framework not in _EXPORTER_MODULES:
        raise ValueError(f"framework={framework!r}: expected one of {', '.join(_EXPORTER_MODULES)}")
    return tuple(f.name for f in FORMATS if f.framework == framework)


def get(framework: str, name: str) -> Format:
    """The format, or a ValueError naming the bad value and the choices."""
    found = _BY_KEY.get(f"{framework}/{name}")
    if found is None:
        raise ValueError(f"format {name!r} is not one of {framework}'s: expected one of {', '.join(names(framework))}")
    return found


def runtime_module(framework: str, name: str):
    """Import the loader module of the format's runtime (and with it only that runtime)."""
    return importlib.import_module(_RUNTIME_MODULES[get(framework, name).runtime])


def exporter_module(framework: str):
    """Import the framework's exporter module (and with it the framework)."""
    names(framework)  # validates
    return importlib.import_module(_EXPORTER_MODULES[framework])
