"""PyTorch backend: eager mode, the mirror image of tensorflow_backend.py."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from engine.backends.base import Backend


class _PowerLaw(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.phi = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.pow(x, self.phi)


class _NHWCFlatten(nn.Module):
    """Flatten NCHW activations in NHWC order, so dense kernels match TensorFlow's layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 2, 3, 1).flatten(1)


def _make_model(model: str, input_shape: tuple[int, ...], num_outputs: int) -> nn.Module:
    if model == "mlp":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(int(np.prod(input_shape)), 128), nn.ReLU(), nn.Linear(128, num_outputs)
        )
    if model == "cnn":
        height, width, channels = input_shape
        return nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding="same"), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding="same"), nn.ReLU(),
            nn.MaxPool2d(2), _NHWCFlatten(),
            nn.Linear((height // 2) * (width // 2) * 64, 128), nn.ReLU(),
            nn.Linear(128, num_outputs),
        )
    if model == "powerlaw":
        return _PowerLaw()
    raise ValueError(f"unknown model {model!r}")


def _load_canonical(module: nn.Module, model: str, weights: dict[str, np.ndarray]) -> None:
    """Copy canonical (Keras-layout) weights in: dense (in,out) -> (out,in), conv HWIO -> OIHW."""
    if model == "powerlaw":
        module.phi.data.copy_(torch.from_numpy(weights["phi"]))
        return
    layers = [m for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    names = [n.split("/")[0] for n in weights if n.endswith("/kernel")]
    for layer, name in zip(layers, names, strict=True):
        kernel = weights[f"{name}/kernel"]
        kernel = kernel.T if kernel.ndim == 2 else kernel.transpose(3, 2, 0, 1)
        layer.weight.data.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
        layer.bias.data.copy_(torch.from_numpy(weights[f"{name}/bias"]))


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, device: str) -> None:
        if device == "auto":
            device = "cuda:0" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda"):
            index = int(device.split(":")[1])
            if index >= torch.cuda.device_count():
                raise RuntimeError(
                    f"device {device!r} requested but PyTorch sees {torch.cuda.device_count()} CUDA device(s)"
                )
        self.device = torch.device(device)

    def build(self, model, task, weights, input_shape, num_outputs, optimizer, lr, seed) -> int:
        torch.manual_seed(seed)
        self.task = task
        self.model_name = model
        self.module = _make_model(model, input_shape, num_outputs)
        _load_canonical(self.module, model, weights)
        self.module.to(self.device)
        params = self.module.parameters()
        if optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=lr)
        elif optimizer == "momentum":
            self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
        else:
            self.optimizer = torch.optim.Adam(params, lr=lr, betas=(0.9, 0.999), eps=1e-8)
        self.loss_fn = F.cross_entropy if task == "classification" else F.mse_loss
        # Conv layers take NCHW; data arrives NHWC and is transposed once per epoch.
        self._nchw = model == "cnn"
        return sum(p.numel() for p in self.module.parameters())

    def to_device(self, x, y):
        x_tensor = torch.from_numpy(np.ascontiguousarray(x))
        if self._nchw:
            x_tensor = x_tensor.permute(0, 3, 1, 2).contiguous()
        return x_tensor.to(self.device), torch.from_numpy(np.ascontiguousarray(y)).to(self.device)

    def train_step(self, x, y):
        if not self.module.training:  # evaluate() leaves eval mode; train() walks every submodule
            self.module.train()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.module(x), y)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def losses_to_floats(self, losses: Sequence[Any]) -> list[float]:
        return torch.stack(list(losses)).cpu().tolist() if losses else []

    @torch.no_grad()
    def evaluate(self, x, y, batch_size):
        self.module.eval()
        x_all, y_all = self.to_device(x, y)
        loss_sum, correct = 0.0, 0
        for start in range(0, len(x), batch_size):
            out = self.module(x_all[start:start + batch_size])
            target = y_all[start:start + batch_size]
            loss_sum += float(self.loss_fn(out, target, reduction="sum"))
            if self.task == "classification":
                correct += int((out.argmax(dim=1) == target).sum())
        # Regression: mean squared error per sample, like Keras's mse over a (N, 1) target.
        metrics = {"test_loss": loss_sum / len(x)}
        if self.task == "classification":
            metrics["test_accuracy"] = correct / len(x)
        else:
            metrics["phi_estimate"] = float(self.module.phi)
        return metrics

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def memory_stats(self):
        if self.device.type != "cuda":
            return []
        return [
            ("allocated", float(torch.cuda.memory_allocated(self.device)), "bytes"),
            ("reserved", float(torch.cuda.memory_reserved(self.device)), "bytes"),
            ("peak_allocated", float(torch.cuda.max_memory_allocated(self.device)), "bytes"),
        ]

    def describe(self):
        info: dict[str, Any] = {
            "framework": "torch",
            "framework_version": torch.__version__,
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "device": str(self.device),
            "intra_op_threads": torch.get_num_threads(),
        }
        if self.device.type == "cuda":
            info["device_name"] = torch.cuda.get_device_name(self.device)
        return info

    @property
    def gpu_index(self):
        return self.device.index if self.device.type == "cuda" else None
