"""The executor interface: where queued work goes to execute, asked by the scheduler that holds the lease.

Like concurrent.futures.Executor (submit/shutdown) or Ray's job client (submit_job/stop_job), an
executor takes work and reports what it took; the scheduler keeps the lease, reaps lost work and
reads the queue, and never asks which executor it has. The queue holds two kinds of work, in the
order they were queued: runs, and deployment jobs (issue 17) that measure a finished run's exported
models. Every executor ends in the same place: one process per item (engine.processes.start_runner,
start_deployment), which claims its row and records what it does.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Optional

from sqlalchemy.orm import Session, sessionmaker

ENV_EXECUTOR = "ARENA_EXECUTOR"
RUN, DEPLOYMENT = "run", "deployment"


@dataclass(frozen=True)
class Queued:
    """One item of the queue: a run or a deployment job, the device it asks for and how many workers it needs."""

    id: int
    device: str  # "auto", "cpu" or "cuda:N"; a deployment job asks for "cpu" (every runtime it times runs there)
    kind: str = RUN
    workers: int = 1  # a run's data-parallel processes (spec.workers), each on a device of its own; 1 for a job


@dataclass(frozen=True)
class Placement:
    """Work an executor took: where it went and the environment its process gets (empty when a cluster decides)."""

    id: int  # the run's id, or the deployment job's (kind says which)
    device: str  # "cpu", "cuda:<NVML index>", or a cluster's queue ("ray:gpu") until the process starts
    env: dict[str, str]
    kind: str = RUN


def placed_devices(placed_device: Optional[str]) -> list[str]:
    """The devices of a run's workers in rank order, from Run.placed_device: "cpu,cpu" -> ["cpu", "cpu"]; [] if
    unplaced. Whatever counts load per device counts each one: a 2-worker run holds two places."""
    return [device for device in (placed_device or "").split(",") if device]


def device_label(placed_device: Optional[str]) -> str:
    """A placement for screens: "cuda:0" as it is, "2 × CPU" for "cpu,cpu", "cuda:0 + cuda:1" for two GPUs."""
    devices = placed_devices(placed_device)
    if len(devices) <= 1:
        return placed_device or ""
    if len(set(devices)) == 1:
        return f"{len(devices)} × {'CPU' if devices[0] == 'cpu' else devices[0]}"
    return " + ".join(devices)


class Executor(ABC):
    """Runs queued runs somewhere; one instance per database (sessions and URL given at construction).

    submit() is asked on every tick the scheduler holds the lease, with an empty queue too, so a bad
    setting is reported while nothing waits; a run an executor can never execute fails saying why.
    """

    name: ClassVar[str]  # the ARENA_EXECUTOR value that picks it
    # Run.placed_device of a run waiting in this executor's own queue with no process yet (none: placed
    # runs get their process at once). A cancelled run placed on one of these is withdrawn from here.
    queue_placements: ClassVar[tuple[str, ...]] = ()

    def __init__(self, sessions: sessionmaker[Session], db_url: str) -> None:
        self._sessions = sessions
        self._db_url = db_url

    @abstractmethod
    def requeue_lost(self) -> list[int]:
        """Put work it took that will never get a process back in the queue; the runs' ids."""

    @abstractmethod
    def submit(self, queued: list[Queued]) -> list[Placement]:
        """Take what it can of the queue (runs and deployment jobs, oldest first); what it took."""

    @abstractmethod
    def withdraw(self, run_ids: list[int]) -> None:
        """Take cancelled runs out of this executor's queue (a started runner stops by the cancel request)."""
