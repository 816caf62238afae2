"""The Ray executor: queued runs go to a Ray cluster, which puts each on a machine with the resources it asks for.

Chosen by ARENA_EXECUTOR=ray (the default, local, starts runner processes on this machine; see
engine/executors/local.py). The scheduler holding the database's lease submits every queued run as a
detached Ray actor named after the database and the run. The actor asks for what the run needs
(num_gpus=1 for a GPU run, ARENA_RAY_CPUS_PER_RUN CPUs otherwise), so Ray waits for and chooses a
machine with a free GPU and sets CUDA_VISIBLE_DEVICES; there it starts the same runner process a
local run gets (engine.processes.start_runner: `python -m engine.runner RUN_ID --db URL`), in its own
process, so TensorFlow and PyTorch never share one, and ends with it. Detached: the run goes on when
the dashboard that submitted it stops.

Everything else is the runner's, as locally: it claims the run, beats its heartbeat into the
database, reads cancel requests, records; a reader marks the run lost when its heartbeat stops.
Arena's code travels with the submission (Ray's working_dir), so workers need only the Python
packages of requirements.txt; the database must be one every worker reaches (PostgreSQL).

A run waiting in Ray's queue stays queued in Arena, placed on "ray:gpu" or "ray:cpu" with no process
yet; on every tick the executor checks that its actor still exists and puts the run back in the queue
if Ray lost it. Actor names are unique per run and database, so a run is never submitted twice.

A multi-worker run (spec.workers = N) reserves a placement group of N bundles, one worker's share each (a GPU,
or ARENA_RAY_CPUS_PER_RUN CPUs), packed on as few nodes as possible or, with ARENA_RAY_PLACEMENT=spread, one
per node where possible; Ray places it whole or keeps it waiting. One actor per rank, each in its bundle;
rank 0's hands its address to the others (engine/executors/ray_groups.py). A group the cluster's nodes can
never hold fails the run at once, naming the numbers. A run whose workers share one process (TensorFlow's
MirroredStrategy) is one actor asking for every worker's share, so Ray gives it one node with all of them.

A deployment job goes the same way as a CPU run, asking for as many CPUs as its runtimes' threads
(its setting), and its actor starts `python -m engine.deploy.job JOB_ID --db URL` on that node. Ray
shares a node between actors whose CPUs fit, so the job itself waits, before it measures, until no
run is active on its node (engine/deploy/job.py): its figures are never taken beside training.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from dataclasses import dataclass
from typing import Any, Optional

from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from db import deployments, queries
from db.models import FAILED, QUEUED
from db.session import make_sessionmaker
from engine import PROJECT_ROOT
from engine.executors import ray_groups
from engine.executors.base import DEPLOYMENT, ENV_EXECUTOR, RUN, Executor, Placement, Queued
from engine.processes import start_deployment, start_runner

ENV_RAY_ADDRESS = "ARENA_RAY_ADDRESS"
ENV_RAY_CPUS = "ARENA_RAY_CPUS_PER_RUN"
NAMESPACE = "arena"
# Run.placed_device of a run handed to Ray that has no process yet; the runner replaces it with its device.
RAY_GPU, RAY_CPU = "ray:gpu", "ray:cpu"
RAY_PLACEMENTS = (RAY_GPU, RAY_CPU)
CONNECT_TIMEOUT_S = 3.0
# What Ray need not ship to workers: tests, pictures, local databases (it leaves out .git and .venv itself).
SHIP_EXCLUDES = ["tests", "bench", "docs", "var", "screenshots", "**/__pycache__", "*.pyc",
                 "*.db", "*.db-wal", "*.db-shm", ".pytest_cache"]


def ray_address() -> str:
    """ARENA_RAY_ADDRESS, else Ray's own RAY_ADDRESS, else "auto" (a cluster started on this machine)."""
    return os.environ.get(ENV_RAY_ADDRESS) or os.environ.get("RAY_ADDRESS") or "auto"


def cpus_per_run() -> float:
    """CPUs a run asks Ray for (ARENA_RAY_CPUS_PER_RUN, default 1): its training threads' share of a node."""
    raw = os.environ.get(ENV_RAY_CPUS, "1")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{ENV_RAY_CPUS}={raw!r}: expected a number of CPUs > 0")
    return value


@dataclass(frozen=True)
class Request:
    """What one run asks Ray for."""

    placement: str  # RAY_GPU or RAY_CPU
    num_cpus: float
    num_gpus: int


def request_for(device: str, cluster_gpus: float, cpus: float, workers: int = 1) -> Request | str:
    """The resources for a run's device setting and workers, or why it cannot run on Ray.

    "auto" takes a GPU per worker when the cluster has any (waiting for them to be free), else CPUs;
    "cpu" takes CPUs (`cpus` per worker); a pin to one GPU index ("cuda:1") names a device of one machine,
    which a cluster cannot honour.
    """
    if device == "cpu" or (device == "auto" and cluster_gpus == 0):
        return Request(RAY_CPU, cpus * workers, 0)
    if device == "auto":
        return Request(RAY_GPU, cpus * workers, workers)
    return (f"device {device!r} pins a GPU of one machine; with the Ray executor choose auto (a free GPU "
            f"anywhere in the cluster) or cpu")


def actor_name(db_url: str, run_id: int, kind: str = RUN) -> str:
    """One name per run (or job) and database: Ray refuses a second actor of that name, so none is submitted twice."""
    canonical = make_url(db_url).render_as_string(hide_password=False)  # the same for a URL and its engine's
    database = hashlib.sha256(canonical.encode()).hexdigest()[:12]
    return f"arena-{'deploy' if kind == DEPLOYMENT else 'run'}-{database}-{run_id}"


class WorkActor:
    """Lives on the node Ray chose for one run or deployment job, holding its resources while its process works."""

    def run(self, kind: str, item_id: int, db_url: str, threads: Optional[int] = None) -> int:
        """Start the run's runner (or the job's process) as a local one gets it, wait for it, end this actor;
        the process's exit code, -1 when there was nothing to start. threads: each CPU worker's, in a
        multi-worker run held by one process (MirroredStrategy)."""
        import ray

        sessions = make_sessionmaker(db_url)
        job = kind == DEPLOYMENT
        try:
            with sessions.begin() as s:
                row = deployments.get(s, item_id) if job else queries.get_run(s, item_id)
                if row is None or row.status != QUEUED:
                    return -1  # cancelled or deleted while it waited in Ray's queue: nothing to start
                workers = 1 if job else int((row.spec or {}).get("workers", 1))
            start = start_deployment if job else start_runner
            return start(sessions, item_id, db_url, extra_env=runner_env(ray.get_gpu_ids(), workers, threads)).wait()
        finally:
            sessions.kw["bind"].dispose()
            ray.actor.exit_actor()  # frees its GPU/CPUs in Ray's accounting


def runner_env(gpu_ids: list, workers: int = 1, threads: Optional[int] = None) -> dict[str, str]:
    """The placement a runner sees, from the GPUs Ray assigned (ray_groups.device_env).

    A run of several workers in this one process (MirroredStrategy) also gets every worker's environment
    (ARENA_WORKER_ENVS), which it merges: one GPU each, or the CPU with `threads` threads each.
    """
    if workers > 1:
        ranks = []
        for rank in range(workers):
            if gpu_ids:
                index = str(gpu_ids[rank])
                ranks.append({"CUDA_VISIBLE_DEVICES": index, "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "ARENA_DEVICE": "cuda:0",
                              "ARENA_NVML_INDEX": index})
            else:
                ranks.append({"CUDA_VISIBLE_DEVICES": "", "ARENA_DEVICE": "cpu", "ARENA_THREADS": str(threads or 1)})
        devices = [f"cuda:{index}" for index in gpu_ids[:workers]] or ["cpu"] * workers
        return {**ranks[0], "ARENA_PLACED_DEVICE": ",".join(devices), "ARENA_WORKER_ENVS": json.dumps(ranks)}
    return ray_groups.device_env(gpu_ids)


_connect_lock = threading.Lock()


def connect(address: Optional[str] = None) -> Any:
    """This process's connection to the Ray cluster (made once); the ray module. RuntimeError saying why not."""
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(f"{ENV_EXECUTOR}=ray but Ray is not installed here ({exc}); pip install 'ray==2.*'") from exc
    with _connect_lock:
        if not ray.is_initialized():
            target = address or ray_address()
            _check_reachable(target)
            try:
                ray.init(address=target, namespace=NAMESPACE, log_to_driver=False, logging_level="WARNING",
                         runtime_env={"working_dir": str(PROJECT_ROOT), "excludes": SHIP_EXCLUDES})
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise RuntimeError(f"cannot reach the Ray cluster at {target!r} ({ENV_RAY_ADDRESS}): {exc}. "
                                   f"Start one with `ray start --head` or set {ENV_RAY_ADDRESS}=host:6379") from exc
    return ray


def _check_reachable(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """RuntimeError naming a host:port nothing answers on: ray.init would wait minutes for it."""
    if address == "auto":
        return  # Ray finds the cluster started on this machine, or says at once that there is none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    # ASCII digits of a port number: "²".isdigit() is true, and int("²") fails.
    if not host or not (port.isascii() and port.isdigit() and len(port) <= 5 and 0 < int(port) < 65536):
        raise RuntimeError(f"{ENV_RAY_ADDRESS}={address!r}: expected host:port (the head's GCS port, 6379 by "
                           f"default) or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise RuntimeError(f"cannot reach the Ray cluster at {address!r} ({ENV_RAY_ADDRESS}): {exc}. Start one "
                           f"with `ray start --head` or set {ENV_RAY_ADDRESS} to its head's host:port") from exc


class RayExecutor(Executor):
    """Hands queued runs to Ray (see the module docstring); used by the scheduler that holds the lease."""

    name = "ray"
    queue_placements = RAY_PLACEMENTS

    def __init__(self, sessions: sessionmaker[Session], db_url: str, address: Optional[str] = None) -> None:
        """address: the cluster's head (default: ARENA_RAY_ADDRESS, else RAY_ADDRESS, else auto)."""
        super().__init__(sessions, db_url)
        self._address = address

    def requeue_lost(self) -> list[int]:
        """Put runs and jobs Ray lost before they started (their actor is gone) back in the queue; the runs' ids.

        A lost run's placement group goes first, and so does the group of any run that has ended.
        """
        ray = connect(self._address)
        with self._sessions.begin() as s:
            waiting = queries.placed_unstarted(s, RAY_PLACEMENTS)
            waiting_jobs = deployments.placed_unstarted(s, RAY_PLACEMENTS)
        lost = [run_id for run_id in waiting if not _actor_exists(ray, actor_name(self._db_url, run_id))]
        lost_jobs = [job_id for job_id in waiting_jobs
                     if not _actor_exists(ray, actor_name(self._db_url, job_id, DEPLOYMENT))]
        for run_id in lost:
            ray_groups.remove(ray, actor_name(self._db_url, run_id))
        ray_groups.remove_ended(ray, self._sessions, actor_name(self._db_url, 0).removesuffix("0"))
        with self._sessions.begin() as s:
            for job_id in lost_jobs:
                deployments.unplace(s, job_id)
            return [run_id for run_id in lost if queries.unplace(s, run_id)]

    def submit(self, queued: list[Queued]) -> list[Placement]:
        """Submit the queue to Ray as detached actors; each submitted, placed in Ray's queue.

        A run Ray cannot run fails saying why.
        """
        if not queued:
            return []
        sessions, db_url = self._sessions, self._db_url
        ray = connect(self._address)
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        cpus = cpus_per_run()
        strategy = ray_groups.placement_strategy()
        nodes: Optional[list[dict[str, float]]] = None  # the alive nodes' resources, read at the first multi-worker run
        submitted = []
        for item in queued:
            job = item.kind == DEPLOYMENT
            with sessions.begin() as s:
                if job:
                    request = Request(RAY_CPU, float(deployments.get(s, item.id).settings.get("threads", 1)), 0)
                else:
                    request = request_for(item.device, cluster_gpus, cpus, item.workers)
                group = None
                if not isinstance(request, str) and item.workers > 1:
                    if nodes is None:
                        nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
                    if _one_process(s, item.id):  # every worker's device in one process: one actor, one node
                        request = _fits_a_node(nodes, request, item.workers) or request
                    else:  # a process per rank: a placement group, an actor per rank
                        group = ray_groups.bundle(cpus, request.num_gpus > 0)
                        request = ray_groups.never_fits(nodes, group, item.workers) or request
                if isinstance(request, str):
                    queries.fail_run(s, item.id, f"cannot be placed: {request}")
                    continue
                # Conditional on it still waiting unplaced: nothing is ever submitted twice.
                place = deployments.place if job else queries.place_run
                if not place(s, item.id, request.placement, hostname=None):
                    continue
            try:
                if group is not None:
                    ray_groups.submit(ray, actor_name(db_url, item.id), NAMESPACE, item.id, db_url, group, item.workers,
                                      strategy, max(1, int(cpus)))
                else:
                    handle = ray.remote(WorkActor).options(
                        name=actor_name(db_url, item.id, item.kind), namespace=NAMESPACE, lifetime="detached",
                        max_restarts=0, num_cpus=request.num_cpus, num_gpus=request.num_gpus,
                    ).remote()
                    handle.run.remote(item.kind, item.id, db_url, max(1, int(cpus)))
            except ValueError:
                pass  # its actor exists already (a scheduler before this one submitted it): it is on its way
            except Exception as exc:
                why = f"Ray did not take the {item.kind}: {type(exc).__name__}: {exc}"
                with sessions.begin() as s:
                    if job:
                        deployments.end(s, item.id, FAILED, why)
                    else:
                        queries.fail_run(s, item.id, why)
                continue
            submitted.append(Placement(item.id, request.placement, {}, item.kind))
        return submitted

    def withdraw(self, run_ids: list[int]) -> None:
        """Take cancelled runs' actors, and placement groups, out of Ray's queue (a started runner stops by the
        cancel request)."""
        ray = connect(self._address)
        for run_id in run_ids:
            name = actor_name(self._db_url, run_id)
            try:
                ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
            except ValueError:
                pass  # never submitted, or already ended
            ray_groups.remove(ray, name)  # a pending group's actor is not ended by the group's removal: killed above


def _one_process(s: Session, run_id: int) -> bool:
    """Whether a multi-worker run trains in one process holding every worker's device (TensorFlow's MirroredStrategy)."""
    run = queries.get_run(s, run_id)
    return run is not None and (run.spec or {}).get("tf_strategy") == "mirrored"


def _fits_a_node(nodes: list[dict[str, float]], request: Request, workers: int) -> Optional[str]:
    """Why no alive node can ever hold a one-process run's every worker at once; None when one can."""
    kind, needed = ("GPU", request.num_gpus) if request.num_gpus else ("CPU", request.num_cpus)
    largest = max((node.get(kind, 0) for node in nodes), default=0)
    if largest < needed:
        return (f"{workers} workers in one process (MirroredStrategy) need {needed:g} {kind}s on one node and the "
                f"largest node has {largest:g}")
    return None


def _actor_exists(ray: Any, name: str) -> bool:
    try:
        ray.get_actor(name, namespace=NAMESPACE)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class RayNode:
    """One node of the cluster as Ray reports it."""

    node_id: str
    hostname: str
    address: str
    alive: bool
    cpus: float
    gpus: float
    cpus_free: Optional[float]
    gpus_free: Optional[float]
    gpu_type: Optional[str]
    memory_bytes: float


def cluster_nodes(address: Optional[str] = None) -> list[RayNode]:
    """The cluster's nodes with their CPUs and GPUs, total and free (free unknown: None)."""
    ray = connect(address)
    try:
        from ray._private import state  # Ray's own per-node accounting; no public call gives it without the dashboard

        free = state.available_resources_per_node()
    except Exception:
        free = {}
    nodes = []
    for node in ray.nodes():
        resources = node.get("Resources", {})
        available = free.get(node["NodeID"])
        types = [key.split(":", 1)[1] for key in resources if key.startswith("accelerator_type:")]
        nodes.append(RayNode(
            node_id=node["NodeID"], hostname=node.get("NodeManagerHostname", "?"),
            address=node.get("NodeManagerAddress", "?"), alive=bool(node.get("Alive")),
            cpus=resources.get("CPU", 0.0), gpus=resources.get("GPU", 0.0),
            cpus_free=None if available is None else available.get("CPU", 0.0),
            gpus_free=None if available is None else available.get("GPU", 0.0),
            gpu_type=types[0] if types else None, memory_bytes=resources.get("memory", 0.0),
        ))
    return sorted(nodes, key=lambda n: (not n.alive, n.hostname, n.address))

