"""engine/executors/__init__.py: a name picks an executor, an unknown one fails naming it; the scheduler only asks."""
from __future__ import annotations

import pytest

from db import queries
from db.models import CANCELLED
from db.session import make_sessionmaker
from engine.executors import (
    ENV_EXECUTOR, Executor, Placement, Queued, configured_executor, executor_name, get_executor, queue_holder,
)
from engine.executors.local import LocalExecutor
from engine.executors.ray import RAY_CPU, RAY_GPU, RayExecutor
from engine.launch import cancel_runs, queue_runs
from engine.scheduler import Scheduler
from engine.spec import RunSpec

SPEC = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=1)
ON_CPU = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=1, device="cpu")


@pytest.mark.parametrize("name, executor_class", [("local", LocalExecutor), ("ray", RayExecutor)])
def test_a_name_picks_its_executor_without_connecting_anywhere(arena_db, name, executor_class):
    executor = get_executor(name, make_sessionmaker(arena_db), arena_db)
    assert type(executor) is executor_class and isinstance(executor, Executor) and executor.name == name


@pytest.mark.parametrize("setting, name", [(None, "local"), ("", "local"), ("local", "local"), (" Ray ", "ray")])
def test_arena_executor_names_the_executor(arena_db, monkeypatch, setting, name):
    if setting is None:
        monkeypatch.delenv(ENV_EXECUTOR, raising=False)
    else:
        monkeypatch.setenv(ENV_EXECUTOR, setting)
    assert executor_name() == name
    assert configured_executor(make_sessionmaker(arena_db), arena_db).name == name


def test_an_unknown_executor_fails_loudly_naming_it(arena_db, monkeypatch):
    with pytest.raises(ValueError, match="executor='kubernetes': expected local or ray"):
        get_executor("kubernetes", make_sessionmaker(arena_db), arena_db)
    monkeypatch.setenv(ENV_EXECUTOR, "kubernetes")
    with pytest.raises(ValueError, match="ARENA_EXECUTOR='kubernetes': expected local or ray"):
        configured_executor(make_sessionmaker(arena_db), arena_db)


def test_a_placement_names_the_executor_whose_queue_holds_the_run():
    assert queue_holder(RAY_GPU) == queue_holder(RAY_CPU) == "ray"
    assert queue_holder("cpu") is queue_holder("cuda:0") is queue_holder(None) is None  # local runs never wait placed


class Recording(Executor):
    """Takes every queued run as placed on "somewhere", recording what the scheduler asked."""

    name = "recording"

    def __init__(self, sessions, db_url) -> None:
        super().__init__(sessions, db_url)
        self.calls: list[tuple[str, object]] = []

    def requeue_lost(self) -> list[int]:
        self.calls.append(("requeue_lost", None))
        return []

    def submit(self, queued: list[Queued]) -> list[Placement]:
        self.calls.append(("submit", [(item.id, item.device) for item in queued]))
        with self._sessions.begin() as s:
            return [Placement(item.id, "somewhere", {}) for item in queued
                    if queries.place_run(s, item.id, "somewhere", hostname=None)]

    def withdraw(self, run_ids: list[int]) -> None:
        self.calls.append(("withdraw", list(run_ids)))


def test_the_scheduler_hands_the_queue_to_its_executor_while_it_holds_the_lease(arena_db):
    sessions = make_sessionmaker(arena_db)
    first, second = queue_runs(sessions, [SPEC, ON_CPU])
    holder, other = Recording(sessions, arena_db), Recording(sessions, arena_db)
    scheduler, waiting = Scheduler(sessions, arena_db, holder), Scheduler(sessions, arena_db, other)
    assert [(p.id, p.device) for p in scheduler.tick()] == [(first, "somewhere"), (second, "somewhere")]
    assert scheduler.tick() == [] and waiting.tick() == []
    assert holder.calls == [("requeue_lost", None), ("submit", [(first, "auto"), (second, "cpu")]),
                            ("requeue_lost", None), ("submit", [])]  # asked every tick, an empty queue too
    assert other.calls == []  # no lease, no questions


def test_cancel_withdraws_a_waiting_run_from_the_queue_its_placement_names(arena_db, monkeypatch):
    sessions = make_sessionmaker(arena_db)
    in_ray, placed_here = queue_runs(sessions, [SPEC, SPEC])
    with sessions.begin() as s:
        assert queries.place_run(s, in_ray, RAY_CPU, hostname=None)
    withdrawn = []
    monkeypatch.setattr(RayExecutor, "withdraw", lambda self, run_ids: withdrawn.append(run_ids))
    monkeypatch.setattr(LocalExecutor, "withdraw", lambda self, run_ids: pytest.fail("nothing waits in its queue"))
    assert cancel_runs(sessions, [in_ray, placed_here], via="test") == {in_ray: "cancelled", placed_here: "cancelled"}
    assert withdrawn == [[in_ray]]
    with sessions.begin() as s:
        assert {queries.get_run(s, run_id).status for run_id in (in_ray, placed_here)} == {CANCELLED}
