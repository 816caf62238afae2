"""engine/backends/tf_xplane.py on a hand-built XSpace: which events count as operators, and their self time.

Built and parsed in a TensorFlow process of its own (the protobuf classes come with TensorFlow); the
real profiles of every mode are read in tests/engine/test_calibration.py.
"""
import json
import subprocess
import sys

from tests.conftest import REPO_ROOT

_PROBE = """
import json
from tensorflow.tsl.profiler.protobuf import xplane_pb2
from engine.backends import tf_xplane

space = xplane_pb2.XSpace()
host = space.planes.add(name="/host:CPU")
names = ["dense/MatMul:_MklMatMul", "dense/BiasAdd:BiasAdd", "ExecutorState::Process", "EagerExecute",
         "__inference_step_7:__inference_step_7", "MatMul.12", "end: MatMul.12", "Iterator::Batch"]
for metadata_id, name in enumerate(names, start=1):
    host.event_metadata[metadata_id].id = metadata_id
    host.event_metadata[metadata_id].name = name
for stat_id, name in enumerate(["eager_op", "is_func", "hlo_op", "Mul", "__inference_step_7"], start=1):
    host.stat_metadata[stat_id].id = stat_id
    host.stat_metadata[stat_id].name = name

def event(line, metadata_id, offset_us, duration_us, **stats):
    added = line.events.add(metadata_id=metadata_id, offset_ps=offset_us * 10**6, duration_ps=duration_us * 10**6)
    for stat_id, (kind, value) in stats.items():
        stat = added.stats.add(metadata_id=int(stat_id[1:]))
        setattr(stat, kind, value)

executor = host.lines.add(id=1, name="tf_Compute")
event(executor, 3, 0, 500)  # ExecutorState::Process: not an operator
event(executor, 1, 10, 100)  # a MatMul with a BiasAdd nested in it: 100 - 30 of its own
event(executor, 2, 50, 30)
event(executor, 1, 200, 40)  # the same type again: one row, two calls
python = host.lines.add(id=2, name="python")
event(python, 5, 0, 900)  # the function call: its body's time, not its own
event(python, 4, 1000, 25, s1=("ref_value", 4), s2=("int64_value", 0))  # an eager Mul
event(python, 4, 1100, 800, s1=("ref_value", 5), s2=("int64_value", 1))  # an eager function call: left out
event(python, 6, 2000, 60, s3=("str_value", "MatMul.12"))  # an XLA thunk: HLO name without its instance number
event(python, 7, 2060, 1)  # its end marker
event(python, 8, 2100, 70)  # a tf.data iterator: not an operator here
print(json.dumps(sorted(tf_xplane.operator_self_times(space, on_gpu=False))))
"""


def test_operator_self_times_follow_tensorboards_rules():
    result = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {name: (round(ms, 6), calls) for name, ms, calls in json.loads(result.stdout.strip().splitlines()[-1])}
    assert rows == {
        "_MklMatMul": (0.11, 2),  # (100 - 30) + 40 microseconds
        "BiasAdd": (0.03, 1),
        "Mul": (0.025, 1),
        "MatMul": (0.06, 1),
    }
