"""The one NVML wrapper in Arena: what GPUs exist, what they are doing, and one run's share of them.

NVML (pynvml, from the nvidia-ml-py package) is optional: without the package, the library or a
driver (any CPU-only machine) load() returns the reason instead of raising, and inventory()
describes a machine without GPUs. Every call that can fail on one GPU (power on a laptop part,
energy before Volta, a GPU that fell off the bus) is caught on its own, so one missing gauge never
hides the others.

Process ids: NVML reports host PIDs. Inside a container with its own PID namespace they differ
from os.getpid() and from Run.pid, so a process list can show a training run under a PID nobody
in the container knows; callers fall back on where the scheduler placed a run (Run.placed_device).
"""
from __future__ import annotations

import platform
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, TypeVar

import psutil

T = TypeVar("T")

MILLI = 1000.0  # NVML reports power in mW and energy in mJ

# What gpu_readings() yields, for pages that chart a run's GPU trace: name -> (label, unit).
SAMPLE_NAMES = {
    "process_gpu_memory": ("GPU memory of this run's process", "bytes"),
    "gpu_memory_used": ("GPU memory used, whole device", "bytes"),
    "gpu_utilization": ("GPU utilisation", "%"),
    "gpu_power": ("GPU power draw", "W"),
    "gpu_energy": ("GPU energy counter since driver load", "J"),
}

# gpu_readings' whole-device gauges: (sample name, NVML call, raw result -> value in unit, unit).
_DEVICE_GAUGES: tuple[tuple[str, str, Callable[[Any], float], str], ...] = (
    ("gpu_memory_used", "nvmlDeviceGetMemoryInfo", lambda memory: float(memory.used), "bytes"),
    ("gpu_utilization", "nvmlDeviceGetUtilizationRates", lambda rates: float(rates.gpu), "%"),
    ("gpu_power", "nvmlDeviceGetPowerUsage", lambda milliwatts: milliwatts / MILLI, "W"),
    ("gpu_energy", "nvmlDeviceGetTotalEnergyConsumption", lambda millijoules: millijoules / MILLI, "J"),
)


@dataclass
class GpuProcess:
    pid: int  # a host PID (see the module docstring)
    used_memory_bytes: Optional[int]  # None when NVML cannot tell (e.g. WDDM, some MIG setups)


@dataclass
class GpuInfo:
    """One GPU at one moment; a field is None when its NVML call failed, and errors says why."""

    index: int
    uuid: Optional[str] = None
    name: Optional[str] = None
    memory_total_bytes: Optional[int] = None
    memory_used_bytes: Optional[int] = None
    memory_free_bytes: Optional[int] = None
    utilization_pct: Optional[float] = None
    memory_utilization_pct: Optional[float] = None  # time the memory controller was busy, not fill level
    temperature_c: Optional[float] = None
    power_w: Optional[float] = None
    power_limit_w: Optional[float] = None
    energy_j: Optional[float] = None  # since the driver was loaded
    pci_bus_id: Optional[str] = None
    processes: list[GpuProcess] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)  # field group ("power", "memory" ...) -> NVML message


@dataclass
class Inventory:
    """The machine's GPUs (when NVML answers) and host CPU facts, taken at one moment."""

    available: bool
    reason: str  # "ok", or why there are no GPUs to show
    driver_version: Optional[str] = None
    cuda_version: Optional[str] = None  # the newest CUDA the driver supports, e.g. "12.4"
    gpus: list[GpuInfo] = field(default_factory=list)
    taken_at: float = field(default_factory=time.time)  # unix s
    cpu_name: str = ""
    cpu_logical_cores: int = 0
    cpu_percent: float = 0.0  # whole host, averaged over cores, since the previous call in this process
    host_memory_total_bytes: int = 0
    host_memory_used_bytes: int = 0
    errors: dict[str, str] = field(default_factory=dict)  # system-level calls that failed


class Nvml:
    """A failure-tolerant pynvml session: load() it, read it, shutdown() it."""

    def __init__(self, module: Any) -> None:
        self._nvml = module
        self._handles: dict[int, Any] = {}  # index -> handle: gpu_readings runs 10x/s, a lookup per call is waste
        self.call_errors: dict[str, str] = {}  # NVML function name -> first message it raised

    @classmethod
    def load(cls) -> tuple[Optional["Nvml"], str]:
        """(Nvml, "ok") when a driver answers; (None, reason) otherwise. Never raises."""
        try:
            import pynvml
        except ImportError as exc:  # also when sys.modules["pynvml"] is None
            return None, f"pynvml not importable ({exc}); install nvidia-ml-py"
        try:
            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError_LibraryNotFound, NVMLError_DriverNotLoaded, ...
            return None, f"NVML unavailable: {describe_error(exc)}"
        return cls(pynvml), "ok"

    def device_count(self) -> int:
        return int(self._nvml.nvmlDeviceGetCount())

    def uuid(self, index: int) -> Optional[str]:
        """The GPU's UUID ("GPU-..."): names the same device for CUDA and NVML, unlike a bare index."""
        return self._try("nvmlDeviceGetUUID", lambda: _text(self._nvml.nvmlDeviceGetUUID(self._handle(index))))

    def energy_j(self, index: int) -> Optional[float]:
        """Joules the GPU used since the driver loaded; None when unsupported (before Volta)."""
        millijoules = self._try("nvmlDeviceGetTotalEnergyConsumption",
                                lambda: self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle(index)))
        return None if millijoules is None else millijoules / MILLI

    def gpu_readings(self, index: int, pid: int) -> list[tuple[str, float, str]]:
        """(name, value, unit) of one GPU and of process `pid` on it; a failing call is skipped (see call_errors)."""
        readings: list[tuple[str, float, str]] = []
        process_bytes = self._process_memory_bytes(index, pid)
        if process_bytes is not None:
            readings.append(("process_gpu_memory", float(process_bytes), "bytes"))
        for name, call, value_of, unit in _DEVICE_GAUGES:
            raw = self._try(call, lambda: getattr(self._nvml, call)(self._handle(index)))
            if raw is not None:
                readings.append((name, value_of(raw), unit))
        return readings

    def snapshot(self) -> Inventory:
        """Everything NVML and the host can tell now. Never raises."""
        found = Inventory(available=True, reason="ok", **host_facts())
        nvml = self._nvml
        found.driver_version = self._field(found.errors, "driver", lambda: _text(nvml.nvmlSystemGetDriverVersion()))
        found.cuda_version = self._field(found.errors, "cuda",
                                         lambda: cuda_version_text(nvml.nvmlSystemGetCudaDriverVersion()))
        try:
            count = self.device_count()
        except Exception as exc:
            found.available, found.reason = False, f"NVML could not count GPUs: {describe_error(exc)}"
            return found
        found.gpus = [self._gpu_info(index) for index in range(count)]
        return found

    def shutdown(self) -> None:
        self._handles.clear()
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass  # a session that never fully started has nothing to release

    # Internals ----------------------------------------------------------------------------
    def _handle(self, index: int) -> Any:
        if index not in self._handles:
            self._handles[index] = self._nvml.nvmlDeviceGetHandleByIndex(index)
        return self._handles[index]

    def _try(self, call: str, read: Callable[[], T]) -> Optional[T]:
        try:
            return read()
        except Exception as exc:
            self.call_errors.setdefault(call, describe_error(exc))
            return None

    def _process_memory_bytes(self, index: int, pid: int) -> Optional[int]:
        used = [p.used_memory_bytes for p in self._processes(index, {}) if p.pid == pid]
        known = [b for b in used if b is not None]
        return max(known) if known else None

    def _processes(self, index: int, errors: dict[str, str]) -> list[GpuProcess]:
        """Compute and graphics users of one GPU; a process in both lists is listed once."""
        found: dict[int, GpuProcess] = {}
        for call in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            try:
                listed = getattr(self._nvml, call)(self._handle(index))
            except Exception as exc:  # the other list may still answer
                message = describe_error(exc)
                self.call_errors.setdefault(call, message)
                errors.setdefault("processes", message)
                continue
            for process in listed:
                memory = getattr(process, "usedGpuMemory", None)
                previous = found.get(int(process.pid))
                # NVML gives a C+G process the same total in both lists: keep one entry, not a sum.
                if previous is None or (previous.used_memory_bytes is None and memory is not None):
                    found[int(process.pid)] = GpuProcess(int(process.pid), None if memory is None else int(memory))
        return list(found.values())

    def _field(self, errors: dict[str, str], name: str, read: Callable[[], T]) -> Optional[T]:
        try:
            return read()
        except Exception as exc:
            errors[name] = describe_error(exc)
            return None

    def _gpu_info(self, index: int) -> GpuInfo:
        info = GpuInfo(index=index)
        errors, nvml = info.errors, self._nvml
        try:
            handle = self._handle(index)
        except Exception as exc:  # e.g. GpuIsLost: nothing else can be read from this GPU
            errors["handle"] = describe_error(exc)
            return info
        info.name = self._field(errors, "name", lambda: _text(nvml.nvmlDeviceGetName(handle)))
        info.uuid = self._field(errors, "uuid", lambda: _text(nvml.nvmlDeviceGetUUID(handle)))
        memory = self._field(errors, "memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle))
        if memory is not None:
            info.memory_total_bytes, info.memory_used_bytes = int(memory.total), int(memory.used)
            info.memory_free_bytes = int(memory.free)
        rates = self._field(errors, "utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
        if rates is not None:
            info.utilization_pct, info.memory_utilization_pct = float(rates.gpu), float(rates.memory)
        info.temperature_c = self._field(errors, "temperature", lambda: float(
            nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)))
        info.power_w = self._field(errors, "power", lambda: nvml.nvmlDeviceGetPowerUsage(handle) / MILLI)
        info.power_limit_w = self._field(errors, "power_limit",
                                         lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / MILLI)
        info.energy_j = self._field(errors, "energy",
                                    lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / MILLI)
        info.pci_bus_id = self._field(errors, "pci_bus_id", lambda: _text(nvml.nvmlDeviceGetPciInfo(handle).busId))
        info.processes = self._processes(index, errors)
        return info


def inventory() -> Inventory:
    """A one-off snapshot: load, read, shut down. Without NVML: no GPUs, the reason, and the host facts."""
    nvml, status = Nvml.load()
    if nvml is None:
        return Inventory(available=False, reason=status, **host_facts())
    try:
        return nvml.snapshot()
    finally:
        nvml.shutdown()


def host_facts() -> dict[str, Any]:
    """CPU model, logical cores, host CPU % and memory, as Inventory fields."""
    memory = psutil.virtual_memory()
    return {
        "cpu_name": cpu_name(),
        "cpu_logical_cores": psutil.cpu_count() or 1,
        "cpu_percent": float(psutil.cpu_percent(None)),  # non-blocking: since the last call in this process
        "host_memory_total_bytes": int(memory.total),
        "host_memory_used_bytes": int(memory.used),
    }


def cpu_name() -> str:
    """The CPU model ("AMD EPYC 7B13"); platform.processor() is often empty or just "x86_64" on Linux."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def cuda_version_text(version: int) -> str:
    """NVML's integer CUDA version as text: 12040 -> "12.4"."""
    return f"{version // 1000}.{version % 1000 // 10}"


def describe_error(exc: BaseException) -> str:
    """An NVML error as people read it: "Not Supported" (NVMLError_NotSupported)."""
    message = str(exc).strip()
    name = type(exc).__name__
    return f"{message} ({name})" if message and message != name else name


def _text(value: Any) -> str:
    # Older nvidia-ml-py returns bytes for names and versions, newer str.
    return value.decode() if isinstance(value, bytes) else str(value)


__all__ = ["GpuInfo", "GpuProcess", "Inventory", "Nvml", "SAMPLE_NAMES", "cuda_version_text", "describe_error",
           "host_facts", "inventory"]
