"""A run that runs out of memory for real ends as failed with reason out_of_memory and keeps its trace.

There is no GPU here, so the memory that runs out is the host's: the runner process is started
with an address-space limit (RLIMIT_AS) too small for a batch of 2048 64x64 images. PyTorch raises
(DefaultCPUAllocator: can't allocate memory), which the runner classifies; TensorFlow's runtime
aborts with std::bad_alloc, which the reaper recognises in the runner's log.
"""
import resource
import socket
import subprocess
import sys

import pytest

from db import queries
from db.models import FAILED
from db.session import make_sessionmaker
from engine import PROJECT_ROOT, child_env
from engine.launch import queue_runs, reap
from engine.spec import RunSpec

GIB = 2**30
# Enough to import the framework and start training, not enough for the first batch's activations.
ADDRESS_SPACE_LIMIT = {"torch": 6 * GIB, "tensorflow": 8 * GIB}


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_running_out_of_memory_is_a_result_with_its_trace_kept(arena_db, tmp_path, framework):
    sessions = make_sessionmaker(arena_db)
    spec = RunSpec(framework=framework, model="cnn", dataset="synthetic_images", synthetic_shape="64x64x3",
                   synthetic_size=2048, batch_size=2048, epochs=1, max_steps_per_epoch=2, inference_iters=0)
    (run_id,) = queue_runs(sessions, [spec])
    limit = ADDRESS_SPACE_LIMIT[framework]

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    # The framework's own thread defaults, as a user's run has them: with OMP_NUM_THREADS=1 (what tests/conftest.py
    # gives each test worker's processes) TensorFlow 2.21 ends with SIGSEGV at this limit instead of std::bad_alloc.
    env = {key: value for key, value in child_env().items() if key != "OMP_NUM_THREADS"}
    log_path = tmp_path / f"run-{run_id}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "engine.runner", str(run_id), "--db", arena_db],
                                   cwd=PROJECT_ROOT, env={**env, "CUDA_VISIBLE_DEVICES": ""},
                                   stdout=log, stderr=subprocess.STDOUT, preexec_fn=limit_memory)
        with sessions.begin() as s:
            queries.set_launch_info(s, run_id, process.pid, socket.gethostname(), str(log_path))
        process.wait(timeout=240)
    reap(sessions)  # a runner that aborted could not say why itself
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        samples = queries.sample_frame(s, [run_id], "host", "rss")
    assert (run.status, run.reason) == (FAILED, "out_of_memory"), run.error
    # TensorFlow fails where the limit strikes: its allocator aborts (std::bad_alloc, seen in the log by the
    # reaper) or a oneDNN kernel returns dnnl_out_of_memory, raised as an op error.
    markers = ["can't allocate memory"] if framework == "torch" else ["std::bad_alloc", "could not create a memory object"]
    assert any(marker in run.error for marker in markers), run.error
    assert len(samples) >= 5 and samples["time"].is_monotonic_increasing  # the trace up to the failure
