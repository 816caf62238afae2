"""Monitor: real host sampling; GPU paths through a fake pynvml injected here, in tests only."""
import os
import sys
import time
import types
from types import SimpleNamespace

import pytest

from engine import devices
from engine.monitor import Monitor, Nvml

GIB = 1024**3


class NVMLError(Exception):
    pass


def fake_pynvml(gpus=2, pid=None, fail_init=False):
    """A stand-in for nvidia-ml-py's pynvml with the calls Arena makes."""
    module = types.ModuleType("pynvml")
    module.NVMLError = NVMLError
    calls = {"init": 0, "shutdown": 0}

    def nvmlInit():
        calls["init"] += 1
        if fail_init:
            raise NVMLError("Driver Not Loaded")

    module.nvmlInit = nvmlInit
    module.nvmlShutdown = lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1)
    module.nvmlDeviceGetCount = lambda: gpus
    module.nvmlDeviceGetHandleByIndex = lambda i: f"handle{i}"
    module.nvmlDeviceGetName = lambda h: b"NVIDIA Fake A100" if h == "handle0" else "NVIDIA Fake T4"
    module.nvmlSystemGetDriverVersion = lambda: "580.1"
    module.nvmlDeviceGetMemoryInfo = lambda h: SimpleNamespace(total=40 * GIB, used=3 * GIB, free=37 * GIB)
    module.nvmlDeviceGetUtilizationRates = lambda h: SimpleNamespace(gpu=87, memory=40)
    module.nvmlDeviceGetComputeRunningProcesses = lambda h: [
        SimpleNamespace(pid=12345, usedGpuMemory=GIB),
        SimpleNamespace(pid=pid or os.getpid(), usedGpuMemory=2 * GIB),
    ]
    module.calls = calls
    return module


def test_without_nvml_the_gpu_path_is_off_with_a_reason():
    # This machine has no NVIDIA driver: the real pynvml import works, nvmlInit fails.
    nvml, status = Nvml.load()
    if nvml is not None:
        pytest.skip("a real NVIDIA driver is present on this machine")
    assert "NVML" in status or "pynvml" in status
    assert devices.device_choices() == ["auto", "cpu"]


def test_fake_nvml_is_described_and_sampled(monkeypatch):
    module = fake_pynvml()
    monkeypatch.setitem(sys.modules, "pynvml", module)
    nvml, status = Nvml.load()
    assert status == "ok"
    described = nvml.describe()
    assert described["driver_version"] == "580.1"
    assert [g["name"] for g in described["gpus"]] == ["NVIDIA Fake A100", "NVIDIA Fake T4"]
    readings = dict((name, (value, unit)) for name, value, unit in nvml.read(0, os.getpid()))
    assert readings["gpu_memory_used"] == (3 * GIB, "bytes")
    assert readings["process_gpu_memory"] == (2 * GIB, "bytes")  # this process, not pid 12345
    assert readings["gpu_utilization"] == (87.0, "%")


def test_failed_nvml_init_falls_back(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(fail_init=True))
    nvml, status = Nvml.load()
    assert nvml is None and "Driver Not Loaded" in status


def test_device_choices_and_check_follow_nvml(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml(gpus=2))
    assert devices.device_choices() == ["auto", "cpu", "cuda:0", "cuda:1"]
    devices.check_available("cuda:1")
    with pytest.raises(ValueError, match=r"device='cuda:2': 2 GPU\(s\) found"):
        devices.check_available("cuda:2")


def test_monitor_samples_host_framework_and_gpu_at_over_5_hz(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml())
    nvml, _ = Nvml.load()
    batches = []
    probe = lambda: [("allocated", 1024.0, "bytes")]  # noqa: E731 - a framework allocator gauge
    monitor = Monitor(batches.append, os.getpid(), "torch", probe, nvml, gpu_index=0, interval_s=0.1).start()
    time.sleep(1.05)
    monitor.stop()
    readings = [r for batch in batches for r in batch]
    rss = [r for r in readings if r[1:3] == ("host", "rss")]
    assert len(rss) >= 5
    span = rss[-1][0] - rss[0][0]
    assert (len(rss) - 1) / span >= 5.0
    assert all(r[3] > 10 * 1024**2 and r[4] == "bytes" for r in rss)  # a Python process uses > 10 MiB
    sources = {(r[1], r[2]) for r in readings}
    assert {("host", "cpu_percent"), ("torch", "allocated"), ("nvml", "gpu_memory_used"),
            ("nvml", "process_gpu_memory"), ("nvml", "gpu_utilization")} <= sources
    assert monitor.errors == []


def test_a_failing_gauge_does_not_stop_sampling():
    def broken():
        raise RuntimeError("allocator exploded")

    batches = []
    monitor = Monitor(batches.append, os.getpid(), "tensorflow", broken, interval_s=0.05).start()
    time.sleep(0.3)
    monitor.stop()
    assert any(r[2] == "rss" for batch in batches for r in batch)
    assert monitor.errors and "allocator exploded" in monitor.errors[0]
