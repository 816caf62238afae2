"""engine/executors/ray_groups.py's rules without a cluster: the strategy setting, the bundles, whether a group can
ever be placed, each rank's environment, and how rank 0 learns of ranks another process started
(engine/distributed.py's side of the hand-off). tests/engine/executors/test_ray.py runs groups on a real cluster."""
from __future__ import annotations

import json
import os
import time

import pytest

from engine import distributed
from engine.distributed import (RemoteRank, Workers, exit_words, lost_ranks, record_exit, start_workers,
                                stop_workers)
from engine.executors.ray_groups import Place, bundle, device_env, never_fits, placement_strategy, rank_envs


def test_placement_is_pack_unless_spread_is_asked_for_and_a_bad_value_is_named(monkeypatch):
    monkeypatch.delenv("ARENA_RAY_PLACEMENT", raising=False)
    assert placement_strategy() == "PACK"
    monkeypatch.setenv("ARENA_RAY_PLACEMENT", " Spread")
    assert placement_strategy() == "SPREAD"
    monkeypatch.setenv("ARENA_RAY_PLACEMENT", "strict_spread")
    with pytest.raises(ValueError, match=r"ARENA_RAY_PLACEMENT='strict_spread': expected pack .* or spread"):
        placement_strategy()


def test_a_bundle_is_one_worker_s_share_and_a_gpu_bundle_keeps_its_cpus():
    assert bundle(1, gpu=False) == {"CPU": 1.0}
    # The actor asks for the runner's CPUs beside its GPU, and an actor's demand must fit inside its bundle.
    assert bundle(2, gpu=True) == {"CPU": 2.0, "GPU": 1.0}


def test_a_group_fits_when_the_bundles_each_node_holds_add_up_to_the_workers():
    one_node = [{"CPU": 2.0}]
    assert never_fits(one_node, {"CPU": 1.0}, 2) is None
    assert never_fits(one_node, {"CPU": 1.0}, 4) == (
        "4 workers need 4 bundles of 1 CPU, one per worker, and the cluster's 1 node(s) hold 2 at most (2 per node)")
    # Spread or packed, a node that cannot hold one bundle holds none: 3 small nodes do not make a big one.
    nodes = [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 4.0}]
    assert never_fits(nodes, {"CPU": 2.0}, 2) is None
    assert never_fits(nodes, {"CPU": 2.0}, 3).endswith("3 node(s) hold 2 at most (0, 0, 2 per node)")
    # A GPU bundle needs both: the second node's 4 GPUs go with 1 CPU.
    gpu_nodes = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 1.0, "GPU": 4.0}]
    assert "bundles of 2 CPU + 1 GPU" in never_fits(gpu_nodes, {"CPU": 2.0, "GPU": 1.0}, 2)
    assert never_fits([], {"CPU": 1.0}, 2).endswith("0 node(s) hold 0 at most (none per node)")


def test_each_rank_s_device_is_the_one_ray_gave_its_own_actor():
    assert device_env([3]) == {"CUDA_VISIBLE_DEVICES": "3", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "ARENA_DEVICE": "cuda:0",
                               "ARENA_PLACED_DEVICE": "cuda:3", "ARENA_NVML_INDEX": "3"}
    assert device_env([], threads=2) == {"CUDA_VISIBLE_DEVICES": "", "ARENA_DEVICE": "cpu",
                                         "ARENA_PLACED_DEVICE": "cpu", "ARENA_THREADS": "2"}
    assert device_env([]) == {"CUDA_VISIBLE_DEVICES": "", "ARENA_DEVICE": "cpu", "ARENA_PLACED_DEVICE": "cpu"}


def test_every_rank_gets_every_rank_s_address_rank_0_s_first(monkeypatch):
    monkeypatch.delenv("GLOO_SOCKET_IFNAME", raising=False)
    cpu = device_env([], threads=1)
    envs = rank_envs([Place("10.0.0.1", 20001, cpu, "eth0"), Place("10.0.0.2", 20002, cpu, "ens5")])
    assert [env["ARENA_RANK"] for env in envs] == ["0", "1"]
    assert {env["ARENA_WORKER_HOSTS"] for env in envs} == {"10.0.0.1,10.0.0.2"}
    assert {env["ARENA_WORKER_PORTS"] for env in envs} == {"20001,20002"}
    # Across nodes each rank's gloo listens on the interface holding its node's address.
    assert [env["GLOO_SOCKET_IFNAME"] for env in envs] == ["eth0", "ens5"]
    one_node = rank_envs([Place("10.0.0.1", 20001, cpu, "eth0"), Place("10.0.0.1", 20002, cpu, "eth0")])
    assert all("GLOO_SOCKET_IFNAME" not in env for env in one_node)  # as a local run: gloo's own choice
    monkeypatch.setenv("ARENA_WORKER_HOSTS", "10.0.0.1,10.0.0.2")
    monkeypatch.setenv("ARENA_WORKER_PORTS", "20001,20002")
    monkeypatch.setenv("ARENA_WORLD_SIZE", "2")
    monkeypatch.setenv("ARENA_RANK", "1")
    workers = distributed.from_env()
    assert workers == Workers(1, 2, (20001, 20002), ("10.0.0.1", "10.0.0.2"))
    assert workers.addresses() == ["10.0.0.1:20001", "10.0.0.2:20002"]  # TF_CONFIG's cluster; PyTorch meets at [0]
    assert Workers(0, 2, (20001, 20002)).addresses() == ["127.0.0.1:20001", "127.0.0.1:20002"]  # a local run's
    monkeypatch.setenv("ARENA_WORKER_HOSTS", "10.0.0.1")
    with pytest.raises(ValueError, match="expected one port and one host per worker"):
        distributed.from_env()


def test_rank_0_reads_how_ranks_it_did_not_start_ended(tmp_path, monkeypatch):
    exits = str(tmp_path / "exits.json")
    monkeypatch.setenv("ARENA_WORKER_EXITS", exits)
    monkeypatch.setenv("ARENA_WORLD_SIZE", "3")
    monkeypatch.setenv("ARENA_WORKER_PORTS", "20001,20002,20003")
    monkeypatch.setenv("ARENA_WORKER_HOSTS", "10.0.0.1,10.0.0.2,10.0.0.3")
    monkeypatch.setenv("ARENA_RANK", "0")
    workers, ranks = start_workers(7, "sqlite:////nowhere.db", 3)  # starts no process: Ray's actors did
    assert workers.hosts == ("10.0.0.1", "10.0.0.2", "10.0.0.3") and [rank.rank for rank in ranks] == [1, 2]
    assert [rank.poll() for rank in ranks] == [None, None]
    record_exit(exits, 2, -9, time.time())
    record_exit(exits, 1, 0, time.time())
    assert [rank.poll() for rank in ranks] == [0, -9] and exit_words(ranks[1].poll()) == "was killed by SIGKILL"
    record_exit(exits, 1, "was lost with its Ray actor (ActorDiedError: its process or its node died)", 1.0)
    assert exit_words(ranks[0].poll()).startswith("was lost with its Ray actor")
    assert json.loads(open(exits).read())["2"]["ended"] == -9
    stop_workers(ranks)  # nothing of rank 0's to stop: their actors end them
    with pytest.raises(ValueError, match="this run has 2"):
        start_workers(7, "sqlite:////nowhere.db", 2)


def test_a_failing_rank_0_names_the_remote_ranks_that_ended_before_its_error_not_after(tmp_path):
    exits, parent = str(tmp_path / "exits.json"), os.getppid()
    ranks = [RemoteRank(exits, 1, parent), RemoteRank(exits, 2, parent)]
    started = time.monotonic()
    assert lost_ranks(ranks, wait=False) == [] and time.monotonic() - started < 0.5  # a cancel does not wait
    record_exit(exits, 1, 1, time.time() + 60)  # ended after rank 0's error: because of it
    started = time.monotonic()
    assert lost_ranks(ranks, wait=True) == []
    assert time.monotonic() - started >= distributed.REMOTE_NOTICE_S  # it waited for a cause to be heard of
    record_exit(exits, 2, -9, time.time() - 0.2)  # killed just before rank 0's collective failed
    assert lost_ranks(ranks, wait=True) == ["worker rank 2 was killed by SIGKILL"]
    record_exit(exits, 1, "was lost with its Ray actor (ActorDiedError)", time.time() + 60)  # told late, still a cause
    assert lost_ranks(ranks, wait=False) == ["worker rank 1 was lost with its Ray actor (ActorDiedError)",
                                             "worker rank 2 was killed by SIGKILL"]


def test_a_rank_whose_starter_is_gone_is_lost(tmp_path):
    gone = RemoteRank(str(tmp_path / "exits.json"), 1, starter_pid=os.getppid() + 1)
    assert gone.poll() == "was lost with rank 0's Ray actor"
    assert RemoteRank(str(tmp_path / "exits.json"), 1, starter_pid=os.getppid()).poll() is None
