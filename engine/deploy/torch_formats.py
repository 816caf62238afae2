"""PyTorch's deployment formats: build the trained model from canonical weights and export it each way PyTorch ships one.

The mirror image of tensorflow_formats.py, same function order. Runs in a torch process; the artifacts
are loaded back by runtime_torch.py (TorchScript, torch.export, AOTInductor) and runtime_onnx.py (ONNX).
Every artifact takes a dynamic batch dimension: image models NCHW float32, token models (N, T) int64,
powerlaw (N, 1) float32, as to_input lays them out.
"""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engine.backends.torch_models import build_model, load_canonical
from engine.deploy import formats
from engine.deploy.formats import NotExportable
from engine.weights import input_kind

FORMATS: tuple[str, ...] = formats.names("torch")  # torchscript, torch_export, aoti, onnx
# torch.export specializes a dimension whose example size is 0 or 1 to that constant, so the example
# that marks the batch dynamic holds at least two samples.
MIN_EXAMPLE_BATCH = 2
INPUT_NAME, OUTPUT_NAME = "input", "logits"  # of the ONNX graph; runtime_onnx reads them from the file


def build(model: str, input_shape: tuple[int, ...], num_outputs: int, weights: dict[str, np.ndarray]) -> nn.Module:
    """The trained model in inference mode, fp32, on the CPU, from canonical weights."""
    module = build_model(model, input_shape, num_outputs)
    load_canonical(module, model, weights)
    # eval(): dropout off, batch norm reads its moving statistics; every export records this mode.
    return module.to(device="cpu", dtype=torch.float32).eval()


def to_input(model: str, x: np.ndarray) -> np.ndarray:
    """Canonical host arrays -> the artifacts' input: images NHWC -> NCHW float32, token ids int64; row-major."""
    # np.array, not np.ascontiguousarray: for one channel the transposed view already counts as contiguous
    # yet keeps NHWC strides, and an AOTInductor package reads strides (see _example_tensor); a copy has plain ones.
    kind = input_kind(model)
    if kind == "image":
        if x.ndim != 4:
            raise ValueError(f"{model} takes (N, H, W, C) images, got shape {x.shape}")
        return np.array(x.transpose(0, 3, 1, 2), dtype=np.float32, order="C")
    if kind == "tokens":
        return np.array(x, dtype=np.int64, order="C")
    return np.array(x, dtype=np.float32, order="C")


def reference_outputs(module: nn.Module, x: np.ndarray, batch_size: int = 128) -> np.ndarray:
    """The trained model's own outputs (eager, fp32) on x in to_input's layout: what parity compares with."""
    with torch.inference_mode():
        outputs = [module(torch.from_numpy(x[start:start + batch_size])).numpy()
                   for start in range(0, len(x), batch_size)]
    return np.concatenate(outputs).astype(np.float32, copy=False)


def export(fmt: str, module: nn.Module, model: str, example: np.ndarray, directory: Path) -> Path:
    """Write one artifact into directory (example: a few samples in to_input's layout) and return its path."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r} is not one of torch's: expected one of {', '.join(FORMATS)}")
    if module.training:
        raise ValueError(f"{model}: export a module in eval mode (build() returns one), not in training mode")
    path = Path(directory) / formats.get("torch", fmt).file
    path.parent.mkdir(parents=True, exist_ok=True)
    args = (_example_tensor(example),)
    if fmt == "torchscript":
        _torchscript(module, args, path)
    elif fmt == "torch_export":
        torch.export.save(_exported(module, args), path)
    elif fmt == "aoti":
        _aoti(module, args, path)
    else:
        _onnx(module, args, path)
    return path


def _example_tensor(example: np.ndarray) -> torch.Tensor:
    """The example as a row-major tensor of at least MIN_EXAMPLE_BATCH samples (so no exporter fixes the batch at 1)."""
    if len(example) == 0:
        raise ValueError("the export example holds no samples")
    if len(example) < MIN_EXAMPLE_BATCH:
        example = np.concatenate([example] * MIN_EXAMPLE_BATCH)[:MIN_EXAMPLE_BATCH]
    # Plain row-major strides, even on size-1 dimensions: AOTInductor compiles for the example's strides
    # and trusts them at run time. A one-channel NCHW view with NHWC strides (64, 1, 8, 1) passes as
    # channels_last, Inductor then feeds it to the first convolution as is, and a package fed (64, 64, 8, 1)
    # at run time computes garbage (resnet: max |diff| 0.2). From (64, 64, 8, 1) Inductor converts the layout
    # itself, which is right for either stride of the size-1 channel.
    return torch.from_numpy(np.asarray(example)).clone(memory_format=torch.contiguous_format)


def _batch_dynamic() -> tuple[dict[int, torch.export.Dim], ...]:
    """dynamic_shapes for the one positional input: dimension 0 is the batch, any size from 1 up."""
    return ({0: torch.export.Dim("batch", min=1)},)


def _torchscript(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> None:
    # Traced, not scripted: the LSTM's forward reads the autocast state and calls functional_call,
    # which TorchScript cannot compile; the trace records the eval path it took. Tracing keeps the
    # batch dynamic (shapes are read from the input, not baked in), and check_inputs re-traces at
    # another batch size and fails if any shape was baked in. In eval mode under no_grad the
    # transformer layers trace to PyTorch's fused encoder-layer kernel, the very path eager runs.
    other_batch = torch.cat([args[0]] * 3)[:2 * len(args[0]) + 1]
    with torch.no_grad(), warnings.catch_warnings():
        # torch.jit warns it is deprecated (2.13) yet ships and loads; TorchScript is the format measured here.
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.\w+` is deprecated", category=DeprecationWarning)
        traced = torch.jit.trace(module, args, check_inputs=[(other_batch,)])
        torch.jit.save(traced, str(path))


def _exported(module: nn.Module, args: tuple[torch.Tensor, ...]) -> torch.export.ExportedProgram:
    # Under no_grad: the inference graph, no autograd bookkeeping (what AOTInductor compiles). The
    # transformer's encoder layers decline their fused fast path for export's tracing tensors and export
    # the composite one (scaled_dot_product_attention, layer_norm, linear); it agrees with the fused
    # kernel eager runs to ~1e-6. Dropout is recorded with train=False: the identity.
    with torch.no_grad():
        return torch.export.export(module, args, dynamic_shapes=_batch_dynamic())


def _aoti(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> None:
    if not (shutil.which("g++") or shutil.which("c++")):
        raise NotExportable("AOTInductor needs a C++ compiler (g++), none on this machine")
    program = _exported(module, args)
    with torch.no_grad():
        # dynamic_threads: kernels read OpenMP's thread count when they run, so the loading process's
        # torch.set_num_threads holds; without it Inductor bakes this process's count into every kernel.
        torch._inductor.aoti_compile_and_package(program, package_path=str(path),
                                                 inductor_configs={"cpp.dynamic_threads": True})


def _onnx(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path) -> None:
    # The torch.export-based exporter (dynamo=True, the default since 2.9) at its default opset;
    # external_data=False keeps the weights inside the one model.onnx file (they are far below 2 GB).
    with torch.no_grad():
        torch.onnx.export(module, args, str(path), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_shapes=_batch_dynamic(), external_data=False, verbose=False)
