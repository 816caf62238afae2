"""analysis/device_labels.py: the Launch form's device choices name each GPU and its free memory."""
from __future__ import annotations

from analysis.device_labels import device_labels
from tests.fakes import fake_gpu, fake_state, install_fake_nvml


def test_labels_name_the_gpu_and_its_free_memory(a100_and_t4):
    labels = device_labels()

    assert list(labels) == ["auto", "cpu", "cuda:0", "cuda:1"]
    assert labels["cuda:0"] == "cuda:0 — NVIDIA A100-SXM4-80GB (79.2 GiB free)"
    assert labels["cuda:1"] == "cuda:1 — NVIDIA Tesla T4 (11.0 GiB free)"
    assert labels["cpu"].startswith("cpu — ")


def test_a_gpu_whose_memory_cannot_be_read_is_labelled_without_it(monkeypatch, tmp_path):
    install_fake_nvml(monkeypatch, tmp_path, fake_state([fake_gpu(0, fail={"nvmlDeviceGetMemoryInfo": "GpuIsLost"})]))

    assert device_labels()["cuda:0"] == "cuda:0 — NVIDIA A100-SXM4-80GB"
