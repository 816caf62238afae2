"""engine/runner.start_instruments: what a GPU run samples, wired through the real Nvml against the fake NVML.

The backend here is a stand-in that says it runs on GPU 0 (there is no GPU); everything else is
the runner's own code: Nvml over the fake pynvml, the Monitor thread, the EpochMeter.
"""
import json
import os
import time

from engine.runner import start_instruments
from engine.spec import RunSpec
from tests.fakes import fake_gpu, fake_state, install_fake_nvml, write_state

MIB = 2**20


class GpuBackendStandIn:
    name = "torch"
    gpu_index = 0

    def __init__(self):
        self.peak_resets = 0

    def memory_stats(self):
        return [("allocated", 100.0 * MIB, "bytes"), ("reserved", 128.0 * MIB, "bytes")]

    def reset_peak_memory(self):
        self.peak_resets += 1

    def peak_memory(self):
        return {"allocated": 150.0 * MIB, "reserved": 160.0 * MIB}


class Samples:
    def __init__(self):
        self.rows = []

    def samples(self, rows):
        self.rows.extend(rows)


def test_a_gpu_run_samples_its_own_process_memory_the_device_and_energy(tmp_path, monkeypatch):
    me = os.getpid()
    state = fake_state([fake_gpu(0, processes=[[me, 700 * MIB], [4242, 9000 * MIB]], energy_mj=1_000_000,
                                 fail={"nvmlDeviceGetTemperature": "NotSupported"})])
    path = install_fake_nvml(monkeypatch, tmp_path, state)
    spec = RunSpec(framework="torch", model="mlp", dataset="digits", sample_hz=20)
    backend, sink = GpuBackendStandIn(), Samples()
    instruments = start_instruments(spec, backend, sink, me)
    try:
        assert instruments.nvml is not None and instruments.gpu_index == 0 and instruments.nvml_status == "ok"
        instruments.meter.start()
        state["gpus"][0]["energy_mj"] = 1_250_000  # the GPU used 250 J while the epoch trained
        write_state(path, state)
        time.sleep(0.6)
        energy = instruments.meter.train_done(samples=5000)
        peaks = instruments.meter.end()
    finally:
        summary: dict = {}
        instruments.stop(summary)
    readings = {(source, name): value for _, source, name, value, _ in sink.rows}
    assert readings[("nvml", "process_gpu_memory")] == 700 * MIB  # this process only, not pid 4242's
    assert readings[("nvml", "gpu_memory_used")] == state["gpus"][0]["memory_used_bytes"]
    assert readings[("nvml", "gpu_power")] == 120.0 and readings[("torch", "reserved")] == 128 * MIB
    assert {("host", "rss"), ("host", "cpu_percent")} <= set(readings)
    assert 6 <= sum(1 for _, source, name, _, _ in sink.rows if name == "process_gpu_memory") <= 16  # ~20 Hz
    assert energy == {"energy_j": 250.0, "samples_per_j": 20.0}
    assert peaks["peak_bytes/torch_allocated"] == 150 * MIB and peaks["peak_bytes/host_rss"] > 0
    assert backend.peak_resets == 1
    assert "monitor_errors" not in summary  # temperature is not part of the trace; nothing failed


def test_a_failing_nvml_call_is_noted_once_and_the_trace_goes_on(tmp_path, monkeypatch):
    state = fake_state([fake_gpu(0, processes=[[os.getpid(), 64 * MIB]],
                                 fail={"nvmlDeviceGetPowerUsage": "NotSupported"})])
    install_fake_nvml(monkeypatch, tmp_path, state)
    spec = RunSpec(framework="torch", model="mlp", dataset="digits", sample_hz=20)
    sink = Samples()
    instruments = start_instruments(spec, GpuBackendStandIn(), sink, os.getpid())
    time.sleep(0.4)
    summary: dict = {}
    instruments.stop(summary)
    names = {name for _, _, name, _, _ in sink.rows}
    assert "gpu_power" not in names and {"process_gpu_memory", "gpu_utilization", "gpu_energy"} <= names
    assert len(summary["monitor_errors"]) == 1 and "nvmlDeviceGetPowerUsage" in summary["monitor_errors"][0]
    assert "Not Supported" in summary["monitor_errors"][0]


def test_sampling_off_still_measures_exact_epoch_peaks(tmp_path, monkeypatch):
    install_fake_nvml(monkeypatch, tmp_path, json.loads(json.dumps(fake_state([fake_gpu(0)]))))
    spec = RunSpec(framework="torch", model="mlp", dataset="digits", sample_hz=0)
    sink = Samples()
    instruments = start_instruments(spec, GpuBackendStandIn(), sink, os.getpid())
    instruments.meter.start()
    peaks = instruments.meter.end()
    instruments.stop({})
    assert instruments.monitor is None and sink.rows == []
    assert peaks["peak_bytes/torch_reserved"] == 160 * MIB
