"""Samples host, framework-allocator and GPU (NVML) gauges in a background thread.

NVML is optional: without the library or a driver (any CPU-only machine) the GPU gauges are
skipped and the reason is kept, so the dashboard can say why there is no GPU trace.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Optional

import psutil

SAMPLE_INTERVAL_S = 0.16  # 6.25 Hz: above the 5 Hz a memory trace needs; each sample costs eager PyTorch GIL time

Reading = tuple[float, str, str, float, str]  # (time, source, name, value, unit)


class Nvml:
    """A thin, failure-tolerant wrapper around pynvml (from the nvidia-ml-py package)."""

    def __init__(self, module: Any) -> None:
        self._nvml = module

    @classmethod
    def load(cls) -> tuple[Optional["Nvml"], str]:
        """(Nvml, "ok") when a driver answers; (None, reason) otherwise."""
        try:
            import pynvml
        except ImportError as exc:
            return None, f"pynvml not importable: {exc}"
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            return None, f"NVML unavailable: {exc}"
        return cls(pynvml), "ok"

    def device_count(self) -> int:
        return int(self._nvml.nvmlDeviceGetCount())

    def describe(self) -> dict[str, Any]:
        """Driver version and the name and memory of every GPU."""
        gpus = []
        for index in range(self.device_count()):
            handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
            gpus.append({
                "index": index,
                "name": _text(self._nvml.nvmlDeviceGetName(handle)),
                "memory_total_bytes": int(self._nvml.nvmlDeviceGetMemoryInfo(handle).total),
            })
        return {"driver_version": _text(self._nvml.nvmlSystemGetDriverVersion()), "gpus": gpus}

    def read(self, index: int, pid: int) -> list[tuple[str, float, str]]:
        """Device memory used (whole GPU and this process) and utilisation of one GPU."""
        handle = self._nvml.nvmlDeviceGetHandleByIndex(index)
        memory = self._nvml.nvmlDeviceGetMemoryInfo(handle)
        utilization = self._nvml.nvmlDeviceGetUtilizationRates(handle)
        readings = [
            ("gpu_memory_used", float(memory.used), "bytes"),
            ("gpu_utilization", float(utilization.gpu), "%"),
        ]
        for process in self._nvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if process.pid == pid and process.usedGpuMemory is not None:
                readings.append(("process_gpu_memory", float(process.usedGpuMemory), "bytes"))
        return readings

    def shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Monitor:
    """Samples gauges every interval and hands readings to a sink; never raises into training."""

    def __init__(
        self,
        sink: Callable[[list[Reading]], None],
        pid: int,
        framework: str,
        framework_probe: Optional[Callable[[], list[tuple[str, float, str]]]] = None,
        nvml: Optional[Nvml] = None,
        gpu_index: Optional[int] = None,
        interval_s: float = SAMPLE_INTERVAL_S,
    ) -> None:
        self._sink = sink
        self._process = psutil.Process(pid)
        self._cores = psutil.cpu_count() or 1
        self._framework = framework
        self._probe = framework_probe
        self._nvml = nvml if gpu_index is not None else None
        self._gpu_index = gpu_index
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self.errors: list[str] = []

    def start(self) -> "Monitor":
        self._process.cpu_percent(None)  # first call primes psutil's CPU counter
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def sample(self) -> list[Reading]:
        """One reading of every gauge."""
        now = time.time()
        with self._process.oneshot():
            # Over a very short interval psutil can report more than every core busy; clamp.
            cpu = min(float(self._process.cpu_percent(None)), 100.0 * self._cores)
            readings: list[Reading] = [
                (now, "host", "rss", float(self._process.memory_info().rss), "bytes"),
                (now, "host", "cpu_percent", cpu, "%"),
            ]
        for source, read in (("framework", self._probe), ("nvml", self._read_nvml)):
            if read is None:
                continue
            try:
                name_source = self._framework if source == "framework" else "nvml"
                readings += [(now, name_source, name, value, unit) for name, value, unit in read()]
            except Exception as exc:  # a gauge that fails is reported once, then skipped
                if len(self.errors) < 5:
                    self.errors.append(f"{source}: {exc}")
        return readings

    def _read_nvml(self) -> list[tuple[str, float, str]]:
        if self._nvml is None:
            return []
        return self._nvml.read(self._gpu_index, self._process.pid)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self._sink(self.sample())
            except Exception as exc:
                if len(self.errors) < 5:
                    self.errors.append(str(exc))
            # Deadline-based schedule: the rate holds even when a sample takes a while.
            next_at += self._interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))
