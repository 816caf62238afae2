"""A multi-worker run on Ray (issue 18): a placement group of one bundle per worker, one actor per rank.

The Ray executor (engine/executors/ray.py) reserves, for a run of N workers, a detached placement group
named like the run's actor: N bundles of one worker's share each ({"CPU": c} or {"CPU": c, "GPU": 1};
the CPUs are the runner's threads, and an actor's own demand must fit inside its bundle). Ray places
the group whole or keeps it waiting, so the run stays queued in Arena until every worker has room.
The strategy is an executor setting, ARENA_RAY_PLACEMENT, not part of the spec: where the workers sit
does not change what the run computes, so it does not change the run's identity.

Rank 0's actor (GroupLead, bundle 0, the name Arena finds the run by) starts the other ranks' actors
(GroupRank, bundle r), which it owns: Ray ends them with it. Each rank's actor reports its node's
address, a port free there and the device Ray gave it; rank 0's actor hands the whole list to every
rank (ARENA_WORKER_HOSTS, ARENA_WORKER_PORTS: PyTorch meets at rank 0's, TensorFlow's cluster lists
all), starts the runner (`python -m engine.runner RUN_ID --db URL`) and asks the others to start
theirs (`... --rank R`). The ranks are not the runner's children, so rank 0's actor watches their
actors' results and writes how each ended into a file the runner polls (ARENA_WORKER_EXITS,
engine/distributed.py RemoteRank): a killed rank fails the run within about a second, as locally.
When the runner exits, rank 0's actor ends the others and removes the group (which ends itself too);
the executor removes the group of a run Ray lost or that ended without that, on its next tick.
"""
from __future__ import annotations

import contextlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import psutil
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import ACTIVE_STATUSES, QUEUED
from db.session import make_sessionmaker, run_log_path
from engine import PROJECT_ROOT, child_env, distributed
from engine.processes import RUNNER_MODULE, absolute_db_url, start_runner

ENV_RAY_PLACEMENT = "ARENA_RAY_PLACEMENT"
# pack: Ray's PACK, as few nodes as possible (one, when one has room; best effort, so a group no single node
# can hold goes over several rather than waiting). spread: Ray's SPREAD, one worker per node where possible.
# Not STRICT_SPREAD: it needs a node per worker and leaves a run waiting forever on a cluster with fewer.
STRATEGIES = {"pack": "PACK", "spread": "SPREAD"}
# The ranks' actors start within seconds once Ray has placed the group (a node new to Arena fetches its code
# first); one that has not reported by then is not coming.
ADDRESS_TIMEOUT_S = 120.0
OUTPUT_TAIL_BYTES = 64_000  # of each other rank's output, added to the run's log when it ends
ANY_INTERFACE = "0.0.0.0"  # a rendezvous port other nodes reach must be free on every interface


def placement_strategy() -> str:
    """Ray's strategy for multi-worker runs' groups, from ARENA_RAY_PLACEMENT (pack, the default, or spread)."""
    raw = os.environ.get(ENV_RAY_PLACEMENT, "pack")
    strategy = STRATEGIES.get(raw.strip().lower())
    if strategy is None:
        raise ValueError(f"{ENV_RAY_PLACEMENT}={raw!r}: expected pack (the workers on as few nodes as possible) or "
                         f"spread (one per node where possible)")
    return strategy


def bundle(cpus: float, gpu: bool) -> dict[str, float]:
    """One worker's bundle: its CPUs (its threads), and its GPU."""
    return {"CPU": float(cpus), "GPU": 1.0} if gpu else {"CPU": float(cpus)}


def never_fits(nodes: list[dict[str, float]], one: dict[str, float], workers: int) -> Optional[str]:
    """Why the alive nodes (their resources) can never hold `workers` bundles like `one` at once; None when they can.

    Both strategies are best effort (a node may take several bundles), so the group fits when the bundles each
    node can hold add up to the workers.
    """
    held = [min(math.floor(node.get(kind, 0.0) / need + 1e-9) for kind, need in one.items()) for node in nodes]
    if sum(held) >= workers:
        return None
    per_node = ", ".join(str(count) for count in held) or "none"
    return (f"{workers} workers need {workers} bundles of {_resources(one)}, one per worker, and the cluster's "
            f"{len(nodes)} node(s) hold {sum(held)} at most ({per_node} per node)")


def _resources(one: dict[str, float]) -> str:
    return " + ".join(f"{amount:g} {kind}" for kind, amount in one.items())


def device_env(gpu_ids: list, threads: Optional[int] = None) -> dict[str, str]:
    """One process's placement, from the GPUs Ray assigned it (Ray has set CUDA_VISIBLE_DEVICES to them).

    Ray numbers a node's GPUs 0..n-1; with CUDA_DEVICE_ORDER=PCI_BUS_ID that number is the GPU's NVML
    index too, which the runner's memory trace needs (NVML ignores CUDA_VISIBLE_DEVICES). threads: a
    CPU worker's share of the node.
    """
    if not gpu_ids:
        env = {"CUDA_VISIBLE_DEVICES": "", "ARENA_DEVICE": "cpu", "ARENA_PLACED_DEVICE": "cpu"}
        return {**env, distributed.ENV_THREADS: str(threads)} if threads else env
    index = str(gpu_ids[0])
    return {"CUDA_VISIBLE_DEVICES": index, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "ARENA_DEVICE": "cuda:0",
            "ARENA_PLACED_DEVICE": f"cuda:{index}", "ARENA_NVML_INDEX": index}


@dataclass(frozen=True)
class Place:
    """Where one rank is: its node's address, its rendezvous port there, its process's environment."""

    host: str
    port: int
    env: dict[str, str]
    interface: Optional[str]  # the network interface holding host, for gloo when the ranks span nodes


def node_address(ray: Any) -> str:
    """This node's address as the cluster knows it (`ray start --node-ip-address`), the one other nodes reach.

    ray.util.get_node_ip_address() in a worker answers with the interface of the default route instead,
    which is another one on a node with several (ray-project/ray#38852).
    """
    node_id = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == node_id and node.get("NodeManagerAddress"):
            return node["NodeManagerAddress"]
    return ray.util.get_node_ip_address()


def _interface(address: str) -> Optional[str]:
    for name, addresses in psutil.net_if_addrs().items():
        if any(entry.address == address for entry in addresses):
            return name
    return None


def _place(exclude: tuple[int, ...], threads: Optional[int]) -> Place:
    """This actor's rank's place: run inside the actor, on the node Ray put it."""
    import ray

    host = node_address(ray)
    port = distributed.free_ports(1, ANY_INTERFACE, exclude)[0]
    return Place(host, port, device_env(ray.get_gpu_ids(), threads), _interface(host))


class GroupRank:
    """Rank r >= 1 of a run on Ray, in bundle r of the run's group, owned by rank 0's actor (it ends with it)."""

    def place(self, exclude: tuple[int, ...], threads: Optional[int]) -> Place:
        """This rank's node address, a port free there (none of exclude), its device."""
        return _place(exclude, threads)

    def run(self, run_id: int, rank: int, db_url: str, env: dict[str, str]) -> tuple[int, float, str]:
        """Start `python -m engine.runner RUN_ID --rank R --db URL`, wait for it; its exit code, when it ended (wall
        clock) and its output's end.

        Its output goes to a file on this node, not to the run's log (which is on rank 0's): rank 0's actor
        adds its end there when it ends. Killed with this actor, the process sees its parent go and exits.
        """
        with tempfile.TemporaryFile() as output:
            process = subprocess.Popen(
                [sys.executable, "-m", RUNNER_MODULE, str(run_id), "--db", absolute_db_url(db_url), "--rank", str(rank)],
                cwd=PROJECT_ROOT, env={**child_env(), **env}, stdin=subprocess.DEVNULL, stdout=output,
                stderr=subprocess.STDOUT)
            code = process.wait()
            ended_at = time.time()  # rank 0 names a rank that ended before its own error as the run's cause
            output.seek(max(0, output.seek(0, os.SEEK_END) - OUTPUT_TAIL_BYTES))
            return code, ended_at, output.read().decode(errors="replace")


class GroupLead:
    """Rank 0 of a run on Ray, in bundle 0 of its group: starts the other ranks, runs the runner, removes the group."""

    def run(self, run_id: int, db_url: str, group: Any, workers: int, one: dict[str, float],
            threads: Optional[int]) -> int:
        """Place every rank, start them and the runner, tell the runner how the others end; the runner's exit
        code (-1 when there was nothing to start). Ends with the group removed, this actor with it."""
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        sessions = make_sessionmaker(db_url)
        peers: list = []
        exits_dir = tempfile.mkdtemp(prefix=f"arena-run-{run_id}-ranks-")
        try:
            with sessions.begin() as s:
                row = queries.get_run(s, run_id)
                if row is None or row.status != QUEUED:
                    return -1  # cancelled or deleted while it waited in Ray's queue: nothing to start
            peers = [ray.remote(GroupRank).options(
                num_cpus=one["CPU"], num_gpus=one.get("GPU", 0), max_restarts=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=rank),
            ).remote() for rank in range(1, workers)]
            try:
                places = _gather(ray, peers, _place((), threads), threads)
            except Exception as exc:  # an actor died or never started: say so rather than wait for ever
                with sessions.begin() as s:
                    queries.fail_run(s, run_id, f"cannot be placed: its ranks' Ray actors did not report where they "
                                                f"are within {ADDRESS_TIMEOUT_S:g} s: {type(exc).__name__}: {exc}")
                return -1
            envs = rank_envs(places)
            exits = os.path.join(exits_dir, "exits.json")
            devices = ",".join(place.env["ARENA_PLACED_DEVICE"] for place in places)
            runner = start_runner(sessions, run_id, db_url, extra_env={
                **envs[0], distributed.ENV_EXITS: exits, "ARENA_PLACED_DEVICE": devices})
            running = {peer.run.remote(run_id, rank, db_url, envs[rank]): rank
                       for rank, peer in enumerate(peers, start=1)}
            log = run_log_path(absolute_db_url(db_url), run_id)
            while runner.poll() is None:
                if not running:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        runner.wait(distributed.WATCH_INTERVAL_S)
                    continue
                done, _ = ray.wait(list(running), num_returns=len(running), timeout=distributed.WATCH_INTERVAL_S)
                for ref in done:
                    rank = running.pop(ref)
                    ended, ended_at, output = _outcome(ray, ref)
                    _log_output(log, rank, places[rank].host, ended, output)
                    distributed.record_exit(exits, rank, ended, ended_at)  # the runner fails the run unless 0
            return runner.returncode
        finally:
            for peer in peers:
                with contextlib.suppress(Exception):
                    ray.kill(peer, no_restart=True)
            shutil.rmtree(exits_dir, ignore_errors=True)
            sessions.kw["bind"].dispose()
            # Frees every bundle in Ray's accounting and ends the actors in them, this one too.
            ray.util.remove_placement_group(group)
            ray.actor.exit_actor()


def _gather(ray: Any, peers: list, lead: Place, threads: Optional[int]) -> list[Place]:
    """Every rank's place, rank 0's first. Ranks on one node draw their ports apart: a clash is drawn again."""
    places = {0: lead}
    waiting = dict(enumerate(peers, start=1))
    deadline = time.monotonic() + ADDRESS_TIMEOUT_S
    while waiting:
        taken = tuple(place.port for place in places.values())
        asked = {rank: peer.place.remote(taken, threads) for rank, peer in waiting.items()}
        answers = ray.get(list(asked.values()), timeout=max(1.0, deadline - time.monotonic()))
        for rank, place in zip(asked, answers):
            if all((place.host, place.port) != (other.host, other.port) for other in places.values()):
                places[rank] = place
                del waiting[rank]
    return [places[rank] for rank in range(len(places))]


def rank_envs(places: list[Place]) -> list[dict[str, str]]:
    """Each rank's environment: its device, and every rank's address (rank 0's first)."""
    hosts = [place.host for place in places]
    common = {distributed.ENV_WORLD: str(len(places)), distributed.ENV_HOSTS: ",".join(hosts),
              distributed.ENV_PORTS: ",".join(str(place.port) for place in places)}
    envs = []
    for rank, place in enumerate(places):
        env = {**place.env, **common, distributed.ENV_RANK: str(rank)}
        if len(set(hosts)) > 1 and place.interface and "GLOO_SOCKET_IFNAME" not in os.environ:
            # Across nodes gloo must listen where the others reach it; left to itself it takes the interface
            # the hostname resolves to, which is often loopback (127.0.1.1 in /etc/hosts).
            env["GLOO_SOCKET_IFNAME"] = place.interface
        envs.append(env)
    return envs


def _outcome(ray: Any, ref: Any) -> tuple[Union[int, str], float, str]:
    """How a rank ended, when, and its output: its process's exit code, or words when its actor (or node) was lost
    (then the time Ray told, which is later than the loss)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayActorError as exc:
        return f"was lost with its Ray actor ({type(exc).__name__}: its process or its node died)", time.time(), ""
    except ray.exceptions.RayError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        return f"was lost to Ray ({type(exc).__name__}: {first})", time.time(), ""


def _log_output(log: Path, rank: int, host: str, ended: Union[int, str], output: str) -> None:
    """Add a rank's output to the run's log (on rank 0's node), under a line saying whose it is and how it ended."""
    with contextlib.suppress(OSError), open(log, "a", encoding="utf-8") as log_file:
        log_file.write(f"---- worker rank {rank} on {host} {distributed.exit_words(ended)}; its output "
                       f"(the last {OUTPUT_TAIL_BYTES // 1000} kB at most):\n{output}")
        if output and not output.endswith("\n"):
            log_file.write("\n")


def submit(ray: Any, name: str, namespace: str, run_id: int, db_url: str, one: dict[str, float], workers: int,
           strategy: str, threads: Optional[int]) -> None:
    """Reserve the run's group and start rank 0's actor in bundle 0 (it waits there until Ray has placed the group).

    ValueError when rank 0's actor exists already; a group of this name that exists already means the run was
    submitted before (a group Ray lost with its actor, the executor removes first): nothing is done.
    """
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    try:
        group = ray.util.placement_group([dict(one) for _ in range(workers)], strategy=strategy, name=name,
                                         lifetime="detached")  # not the scheduler's: the run outlives the dashboard
    except ray.exceptions.RaySystemError as exc:
        if "already exists" in str(exc):
            return
        raise
    lead = ray.remote(GroupLead).options(
        name=name, namespace=namespace, lifetime="detached", max_restarts=0, num_cpus=one["CPU"],
        num_gpus=one.get("GPU", 0),
        scheduling_strategy=PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0),
    ).remote()
    lead.run.remote(run_id, db_url, group, workers, one, threads)


def remove(ray: Any, name: str) -> bool:
    """Remove the run's group if it exists (Ray ends every actor in it); whether there was one."""
    try:
        group = ray.util.get_placement_group(name)
    except ValueError:
        return False
    ray.util.remove_placement_group(group)
    return True


def remove_ended(ray: Any, sessions: sessionmaker[Session], prefix: str) -> list[int]:
    """Remove the groups (named prefix + run id) of runs that ended or were deleted; their run ids.

    Rank 0's actor removes its group when the runner exits; this catches the group of a run whose actor
    died first (its node lost, say), which Ray would otherwise keep reserved, and re-place, for ever.
    """
    named = {}
    for entry in ray.util.placement_group_table().values():
        name = entry.get("name") or ""
        if entry.get("state") != "REMOVED" and name.startswith(prefix) and name[len(prefix):].isdigit():
            named[int(name[len(prefix):])] = name
    if not named:
        return []
    with sessions.begin() as s:
        ended = [run_id for run_id in named
                 if (run := queries.get_run(s, run_id)) is None or run.status not in ACTIVE_STATUSES]
    return [run_id for run_id in ended if remove(ray, named[run_id])]
