"""Executor registry: ARENA_EXECUTOR names where queued runs execute; unknown names fail loudly.

local (the default): runner processes on this machine's GPUs and CPU (engine/executors/local.py).
ray: a Ray cluster places each run on a node with the resources it asks for (engine/executors/ray.py).
Both implement engine/executors/base.py's Executor; importing either imports no Ray.
"""
from __future__ import annotations

import os
from typing import Optional

from sqlalchemy.orm import Session, sessionmaker

from engine.executors.base import DEPLOYMENT, ENV_EXECUTOR, RUN, Executor, Placement, Queued
from engine.executors.local import LocalExecutor
from engine.executors.ray import RayExecutor

_REGISTRY: dict[str, type[Executor]] = {executor.name: executor for executor in (LocalExecutor, RayExecutor)}
LOCAL, RAY = LocalExecutor.name, RayExecutor.name

__all__ = ["DEPLOYMENT", "ENV_EXECUTOR", "LOCAL", "RAY", "RUN", "Executor", "Placement", "Queued",
           "configured_executor", "executor_name", "get_executor", "queue_holder"]


def _expected() -> str:
    return " or ".join(_REGISTRY)


def executor_name() -> str:
    """ARENA_EXECUTOR: local (default) or ray; ValueError naming any other value."""
    raw = os.environ.get(ENV_EXECUTOR, LOCAL).strip().lower() or LOCAL
    if raw not in _REGISTRY:
        raise ValueError(f"{ENV_EXECUTOR}={raw!r}: expected {_expected()}")
    return raw


def get_executor(name: str, sessions: sessionmaker[Session], db_url: str) -> Executor:
    """The executor registered under name, for this database; ValueError naming an unknown one."""
    if name not in _REGISTRY:
        raise ValueError(f"executor={name!r}: expected {_expected()}")
    return _REGISTRY[name](sessions, db_url)


def configured_executor(sessions: sessionmaker[Session], db_url: str) -> Executor:
    """The executor ARENA_EXECUTOR names (local by default), for this database."""
    return get_executor(executor_name(), sessions, db_url)


def queue_holder(placed_device: Optional[str]) -> Optional[str]:
    """The executor in whose own queue a run placed on this device waits to start ("ray" for "ray:gpu"), else None."""
    return next((name for name, executor in _REGISTRY.items() if placed_device in executor.queue_placements), None)
