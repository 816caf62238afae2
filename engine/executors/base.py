"""The executor interface: where queued runs go to execute, asked by the scheduler that holds the lease.

Like concurrent.futures.Executor (submit/shutdown) or Ray's job client (submit_job/stop_job), an
executor takes work and reports what it took; the scheduler keeps the lease, reaps lost runs and
reads the queue, and never asks which executor it has. Every executor ends in the same place: one
runner process per run (engine.processes.start_runner), which claims the run and records it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from sqlalchemy.orm import Session, sessionmaker

ENV_EXECUTOR = "ARENA_EXECUTOR"


@dataclass(frozen=True)
class Placement:
    """A run an executor took: where it went and the environment its runner gets (empty when a cluster decides)."""

    run_id: int
    device: str  # "cpu", "cuda:<NVML index>", or a cluster's queue ("ray:gpu") until the runner starts
    env: dict[str, str]


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
        """Put runs it took that will never get a runner back in the queue; their ids."""

    @abstractmethod
    def submit(self, queued: list[tuple[int, str]]) -> list[Placement]:
        """Take what it can of the queued (run id, requested device) pairs, oldest first; what it took."""

    @abstractmethod
    def withdraw(self, run_ids: list[int]) -> None:
        """Take cancelled runs out of this executor's queue (a started runner stops by the cancel request)."""
