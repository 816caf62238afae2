"""The Devices page's numbers: GPUs, processes, Ray nodes and the queue as tables, and recent GPU history."""
from __future__ import annotations

import threading
from collections import deque
from typing import Optional, Sequence

import pandas as pd
import plotly.graph_objects as go

from analysis.deployment import queued_state
from analysis.formatting import GIB
from analysis.run_facts import device_texts, runs_frame
from analysis.run_styles import UNKNOWN_FRAMEWORK_COLOR
from db.models import Run
from engine.executors.base import device_label, placed_devices
from engine.nvml import GpuInfo, Inventory
from engine.executors.ray import RayNode

HISTORY_WINDOW_S = 300.0  # the charts show the last five minutes
HISTORY_MIN_GAP_S = 1.0  # several open tabs refresh at once: one sample per second is plenty
CHART_HEIGHT_PX = 190
NOT_ARENA = "not an Arena run"
GPU_TABLE_COLUMNS = ["device", "name", "memory", "utilization", "temperature", "power", "energy", "runs"]
NODE_TABLE_COLUMNS = ["node", "address", "state", "cpus", "gpus", "gpu type", "memory", "runs"]


def run_label(run: Run) -> str:
    """"run 12 · torch cnn/digits"; a run of several workers adds where they are: "· on cuda:0 + cuda:1"."""
    label = f"run {run.id} · {run.framework} {run.model}/{run.dataset}"
    return label + (f" · on {device_label(run.placed_device)}" if len(placed_devices(run.placed_device)) > 1 else "")


def runs_on(device: str, runs: Sequence[Run], pids: Sequence[int] = ()) -> list[Run]:
    """Active runs placed on a device (one of its workers is), or whose process NVML lists on it (runs started
    before the scheduler)."""
    wanted = set(pids)
    return [run for run in runs
            if device in placed_devices(run.placed_device) or (run.pid is not None and run.pid in wanted)]


def gauge_text(value: Optional[float], pattern: str) -> str:
    """A gauge in display form ("{:.0f} W"), or "n/a" when NVML could not read it."""
    return "n/a" if value is None else pattern.format(value)


def memory_text(gpu: GpuInfo) -> str:
    if gpu.memory_used_bytes is None or not gpu.memory_total_bytes:
        return "n/a"
    share = gpu.memory_used_bytes / gpu.memory_total_bytes
    return f"{gpu.memory_used_bytes / GIB:.1f} / {gpu.memory_total_bytes / GIB:.1f} GiB ({share:.0%})"


def energy_text(joules: Optional[float]) -> str:
    if joules is None:
        return "n/a"
    return f"{joules / 3.6e6:.2f} kWh" if joules >= 3.6e5 else f"{joules / 1000:.1f} kJ"


def gpu_table(found: Inventory, active: Sequence[Run]) -> pd.DataFrame:
    """One row per GPU in display units; a field NVML could not read is "n/a" (why: below the table)."""
    rows = []
    for gpu in found.gpus:
        power = gauge_text(gpu.power_w, "{:.0f} W") + ("" if gpu.power_limit_w is None
                                                         else f" / {gpu.power_limit_w:.0f} W")
        rows.append({
            "device": f"cuda:{gpu.index}",
            "name": gpu.name or "n/a",
            "memory": memory_text(gpu),
            "utilization": gauge_text(gpu.utilization_pct, "{:.0f} %"),
            "temperature": gauge_text(gpu.temperature_c, "{:.0f} °C"),
            "power": "n/a" if gpu.power_w is None else power,
            "energy": energy_text(gpu.energy_j),
            "runs": ", ".join(run_label(r) for r in runs_on(f"cuda:{gpu.index}", active,
                                                             [p.pid for p in gpu.processes])) or "—",
        })
    return pd.DataFrame(rows, columns=GPU_TABLE_COLUMNS)


def process_table(gpu: GpuInfo, active: Sequence[Run]) -> pd.DataFrame:
    """The GPU's processes, each with the Arena run that owns it (matched by pid)."""
    by_pid = {run.pid: run for run in active if run.pid is not None}
    return pd.DataFrame([{
        "pid": process.pid,
        "memory": gauge_text(None if process.used_memory_bytes is None else process.used_memory_bytes / GIB,
                             "{:.2f} GiB"),
        "run": run_label(by_pid[process.pid]) if process.pid in by_pid else NOT_ARENA,
    } for process in gpu.processes], columns=["pid", "memory", "run"])


def error_captions(errors: dict[str, str]) -> list[str]:
    """"power: Not Supported (NVMLError_NotSupported)" per field NVML could not read."""
    return [f"{field.replace('_', ' ')}: {message}" for field, message in errors.items()]


def queue_table(queued: Sequence[Run], jobs: Sequence[dict] = ()) -> pd.DataFrame:
    """The queue in the scheduler's order (queued first, first placed): runs with the device each asked for and
    what it waits for (run_facts' queue state), and deployment jobs (db.deployments.jobs rows), which wait for
    the whole machine."""
    ordered = sorted(queued, key=lambda r: r.id)
    states = device_texts(runs_frame(ordered), place_in_queue=False, host=True).tolist()
    rows = [(run.created_at, 0, {"run": run_label(run), "asked for": (run.spec or {}).get("device", "auto"),
                                 "state": state}) for run, state in zip(ordered, states)]
    for job in jobs:
        rows.append((job["created_at"], 1, {"run": f"deployment {job['id']} of run {job['run_id']}",
                                            "asked for": "the machine (CPU)", "state": queued_state(job)}))
    rows.sort(key=lambda row: row[:2])
    return pd.DataFrame([{"position": position, **row[2]} for position, row in enumerate(rows, start=1)],
                        columns=["position", "run", "asked for", "state"])


def node_table(nodes: Sequence[RayNode], active: Sequence[Run]) -> pd.DataFrame:
    """One row per Ray node: what it has, what is free, and the Arena runs on it (matched by host name)."""
    def amount(free: Optional[float], total: float) -> str:
        return f"{total:g}" if free is None else f"{free:g} of {total:g}"

    rows = [{
        "node": node.hostname, "address": node.address, "state": "alive" if node.alive else "dead",
        "cpus": amount(node.cpus_free, node.cpus), "gpus": amount(node.gpus_free, node.gpus) if node.gpus else "—",
        "gpu type": node.gpu_type or "—", "memory": f"{node.memory_bytes / GIB:.1f} GiB",
        "runs": ", ".join(run_label(r) for r in active if r.hostname == node.hostname and r.pid is not None) or "—",
    } for node in nodes]
    return pd.DataFrame(rows, columns=NODE_TABLE_COLUMNS)


class GpuHistory:
    """Recent utilisation, memory and power per GPU, shared by every session of this process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # sessions refresh from their own threads
        self._samples: dict[int, deque] = {}

    def add(self, found: Inventory) -> None:
        with self._lock:
            for gpu in found.gpus:
                samples = self._samples.setdefault(gpu.index, deque())
                if samples and found.taken_at - samples[-1][0] < HISTORY_MIN_GAP_S:
                    continue
                used = None if gpu.memory_used_bytes is None else gpu.memory_used_bytes / GIB
                samples.append((found.taken_at, gpu.utilization_pct, used, gpu.power_w))
                while samples and found.taken_at - samples[0][0] > HISTORY_WINDOW_S:
                    samples.popleft()

    def frame(self, index: int) -> pd.DataFrame:
        with self._lock:
            rows = list(self._samples.get(index, ()))
        frame = pd.DataFrame(rows, columns=["time", "utilization_pct", "memory_used_gib", "power_w"])
        frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
        return frame


def history_chart(frame: pd.DataFrame, column: str, title: str, y_title: str, y_max: Optional[float]) -> go.Figure:
    fig = go.Figure(go.Scatter(x=frame["time"], y=frame[column], mode="lines+markers", marker=dict(size=3),
                               line=dict(color=UNKNOWN_FRAMEWORK_COLOR, width=2)))
    fig.update_layout(title=dict(text=title, x=0, font=dict(size=13)), height=CHART_HEIGHT_PX,
                      margin=dict(l=10, r=10, t=35, b=10), yaxis_title=y_title, showlegend=False)
    fig.update_yaxes(range=[0, y_max] if y_max else None, rangemode="tozero")
    return fig
