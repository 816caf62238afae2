"""engine/executors/local.py: the placement rules on their own (placing real processes: test_scheduler.py)."""
from collections import Counter

from engine.executors.local import Gpu, placement_env, plan

TWO_GPUS = [Gpu(0, "GPU-a"), Gpu(1, "GPU-b")]


# plan(): pure placement rules ------------------------------------------------------------------

def test_auto_runs_fill_free_gpus_in_queue_order_and_the_rest_wait():
    placements, impossible = plan([(1, "auto"), (2, "auto"), (3, "auto")], TWO_GPUS, Counter(), set(), 1, 1)
    assert [(p.id, p.device) for p in placements] == [(1, "cuda:0"), (2, "cuda:1")] and impossible == {}
    assert placements[1].env["CUDA_VISIBLE_DEVICES"] == "GPU-b" and placements[1].env["ARENA_DEVICE"] == "cuda:0"


def test_a_pinned_run_waits_for_its_gpu_while_later_runs_take_free_ones():
    busy = Counter({"cuda:0": 1})
    placements, _ = plan([(1, "cuda:0"), (2, "auto"), (3, "cpu")], TWO_GPUS, busy, set(), 1, 1)
    assert [(p.id, p.device) for p in placements] == [(2, "cuda:1"), (3, "cpu")]


def test_more_runs_per_gpu_go_to_the_least_loaded_gpu():
    placements, _ = plan([(1, "auto"), (2, "auto"), (3, "auto"), (4, "auto"), (5, "auto")], TWO_GPUS,
                         Counter({"cuda:0": 1}), set(), 2, 1)
    assert [p.device for p in placements] == ["cuda:1", "cuda:0", "cuda:1"]


def test_a_gpu_someone_else_uses_is_not_free_for_auto_but_can_be_pinned():
    gpus = [Gpu(0, "GPU-a", frozenset({4242})), Gpu(1, "GPU-b", frozenset({777}))]
    placements, _ = plan([(1, "auto"), (2, "auto"), (3, "cuda:0")], gpus, Counter({"cuda:1": 1}), {777}, 2, 1)
    # GPU 0 runs a foreign process (4242); GPU 1 runs only Arena's 777, with room for one more.
    assert [(p.id, p.device) for p in placements] == [(1, "cuda:1"), (3, "cuda:0")]


def test_without_gpus_runs_take_turns_on_the_cpu_slots():
    placements, _ = plan([(1, "auto"), (2, "cpu"), (3, "auto")], [], Counter(), set(), 1, 2)
    assert [(p.id, p.device) for p in placements] == [(1, "cpu"), (2, "cpu")]
    assert placements[0].env == {"CUDA_VISIBLE_DEVICES": "", "ARENA_DEVICE": "cpu", "ARENA_PLACED_DEVICE": "cpu"}


def test_runs_that_can_never_be_placed_say_why():
    _, impossible = plan([(1, "cuda:5"), (2, "auto")], TWO_GPUS, Counter(), set(), 1, 0)
    assert impossible == {1: "device 'cuda:5' does not exist here (2 GPU(s) found)"}
    _, impossible = plan([(2, "auto"), (3, "cpu")], [], Counter(), set(), 1, 0)
    assert set(impossible) == {2, 3} and "ARENA_CPU_SLOTS=0" in impossible[2]


def test_gpu_placement_names_the_gpu_by_uuid_and_nvml_index():
    env = placement_env("cuda:3", Gpu(3, "GPU-xyz"))
    assert env == {"CUDA_VISIBLE_DEVICES": "GPU-xyz", "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "ARENA_DEVICE": "cuda:0",
                   "ARENA_PLACED_DEVICE": "cuda:3", "ARENA_NVML_INDEX": "3"}
