"""engine/devices.py: the boundary checks of a device follow what NVML reports."""
from __future__ import annotations

import pytest

from analysis.device_labels import device_labels
from engine import devices
from engine.spec import RunSpec, SpecError
from tests.fakes import fake_gpu, fake_state, hide_nvml, install_fake_nvml


def test_choices_and_checks_with_a100_and_t4(a100_and_t4):
    assert devices.gpu_count() == (2, "ok")
    devices.check_available("cuda:1")
    with pytest.raises(SpecError, match=r"device='cuda:2': 2 GPU\(s\) found; use 'auto' or 'cpu'"):
        devices.check_available("cuda:2")


def test_without_nvml_only_auto_and_cpu_and_cuda_is_refused_with_why(monkeypatch):
    hide_nvml(monkeypatch)

    assert list(device_labels()) == ["auto", "cpu"]
    with pytest.raises(SpecError, match=r"device='cuda:0': no GPU found \(pynvml not importable"):
        devices.check_available("cuda:0")


def test_a_driver_that_cannot_count_means_no_gpu(monkeypatch, tmp_path):
    install_fake_nvml(monkeypatch, tmp_path, fake_state([fake_gpu(0)], fail={"nvmlDeviceGetCount": "Unknown"}))

    count, status = devices.gpu_count()

    assert count == 0 and status == "NVML could not count GPUs: Unknown Error (NVMLError_Unknown)"


def test_nchw_tensorflow_needs_a_gpu(monkeypatch, tmp_path):
    spec = RunSpec.with_model_defaults("tensorflow", "cnn", "digits", layout="channels_first", device="auto")
    hide_nvml(monkeypatch)
    with pytest.raises(SpecError, match="TensorFlow runs NCHW convolutions only on a GPU"):
        devices.check_runnable([spec])

    install_fake_nvml(monkeypatch, tmp_path, fake_state([fake_gpu(0)]))
    devices.check_runnable([spec])  # auto lands on the GPU
