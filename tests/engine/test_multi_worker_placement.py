"""Placing a run of N workers (issue 18): N devices at once or nothing, runs queued after it kept off the devices
it waits for, impossible ones failed at once, each listed device counted, and the env rank 0 hands its ranks.
The rules alone through plan(); the scheduler and the database through a launcher that starts no process."""
import json
import os
from collections import Counter

import pytest

from analysis.device_tables import run_label, runs_on
from analysis.run_facts import device_texts, runs_frame
from db import queries
from db.models import FAILED
from db.session import make_sessionmaker
from engine.executors.base import device_label, placed_devices
from engine.distributed import Workers, hold_every_device, one_process_env
from engine.executors.local import CPU, Gpu, LocalExecutor, plan, workers_placement_env
from engine.executors.ray import runner_env
from engine.launch import queue_runs
from engine.scheduler import Scheduler
from engine.spec import RunSpec
from tests.conftest import NO_CALIBRATION

TWO_GPUS = [Gpu(0, "GPU-a"), Gpu(1, "GPU-b")]
ONE = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=1, max_steps_per_epoch=5, **NO_CALIBRATION)
TWO = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=1, max_steps_per_epoch=5, workers=2,
              **NO_CALIBRATION)


def placed(placements):
    return [(p.id, p.device) for p in placements]


# plan(): the rules ---------------------------------------------------------------------------------

def test_a_two_worker_run_takes_both_gpus_of_a_free_two_gpu_machine():
    placements, impossible = plan([(1, "auto", 2), (2, "auto")], TWO_GPUS, Counter(), set(), 1, 1)
    assert placed(placements) == [(1, "cuda:0,cuda:1")] and impossible == {}


def test_it_waits_while_one_gpu_is_busy_and_a_run_queued_after_it_does_not_take_the_other():
    busy = Counter({"cuda:0": 1})
    placements, impossible = plan([(1, "auto", 2), (2, "auto"), (3, "cuda:1"), (4, "cpu")], TWO_GPUS, busy,
                                  set(), 1, 1)
    # cuda:1 is free, but the 2-worker run waits for it: taking it would starve that run. The CPU it does not need.
    assert placed(placements) == [(4, "cpu")] and impossible == {}
    # Runs queued before it are placed as before: the order decides.
    placements, _ = plan([(2, "auto"), (1, "auto", 2)], TWO_GPUS, busy, set(), 1, 1)
    assert placed(placements) == [(2, "cuda:1")]


def test_a_gpu_someone_else_uses_is_not_one_of_its_gpus():
    gpus = [Gpu(0, "GPU-a", frozenset({4242})), Gpu(1, "GPU-b"), Gpu(2, "GPU-c")]
    placements, _ = plan([(1, "auto", 2)], gpus, Counter({"cuda:2": 1}), set(), 2, 1)
    # GPU 0 runs a foreign process; GPU 1 is idle, GPU 2 has room for one more (2 runs per GPU).
    assert placed(placements) == [(1, "cuda:1,cuda:2")]


def test_on_a_one_slot_cpu_a_two_worker_run_takes_the_whole_cpu_when_it_is_free():
    placements, _ = plan([(1, "cpu", 2), (2, "cpu")], [], Counter(), set(), 1, 1)
    assert placed(placements) == [(1, "cpu,cpu")]  # and the run after it waits: the CPU is taken
    placements, _ = plan([(1, "auto", 2)], [], Counter({CPU: 1}), set(), 1, 1)
    assert placements == []  # a run is on the CPU: it waits for the whole of it


def test_on_a_cpu_with_slots_enough_it_takes_n_slots_and_leaves_the_rest():
    placements, _ = plan([(1, "cpu", 2), (2, "cpu"), (3, "cpu")], [], Counter(), set(), 1, 3)
    assert placed(placements) == [(1, "cpu,cpu"), (2, "cpu")]
    placements, _ = plan([(1, "cpu", 2), (2, "cpu")], [], Counter({CPU: 2}), set(), 1, 3)
    assert placements == []  # one slot free of three: the 2-worker run waits, and holds the CPU back from run 2


def test_runs_that_can_never_fit_fail_with_the_numbers():
    _, impossible = plan([(1, "auto", 4)], TWO_GPUS, Counter(), set(), 1, 1)
    assert impossible == {1: "4 workers need 4 GPUs at once and this machine has 2 (device 'cpu' runs them on the CPU)"}
    _, impossible = plan([(2, "cpu", 4), (3, "auto", 2)], [], Counter(), set(), 1, 0)
    assert impossible[2] == ("4 workers need CPU slots and the CPU takes no runs (ARENA_CPU_SLOTS=0) and this machine "
                             "has no GPU")
    assert impossible[3].startswith("2 workers need CPU slots")
    _, impossible = plan([(4, "cuda:0", 2)], TWO_GPUS, Counter(), set(), 1, 1)
    assert impossible == {4: "2 workers need 2 devices and 'cuda:0' is one (ask for 'auto' or 'cpu')"}


# The env rank 0 starts with ----------------------------------------------------------------------------

def test_cpu_workers_split_the_cores_and_rank_0_carries_every_ranks_env(monkeypatch):
    monkeypatch.setattr("engine.executors.local.os.cpu_count", lambda: 8)
    (placement,), _ = plan([(1, "cpu", 2)], [], Counter(), set(), 1, 1)
    env = placement.env
    ranks = json.loads(env.pop("ARENA_WORKER_ENVS"))
    rank = {"CUDA_VISIBLE_DEVICES": "", "ARENA_DEVICE": "cpu", "ARENA_THREADS": "4"}
    assert ranks == [rank, rank]
    assert env == {**rank, "ARENA_PLACED_DEVICE": "cpu,cpu"}
    monkeypatch.setattr("engine.executors.local.os.cpu_count", lambda: 2)
    assert json.loads(workers_placement_env(["cpu"] * 4, [None] * 4)["ARENA_WORKER_ENVS"])[3]["ARENA_THREADS"] == "1"


def test_gpu_workers_each_see_their_own_gpu():
    (placement,), _ = plan([(1, "auto", 2)], TWO_GPUS, Counter(), set(), 1, 1)
    ranks = json.loads(placement.env["ARENA_WORKER_ENVS"])
    assert ranks == [{"CUDA_VISIBLE_DEVICES": f"GPU-{letter}", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                      "ARENA_DEVICE": "cuda:0", "ARENA_NVML_INDEX": str(index)} for index, letter in enumerate("ab")]
    assert placement.env["ARENA_PLACED_DEVICE"] == "cuda:0,cuda:1" and placement.env["CUDA_VISIBLE_DEVICES"] == "GPU-a"
    assert "ARENA_THREADS" not in placement.env


def test_a_mirrored_run_is_one_process_that_sees_every_gpu_or_every_cpu_workers_threads(monkeypatch):
    """TensorFlow's MirroredStrategy: the scheduler places N devices as for N workers; the one runner takes them all."""
    (placement,), _ = plan([(1, "auto", 2)], TWO_GPUS, Counter(), set(), 1, 1)
    monkeypatch.setattr(os, "environ", dict(placement.env))
    assert hold_every_device(2) == Workers(replicas=2)
    assert os.environ == {"CUDA_VISIBLE_DEVICES": "GPU-a,GPU-b", "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                          "ARENA_DEVICE": "cuda:0", "ARENA_NVML_INDEX": "0", "ARENA_PLACED_DEVICE": "cuda:0,cuda:1"}
    monkeypatch.setattr("engine.executors.local.os.cpu_count", lambda: 8)
    (placement,), _ = plan([(1, "cpu", 2)], [], Counter(), set(), 1, 1)
    monkeypatch.setattr(os, "environ", dict(placement.env))
    hold_every_device(2)
    assert os.environ == {"CUDA_VISIBLE_DEVICES": "", "ARENA_DEVICE": "cpu", "ARENA_THREADS": "8",
                          "ARENA_PLACED_DEVICE": "cpu,cpu"}
    # Ray's placement of the same run: its two GPUs, or its CPUs' threads, in the one process.
    assert one_process_env(json.loads(runner_env([3, 5], 2)["ARENA_WORKER_ENVS"]))["CUDA_VISIBLE_DEVICES"] == "3,5"
    assert one_process_env(json.loads(runner_env([], 2, threads=3)["ARENA_WORKER_ENVS"]))["ARENA_THREADS"] == "6"


def test_a_one_worker_run_keeps_its_env():
    (placement,), _ = plan([(1, "cpu", 1)], [], Counter(), set(), 1, 1)
    assert placement.env == {"CUDA_VISIBLE_DEVICES": "", "ARENA_DEVICE": "cpu", "ARENA_PLACED_DEVICE": "cpu"}


# Reading placed_device -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, devices, label", [
    (None, [], ""), ("cpu", ["cpu"], "cpu"), ("cuda:1", ["cuda:1"], "cuda:1"), ("ray:gpu", ["ray:gpu"], "ray:gpu"),
    ("cpu,cpu", ["cpu", "cpu"], "2 × CPU"), ("cuda:0,cuda:1", ["cuda:0", "cuda:1"], "cuda:0 + cuda:1"),
])
def test_placed_devices_and_their_label(text, devices, label):
    assert placed_devices(text) == devices and device_label(text) == label


# Through the scheduler and the database ------------------------------------------------------------------

def _run(sessions, run_id):
    with sessions.begin() as s:
        return queries.get_run(s, run_id)


def _end(sessions, run_id):
    with sessions.begin() as s:
        assert queries.claim_run(s, run_id, 1, "elsewhere")  # it trained and ended
        queries.finish_run(s, run_id, {})


def test_the_scheduler_places_a_two_worker_run_when_both_gpus_are_free_and_counts_both(arena_db):
    sessions = make_sessionmaker(arena_db)
    (first,) = queue_runs(sessions, [ONE])
    two, after = queue_runs(sessions, [TWO, ONE])
    launched = []  # starts no process: a placed run holds its devices until it ends, as while starting
    scheduler = Scheduler(sessions, arena_db, LocalExecutor(sessions, arena_db, lambda run_id, env: launched.append(
        (run_id, env)), lambda: TWO_GPUS))
    assert placed(scheduler.tick()) == [(first, "cuda:0")]  # the 2-worker run waits for cuda:0; cuda:1 is held back
    assert scheduler.tick() == []
    _end(sessions, first)
    assert placed(scheduler.tick()) == [(two, "cuda:0,cuda:1")]
    assert _run(sessions, two).placed_device == "cuda:0,cuda:1"
    assert scheduler.tick() == []  # read back from placed_device: both GPUs are taken
    _end(sessions, two)
    assert placed(scheduler.tick()) == [(after, "cuda:0")]
    assert [run_id for run_id, _ in launched] == [first, two, after]


def test_a_two_worker_cpu_run_fills_a_two_slot_cpu_and_an_impossible_one_fails(arena_db, monkeypatch):
    monkeypatch.setenv("ARENA_CPU_SLOTS", "2")
    sessions = make_sessionmaker(arena_db)
    wide = RunSpec(**{**ONE.to_dict(), "workers": 4, "device": "cpu"})
    two, too_wide, one = queue_runs(sessions, [TWO, wide, ONE])
    scheduler = Scheduler(sessions, arena_db, LocalExecutor(sessions, arena_db, lambda run_id, env: None, lambda: []))
    assert placed(scheduler.tick()) == [(two, "cpu,cpu")]
    assert scheduler.tick() == []  # "cpu,cpu" counts two slots of two: the 4-worker run waits, and run 3 after it
    monkeypatch.setenv("ARENA_CPU_SLOTS", "0")
    scheduler.tick()
    gone = _run(sessions, too_wide)
    assert gone.status == FAILED and "4 workers need CPU slots" in gone.error and "ARENA_CPU_SLOTS=0" in gone.error
    assert _run(sessions, one).status == FAILED


def test_screens_read_each_worker_device(arena_db):
    sessions = make_sessionmaker(arena_db)
    two, one = queue_runs(sessions, [TWO, ONE])
    with sessions.begin() as s:
        assert queries.place_run(s, two, "cuda:0,cuda:1", "here") and queries.place_run(s, one, "cuda:1", "here")
        runs = [queries.get_run(s, two), queries.get_run(s, one)]
        s.expunge_all()
    assert [r.id for r in runs_on("cuda:1", runs)] == [two, one] and [r.id for r in runs_on("cuda:0", runs)] == [two]
    assert run_label(runs[0]).endswith("· on cuda:0 + cuda:1") and "· on" not in run_label(runs[1])
    assert device_texts(runs_frame(runs)).tolist() == ["starting on cuda:0 + cuda:1", "starting on cuda:1"]
