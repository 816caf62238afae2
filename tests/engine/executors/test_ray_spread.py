"""ARENA_RAY_PLACEMENT=spread on a Ray cluster of two nodes: a 2-worker run's ranks land on different nodes and meet.

Both nodes are raylets on this machine (Ray's own test cluster, ray.cluster_utils.Cluster, 1 CPU each), so the
ranks are on distinct Ray nodes with distinct actors and processes, reached through the node address Ray
gives each; they share one IP, so this does not test two machines' network (gloo's interface choice across
machines, firewalls). tests/engine/executors/test_ray.py tests groups on a one-node cluster.
"""
from __future__ import annotations

import pytest

from db import queries
from db.models import FINISHED, QUEUED, RUNNING
from db.session import make_sessionmaker
from engine.executors import ray as arena_ray
from engine.executors.ray import RayExecutor, actor_name
from engine.launch import queue_runs
from engine.scheduler import Scheduler
from engine.spec import RunSpec
from tests.conftest import NO_CALIBRATION, wait_until

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """A Ray cluster of two 1-CPU nodes on this machine; this process connected to it the way the scheduler connects."""
    if ray.is_initialized():
        ray.shutdown()  # another module's cluster: the executor connects once per process
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    patch.setenv("ARENA_HOME", str(tmp_path_factory.mktemp("ray-spread-home")))  # the nodes' runners log here
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": 80_000_000, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1, object_store_memory=80_000_000)
        cluster.wait_for_nodes()
        patch.setenv("ARENA_RAY_ADDRESS", cluster.address)
        arena_ray.connect()
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        patch.undo()


def test_a_spread_two_worker_run_puts_one_rank_on_each_node_and_they_meet_at_rank_0s_address(two_nodes, arena_db,
                                                                                            monkeypatch):
    monkeypatch.setenv("ARENA_EXECUTOR", "ray")
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    monkeypatch.setenv("ARENA_RAY_PLACEMENT", "spread")
    sessions = make_sessionmaker(arena_db)
    spec = RunSpec(framework="torch", device="cpu", model="mlp", dataset="digits", epochs=1, max_steps_per_epoch=20,
                   warmup_steps=2, sample_hz=0, layer_stats=False, workers=2, batch_size=64, **NO_CALIBRATION)
    (run_id,) = queue_runs(sessions, [spec])
    scheduler = Scheduler(sessions, arena_db, RayExecutor(sessions, arena_db), interval_s=0.5).start()
    try:
        run = wait_until(lambda: (r := _run(sessions, run_id)).status not in (QUEUED, RUNNING) and r, 240,
                         "the spread run to end")
    finally:
        scheduler.stop()
    assert run.status == FINISHED, run.error
    assert [rank["rank"] for rank in run.summary["ranks"]] == [0, 1]
    assert all(rank["steps"] > 0 for rank in run.summary["ranks"])  # each rank trained and recorded its steps
    (group,) = [entry for entry in ray.util.placement_group_table().values()
                if entry["name"] == actor_name(arena_db, run_id)]
    assert group["strategy"] == "SPREAD"
    assert len(set(group["bundles_to_node_id"].values())) == 2  # one bundle, so one rank, on each node
    wait_until(lambda: all(entry["state"] == "REMOVED" for entry in ray.util.placement_group_table().values()
                           if entry["name"] == actor_name(arena_db, run_id)), 60, "the group to be removed")
    wait_until(lambda: ray.available_resources().get("CPU") == 2, 60, "Ray to get both nodes' CPUs back")


def _run(sessions, run_id: int):
    with sessions.begin() as s:
        return queries.get_run(s, run_id)
