"""Test doubles that stand in for hardware libraries; this machine has no GPU and no NVML.

install_fake_nvml() makes `import pynvml` find tests/fakes/pynvml.py, in this process and in
child processes (through PYTHONPATH, which engine.child_env() keeps). Product code never knows.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

FAKES_DIR = Path(__file__).resolve().parent
STATE_ENV = "ARENA_FAKE_NVML_STATE"
GIB = 1024**3


def fake_gpu(index: int, **overrides: Any) -> dict[str, Any]:
    """A plausible GPU for the fake's state (an idle-ish A100 80 GB); override any key."""
    gpu = {
        "name": "NVIDIA A100-SXM4-80GB",
        "uuid": f"GPU-fa4e0000-0000-0000-0000-{index:012d}",
        "memory_total_bytes": 80 * GIB,
        "memory_used_bytes": 4 * GIB,
        "utilization_pct": 35,
        "memory_utilization_pct": 20,
        "temperature_c": 45,
        "power_mw": 120_000,  # NVML units: milliwatts
        "power_limit_mw": 400_000,
        "energy_mj": 5_000_000,  # millijoules since driver load
        "pci_bus_id": f"00000000:{index + 1:02X}:00.0",
        "processes": [],  # compute processes: [[pid, used bytes or null], ...]
        "graphics_processes": [],
        "fail": {},  # NVML function name -> error ("NotSupported", "GpuIsLost", ...), this GPU only
    }
    gpu.update(overrides)
    return gpu


def fake_state(gpus: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    """A whole machine for the fake: driver 550.54.15, CUDA 12.4, these GPUs."""
    return {"driver_version": "550.54.15", "cuda_version": 12040, "fail": {}, "gpus": gpus, **overrides}


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Replace the fake's state; the next NVML call in any process sees it."""
    temporary = Path(f"{path}.tmp")
    temporary.write_text(json.dumps(state), encoding="utf-8")
    temporary.replace(path)  # atomic: a process reading mid-write never sees half a file


def install_fake_nvml(monkeypatch, tmp_path: Path, state: dict[str, Any]) -> Path:
    """Make `import pynvml` load the fake with this state, here and in child processes; returns the state file."""
    path = Path(tmp_path) / "fake_nvml_state.json"
    write_state(path, state)
    monkeypatch.setenv(STATE_ENV, str(path))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(FAKES_DIR), os.environ.get("PYTHONPATH")])))
    monkeypatch.syspath_prepend(str(FAKES_DIR))
    # A real pynvml imported earlier would shadow the fake; monkeypatch puts it back afterwards.
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    return path


def hide_nvml(monkeypatch) -> None:
    """Simulate a machine without nvidia-ml-py in this process: `import pynvml` raises ImportError."""
    monkeypatch.setitem(sys.modules, "pynvml", None)


def hide_nvml_everywhere(monkeypatch, tmp_path: Path) -> Path:
    """No nvidia-ml-py here nor in child processes (the fake refuses to import)."""
    path = install_fake_nvml(monkeypatch, tmp_path, {"importable": False})
    hide_nvml(monkeypatch)
    return path
