"""The backends' memory parts with the real frameworks on this CPU: allocator stats, peaks per
epoch through EpochMeter, TensorFlow's memory-growth setting, and what each framework really raises
when an allocation fails (and that is_out_of_memory recognises it).

Each framework runs in its own process (never both in one); the probe prints JSON the tests read.
"""
import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

MIB = 1024**2

_PROBE = """
import json, sys
import numpy as np
from engine.backends import get_backend, is_out_of_memory
from engine.monitor import EpochMeter, HostPeak
from engine.spec import RunSpec

framework = sys.argv[1]
report = {}
if framework == "torch":
    import torch
    def allocate_200mb():
        return torch.ones(200 * 1024**2 // 4)
    def fail_to_allocate():
        torch.empty(2**50)  # 4 PiB of float32
    def compiled_failure():
        try:
            fail_to_allocate()
        except RuntimeError as exc:
            raise RuntimeError("backend compiler failed") from exc
    real_oom_types = {"framework_oom_class": torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")}
    unrelated = RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x64 and 65x10)")
else:
    import tensorflow as tf
    def allocate_200mb():
        # Host memory through numpy: TensorFlow's CPU allocator keeps what a freed tensor held
        # (RSS stays up after `del`), so a tf tensor could not show that the peak resets per epoch.
        return np.ones(200 * 1024**2 // 4, dtype=np.float32)
    def fail_to_allocate():
        tf.zeros([2**40])  # 4 TiB of float32
    @tf.function(autograph=False)
    def graph_allocation():
        # A random tensor, not tf.zeros: Grappler folds a constant-shaped zeros into the graph and
        # fails before running, with InvalidArgumentError "Cannot parse tensor from proto" (no OOM).
        return tf.reduce_sum(tf.random.uniform([2**40]))
    def compiled_failure():
        graph_allocation()
    # What a oneDNN kernel raises when its allocation fails (seen under an address-space limit).
    real_oom_types = {"onednn": tf.errors.AbortedError(None, None, "Compute received an exception:Status:1, message: "
                                                       "could not create a memory object. in file "
                                                       "tensorflow/core/kernels/mkl/mkl_maxpooling_op.cc:388")}
    unrelated = tf.errors.InvalidArgumentError(None, None, "Matrix size-incompatible: In[0]: [4,64], In[1]: [65,10]")

backend = get_backend(framework, "cpu")
spec = RunSpec.with_model_defaults(framework, "mlp", "digits", device="cpu")
backend.build(spec, "classification", None, (8, 8, 1), 10)
report["settings"] = backend.settings()
growth_off = get_backend(framework, "cpu", tf_memory_growth=False)  # torch accepts the option and ignores it
growth_off.build(spec, "classification", None, (8, 8, 1), 10)
report["settings_growth_off"] = growth_off.settings()
report["memory_stats"] = backend.memory_stats()
backend.reset_peak_memory()
report["peak_memory"] = backend.peak_memory()

rng = np.random.default_rng(0)
x = rng.random((32, 8, 8, 1), dtype=np.float32)
y = rng.integers(0, 10, 32)
meter = EpochMeter(backend, HostPeak(), energy_j=None)
epochs = []
for epoch in range(2):
    meter.start()
    block = allocate_200mb() if epoch == 0 else None  # a big, short-lived host allocation in epoch 1 only
    del block
    xs, ys = backend.to_device(x, y)
    backend.losses_to_floats([backend.train_step(xs, ys) for _ in range(3)])
    train = meter.train_done(samples=96)
    epochs.append({"train": train, "end": meter.end()})
report["epochs"] = epochs
report["run_peaks"] = meter.run_peaks()
report["host_exact"] = HostPeak().exact

ooms = {}
for label, fail in (("allocate", fail_to_allocate), ("compiled", compiled_failure)):
    try:
        fail()
        ooms[label] = None
    except BaseException as exc:
        ooms[label] = {"type": f"{type(exc).__module__}.{type(exc).__qualname__}", "message": str(exc)[-600:],
                       "is_oom": is_out_of_memory(exc, framework)}
for label, exc in {**real_oom_types, "memory_error": MemoryError(), "numpy": None}.items():
    if exc is None:
        try:
            np.ones(2**50)
        except MemoryError as caught:
            exc = caught
    ooms[label] = {"type": type(exc).__name__, "message": str(exc)[:200], "is_oom": is_out_of_memory(exc, framework)}
ooms["unrelated"] = {"type": type(unrelated).__name__, "is_oom": is_out_of_memory(unrelated, framework)}
ooms["value_error"] = {"type": "ValueError", "is_oom": is_out_of_memory(ValueError("bad shape"), framework)}
report["ooms"] = ooms
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def probes() -> dict[str, dict]:
    """Run the probe in one process per framework, both at once."""
    procs = {fw: subprocess.Popen([sys.executable, "-c", _PROBE, fw], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for fw in ("torch", "tensorflow")}
    reports = {}
    for fw, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{fw} failed:\n{stderr[-4000:]}"
        reports[fw] = json.loads(stdout.strip().splitlines()[-1])
    return reports


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_no_allocator_stats_on_the_cpu(probes, framework):
    assert probes[framework]["memory_stats"] == []
    assert probes[framework]["peak_memory"] == {}


@pytest.mark.parametrize("framework", ["torch", "tensorflow"])
def test_epoch_meter_with_a_real_backend_gives_exact_host_peaks_and_no_gpu_keys(probes, framework):
    report = probes[framework]
    first, second = (epoch["end"] for epoch in report["epochs"])
    assert set(first) == set(second) == {"peak_bytes/host_rss"}  # CPU: no allocator peaks
    assert all(epoch["train"] == {} for epoch in report["epochs"])  # no energy counter, no energy keys
    assert report["run_peaks"] == {"host_rss": max(first["peak_bytes/host_rss"], second["peak_bytes/host_rss"])}
    if report["host_exact"]:
        # The 200 MB block of epoch 1 is in its peak and, after the reset, not in epoch 2's.
        assert first["peak_bytes/host_rss"] - second["peak_bytes/host_rss"] > 150 * MIB


def test_tensorflow_reports_memory_growth_and_torch_does_not(probes):
    assert probes["tensorflow"]["settings"]["tf_memory_growth"] is True
    assert probes["tensorflow"]["settings_growth_off"]["tf_memory_growth"] is False
    assert "tf_memory_growth" not in probes["torch"]["settings"]
    assert "tf_memory_growth" not in probes["torch"]["settings_growth_off"]


def test_torch_cpu_allocation_failure_is_a_runtime_error_classified_as_oom(probes):
    ooms = probes["torch"]["ooms"]
    real = ooms["allocate"]
    assert real["type"] == "builtins.RuntimeError"
    assert "DefaultCPUAllocator: can't allocate memory" in real["message"] and real["is_oom"] is True
    assert ooms["compiled"]["is_oom"] is True  # found through __cause__
    assert ooms["framework_oom_class"]["is_oom"] is True  # torch.OutOfMemoryError (= torch.cuda.OutOfMemoryError)
    assert ooms["memory_error"]["is_oom"] is ooms["numpy"]["is_oom"] is True
    assert ooms["unrelated"]["is_oom"] is ooms["value_error"]["is_oom"] is False


def test_tensorflow_cpu_allocation_failure_is_resource_exhausted_and_classified_as_oom(probes):
    ooms = probes["tensorflow"]["ooms"]
    for label in ("allocate", "compiled"):  # eager op and tf.function graph
        assert ooms[label]["type"].endswith("ResourceExhaustedError")
        assert "OOM when allocating tensor" in ooms[label]["message"] and ooms[label]["is_oom"] is True
    assert ooms["memory_error"]["is_oom"] is ooms["numpy"]["is_oom"] is True
    assert ooms["onednn"]["is_oom"] is True
    assert ooms["unrelated"]["is_oom"] is ooms["value_error"]["is_oom"] is False


def test_without_a_backend_only_memory_error_counts():
    from engine.backends import is_out_of_memory

    try:
        try:
            raise MemoryError()
        except MemoryError as exc:
            raise RuntimeError("while building the model") from exc
    except RuntimeError as exc:
        chained = exc
    assert is_out_of_memory(chained) is True
    torch_cpu_oom = RuntimeError("DefaultCPUAllocator: can't allocate memory")
    assert is_out_of_memory(torch_cpu_oom) is False  # torch's rule, applied only with framework="torch"
    with pytest.raises(ValueError, match="framework='jax'"):
        is_out_of_memory(MemoryError(), "jax")


def test_exception_chain_follows_causes_but_not_suppressed_context():
    from engine.backends.base import exception_chain

    try:
        try:
            raise MemoryError()
        except MemoryError:
            raise KeyError("lookup") from None  # `from None`: the MemoryError is not its cause
    except KeyError as exc:
        suppressed = exc
    assert [type(e) for e in exception_chain(suppressed)] == [KeyError]
    try:
        try:
            raise MemoryError()
        except MemoryError:
            raise KeyError("during handling")  # implicit context, shown by a traceback
    except KeyError as exc:
        implicit = exc
    assert [type(e) for e in exception_chain(implicit)] == [KeyError, MemoryError]
