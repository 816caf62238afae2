"""Operator self times out of TensorFlow's profiler output: the XSpace protobuf (.xplane.pb) TensorBoard reads.

Parsed with the protobuf classes TensorFlow itself ships (tensorflow.tsl.profiler.protobuf.xplane_pb2).
An XSpace holds planes (the host, each GPU); a plane holds lines (a host thread, a GPU stream); a
line holds timed events, named through the plane's event metadata and carrying stats.

Which events count as operators, on the host plane:
- graph (tf.function) ops: events named "name:Type", the trace TensorFlow's executor records
  around every op kernel (TensorBoard's ParseTfOpFullname rule), grouped by Type (e.g.
  _MklNativeFusedMatMul: oneDNN's rewrite of MatMul + BiasAdd + Relu). Function-call ops
  ("__inference_step_132") are left out: their time is their body's operators'.
- eager ops: "EagerExecute" events whose eager_op stat names a primitive op (is_func 0), grouped
  by that op. Eager kernels leave no "name:Type" event of their own, so the whole execution of the
  op, dispatch included, is its time: what eager mode costs per op.
- XLA ops: events with an hlo_op stat (one per executed thunk: a fusion, a dot, a copy), grouped by
  the HLO name without its ".N" instance suffix.
An operator's self time is its duration minus that of the operators nested in it on the same line,
as TensorBoard's TensorFlow stats computes it (xprof's ConvertHostThreadsXPlaneToOpMetricsDb): time in
events that are not operators (executor bookkeeping, the oneDNN primitive inside) stays with the op.

On a GPU the device planes are counted instead: every event on a stream line is a kernel or a
memory copy; its duration is its time (they do not nest), grouped by kernel name. That is where a
GPU step's time goes, and what torch.profiler's CUDA activity reports on the other side.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Optional

from tensorflow.tsl.profiler.protobuf import xplane_pb2

HOST_PLANE = "/host:CPU"
GPU_PLANE_PREFIX = "/device:GPU:"
TF_OP_NAME = re.compile(r"[A-Za-z0-9.][A-Za-z0-9_./>-]*")  # TensorFlow's own patterns (tf_op_utils)
TF_OP_TYPE = re.compile(r"[A-Z_][a-zA-Z0-9_]*")
FUNCTION_CALL_PREFIX = "__inference_"
HLO_INSTANCE_SUFFIX = re.compile(r"\.\d+$")
PS_PER_MS = 1e9

Operator = tuple[str, float, int]  # (name, self milliseconds, calls)


def parse(data: bytes) -> xplane_pb2.XSpace:
    """The XSpace in a .xplane.pb file's bytes."""
    space = xplane_pb2.XSpace()
    space.ParseFromString(data)
    return space


def operator_self_times(space: xplane_pb2.XSpace, on_gpu: bool) -> list[Operator]:
    """Self time and calls per operator (host ops on a CPU run, GPU kernels on a GPU run); see the module docstring."""
    totals: dict[str, list] = {}
    for plane in space.planes:
        if on_gpu and plane.name.startswith(GPU_PLANE_PREFIX):
            for line in plane.lines:
                if line.name.startswith("Stream"):
                    for event in line.events:
                        _add(totals, plane.event_metadata[event.metadata_id].name, event.duration_ps)
        elif not on_gpu and plane.name == HOST_PLANE:
            name_of = _host_op_namer(plane)
            for line in plane.lines:
                for name, self_ps in _self_times(line.events, name_of):
                    _add(totals, name, self_ps)
    return [(name, self_ps / PS_PER_MS, calls) for name, (self_ps, calls) in totals.items()]


def _add(totals: dict[str, list], name: str, picoseconds: int) -> None:
    entry = totals.setdefault(name, [0, 0])
    entry[0] += picoseconds
    entry[1] += 1


def _host_op_namer(plane: xplane_pb2.XPlane) -> Callable[[xplane_pb2.XEvent], Optional[str]]:
    """event -> the operator it is (see the module docstring), or None for every other event."""
    stat_ids = {metadata.name: stat_id for stat_id, metadata in plane.stat_metadata.items()}
    stat_names = {stat_id: metadata.name for stat_id, metadata in plane.stat_metadata.items()}
    hlo_op, eager_op, is_func = stat_ids.get("hlo_op"), stat_ids.get("eager_op"), stat_ids.get("is_func")
    graph_ops: dict[int, Optional[str]] = {}
    for metadata_id, metadata in plane.event_metadata.items():
        op_name, _, op_type = metadata.name.partition(":")
        graph_ops[metadata_id] = (op_type if op_type and TF_OP_NAME.fullmatch(op_name)
                                  and TF_OP_TYPE.fullmatch(op_type) and not op_type.startswith(FUNCTION_CALL_PREFIX)
                                  else None)
    eager_execute = {metadata_id for metadata_id, metadata in plane.event_metadata.items()
                     if metadata.name == "EagerExecute"}

    def stat(event: xplane_pb2.XEvent, stat_id: Optional[int]):
        for item in event.stats:
            if item.metadata_id == stat_id:
                kind = item.WhichOneof("value")
                return stat_names.get(item.ref_value) if kind == "ref_value" else getattr(item, kind)
        return None

    def name_of(event: xplane_pb2.XEvent) -> Optional[str]:
        if graph_ops.get(event.metadata_id):
            return graph_ops[event.metadata_id]
        if hlo_op is not None and (hlo := stat(event, hlo_op)):
            return HLO_INSTANCE_SUFFIX.sub("", str(hlo))
        if event.metadata_id in eager_execute and not stat(event, is_func):
            return stat(event, eager_op)
        return None

    return name_of


def _self_times(events: Iterable[xplane_pb2.XEvent],
                name_of: Callable[[xplane_pb2.XEvent], Optional[str]]) -> list[tuple[str, int]]:
    """(operator, self picoseconds) of every operator event on one line: its duration minus its nested operators'."""
    spans = []
    for event in events:
        name = name_of(event)
        if name:
            spans.append((event.offset_ps, event.offset_ps + event.duration_ps, name))
    spans.sort(key=lambda span: (span[0], -span[1]))  # a parent before a child that starts with it
    done: list[tuple[str, int]] = []
    # [end, name, duration, nested operators' duration], innermost last; a span that overlaps its
    # parent's end without nesting (TensorBoard logs and skips those) cannot make a self time negative.
    open_spans: list[list] = []
    for start, end, name in spans:
        while open_spans and open_spans[-1][0] <= start:
            finished = open_spans.pop()
            done.append((finished[1], max(0, finished[2] - finished[3])))
        if open_spans:
            open_spans[-1][3] += end - start
        open_spans.append([end, name, end - start, 0])
    done.extend((span[1], max(0, span[2] - span[3])) for span in reversed(open_spans))
    return done
