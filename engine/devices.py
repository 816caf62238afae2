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


def check_runnable(specs) -> None:
    """Raise SpecError for a spec this machine cannot run: a missing GPU, or NCHW TensorFlow convolutions on a CPU."""
    for device in dict.fromkeys(spec.device for spec in specs):
        check_available(device)
    for spec in specs:
        # XLA lowers NCHW convolutions on the CPU itself; TensorFlow's own CPU kernels are NHWC-only.
        if (spec.framework == "tensorflow" and spec.uses_layout() and spec.layout == "channels_first"
                and spec.mode != "xla"):
            on_cpu = spec.device == "cpu" or (spec.device == "auto" and gpu_count()[0] == 0)
            if on_cpu:
                raise SpecError("layout", spec.layout, "TensorFlow runs NCHW convolutions only on a GPU and this "
                                                       "run would be on the CPU; choose channels_last or mode xla")
