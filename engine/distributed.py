"""A run's data-parallel workers (spec.workers > 1): who is which rank, which samples each takes, how they meet.

One process per worker, as PyTorch's DistributedDataParallel and TensorFlow's MultiWorkerMirroredStrategy
both expect. The scheduler starts rank 0, the run's runner; on this machine rank 0 starts ranks 1..N-1
itself (`python -m engine.runner RUN_ID --rank R`), each with the environment the executor chose for it
(ARENA_WORKER_ENVS: its device, its threads), and watches them; they meet on 127.0.0.1. On Ray each
rank has an actor of its own, possibly on another node (engine/executors/ray_groups.py): the executor
hands every rank the ranks' addresses (ARENA_WORKER_HOSTS, ARENA_WORKER_PORTS) and writes how each
other rank ended into a file rank 0 reads (ARENA_WORKER_EXITS). Held equal with a one-worker run of
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
from typing import Callable, Optional, Union

import numpy as np

from db.queries import RANK_PREFIX

ENV_WORKER_ENVS = "ARENA_WORKER_ENVS"  # JSON list of per-rank environments, set by the executor
ENV_THREADS = "ARENA_THREADS"  # intra-op threads of this worker
ENV_RANK = "ARENA_RANK"
ENV_WORLD = "ARENA_WORLD_SIZE"
ENV_PORTS = "ARENA_WORKER_PORTS"  # comma-separated: rank 0's rendezvous port (PyTorch), every rank's (TensorFlow)
ENV_HOSTS = "ARENA_WORKER_HOSTS"  # comma-separated, each rank's node address; unset: all on HOST
# A JSON file {rank: exit code or words} kept by whoever started ranks 1..N-1 elsewhere (a Ray actor); when set,
# rank 0 starts none itself and reads there how they ended.
ENV_EXITS = "ARENA_WORKER_EXITS"
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
    hosts: tuple[str, ...] = ()  # each rank's node address; empty: every rank on HOST (one machine)
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
        """Each rank's host:port, rank 0's first: PyTorch meets at the first, TensorFlow's cluster lists them all."""
        hosts = self.hosts or (HOST,) * len(self.ports)
        return [f"{host}:{port}" for host, port in zip(hosts, self.ports)]


SINGLE = Workers()


def from_env() -> Workers:
    """The workers this process belongs to, from the environment rank 0 gave it (SINGLE without one)."""
    world = int(os.environ.get(ENV_WORLD, "1"))
    if world <= 1:
        return SINGLE
    ports = tuple(int(p) for p in os.environ[ENV_PORTS].split(","))
    hosts = tuple(os.environ[ENV_HOSTS].split(",")) if os.environ.get(ENV_HOSTS) else ()
    if len(ports) != world or (hosts and len(hosts) != world):
        raise ValueError(f"{ENV_PORTS}={os.environ[ENV_PORTS]!r}, {ENV_HOSTS}={os.environ.get(ENV_HOSTS)!r}: expected "
                         f"one port and one host per worker ({world})")
    return Workers(int(os.environ.get(ENV_RANK, "0")), world, ports, hosts)


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


def free_ports(count: int, host: str = HOST, exclude: tuple[int, ...] = ()) -> list[int]:
    """Ports free on this machine now, for the workers' rendezvous, drawn from below the kernel's ephemeral range.

    A port is only known free until someone binds it; the workers bind theirs a second or two later.
    The kernel hands out ephemeral ports (32768-60999 by default) to every outgoing connection and every
    `bind(0)` (Ray, the dashboard, a browser), so a free one there is soon taken; below it, only a
    process asking for that very number takes it. host: the address probed ("0.0.0.0" for a port other
    machines reach: free there means free on every interface); exclude: ports taken by other ranks here.
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
        if port not in chosen and port not in exclude and _bindable(port, host):
            chosen.append(port)
    return chosen


def _bindable(port: int, host: str = HOST) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
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


def start_workers(run_id: int, db_url: str, world: int) -> tuple[Workers, list]:
    """Rank 0: choose the rendezvous ports, take rank 0's own environment, start ranks 1..world-1.

    Their output goes to this process's own (the run's log), each line as the worker wrote it. When an
    executor started them elsewhere (ARENA_WORKER_EXITS set: Ray), rank 0 takes the addresses it was
    given and starts nothing: it watches those ranks through RemoteRank.
    """
    if os.environ.get(ENV_EXITS):
        workers = from_env()
        if workers.world != world or workers.rank != 0:
            raise ValueError(f"the executor placed rank {workers.rank} of {workers.world} workers; this run has {world}")
        parent = os.getppid()
        return workers, [RemoteRank(os.environ[ENV_EXITS], rank, parent) for rank in range(1, world)]
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


class RemoteRank:
    """A rank another process started (a Ray actor, maybe on another node), seen by rank 0 as a child is: poll()
    is None while it runs, then its exit code, or words when its actor was lost rather than its process ending."""

    def __init__(self, exits_path: str, rank: int, starter_pid: int) -> None:
        self.exits_path, self.rank, self.starter_pid = exits_path, rank, starter_pid

    def poll(self) -> Union[int, str, None]:
        return self.ended()[0]

    def ended(self) -> tuple[Union[int, str, None], Optional[float]]:
        """(how it ended, the wall-clock time it ended at), (None, None) while it runs."""
        try:
            with open(self.exits_path) as exits_file:
                entry = json.load(exits_file).get(str(self.rank))
        except (OSError, ValueError):
            entry = None  # not written yet (or being replaced: it is written whole, then renamed)
        if entry is not None:
            return entry["ended"], entry["at"]
        if os.getppid() != self.starter_pid:
            # Rank 0's actor, which started this process, is gone; Ray ends the ranks' actors with it.
            return "was lost with rank 0's Ray actor", time.time()
        return None, None


def record_exit(exits_path: str, rank: int, ended: Union[int, str], at: float) -> None:
    """The starter's side of RemoteRank: note how a rank ended (its exit code, or words) and when (time.time() where
    it ran), replacing the file whole."""
    try:
        with open(exits_path) as exits_file:
            exits = json.load(exits_file)
    except (OSError, ValueError):
        exits = {}
    exits[str(rank)] = {"ended": ended, "at": at}
    partial = f"{exits_path}.partial"
    with open(partial, "w") as exits_file:
        json.dump(exits, exits_file)
    os.replace(partial, exits_path)  # a reader sees the old file or the new one, never half of one


# Rank 0 hears of a rank another process started this long after it ended, at most (its starter looks every
# WATCH_INTERVAL_S, then Ray reports); and counts one that ended up to CAUSE_SLACK_S after rank 0's own error,
# whose collective fails the moment the other's sockets close (wall clocks of two nodes: NTP keeps them closer).
REMOTE_NOTICE_S = 3.0
CAUSE_SLACK_S = 1.0


def lost_ranks(children: list, wait: bool) -> list[str]:
    """Rank 0, its run failing: "worker rank R <how it ended>" for each other rank that ended with an error.

    A rank rank 0 started is known at once. Of ranks started elsewhere (RemoteRank) rank 0 hears a moment
    later, so when wait (the error may be theirs: not a cancel) it waits up to REMOTE_NOTICE_S for one that
    ended before its own error; a process that ends later ended because of it, and is not named.
    """
    failed_at = time.time()
    deadline = time.monotonic() + (REMOTE_NOTICE_S if wait else 0.0)
    while True:
        lost = []
        for rank, child in enumerate(children, start=1):
            if isinstance(child, RemoteRank):
                ended, at = child.ended()
                # Words: its actor or node was lost, which rank 0's own error does not do.
                if ended not in (None, 0) and (isinstance(ended, str) or at <= failed_at + CAUSE_SLACK_S):
                    lost.append(f"worker rank {rank} {exit_words(ended)}")
            elif child.poll() not in (None, 0):
                lost.append(f"worker rank {rank} {exit_words(child.poll())}")
        remote = any(isinstance(child, RemoteRank) for child in children)
        if lost or not remote or time.monotonic() >= deadline:
            return lost
        time.sleep(0.1)


def watch_workers(children: list, on_lost: Callable[[int, Union[int, str]], None]) -> Callable[[], None]:
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


def exit_words(code: Union[int, str]) -> str:
    """"was killed by SIGKILL" or "exited with code 1" (words a RemoteRank gave stay as they are)."""
    if isinstance(code, str):
        return code
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


def stop_workers(children: list, grace_s: float = 3.0) -> None:
    """End the ranks rank 0 started (its run ended, one way or another): SIGTERM, then SIGKILL. Ranks started
    elsewhere (RemoteRank) their starter ends once rank 0 has exited."""
    children = [child for child in children if isinstance(child, subprocess.Popen)]
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


def rank_figures(s, run_id: int, world: int, warmup_steps: int, per_worker_batch: int,
                 hosts: tuple[str, ...] = ()) -> dict:
    """Rank 0, after the final barrier: every worker's steady step times and peak memory, from what each
    recorded, and straggling (the slowest worker's median step time over the median worker's). hosts: the
    ranks' nodes when they were placed by a cluster (a rank on another node is a figure's context)."""
    from db import queries

    names = [f"{metric_prefix(rank)}{queries.STEP_PREFIX}step_time_ms" for rank in range(world)]
    frame = queries.metric_frame(s, [run_id], names)
    samples = queries.sample_frame(s, [run_id], name="rss")
    ranks = []
    for rank, name in enumerate(names):
        times = frame.loc[(frame["name"] == name) & (frame["step"] > warmup_steps), "value"].to_numpy(dtype=float)
        rss = samples.loc[samples["source"] == f"{metric_prefix(rank)}host", "value"]
        entry: dict = {"rank": rank, "steps": int(len(times)), "peak_rss_bytes": float(rss.max()) if len(rss) else None}
        if hosts:
            entry["node"] = hosts[rank]
        if len(times):
            entry.update(step_time_p50_ms=float(np.percentile(times, 50)), step_time_p95_ms=float(np.percentile(times, 95)),
                         steady_samples_per_s=per_worker_batch * len(times) / (times.sum() / 1e3))
        ranks.append(entry)
    medians = [entry["step_time_p50_ms"] for entry in ranks if "step_time_p50_ms" in entry]
    result: dict = {"ranks": ranks}
    if len(medians) == world:
        result["straggling"] = max(medians) / float(np.median(medians))
    return result
