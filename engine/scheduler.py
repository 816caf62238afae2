"""Places queued runs on free devices; exactly one scheduler acts on a database at a time.

The scheduler holds a lease row (db.models.SchedulerLease) that it renews on every tick. A
scheduler that crashes stops renewing and another takes over once the lease has expired, so the
lock never outlives its holder. Whoever holds it (a dashboard, `python -m engine run`, or
`python -m engine scheduler`) starts one runner process per placed run with CUDA_VISIBLE_DEVICES
naming the chosen GPU (empty for the CPU). Runner processes are detached: they go on when the
scheduler stops, and the next scheduler counts them when it places more.

Placement, in queue order (oldest first): a run pinned to "cpu" or "cuda:N" waits for that
device; "auto" takes the least-loaded GPU that no foreign process uses, or the CPU on a machine
without GPUs. Each GPU takes ARENA_RUNS_PER_GPU runs (default 1), the CPU ARENA_CPU_SLOTS (default 1).

That is the local executor. With ARENA_EXECUTOR=ray the lease holder hands queued runs to a Ray
cluster instead, which places them on its machines (engine/ray_executor.py); the lease, the reaping
of lost runs and the runner itself are the same.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable, Optional

from sqlalchemy.orm import Session, sessionmaker

from db import queries
from engine.processes import reap, runner_alive, start_runner
from engine.ray_executor import RAY, RAY_PLACEMENTS, RayExecutor, executor_name

ENV_SCHEDULER = "ARENA_SCHEDULER"
ENV_RUNS_PER_GPU = "ARENA_RUNS_PER_GPU"
ENV_CPU_SLOTS = "ARENA_CPU_SLOTS"
LEASE_NAME = "scheduler"
LEASE_TTL_S = 10.0  # a crashed scheduler's queue is picked up this long after its last tick
TICK_INTERVAL_S = 1.0
# A run placed but never given a process (the scheduler died in between) goes back to the queue after this.
UNSTARTED_PLACEMENT_S = 60.0
INVENTORY_REFRESH_S = 30.0
CPU = "cpu"


def _whole_number(name: str, default: int, low: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low:
        raise ValueError(f"{name}={raw!r}: expected a whole number >= {low}")
    return value


def scheduling_enabled() -> bool:
    """Whether this process may schedule (ARENA_SCHEDULER=on, the default; off: a dashboard that only watches)."""
    raw = os.environ.get(ENV_SCHEDULER, "on").strip().lower()
    if raw not in ("on", "off"):
        raise ValueError(f"{ENV_SCHEDULER}={raw!r}: expected on or off")
    return raw == "on"


def runs_per_gpu() -> int:
    """Runs one GPU takes at once (ARENA_RUNS_PER_GPU, default 1: a run's memory and speed are its own)."""
    return _whole_number(ENV_RUNS_PER_GPU, 1, low=1)


def cpu_slots() -> int:
    """Runs the CPU takes at once (ARENA_CPU_SLOTS, default 1; 0 = GPU runs only)."""
    return _whole_number(ENV_CPU_SLOTS, 1, low=0)


@dataclass(frozen=True)
class Gpu:
    """A GPU as the scheduler sees it: NVML index, UUID (for CUDA_VISIBLE_DEVICES) and foreign users."""

    index: int
    uuid: Optional[str] = None
    pids: frozenset[int] = field(default_factory=frozenset)


def nvml_gpus() -> list[Gpu]:
    """The machine's GPUs from NVML (none when NVML is absent)."""
    from engine.nvml import inventory

    found = inventory()
    return [Gpu(g.index, g.uuid, frozenset(p.pid for p in g.processes)) for g in found.gpus]


@dataclass(frozen=True)
class Placement:
    run_id: int
    device: str  # "cpu" or "cuda:<NVML index>"
    env: dict[str, str]


def placement_env(device: str, gpu: Optional[Gpu]) -> dict[str, str]:
    """What a runner placed on `device` is started with: it sees exactly that GPU, as cuda:0."""
    if gpu is None:
        return {"CUDA_VISIBLE_DEVICES": "", "ARENA_DEVICE": CPU, "ARENA_PLACED_DEVICE": device}
    return {
        # A UUID names the same GPU for CUDA and NVML; bare indices can differ between them.
        "CUDA_VISIBLE_DEVICES": gpu.uuid or str(gpu.index),
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "ARENA_DEVICE": "cuda:0",
        "ARENA_PLACED_DEVICE": device,
        "ARENA_NVML_INDEX": str(gpu.index),
    }


def plan(queued: list[tuple[int, str]], gpus: list[Gpu], occupied: Counter, arena_pids: set[int],
         per_gpu: int, cpu_capacity: int) -> tuple[list[Placement], dict[int, str]]:
    """Decide placements for queued (run id, requested device) pairs, oldest first.

    Returns the placements and, for runs that can never run here, why (a GPU that does not exist).
    """
    load = Counter(occupied)
    by_device = {f"cuda:{g.index}": g for g in gpus}
    placements: list[Placement] = []
    impossible: dict[int, str] = {}
    for run_id, requested in queued:
        if requested == "auto" and gpus:
            free = [g for g in gpus if load[f"cuda:{g.index}"] < per_gpu and not (g.pids - arena_pids)]
            choice = min(free, key=lambda g: (load[f"cuda:{g.index}"], g.index), default=None)
            device = f"cuda:{choice.index}" if choice else None
        elif requested in ("auto", CPU):
            device = CPU if load[CPU] < cpu_capacity else None
            if cpu_capacity == 0:
                impossible[run_id] = (f"the CPU takes no runs ({ENV_CPU_SLOTS}=0) and this machine has no GPU"
                                      if not gpus else f"the CPU takes no runs ({ENV_CPU_SLOTS}=0)")
                continue
        elif requested in by_device:
            device = requested if load[requested] < per_gpu else None
        else:
            impossible[run_id] = f"device {requested!r} does not exist here ({len(gpus)} GPU(s) found)"
            continue
        if device is None:
            continue
        load[device] += 1
        placements.append(Placement(run_id, device, placement_env(device, by_device.get(device))))
    return placements, impossible


Launcher = Callable[[int, dict[str, str]], object]


class Scheduler:
    """One scheduler instance: tick() places what it can while it holds the database's lease."""

    def __init__(self, sessions: sessionmaker[Session], db_url: str, launcher: Optional[Launcher] = None,
                 gpus: Optional[Callable[[], list[Gpu]]] = None, lease_ttl_s: float = LEASE_TTL_S,
                 interval_s: float = TICK_INTERVAL_S, executor: Optional[RayExecutor] = None) -> None:
        """executor: None places runs on this machine (the local executor); a RayExecutor hands them to Ray."""
        self._sessions = sessions
        self._cluster = executor
        self._db_url = db_url
        self._launch = launcher or self._start_runner
        self._read_gpus = gpus or nvml_gpus
        self._gpus: Optional[list[Gpu]] = None
        self._gpus_read_at = 0.0
        self.holder = uuid.uuid4().hex
        self.hostname = socket.gethostname()
        self._ttl = timedelta(seconds=lease_ttl_s)
        self._interval = interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._tick_lock = threading.Lock()
        self.holds_lease = False
        self.last_error: Optional[str] = None

    # One pass ------------------------------------------------------------------------------
    def tick(self) -> list[Placement]:
        """Renew or take the lease; if held, reap dead runners and place queued runs. Never raises."""
        with self._tick_lock:
            try:
                placements = self._tick()
                self.last_error = None
                return placements
            except Exception as exc:  # a bad setting or a database hiccup: say so, try again next tick
                self.last_error = f"{type(exc).__name__}: {exc}"
                print(f"arena scheduler: {self.last_error}", file=sys.stderr, flush=True)
                return []

    def _tick(self) -> list[Placement]:
        with self._sessions.begin() as s:
            self.holds_lease = queries.acquire_lease(s, LEASE_NAME, self.holder, self.hostname, os.getpid(), self._ttl)
        if not self.holds_lease:
            return []
        reap(self._sessions)
        if self._cluster is not None:
            return self._hand_to_cluster(self._cluster)
        per_gpu, cpu_capacity = runs_per_gpu(), cpu_slots()
        gpus = self._current_gpus()
        with self._sessions.begin() as s:
            queries.unplace_unstarted(s, timedelta(seconds=UNSTARTED_PLACEMENT_S), keep=RAY_PLACEMENTS)
            queued = _waiting(s)
            active = queries.placed_active_runs(s, self.hostname)
        if not queued:
            return []
        occupied = Counter(run.placed_device for run in active)
        arena_pids = {run.pid for run in active if run.pid is not None and runner_alive(run.pid)}
        placements, impossible = plan(queued, gpus, occupied, arena_pids, per_gpu, cpu_capacity)
        with self._sessions.begin() as s:
            for run_id, why in impossible.items():
                queries.fail_run(s, run_id, f"cannot be placed: {why}")
        started = []
        for placement in placements:
            with self._sessions.begin() as s:
                # Conditional on the run still waiting unplaced: no run is ever started twice.
                if not queries.place_run(s, placement.run_id, placement.device, self.hostname):
                    continue
            try:
                self._launch(placement.run_id, placement.env)
            except Exception:
                continue  # the launcher has recorded the run as failed with why
            started.append(placement)
        return started

    def _hand_to_cluster(self, cluster: RayExecutor) -> list[Placement]:
        cluster.watch(self._sessions, self._db_url)
        with self._sessions.begin() as s:
            queued = _waiting(s)
        if not queued:
            return []
        submitted = cluster.dispatch(self._sessions, self._db_url, queued)
        return [Placement(run_id, where, {}) for run_id, where in submitted]

    def _current_gpus(self) -> list[Gpu]:
        # With GPUs, every tick (foreign processes come and go); without, now and then (none appear).
        now = time.monotonic()
        if self._gpus is None or self._gpus or now - self._gpus_read_at > INVENTORY_REFRESH_S:
            self._gpus, self._gpus_read_at = self._read_gpus(), now
        return self._gpus

    def _start_runner(self, run_id: int, env: dict[str, str]) -> subprocess.Popen:
        return start_runner(self._sessions, run_id, self._db_url, extra_env=env)

    # Background loop ------------------------------------------------------------------------
    def start(self) -> "Scheduler":
        """Tick in a daemon thread every interval (and at once after wake())."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="arena-scheduler", daemon=True)
            self._thread.start()
        return self

    def wake(self) -> None:
        """Tick now rather than at the next interval (a run was just queued)."""
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.tick()
            self._wake.wait(self._interval)
            self._wake.clear()

    def stop(self, release: bool = True) -> None:
        """Stop ticking; release the lease so another scheduler takes over at once. Runs go on."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        if release:
            try:
                with self._sessions.begin() as s:
                    queries.release_lease(s, LEASE_NAME, self.holder)
            except Exception:
                pass  # it expires on its own
        self.holds_lease = False


def _waiting(s: Session) -> list[tuple[int, str]]:
    """(run id, the device it asked for) of each unplaced queued run, oldest first."""
    return [(run.id, run.spec.get("device", "auto")) for run in queries.unplaced_queue(s)]


def configured_executor() -> Optional[RayExecutor]:
    """The executor ARENA_EXECUTOR names: None for local (the default), a RayExecutor for ray."""
    return RayExecutor() if executor_name() == RAY else None


_running: dict[str, Scheduler] = {}
_running_lock = threading.Lock()


def ensure_running(sessions: sessionmaker[Session], db_url: str) -> Optional[Scheduler]:
    """This process's scheduler for a database, started once (the dashboard, launch() and the CLI share it).

    None when ARENA_SCHEDULER=off: queued runs then wait for another process's scheduler.
    """
    if not scheduling_enabled():
        return None
    with _running_lock:
        scheduler = _running.get(db_url)
        if scheduler is None:
            scheduler = _running[db_url] = Scheduler(sessions, db_url, executor=configured_executor())
        return scheduler.start()


def stop_all() -> None:
    """Stop every scheduler this process started and release their leases."""
    with _running_lock:
        schedulers = list(_running.values())
        _running.clear()
    for scheduler in schedulers:
        scheduler.stop()

