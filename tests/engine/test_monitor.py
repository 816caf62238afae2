"""Monitor, HostPeak and EpochMeter on this machine's real host counters; no framework imported.

The backends' own memory methods, with real PyTorch and TensorFlow, are in test_backend_memory.py.
"""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from engine.monitor import DEFAULT_SAMPLE_HZ, MAX_ERRORS, EpochMeter, HostLoad, HostPeak, Monitor, host_busy_cpu_s

MIB = 1024**2


def run_monitor(probes=(), seconds=1.0, **kwargs):
    batches = []
    monitor = Monitor(batches.append, os.getpid(), probes, **kwargs).start()
    time.sleep(seconds)
    monitor.stop()
    return monitor, [reading for batch in batches for reading in batch]


def test_default_rate_is_10_hz_with_host_and_probe_readings():
    probe = ("torch", lambda: [("allocated", 1024, "bytes")])
    monitor, readings = run_monitor([probe], seconds=1.05)
    assert monitor.interval_s == pytest.approx(1 / DEFAULT_SAMPLE_HZ) and DEFAULT_SAMPLE_HZ == 10.0
    rss = [r for r in readings if r[1:3] == ("host", "rss")]
    # 11 samples in 1.05 s at 10 Hz (one at start); lenient: a loaded 2-core machine delays a few.
    assert 7 <= len(rss) <= 13
    rate = (len(rss) - 1) / (rss[-1][0] - rss[0][0])
    assert 7.0 <= rate <= 13.0
    assert all(r[3] > 10 * MIB and r[4] == "bytes" for r in rss)  # a Python process uses > 10 MiB
    sources = {(r[1], r[2], r[4]) for r in readings}
    assert {("host", "cpu_percent", "%"), ("torch", "allocated", "bytes")} <= sources
    assert all(isinstance(r[3], float) for r in readings)
    assert monitor.errors == [] and monitor.error_count == 0


def test_the_rate_follows_interval_s():
    _, readings = run_monitor(seconds=1.0, interval_s=0.04)  # 25 Hz
    rss = [r for r in readings if r[2] == "rss"]
    rate = (len(rss) - 1) / (rss[-1][0] - rss[0][0])
    assert 17.0 <= rate <= 30.0


def test_a_probe_that_raises_once_does_not_stop_the_others_or_itself():
    calls = {"n": 0}

    def flaky():
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("allocator exploded")
        return [("allocated", 2.0, "bytes")]

    steady = ("nvml", lambda: [("gpu_utilization", 50, "%")])
    monitor, readings = run_monitor([("tensorflow", flaky), steady], seconds=0.5, interval_s=0.05)
    assert monitor.errors == ["tensorflow: RuntimeError: allocator exploded"] and monitor.error_count == 1
    counts = {name: sum(r[2] == name for r in readings) for name in ("rss", "allocated", "gpu_utilization")}
    assert counts["rss"] >= 5
    assert counts["gpu_utilization"] == counts["rss"]  # the other probe was read every time
    assert counts["allocated"] == counts["rss"] - 1  # the flaky one was asked again and answered


def test_a_probe_that_always_fails_keeps_only_the_first_messages():
    def broken():
        raise OSError("gone")

    monitor, readings = run_monitor([("nvml", broken)], seconds=0.5, interval_s=0.02)
    assert monitor.error_count > MAX_ERRORS
    assert monitor.errors == ["nvml: OSError: gone"] * MAX_ERRORS
    assert any(r[2] == "rss" for r in readings)


def test_a_failing_sink_is_reported_and_sampling_goes_on():
    calls = []

    def sink(batch):
        calls.append(batch)
        if len(calls) == 1:
            raise ValueError("database locked")

    monitor = Monitor(sink, os.getpid(), interval_s=0.05).start()
    time.sleep(0.4)
    monitor.stop()
    assert len(calls) >= 4 and monitor.errors == ["sample: ValueError: database locked"]


def test_stop_returns_promptly_and_the_thread_ends():
    monitor = Monitor(lambda batch: None, os.getpid(), interval_s=10.0).start()
    started = time.monotonic()
    monitor.stop()
    assert time.monotonic() - started < 1.0
    assert not any(t.name == "monitor" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("interval_s", [0, -0.1])
def test_interval_must_be_positive(interval_s):
    with pytest.raises(ValueError, match=rf"interval_s={interval_s!r}: must be > 0"):
        Monitor(lambda batch: None, os.getpid(), interval_s=interval_s)


def test_host_peak_reset_really_resets():
    host = HostPeak()
    if not sys.platform.startswith("linux"):
        assert host.exact is False
        pytest.skip("the exact (resettable) peak needs Linux's /proc/self/clear_refs")
    assert host.exact is True
    host.reset()
    before = host.peak_bytes()
    block = np.ones(200 * MIB // 8)  # ones, not zeros: the pages must really be touched
    with_block = host.peak_bytes()
    del block
    host.reset()
    after_reset = host.peak_bytes()
    assert with_block - before > 150 * MIB
    assert with_block - after_reset > 150 * MIB  # the 200 MB block is gone from the new interval's peak
    assert after_reset > 10 * MIB


def test_host_peak_fallback_is_the_process_peak_and_says_so(monkeypatch):
    monkeypatch.setattr("engine.monitor._clear_refs_works", lambda: False)
    host = HostPeak()
    assert host.exact is False
    first = host.peak_bytes()
    host.reset()  # a no-op: ru_maxrss never goes down
    assert host.peak_bytes() >= first > 10 * MIB


class StandInBackend:
    """Only what EpochMeter asks of a backend: a GPU-like allocator with resettable peaks."""

    name = "torch"

    def __init__(self):
        self.resets = 0
        self.peaks = {"allocated": 100.0, "reserved": 200.0}

    def reset_peak_memory(self):
        self.resets += 1

    def peak_memory(self):
        return dict(self.peaks)


def test_epoch_meter_reports_peaks_per_epoch_and_their_max_over_the_run():
    backend, counter = StandInBackend(), iter([1000.0, 1050.0, 1100.0, 1140.0])
    meter = EpochMeter(backend, HostPeak(), energy_j=lambda: next(counter))
    meter.start()
    assert backend.resets == 1
    assert meter.train_done(samples=500) == {"energy_j": 50.0, "samples_per_j": 10.0}
    first = meter.end()
    assert set(first) == {"peak_bytes/torch_allocated", "peak_bytes/torch_reserved", "peak_bytes/host_rss"}
    assert first["peak_bytes/torch_allocated"] == 100.0 and first["peak_bytes/host_rss"] > 10 * MIB

    backend.peaks = {"allocated": 300.0, "reserved": 150.0}
    meter.start()
    assert meter.train_done(samples=80) == {"energy_j": 40.0, "samples_per_j": 2.0}
    second = meter.end()
    assert second["peak_bytes/torch_allocated"] == 300.0
    peaks = meter.run_peaks()
    assert peaks["torch_allocated"] == 300.0 and peaks["torch_reserved"] == 200.0  # max over epochs
    assert peaks["host_rss"] == max(first["peak_bytes/host_rss"], second["peak_bytes/host_rss"])


def test_epoch_meter_without_an_energy_counter_reports_no_energy():
    for energy in (None, lambda: None):  # no NVML; NVML on a GPU without an energy counter
        meter = EpochMeter(StandInBackend(), HostPeak(), energy)
        meter.start()
        assert meter.train_done(samples=100) == {}


def test_epoch_meter_with_zero_energy_gives_no_samples_per_joule():
    meter = EpochMeter(StandInBackend(), HostPeak(), lambda: 5.0)  # the counter did not move
    meter.start()
    assert meter.train_done(samples=100) == {"energy_j": 0.0}


SPIN = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass"


def test_host_load_sees_a_busy_process_that_is_not_the_runs():
    """A spinning process outside the run's process tree (orphaned through a shell, as another user's job is)."""
    load = HostLoad(os.getpid()).start()
    hog = subprocess.run(["sh", "-c", f'{sys.executable} -c "{SPIN.format(s=1.5)}" > /dev/null 2>&1 & echo $!'],
                         capture_output=True, text=True, check=True)
    assert psutil.Process(int(hog.stdout)).ppid() != os.getpid()  # not ours: the shell that started it has exited
    time.sleep(1.6)
    assert load.others_busy_cores() >= 0.6 and load.cores == os.cpu_count()


def test_host_load_leaves_out_the_run_s_own_process_tree():
    """A child that spins 1 s of CPU (as a DataLoader worker does), reaped before the reading, is the run's own time:
    what HostLoad calls others is the host's busy time less at least that second, whatever else the machine ran."""
    host_before, wall_before = host_busy_cpu_s(), time.monotonic()
    load = HostLoad(os.getpid()).start()
    subprocess.run([sys.executable, "-c", "import time\nwhile time.process_time() < 1.0: pass"], check=True)
    others = load.others_busy_cores()
    wall_s = time.monotonic() - wall_before
    host_cores = (host_busy_cpu_s() - host_before) / wall_s
    assert others is not None and host_cores - others >= 0.9 / wall_s, (host_cores, others, wall_s)


def test_host_load_says_nothing_before_it_starts():
    assert HostLoad(os.getpid()).others_busy_cores() is None
