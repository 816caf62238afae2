"""The Launch form's device choices in words: "cuda:0 — NVIDIA A100 (79.2 GiB free)", read from NVML."""
from __future__ import annotations

from analysis.formatting import GIB
from engine.devices import on_cluster
from engine.nvml import GpuInfo, inventory


def device_labels() -> dict[str, str]:
    """Every device a user can pick (auto, cpu, one cuda:N per GPU of this machine) and what its option says.

    On a Ray cluster only auto and cpu: a GPU index of this machine means nothing there.
    """
    if on_cluster():
        return {"auto": "auto — a free GPU anywhere in the Ray cluster, else CPUs",
                "cpu": "cpu — CPUs of a Ray node"}
    found = inventory()
    labels = {"auto": "auto — a free GPU, else the CPU", "cpu": f"cpu — {found.cpu_name}"}
    for gpu in found.gpus:
        labels[f"cuda:{gpu.index}"] = gpu_label(gpu)
    return labels


def gpu_label(gpu: GpuInfo) -> str:
    """One GPU as a select option: index, model and free memory (omitted when NVML could not read it)."""
    free = "" if gpu.memory_free_bytes is None else f" ({gpu.memory_free_bytes / GIB:.1f} GiB free)"
    return f"cuda:{gpu.index} — {gpu.name or 'unknown GPU'}{free}"
