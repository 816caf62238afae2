"""engine/nvml.py against the fake pynvml (tests/fakes): units, attribution, failures one call at a time."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine import child_env
from engine.nvml import Nvml, cuda_version_text, describe_error, inventory
from tests.conftest import REPO_ROOT
from tests.fakes import GIB, fake_gpu, fake_state, hide_nvml, install_fake_nvml, write_state

OTHER_PID = 4242


@pytest.fixture
def two_gpus(monkeypatch, tmp_path):
    """Two A100s; GPU 1 runs this process (3 GiB) and a foreign one, GPU 0 only the foreign one."""
    state = fake_state([
        fake_gpu(0, processes=[[OTHER_PID, GIB]]),
        fake_gpu(1, memory_used_bytes=10 * GIB, utilization_pct=87, power_mw=251_500, energy_mj=7_250_000,
                 processes=[[OTHER_PID, 2 * GIB], [os.getpid(), 3 * GIB]]),
    ])
    path = install_fake_nvml(monkeypatch, tmp_path, state)
    return path, state


def loaded() -> Nvml:
    nvml, status = Nvml.load()
    assert status == "ok" and nvml is not None
    return nvml


def test_inventory_converts_nvml_units(two_gpus):
    found = inventory()

    assert found.available and found.reason == "ok"
    assert (found.driver_version, found.cuda_version) == ("550.54.15", "12.4")
    assert [g.index for g in found.gpus] == [0, 1]
    gpu = found.gpus[1]
    assert gpu.name == "NVIDIA A100-SXM4-80GB" and gpu.uuid == "GPU-fa4e0000-0000-0000-0000-000000000001"
    assert (gpu.memory_total_bytes, gpu.memory_used_bytes, gpu.memory_free_bytes) == (80 * GIB, 10 * GIB, 70 * GIB)
    assert (gpu.utilization_pct, gpu.memory_utilization_pct, gpu.temperature_c) == (87.0, 20.0, 45.0)
    assert (gpu.power_w, gpu.power_limit_w, gpu.energy_j) == (251.5, 400.0, 7250.0)  # mW -> W, mJ -> J
    assert gpu.pci_bus_id == "00000000:02:00.0"
    assert [(p.pid, p.used_memory_bytes) for p in gpu.processes] == [(OTHER_PID, 2 * GIB), (os.getpid(), 3 * GIB)]
    assert gpu.errors == {}
    assert found.cpu_logical_cores >= 1 and found.cpu_name and found.host_memory_total_bytes > GIB


def test_old_nvidia_ml_py_bytes_names_are_decoded(two_gpus):
    path, state = two_gpus
    write_state(path, {**state, "strings_as_bytes": True})

    found = inventory()

    assert found.driver_version == "550.54.15" and found.gpus[0].name == "NVIDIA A100-SXM4-80GB"


@pytest.mark.parametrize("version, text", [(12040, "12.4"), (11080, "11.8"), (12000, "12.0"), (13010, "13.1")])
def test_cuda_version_text(version, text):
    assert cuda_version_text(version) == text


def test_gpu_readings_attribute_memory_to_the_given_pid_only(two_gpus):
    nvml = loaded()
    readings = {name: (value, unit) for name, value, unit in nvml.gpu_readings(1, os.getpid())}

    assert readings == {
        "process_gpu_memory": (3.0 * GIB, "bytes"),  # not the foreign process's 2 GiB
        "gpu_memory_used": (10.0 * GIB, "bytes"),
        "gpu_utilization": (87.0, "%"),
        "gpu_power": (251.5, "W"),
        "gpu_energy": (7250.0, "J"),
    }
    names = [name for name, _, _ in nvml.gpu_readings(0, os.getpid())]
    assert "process_gpu_memory" not in names  # this process has nothing on GPU 0
    assert nvml.call_errors == {}
    nvml.shutdown()


def test_gpu_readings_count_graphics_processes_and_skip_unknown_memory(two_gpus):
    path, state = two_gpus
    state["gpus"][0].update(processes=[[OTHER_PID, None]], graphics_processes=[[os.getpid(), 5 * GIB]])
    write_state(path, state)
    nvml = loaded()

    readings = {name: value for name, value, _ in nvml.gpu_readings(0, os.getpid())}
    assert readings["process_gpu_memory"] == 5.0 * GIB
    assert "process_gpu_memory" not in {name for name, _, _ in nvml.gpu_readings(0, OTHER_PID)}  # NVML said n/a
    nvml.shutdown()


def test_gpu_readings_look_up_each_handle_once(two_gpus):
    import pynvml  # the fake: it counts calls in this process

    nvml = loaded()
    for _ in range(10):
        nvml.gpu_readings(1, os.getpid())
    assert pynvml.calls["nvmlDeviceGetHandleByIndex"] == 1
    assert pynvml.calls["nvmlDeviceGetPowerUsage"] == 10
    nvml.shutdown()


def test_one_failing_call_skips_only_its_reading_and_is_recorded(two_gpus):
    path, state = two_gpus
    state["gpus"][1]["fail"] = {"nvmlDeviceGetPowerUsage": "NotSupported",
                                "nvmlDeviceGetComputeRunningProcesses": "GpuIsLost"}
    write_state(path, state)
    nvml = loaded()

    names = [name for name, _, _ in nvml.gpu_readings(1, os.getpid())]
    nvml.gpu_readings(1, os.getpid())

    assert names == ["gpu_memory_used", "gpu_utilization", "gpu_energy"]
    assert nvml.call_errors == {
        "nvmlDeviceGetPowerUsage": "Not Supported (NVMLError_NotSupported)",
        "nvmlDeviceGetComputeRunningProcesses": "GPU is lost (NVMLError_GpuIsLost)",
    }
    nvml.shutdown()


def test_snapshot_marks_a_failing_field_and_fills_the_rest(two_gpus):
    path, state = two_gpus
    state["gpus"][0]["fail"] = {"nvmlDeviceGetPowerUsage": "NotSupported",
                                "nvmlDeviceGetTotalEnergyConsumption": "NVMLError_NotSupported"}
    state["fail"] = {"nvmlSystemGetCudaDriverVersion": "FunctionNotFound"}
    write_state(path, state)

    found = inventory()

    gpu = found.gpus[0]
    assert gpu.power_w is None and gpu.energy_j is None
    assert gpu.errors == {"power": "Not Supported (NVMLError_NotSupported)",
                          "energy": "Not Supported (NVMLError_NotSupported)"}
    assert gpu.power_limit_w == 400.0 and gpu.memory_used_bytes == 4 * GIB and gpu.utilization_pct == 35.0
    assert found.gpus[1].power_w == 251.5 and found.gpus[1].errors == {}
    assert found.cuda_version is None and found.driver_version == "550.54.15"
    assert found.errors == {"cuda": "Function Not Found (NVMLError_FunctionNotFound)"}


def test_a_lost_gpu_is_listed_with_why_and_the_others_still_read(two_gpus):
    path, state = two_gpus
    state["gpus"][0]["fail"] = {"nvmlDeviceGetHandleByIndex": "GpuIsLost"}
    write_state(path, state)

    found = inventory()

    assert found.gpus[0].name is None and found.gpus[0].errors == {"handle": "GPU is lost (NVMLError_GpuIsLost)"}
    assert found.gpus[1].name == "NVIDIA A100-SXM4-80GB"


def test_energy_j_is_none_when_unsupported(two_gpus):
    path, state = two_gpus
    state["gpus"][0]["fail"] = {"nvmlDeviceGetTotalEnergyConsumption": "NotSupported"}
    write_state(path, state)
    nvml = loaded()

    assert nvml.energy_j(0) is None and nvml.energy_j(1) == 7250.0
    assert nvml.uuid(1) == "GPU-fa4e0000-0000-0000-0000-000000000001"
    nvml.shutdown()


@pytest.mark.parametrize("error, message", [("DriverNotLoaded", "Driver Not Loaded (NVMLError_DriverNotLoaded)"),
                                            ("LibraryNotFound", "NVML Shared Library Not Found")])
def test_failing_init_loads_nothing_and_says_why(monkeypatch, tmp_path, error, message):
    install_fake_nvml(monkeypatch, tmp_path, fake_state([fake_gpu(0)], fail={"nvmlInit": error}))

    nvml, status = Nvml.load()
    found = inventory()

    assert nvml is None and message in status and status.startswith("NVML unavailable")
    assert not found.available and found.gpus == [] and message in found.reason
    assert found.cpu_logical_cores >= 1  # the host is still described


def test_without_pynvml_load_and_inventory_say_so(monkeypatch):
    hide_nvml(monkeypatch)

    nvml, status = Nvml.load()
    found = inventory()

    assert nvml is None and "pynvml not importable" in status and "nvidia-ml-py" in status
    assert not found.available and found.reason == status and found.gpus == []


def test_describe_error_names_the_error_class():
    class NVMLError_Timeout(Exception):
        pass

    assert describe_error(NVMLError_Timeout("Timeout")) == "Timeout (NVMLError_Timeout)"
    assert describe_error(NVMLError_Timeout()) == "NVMLError_Timeout"


def test_the_fake_reaches_child_processes_through_pythonpath(two_gpus):
    code = ("import json; from engine.nvml import inventory; found = inventory(); "
            "print(json.dumps([found.cuda_version, [(g.name, g.power_w) for g in found.gpus]]))")

    result = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd="/", capture_output=True,
                            text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["12.4", [["NVIDIA A100-SXM4-80GB", 120.0], ["NVIDIA A100-SXM4-80GB", 251.5]]]


def test_a_child_process_can_be_told_there_is_no_pynvml(monkeypatch, tmp_path):
    from tests.fakes import hide_nvml_everywhere

    hide_nvml_everywhere(monkeypatch, tmp_path)
    code = "from engine.nvml import inventory; print(inventory().reason)"

    result = subprocess.run([sys.executable, "-c", code], env=child_env(), cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pynvml not importable")
