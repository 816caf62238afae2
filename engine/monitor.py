"""Memory and utilisation in the training process: a sampling thread and exact per-epoch peaks.

`Monitor` samples gauges (the host's RSS and CPU, plus probes such as the framework allocator or
NVML) at a fixed rate in a background thread. Sampling cannot see a peak that lasts less than one
interval, so `EpochMeter` takes the exact peaks per epoch from the counters that track them: the
framework allocator's peak statistics and the kernel's RSS high-water mark (`HostPeak`).
"""
from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import psutil

if TYPE_CHECKING:  # importing engine.backends.base imports no framework, but the monitor needs none
    from engine.backends.base import Backend

# 10 Hz: twice the 5 Hz a memory trace needs to show allocator steps. One sample() with the host
# probe costs a median 120 us of GIL time on this 2-core VM (psutil reads /proc/self/stat and
# /proc/self/statm), 180 us while other processes load both cores; a framework probe on the CPU
# returns [] in ~1 us. At 10 Hz that is 0.1-0.2 % of one core; bench/monitor_overhead.py measures
# the whole effect on real runs (goal: >= 98 % of the throughput with sampling off).
DEFAULT_SAMPLE_HZ = 10.0
MAX_ERRORS = 5  # probe failures kept verbatim; later ones are only counted

Reading = tuple[float, str, str, float, str]  # (time, source, name, value, unit)
Gauge = tuple[str, float, str]  # (name, value, unit)
Probe = tuple[str, Callable[[], list[Gauge]]]  # (source label, read)


class Monitor:
    """Samples the host and every probe each interval and hands the readings to a sink; never raises into training.

    A probe that raises is reported (the first MAX_ERRORS messages in `errors`, all of them in
    `error_count`) and asked again next time; the other probes are unaffected.
    """

    def __init__(
        self,
        sink: Callable[[list[Reading]], None],
        pid: int,
        probes: Sequence[Probe] = (),
        interval_s: float = 1.0 / DEFAULT_SAMPLE_HZ,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"interval_s={interval_s!r}: must be > 0 (sample_hz=0 means: do not start a Monitor)")
        self._sink = sink
        self._process = psutil.Process(pid)
        self._cores = psutil.cpu_count() or 1
        self._probes = list(probes)
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="monitor", daemon=True)
        self.errors: list[str] = []
        self.error_count = 0

    def start(self) -> "Monitor":
        self._process.cpu_percent(None)  # the first call primes psutil's CPU counter
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def sample(self) -> list[Reading]:
        """One reading of the host and of every probe."""
        now = time.time()
        with self._process.oneshot():
            # Over a short interval psutil can report more than every core busy; clamp.
            cpu = min(float(self._process.cpu_percent(None)), 100.0 * self._cores)
            readings: list[Reading] = [
                (now, "host", "rss", float(self._process.memory_info().rss), "bytes"),
                (now, "host", "cpu_percent", cpu, "%"),
            ]
        for source, read in self._probes:
            try:
                readings += [(now, source, name, float(value), unit) for name, value, unit in read()]
            except Exception as exc:
                self._report(f"{source}: {type(exc).__name__}: {exc}")
        return readings

    def _report(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self._sink(self.sample())
            except Exception as exc:  # the sink (or psutil) failed: report, keep sampling
                self._report(f"sample: {type(exc).__name__}: {exc}")
            # Deadline-based: the rate holds however long a sample takes. After a stall (a long
            # GIL hold) the missed deadlines are skipped, not made up in a burst.
            next_at += self.interval_s
            now = time.monotonic()
            if next_at < now:
                next_at += self.interval_s * ((now - next_at) // self.interval_s + 1)
            self._stop.wait(next_at - now)


class HostLoad:
    """How busy other processes kept the machine's cores between start() and stop(): what a run's timings shared.

    The host's busy CPU time (every core, all but idle and iowait; a VM's steal counts, the hypervisor took
    the core) less this process's and its descendants' (DataLoader workers included, living or reaped), over
    the wall time: the mean number of cores others held. PyTorch's OpenMP team suffers most from a core taken
    away: a torch cnn run on digits trained in 10.6 s on 2 quiet cores and in 253 s beside one busy process
    (TensorFlow's pool: 10.5 s and 12.6 s), so a comparison needs to know.
    """

    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.cores = psutil.cpu_count() or 1
        self._start: Optional[tuple[float, float, float]] = None

    def start(self) -> "HostLoad":
        self._start = self._read()
        return self

    def others_busy_cores(self) -> Optional[float]:
        """Mean cores other processes kept busy since start(), clamped to [0, cores]; None before start()."""
        if self._start is None:
            return None
        wall, host, own = (now - then for now, then in zip(self._read(), self._start))
        if wall <= 0:
            return None
        return min(max((host - own) / wall, 0.0), float(self.cores))

    def _read(self) -> tuple[float, float, float]:
        """(monotonic seconds, host busy CPU seconds, this process tree's CPU seconds)."""
        return time.monotonic(), host_busy_cpu_s(), process_tree_cpu_s(self._process)


def host_busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (or stolen by the hypervisor) since boot."""
    t = psutil.cpu_times()
    # guest time is already counted in user time; steal is capacity this VM did not get.
    return sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal"))


def process_tree_cpu_s(process: psutil.Process) -> float:
    """CPU seconds of process and its descendants: living ones read directly, ended ones through their reaper."""
    t = process.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in process.children(recursive=True):
        try:
            c = child.cpu_times()
        except psutil.Error:  # it ended between the listing and the read: its time is in children_* next read
            continue
        total += c.user + c.system + c.children_user + c.children_system
    return total


class HostPeak:
    """This process's peak resident memory since the last reset.

    Linux (>= 4.0): exact. `reset()` writes "5" to /proc/self/clear_refs, which sets the kernel's
    RSS high-water mark (VmHWM) back to the current RSS; `peak_bytes()` reads VmHWM from
    /proc/self/status. Elsewhere (`exact` False): getrusage's ru_maxrss, the peak since the process
    started (Windows: psutil's peak working set), which cannot be reset, so every interval reports
    the process's peak so far.
    """

    def __init__(self) -> None:
        self.exact = _clear_refs_works()

    def reset(self) -> None:
        """Start a new interval (a no-op where the peak cannot be reset)."""
        if self.exact:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")

    def peak_bytes(self) -> float:
        """Peak RSS in bytes since reset() (since process start when not exact)."""
        if self.exact:
            return _vm_hwm_bytes()
        return _max_rss_bytes()


def _vm_hwm_bytes() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) * 1024  # the kernel writes kB (KiB)
    raise OSError("/proc/self/status has no VmHWM line")


def _clear_refs_works() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        _vm_hwm_bytes()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # no procfs, a kernel before 4.0 (EINVAL), or a sandbox that forbids it
        return False
    return True


def _max_rss_bytes() -> float:
    try:
        import resource  # POSIX only
    except ImportError:  # Windows: psutil's peak working set, also never reset
        return float(psutil.Process().memory_info().peak_wset)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return float(peak if sys.platform == "darwin" else peak * 1024)  # macOS reports bytes, Linux/BSD KiB


class EpochMeter:
    """Exact memory peaks per epoch and energy per training phase, called by the training loop.

    start() at the start of an epoch, train_done(samples) right after its training part, end()
    after evaluation. energy_j reads a cumulative energy counter in joules (NVML's total energy
    of the run's GPU) or returns None; without one there are no energy figures.
    """

    def __init__(self, backend: "Backend", host_peak: HostPeak,
                 energy_j: Optional[Callable[[], Optional[float]]] = None) -> None:
        self._backend = backend
        self._host_peak = host_peak
        self._energy_j = energy_j
        self._energy_at_start: Optional[float] = None
        self._run_peaks: dict[str, float] = {}

    def start(self) -> None:
        """Reset the allocator's and the host's peak counters and read the energy counter."""
        self._backend.reset_peak_memory()
        self._host_peak.reset()
        self._energy_at_start = self._energy_j() if self._energy_j else None

    def train_done(self, samples: int) -> dict[str, float]:
        """Energy of the training part since start(): energy_j and samples_per_j; {} without a counter."""
        if self._energy_j is None or self._energy_at_start is None:
            return {}
        now = self._energy_j()
        if now is None:
            return {}
        energy = now - self._energy_at_start
        metrics = {"energy_j": energy}
        if energy > 0:
            metrics["samples_per_j"] = samples / energy
        return metrics

    def end(self) -> dict[str, float]:
        """Peaks since start() as peak_bytes/<source>_<name>, e.g. peak_bytes/torch_allocated, peak_bytes/host_rss."""
        peaks = {f"{self._backend.name}_{name}": float(value) for name, value in self._backend.peak_memory().items()}
        peaks["host_rss"] = self._host_peak.peak_bytes()
        for key, value in peaks.items():
            self._run_peaks[key] = max(value, self._run_peaks.get(key, 0.0))
        return {f"peak_bytes/{key}": value for key, value in peaks.items()}

    def run_peaks(self) -> dict[str, float]:
        """The largest peak of every epoch so far, keyed without the prefix (e.g. {"host_rss": ...})."""
        return dict(self._run_peaks)
