"""Device checks at the boundary (form, CLI) without importing a framework: NVML tells what GPUs exist."""
from __future__ import annotations

from engine.executors import RAY, executor_name
from engine.nvml import Nvml, describe_error
from engine.spec import SpecError

def gpu_count() -> tuple[int, str]:
    """(number of NVIDIA GPUs, "ok" or why NVML could not tell)."""
    nvml, status = Nvml.load()
    if nvml is None:
        return 0, status
    try:
        return nvml.device_count(), status
    except Exception as exc:  # a driver that answers nvmlInit but not the count: no usable GPU
        return 0, f"NVML could not count GPUs: {describe_error(exc)}"
    finally:
        nvml.shutdown()


def on_cluster() -> bool:
    """Whether runs go to a Ray cluster (ARENA_EXECUTOR=ray): then this machine's GPUs are not the ones that count.

    A value that is neither local nor ray counts as local here; the form and the CLI refuse it before queuing.
    """
    try:
        return executor_name() == RAY
    except ValueError:
        return False


def check_available(device: str) -> None:
    """Raise SpecError naming the device when a cuda:N device does not exist here."""
    if not device.startswith("cuda:"):
        return
    if on_cluster():
        raise SpecError("device", device, "pins a GPU of one machine; with the Ray executor (ARENA_EXECUTOR=ray) "
                                          "choose auto (a free GPU anywhere in the cluster) or cpu")
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
            # On a Ray cluster "auto" takes a GPU when the cluster has one; the runner says so if it landed on a CPU.
            on_cpu = spec.device == "cpu" or (spec.device == "auto" and not on_cluster() and gpu_count()[0] == 0)
            if on_cpu:
                raise SpecError("layout", spec.layout, "TensorFlow runs NCHW convolutions only on a GPU and this "
                                                       "run would be on the CPU; choose channels_last or mode xla")
