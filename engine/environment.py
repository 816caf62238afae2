"""The environment a run trained in, stored on the run so results keep their provenance."""
from __future__ import annotations

import os
import platform
import socket
import sys
from typing import Any, Optional

import numpy as np
import psutil


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith(("model name", "hardware", "processor\t: ")) and ":" in line:
                    name = line.split(":", 1)[1].strip()
                    if name and not name.isdigit():
                        return name
    except OSError:
        pass
    return platform.processor() or platform.machine()


def capture(framework_info: dict[str, Any], inventory: Optional[Any], nvml_status: str) -> dict[str, Any]:
    """Python, OS, host, CPU, memory, framework/CUDA versions, device and GPUs."""
    env: dict[str, Any] = {
        "python_version": platform.python_version(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_total_bytes": psutil.virtual_memory().total,
        "numpy_version": np.__version__,
        "nvml": nvml_status,
    }
    env.update(framework_info)
    if inventory is not None:  # engine.nvml.Inventory: the machine's GPUs when the run started
        env["gpu_driver_version"] = inventory.driver_version
        env["cuda_driver_version"] = inventory.cuda_version
        env["gpus"] = [{"index": g.index, "uuid": g.uuid, "name": g.name, "memory_total_bytes": g.memory_total_bytes,
                        "pci_bus_id": g.pci_bus_id} for g in inventory.gpus]
    if "device_name" not in env:
        env["device_name"] = f"CPU: {env['cpu_model']}" if env.get("device") == "cpu" else env.get("device")
    return env
