"""Device checks at the boundary (form, CLI) without importing a framework: NVML tells what GPUs exist."""
from __future__ import annotations

from engine.monitor import Nvml
from engine.spec import SpecError


def gpu_count() -> tuple[int, str]:
    """(number of NVIDIA GPUs, "ok" or why NVML could not tell)."""
    nvml, status = Nvml.load()
    if nvml is None:
        return 0, status
    try:
        return nvml.device_count(), status
    finally:
        nvml.shutdown()


def device_choices() -> list[str]:
    """Devices a user can pick on this machine: auto, cpu and one cuda:N per GPU."""
    count, _ = gpu_count()
    return ["auto", "cpu"] + [f"cuda:{i}" for i in range(count)]


def check_available(device: str) -> None:
    """Raise SpecError naming the device when a cuda:N device does not exist here."""
    if not device.startswith("cuda:"):
        return
    index = int(device.split(":")[1])
    count, status = gpu_count()
    if index >= count:
        found = f"{count} GPU(s) found" if status == "ok" else f"no GPU found ({status})"
        raise SpecError("device", device, f"{found}; use 'auto' or 'cpu'")
