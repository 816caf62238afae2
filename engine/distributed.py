"""A run's data-parallel workers (spec.workers > 1): who is which rank, which samples each takes, how they meet.

One process per worker, as PyTorch's DistributedDataParallel and TensorFlow's MultiWorkerMirroredStrategy
both expect. The scheduler starts rank 0, the run's runner; rank 0 starts ranks 1..N-1 itself
(`python -m engine.runner RUN_ID --rank R`), each with the environment the executor chose for it
(ARENA_WORKER_ENVS: its device, its threads), and watches them. Held equal with a one-worker run of
the same spec: the global batch (each step's batch_size samples, split evenly: rank r takes the r-th
slice of every global batch of the same per-epoch order), the initial weights, the optimizer, and
averaged gradients, so two workers compute what one does up to floating-point summation order
(tests/engine/test_multi_worker.py checks 20 steps to 1e-5 in each framework).

Nothing hangs: the collectives have a timeout (COLLECTIVE_TIMEOUT_S); rank 0 ends the run as failed
within a second or two of a worker dying (watch_workers); a worker whose rank 0 died exits at once
(watch_parent).

TensorFlow's MirroredStrategy (spec.tf_strategy "mirrored") is the other shape: one process holding every
worker's device, a replica of the model on each (hold_every_device); the backend splits each global batch
between its replicas as the ranks' shards split it.
"""
from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from db.queries import RANK_PREFIX

ENV_WORKER_ENVS = "ARENA_WORKER_ENVS"  # JSON list of per-rank environments, set by the executor
ENV_THREADS = "ARENA_THREADS"  # intra-op threads of this worker
ENV_RANK = "ARENA_RANK"
ENV_WORLD = "ARENA_WORLD_SIZE"
ENV_PORTS = "ARENA_WORKER_PORTS"  # comma-separated: rank 0's rendezvous port (PyTorch), every rank's (TensorFlow)
HOST = "127.0.0.1"
# A collective waiting longer than this gives up with an error instead of hanging: longer than any
# evaluation rank 0 runs between epochs while the other ranks wait in the next step's all-reduce.
COLLECTIVE_TIMEOUT_S = 300
WATCH_INTERVAL_S = 0.5


@dataclass(frozen=True)
class Workers:
    """This process's place among the run's workers."""

    rank: int = 0
    world: int = 1
    ports: tuple[int, ...] = ()
    replicas: int = 1  # devices this one process trains on, a replica of the model each (MirroredStrategy)

    @property
    def distributed(self) -> bool:
        """Several processes: each trains its shard of every global batch."""
        return self.world > 1

    @property
    def replicas_in_sync(self) -> int:
        """Replicas of the model training together, in every process: the run's workers."""
        return self.world * self.replicas

    @property
    def parallel(self) -> bool:
        """Several replicas, in several processes or in this one: their gradients are exchanged every step."""
        return self.replicas_in_sync > 1


    @property
    def lead(self) -> bool:
        """Rank 0: records the run's metrics, evaluates, benchmarks inference, ends the run."""
        return self.rank == 0

    def addresses(self) -> list[str]:
        return [f"{HOST}:{port}" for port in self.ports]


SINGLE = Workers()


def from_env() -> Workers:
    """The workers this process belongs to, from the environment rank 0 gave it (SINGLE without one)."""
    world = int(os.environ.get(ENV_WORLD, "1"))
    if world <= 1:
        return SINGLE
    ports = tuple(int(p) for p in os.environ[ENV_PORTS].split(","))
    return Workers(int(os.environ.get(ENV_RANK, "0")), world, ports)


def metric_prefix(rank: int) -> str:
    """Where a rank's own step metrics go: rank 0's are the run's, the others' are named by rank."""
    return "" if rank == 0 else f"{RANK_PREFIX}{rank}/"


def shard(order: np.ndarray, steps: int, global_batch: int, workers: Workers) -> np.ndarray:
    """This rank's samples of an epoch, in step order: the rank-th slice of each of the `steps` global batches."""
    if not workers.distributed:
        return order
    local = global_batch // workers.world
    used = order[:steps * global_batch].reshape(steps, workers.world, local)
    return used[:, workers.rank, :].reshape(-1)


EPHEMERAL_FILE = "/proc/sys/net/ipv4/ip_local_port_range"


def free_ports(count: int) -> list[int]:
    """Ports free on this machine now, for the workers' rendezvous, drawn from below the kernel's ephemeral range.

    A port is only known free until someone binds it; the workers bind theirs a second or two later.
    The kernel hands out ephemeral ports (32768-60999 by default) to every outgoing connection and every
    `bind(0)` (Ray, the dashboard, a browser), so a free one there is soon taken; below it, only a
    process asking for that very number takes it.
    """
    try:
        with open(EPHEMERAL_FILE) as ports_file:
            low = int(ports_file.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    candidates = range(20000, max(20001 + count, low))
    chosen: list[int] = []
    draw = random.SystemRandom()
    while len(chosen) < count:
        port = draw.choice(candidates)
        if port not in chosen and _bindable(port):
            chosen.append(port)
    return chosen


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def threads_from_env() -> Optional[int]:
    raw = os.environ.get(ENV_THREADS)
    return int(raw) if raw else None


def worker_envs(world: int) -> list[dict[str, str]]:
    """Each rank's environment as the executor chose it; without a choice (a runner started by hand), CPU
    workers splitting this machine's cores."""
    raw = os.environ.get(ENV_WORKER_ENVS)
    if raw:
        envs = json.loads(raw)
        if not isinstance(envs, list) or len(envs) != world or not all(isinstance(e, dict) for e in envs):
            raise ValueError(f"{ENV_WORKER_ENVS} must list {world} environments, one per worker: {raw!r}")
        return [{str(k): str(v) for k, v in e.items()} for e in envs]
    threads = str(max(1, (os.cpu_count() or 1) // world))
    return [{"CUDA_VISIBLE_DEVICES": "", "ARENA_DEVICE": "cpu", ENV_THREADS: threads} for _ in range(world)]


def one_process_env(envs: list[dict[str, str]]) -> dict[str, str]:
    """The environment of one process holding every rank's device (envs: each rank's, worker_envs): all their GPUs
    visible in rank order (the first is cuda:0, whose NVML index the memory trace follows), or the CPU with the
    threads of all of them."""
    visible = [env.get("CUDA_VISIBLE_DEVICES", "") for env in envs]
    if all(visible):
        merged = {**envs[0], "CUDA_VISIBLE_DEVICES": ",".join(visible), "ARENA_DEVICE": "cuda:0"}
        merged.pop(ENV_THREADS, None)
        return merged
    threads = sum(int(env.get(ENV_THREADS) or 1) for env in envs)
    return {"CUDA_VISIBLE_DEVICES": "", "ARENA_DEVICE": "cpu", ENV_THREADS: str(threads)}


def hold_every_device(world: int) -> Workers:
    """A one-process run of `world` replicas (TensorFlow's MirroredStrategy): take every rank's device the executor
    chose, before a framework starts, and start no other process."""
    os.environ.update(one_process_env(worker_envs(world)))
    os.environ.pop(ENV_WORKER_ENVS, None)
    return Workers(replicas=world)


def start_workers(run_id: int, db_url: str, world: int) -> tuple[Workers, list[subprocess.Popen]]:
    """Rank 0: choose the rendezvous ports, take rank 0's own environment, start ranks 1..world-1.

    Their output goes to this process's own (the run's log), each line as the worker wrote it.
    """
    envs = worker_envs(world)
    ports = free_ports(world)
    common = {ENV_WORLD: str(world), ENV_PORTS: ",".join(map(str, ports))}
    os.environ.update({**envs[0], **common, ENV_RANK: "0"})
    children = []
    for rank in range(1, world):
        env = {**os.environ, **envs[rank], **common, ENV_RANK: str(rank)}
        env.pop(ENV_WORKER_ENVS, None)
        children.append(subprocess.Popen([sys.executable, "-m", "engine.runner", str(run_id), "--db", db_url,
                                           "--rank", str(rank)], env=env, stdin=subprocess.DEVNULL))
    return Workers(0, world, tuple(ports)), children


def watch_workers(children: list[subprocess.Popen], on_lost: Callable[[int, int], None]) -> Callable[[], None]:
    """Call on_lost(rank, exit code) from a thread as soon as a worker exits with an error or a signal;
    returns the function that ends the watch (before rank 0 stops the workers itself).

    A worker exits 0 only after the final barrier, which rank 0 passed too: that one is not lost.
    """
    quiet = threading.Event()

    def watch() -> None:
        while not quiet.wait(WATCH_INTERVAL_S):
            for rank, child in enumerate(children, start=1):
                code = child.poll()
                if code is not None and code != 0 and not quiet.is_set():
                    on_lost(rank, code)
                    return
            if all(child.poll() == 0 for child in children):
                return

    threading.Thread(target=watch, name="arena-workers", daemon=True).start()
    return quiet.set


def exit_words(code: int) -> str:
    """"was killed by SIGKILL" or "exited with code 1"."""
    if code < 0:
        import signal

        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def watch_parent(on_orphaned: Callable[[], None]) -> None:
    """Ranks 1..N-1: call on_orphaned() from a thread once rank 0 (this process's parent) is gone."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            if os.getppid() != parent:
                on_orphaned()
                return

    threading.Thread(target=watch, name="arena-parent", daemon=True).start()


def stop_workers(children: list[subprocess.Popen], grace_s: float = 3.0) -> None:
    """End the ranks rank 0 started (its run ended, one way or another): SIGTERM, then SIGKILL."""
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def rank_figures(s, run_id: int, world: int, warmup_steps: int, per_worker_batch: int) -> dict:
    """Rank 0, after the final barrier: every worker's steady step times and peak memory, from what each
    recorded, and straggling (the slowest worker's median step time over the median worker's)."""
    from db import queries

    names = [f"{metric_prefix(rank)}{queries.STEP_PREFIX}step_time_ms" for rank in range(world)]
    frame = queries.metric_frame(s, [run_id], names)
    samples = queries.sample_frame(s, [run_id], name="rss")
    ranks = []
    for rank, name in enumerate(names):
        times = frame.loc[(frame["name"] == name) & (frame["step"] > warmup_steps), "value"].to_numpy(dtype=float)
        rss = samples.loc[samples["source"] == f"{metric_prefix(rank)}host", "value"]
        entry: dict = {"rank": rank, "steps": int(len(times)), "peak_rss_bytes": float(rss.max()) if len(rss) else None}
        if len(times):
            entry.update(step_time_p50_ms=float(np.percentile(times, 50)), step_time_p95_ms=float(np.percentile(times, 95)),
                         steady_samples_per_s=per_worker_batch * len(times) / (times.sum() / 1e3))
        ranks.append(entry)
    medians = [entry["step_time_p50_ms"] for entry in ranks if "step_time_p50_ms" in entry]
    result: dict = {"ranks": ranks}
    if len(medians) == world:
        result["straggling"] = max(medians) / float(np.median(medians))
    return result
