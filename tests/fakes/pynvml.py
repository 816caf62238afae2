"""A stand-in for nvidia-ml-py's `pynvml`, for tests only: GPUs described by a JSON file.

Found first on sys.path / PYTHONPATH (see tests.fakes.install_fake_nvml), it replaces the real
module in the test process and in every child process. The state is read from the file named by
ARENA_FAKE_NVML_STATE on every call, so a test can change a GPU while a runner samples it.

Units, names and errors are the real module's: power in mW, energy in mJ, memory in bytes, CUDA
version as an int (12040), errors as NVMLError subclasses with the real classes' names, codes
and messages (NVMLError_NotSupported -> "Not Supported").

State: {"driver_version": str, "cuda_version": int, "strings_as_bytes": bool (old nvidia-ml-py),
"importable": bool, "fail": {call: error}, "gpus": [{..., "fail": {call: error}}]}; a GPU's keys
are those of tests.fakes.fake_gpu. An error is a class-name suffix ("NotSupported") or a full name.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from types import SimpleNamespace

STATE_ENV = "ARENA_FAKE_NVML_STATE"


def _state() -> dict:
    path = os.environ.get(STATE_ENV)
    if not path:
        raise RuntimeError(f"the fake pynvml was imported but {STATE_ENV} is not set: "
                           "use tests.fakes.install_fake_nvml")
    with open(path, encoding="utf-8") as file:
        return json.load(file)


if _state().get("importable", True) is False:
    # "No NVML at all", in this process or a child: the import fails as with nvidia-ml-py missing.
    raise ImportError("No module named 'pynvml' (the fake was told to be missing)")

NVML_TEMPERATURE_GPU = 0

# (code, class-name suffix, message) exactly as nvidia-ml-py 13 has them.
_ERRORS = [
    (1, "Uninitialized", "Uninitialized"),
    (2, "InvalidArgument", "Invalid Argument"),
    (3, "NotSupported", "Not Supported"),
    (4, "NoPermission", "Insufficient Permissions"),
    (5, "AlreadyInitialized", "Already Initialized"),
    (6, "NotFound", "Not Found"),
    (9, "DriverNotLoaded", "Driver Not Loaded"),
    (10, "Timeout", "Timeout"),
    (12, "LibraryNotFound", "NVML Shared Library Not Found"),
    (13, "FunctionNotFound", "Function Not Found"),
    (15, "GpuIsLost", "GPU is lost"),
    (16, "ResetRequired", "GPU requires restart"),
    (18, "LibRmVersionMismatch", "RM has detected an NVML/RM version mismatch."),
    (20, "Memory", "Insufficient Memory"),
    (999, "Unknown", "Unknown Error"),
]


class NVMLError(Exception):
    """Like the real one: NVMLError(code) builds the subclass for that code; str() is the message."""

    _valClassMapping: dict[int, type] = {}
    _errcode_to_string = {code: message for code, _, message in _ERRORS}

    def __new__(cls, value):
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __init__(self, *args):
        super().__init__(*args)

    def __str__(self):
        return NVMLError._errcode_to_string.get(self.value, f"NVML Error with code {self.value}")


def _error_class(code: int, suffix: str) -> type:
    def new(cls, *args):
        return NVMLError.__new__(cls, code)
    error_class = type(f"NVMLError_{suffix}", (NVMLError,), {"__new__": new})
    error_class.__module__ = __name__
    NVMLError._valClassMapping[code] = error_class
    return error_class


for _code, _suffix, _message in _ERRORS:
    globals()[f"NVMLError_{_suffix}"] = _error_class(_code, _suffix)
    globals()["NVML_ERROR_" + re.sub(r"(?<!^)(?=[A-Z])", "_", _suffix).upper()] = _code  # GpuIsLost -> GPU_IS_LOST

calls: Counter = Counter()  # in this process only: how often each function ran (tests check caching)
_init_count = 0  # NVML counts nvmlInit / nvmlShutdown pairs; calls outside one raise Uninitialized


def _raise_if_told(call: str, gpu: dict | None = None) -> None:
    calls[call] += 1
    state = _state()
    error = {**state.get("fail", {}), **((gpu or {}).get("fail", {}))}.get(call)
    if error:
        suffix = error.removeprefix("NVMLError_")
        error_class = globals().get(f"NVMLError_{suffix}")
        if error_class is None:
            raise ValueError(f"fake pynvml: unknown NVML error {error!r} for {call}")
        raise error_class()


def _text(value: str):
    return value.encode() if _state().get("strings_as_bytes") else value


def _require_init() -> None:
    if _init_count <= 0:
        raise NVMLError_Uninitialized()  # noqa: F821 - made in the loop above


def _gpu(call: str, handle) -> dict:
    _require_init()
    gpus = _state().get("gpus", [])
    if not isinstance(handle, _Handle) or handle.index >= len(gpus):
        raise NVMLError_InvalidArgument()  # noqa: F821
    gpu = gpus[handle.index]
    _raise_if_told(call, gpu)
    return gpu


class _Handle:
    def __init__(self, index: int) -> None:
        self.index = index

    def __repr__(self) -> str:
        return f"<fake nvmlDevice {self.index}>"


# Library ----------------------------------------------------------------------------------
def nvmlInit():
    global _init_count
    _raise_if_told("nvmlInit")
    _init_count += 1


def nvmlShutdown():
    global _init_count
    _raise_if_told("nvmlShutdown")
    if _init_count <= 0:
        raise NVMLError_Uninitialized()  # noqa: F821
    _init_count -= 1


def nvmlSystemGetDriverVersion():
    _require_init()
    _raise_if_told("nvmlSystemGetDriverVersion")
    return _text(_state().get("driver_version", "550.54.15"))


def nvmlSystemGetCudaDriverVersion():
    _require_init()
    _raise_if_told("nvmlSystemGetCudaDriverVersion")
    return int(_state().get("cuda_version", 12040))


def nvmlDeviceGetCount():
    _require_init()
    _raise_if_told("nvmlDeviceGetCount")
    return len(_state().get("gpus", []))


def nvmlDeviceGetHandleByIndex(index):
    handle = _Handle(int(index))
    _gpu("nvmlDeviceGetHandleByIndex", handle)
    return handle


# Per device ---------------------------------------------------------------------------------
def nvmlDeviceGetName(handle):
    return _text(_gpu("nvmlDeviceGetName", handle)["name"])


def nvmlDeviceGetUUID(handle):
    return _text(_gpu("nvmlDeviceGetUUID", handle)["uuid"])


def nvmlDeviceGetMemoryInfo(handle, version=None):
    gpu = _gpu("nvmlDeviceGetMemoryInfo", handle)
    total, used = int(gpu["memory_total_bytes"]), int(gpu["memory_used_bytes"])
    return SimpleNamespace(total=total, used=used, free=total - used)


def nvmlDeviceGetUtilizationRates(handle):
    gpu = _gpu("nvmlDeviceGetUtilizationRates", handle)
    return SimpleNamespace(gpu=int(gpu["utilization_pct"]), memory=int(gpu["memory_utilization_pct"]))


def nvmlDeviceGetTemperature(handle, sensor):
    gpu = _gpu("nvmlDeviceGetTemperature", handle)
    if sensor != NVML_TEMPERATURE_GPU:
        raise NVMLError_InvalidArgument()  # noqa: F821
    return int(gpu["temperature_c"])


def nvmlDeviceGetPowerUsage(handle):
    return int(_gpu("nvmlDeviceGetPowerUsage", handle)["power_mw"])


def nvmlDeviceGetEnforcedPowerLimit(handle):
    return int(_gpu("nvmlDeviceGetEnforcedPowerLimit", handle)["power_limit_mw"])


def nvmlDeviceGetTotalEnergyConsumption(handle):
    return int(_gpu("nvmlDeviceGetTotalEnergyConsumption", handle)["energy_mj"])


def nvmlDeviceGetPciInfo(handle):
    bus_id = _gpu("nvmlDeviceGetPciInfo", handle)["pci_bus_id"].encode()
    return SimpleNamespace(busId=bus_id, busIdLegacy=bus_id)  # a ctypes char array: bytes in every version


def _processes(entries) -> list:
    # The real module turns NVML_VALUE_NOT_AVAILABLE into None; the state writes null.
    return [SimpleNamespace(pid=int(pid), usedGpuMemory=None if used is None else int(used),
                            gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF) for pid, used in entries]


def nvmlDeviceGetComputeRunningProcesses(handle):
    return _processes(_gpu("nvmlDeviceGetComputeRunningProcesses", handle).get("processes", []))


def nvmlDeviceGetGraphicsRunningProcesses(handle):
    return _processes(_gpu("nvmlDeviceGetGraphicsRunningProcesses", handle).get("graphics_processes", []))
