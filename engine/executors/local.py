"""The local executor (ARENA_EXECUTOR=local, the default): runner processes on this machine's GPUs and CPU.

Placement, in queue order (oldest first): a run pinned to "cpu" or "cuda:N" waits for that
device; "auto" takes the least-loaded GPU that no foreign process uses, or the CPU on a machine
without GPUs. Each GPU takes ARENA_RUNS_PER_GPU runs (default 1), the CPU ARENA_CPU_SLOTS (default 1).
A placed run gets its runner at once, with CUDA_VISIBLE_DEVICES naming the chosen GPU (empty for
the CPU). Runner processes are detached: they go on when the scheduler stops, and the next
scheduler counts them when it places more.

A run of N workers (spec.workers, issue 18) is placed all at once or not at all, so no run ever
holds part of what it needs while waiting for the rest (no deadlock). "auto" on a GPU machine takes
N distinct GPUs, each under its limit and free of foreign processes; on the CPU it takes N slots.
A CPU with fewer slots than N (a 2-core laptop with the default 1 slot) still runs it: the run
takes every slot, once the CPU is entirely free, and its workers split the cores (ARENA_THREADS).
Its Run.placed_device lists its workers' devices in rank order ("cpu,cpu", "cuda:0,cuda:1"), and
every count of a device's load counts each entry. So that a multi-worker run is not starved by
smaller runs taking each device as it frees, a multi-worker run that cannot be placed holds back
the devices it waits for (every GPU, or the CPU): runs queued after it are not placed on them
until it has gone. A run that can never fit (more workers than GPUs, the CPU taking no runs)
fails at once, saying the numbers.

A deployment job times exported models on the CPU, so it takes the whole machine: it is placed
once no run is placed here, and nothing is placed beside it until it ends (a GPU run's loop uses
the CPU too). The queue stays in order around it: runs queued before it go first, runs queued after
it wait for it, so neither starves the other.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Callable, Optional, Sequence, Union

from sqlalchemy.orm import Session, sessionmaker

from db import deployments, queries
from engine.executors.base import DEPLOYMENT, Executor, Placement, Queued, placed_devices
from engine.executors.ray import RAY_PLACEMENTS
from engine.nvml import inventory
from engine.processes import runner_alive, start_deployment, start_runner

ENV_RUNS_PER_GPU = "ARENA_RUNS_PER_GPU"
ENV_CPU_SLOTS = "ARENA_CPU_SLOTS"
CPU = "cpu"
# A run placed but never given a process (the scheduler died in between) goes back to the queue after this.
UNSTARTED_PLACEMENT_S = 60.0
INVENTORY_REFRESH_S = 30.0


def _whole_number(name: str, default: int, low: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if value < low:
        raise ValueError(f"{name}={raw!r}: expected a whole number >= {low}")
    return value


def runs_per_gpu() -> int:
    """Runs one GPU takes at once (ARENA_RUNS_PER_GPU, default 1: a run's memory and speed are its own)."""
    return _whole_number(ENV_RUNS_PER_GPU, 1, low=1)


def cpu_slots() -> int:
    """Runs the CPU takes at once (ARENA_CPU_SLOTS, default 1; 0 = GPU runs only)."""
    return _whole_number(ENV_CPU_SLOTS, 1, low=0)


@dataclass(frozen=True)
class Gpu:
    """A GPU as the local executor sees it: NVML index, UUID (for CUDA_VISIBLE_DEVICES) and foreign users."""

    index: int
    uuid: Optional[str] = None
    pids: frozenset[int] = field(default_factory=frozenset)


def nvml_gpus() -> list[Gpu]:
    """The machine's GPUs from NVML (none when NVML is absent)."""
    found = inventory()
    return [Gpu(g.index, g.uuid, frozenset(p.pid for p in g.processes)) for g in found.gpus]


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


def workers_placement_env(devices: Sequence[str], gpus: Sequence[Optional[Gpu]]) -> dict[str, str]:
    """What rank 0 of a run whose workers sit on `devices` (rank order; gpus: each one's Gpu, None for the CPU)
    is started with: its own placement_env, ARENA_PLACED_DEVICE listing every device, and ARENA_WORKER_ENVS,
    the env of every rank as a JSON list, which rank 0 hands to the ranks it starts. A one-worker run gets
    placement_env unchanged.

    CPU workers get ARENA_THREADS = cores // workers: N workers each on every core would fight for them.
    """
    if len(devices) == 1:
        return placement_env(devices[0], gpus[0])
    threads = str(max(1, (os.cpu_count() or 1) // len(devices)))
    ranks = []
    for device, gpu in zip(devices, gpus):
        env = placement_env(device, gpu)
        del env["ARENA_PLACED_DEVICE"]  # the run's, not a rank's: rank 0 records it once
        if gpu is None:
            env["ARENA_THREADS"] = threads
        ranks.append(env)
    return {**ranks[0], "ARENA_PLACED_DEVICE": ",".join(devices), "ARENA_WORKER_ENVS": json.dumps(ranks)}


# (run id, requested device) or (run id, requested device, workers)
QueuedRun = Union[tuple[int, str], tuple[int, str, int]]


def plan(queued: Sequence[QueuedRun], gpus: list[Gpu], occupied: Counter, arena_pids: set[int],
         per_gpu: int, cpu_capacity: int) -> tuple[list[Placement], dict[int, str]]:
    """Decide placements for queued runs (run id, requested device[, workers]), oldest first; occupied counts
    the places taken per device (a 2-worker run on the CPU: 2).

    Returns the placements and, for runs that can never run here, why (a GPU that does not exist, more
    workers than GPUs, a CPU that takes no runs).
    """
    load = Counter(occupied)
    by_device = {f"cuda:{g.index}": g for g in gpus}
    held: set[str] = set()  # devices a multi-worker run queued earlier waits for: nobody after it takes them
    placements: list[Placement] = []
    impossible: dict[int, str] = {}
    for run_id, requested, *rest in queued:
        workers = rest[0] if rest else 1
        many = f"{workers} workers need " if workers > 1 else ""
        if requested == "auto" and gpus:
            if workers > len(gpus):
                impossible[run_id] = (f"{workers} workers need {workers} GPUs at once and this machine has "
                                      f"{len(gpus)} (device 'cpu' runs them on the CPU)")
                continue
            free = [g for g in gpus if f"cuda:{g.index}" not in held and load[f"cuda:{g.index}"] < per_gpu
                    and not (g.pids - arena_pids)]
            chosen = sorted(free, key=lambda g: (load[f"cuda:{g.index}"], g.index))[:workers]
            devices = [f"cuda:{g.index}" for g in chosen] if len(chosen) == workers else None
            waits_for = by_device
        elif requested in ("auto", CPU):
            if cpu_capacity == 0:
                impossible[run_id] = (f"{many}CPU slots and " if many else "") + (
                    f"the CPU takes no runs ({ENV_CPU_SLOTS}=0)" + ("" if gpus else " and this machine has no GPU"))
                continue
            # N slots; a CPU of fewer slots is taken whole (only when nothing else is on it), its cores split.
            slots = min(workers, cpu_capacity)
            devices = [CPU] * workers if CPU not in held and load[CPU] + slots <= cpu_capacity else None
            waits_for = {CPU}
        elif requested in by_device:
            if workers > 1:
                impossible[run_id] = f"{many}{workers} devices and {requested!r} is one (ask for 'auto' or 'cpu')"
                continue
            devices = [requested] if requested not in held and load[requested] < per_gpu else None
            waits_for = {requested}
        else:
            impossible[run_id] = f"device {requested!r} does not exist here ({len(gpus)} GPU(s) found)"
            continue
        if devices is None:
            if workers > 1:
                held.update(waits_for)
            continue
        load.update(devices)
        placements.append(Placement(run_id, ",".join(devices),
                                    workers_placement_env(devices, [by_device.get(d) for d in devices])))
    return placements, impossible


Launcher = Callable[[int, dict[str, str]], object]


class LocalExecutor(Executor):
    """Places queued runs on this machine's free devices and starts one runner process for each."""

    name = "local"

    def __init__(self, sessions: sessionmaker[Session], db_url: str, launcher: Optional[Launcher] = None,
                 gpus: Optional[Callable[[], list[Gpu]]] = None, job_launcher: Optional[Launcher] = None) -> None:
        """launcher(run id, env) starts a placed run (default: its runner process); gpus() lists the GPUs (NVML);
        job_launcher(job id, env) starts a placed deployment job (default: its process)."""
        super().__init__(sessions, db_url)
        self._launch = launcher or self._start_runner
        self._launch_job = job_launcher or self._start_deployment
        self._read_gpus = gpus or nvml_gpus
        self._gpus: Optional[list[Gpu]] = None
        self._gpus_read_at = 0.0
        self.hostname = socket.gethostname()

    def requeue_lost(self) -> list[int]:
        """Put runs and jobs placed here that never got a process (their scheduler died in between) back in the
        queue; the runs' ids."""
        after = timedelta(seconds=UNSTARTED_PLACEMENT_S)
        with self._sessions.begin() as s:
            # Work in Ray's queue has no process for as long as Ray makes it wait: Ray's executor says when it is lost.
            deployments.unplace_unstarted(s, after, keep=RAY_PLACEMENTS)
            return queries.unplace_unstarted(s, after, keep=RAY_PLACEMENTS)

    def submit(self, queued: list[Queued]) -> list[Placement]:
        """Place what fits on free devices and start each one's process; a device that does not exist fails its run.

        Runs up to the first deployment job in the queue are placed; the job when the machine is free.
        """
        per_gpu, cpu_capacity = runs_per_gpu(), cpu_slots()
        gpus = self._current_gpus()
        if not queued:
            return []
        with self._sessions.begin() as s:
            active = queries.placed_active_runs(s, self.hostname)
            measuring = deployments.holding(s, self.hostname)
        if measuring:
            return []  # a deployment job has the machine: nothing starts beside its measurements
        job = next((item for item in queued if item.kind == DEPLOYMENT), None)
        runs = [(item.id, item.device, item.workers) for item in queued[:queued.index(job) if job else None]]
        occupied = Counter(device for run in active for device in placed_devices(run.placed_device))
        arena_pids = {run.pid for run in active if run.pid is not None and runner_alive(run.pid)}
        placements, impossible = plan(runs, gpus, occupied, arena_pids, per_gpu, cpu_capacity)
        with self._sessions.begin() as s:
            for run_id, why in impossible.items():
                queries.fail_run(s, run_id, f"cannot be placed: {why}")
        started = [p for p in placements if self._start(p)]
        if job is not None and not active and not started and len(impossible) == len(runs):
            # Everything queued before the job has gone or cannot run: the machine is the job's.
            placement = Placement(job.id, CPU, placement_env(CPU, None), DEPLOYMENT)
            if self._start(placement):
                started.append(placement)
        return started

    def _start(self, placement: Placement) -> bool:
        """Record the placement (only if it still waits unplaced: nothing starts twice) and start its process."""
        job = placement.kind == DEPLOYMENT
        with self._sessions.begin() as s:
            place = deployments.place if job else queries.place_run
            if not place(s, placement.id, placement.device, self.hostname):
                return False
        try:
            (self._launch_job if job else self._launch)(placement.id, placement.env)
        except Exception:
            return False  # the launcher has recorded it as failed with why
        return True

    def withdraw(self, run_ids: list[int]) -> None:
        """Nothing to do: no run waits in a queue of this executor's own (a placed run has its process at once)."""

    def _current_gpus(self) -> list[Gpu]:
        # With GPUs, every tick (foreign processes come and go); without, now and then (none appear).
        now = time.monotonic()
        if self._gpus is None or self._gpus or now - self._gpus_read_at > INVENTORY_REFRESH_S:
            self._gpus, self._gpus_read_at = self._read_gpus(), now
        return self._gpus

    def _start_runner(self, run_id: int, env: dict[str, str]) -> subprocess.Popen:
        return start_runner(self._sessions, run_id, self._db_url, extra_env=env)

    def _start_deployment(self, job_id: int, env: dict[str, str]) -> subprocess.Popen:
        return start_deployment(self._sessions, job_id, self._db_url, extra_env=env)
