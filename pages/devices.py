"""Devices: the machine's GPUs and CPU, which Arena run uses each, the scheduler and its queue — live."""
from __future__ import annotations

import os
import socket
import threading
from collections import deque
from datetime import datetime
from typing import Optional, Sequence

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from db import queries
from db.models import ACTIVE_STATUSES, QUEUED, Run, SchedulerLease
from engine import ray_executor, scheduler
from engine.ray_executor import IN_RAY_QUEUE, RayNode
from engine.nvml import GpuInfo, Inventory, inventory
from pages import common

GIB = 1024**3
HISTORY_WINDOW_S = 300.0  # the charts show the last five minutes
HISTORY_MIN_GAP_S = 1.0  # several open tabs refresh at once: one sample per second is plenty
CHART_HEIGHT_PX = 190
NOT_ARENA = "not an Arena run"

GPU_COLUMNS = {
    "device": st.column_config.TextColumn("Device", width=70),
    "name": st.column_config.TextColumn("GPU", width=190),
    "memory": st.column_config.TextColumn("Memory used / total", width=170),
    "utilization": st.column_config.TextColumn("Utilisation", width=85),
    "temperature": st.column_config.TextColumn("Temp.", width=65),
    "power": st.column_config.TextColumn("Power / limit", width=120),
    "energy": st.column_config.TextColumn("Energy", width=90, help="Since the driver was loaded (Volta and newer)"),
    "runs": st.column_config.TextColumn("Arena runs", width="medium"),
}
NODE_COLUMNS = {
    "node": st.column_config.TextColumn("Node", width=130),
    "address": st.column_config.TextColumn("Address", width=110),
    "state": st.column_config.TextColumn("State", width=60),
    "cpus": st.column_config.TextColumn("CPUs free", width=90),
    "gpus": st.column_config.TextColumn("GPUs free", width=90),
    "gpu type": st.column_config.TextColumn("GPU type", width=100),
    "memory": st.column_config.TextColumn("Memory", width=90),
    "runs": st.column_config.TextColumn("Arena runs", width="medium"),
}


# Pure helpers ---------------------------------------------------------------------------------
def run_label(run: Run) -> str:
    """"run 12 · torch cnn/digits"."""
    return f"run {run.id} · {run.framework} {run.model}/{run.dataset}"


def runs_on(device: str, runs: Sequence[Run], pids: Sequence[int] = ()) -> list[Run]:
    """Active runs placed on a device, or whose process NVML lists on it (runs started before the scheduler)."""
    wanted = set(pids)
    return [run for run in runs if run.placed_device == device or (run.pid is not None and run.pid in wanted)]


def shown(value: Optional[float], pattern: str) -> str:
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
        power = shown(gpu.power_w, "{:.0f} W") + ("" if gpu.power_limit_w is None else f" / {gpu.power_limit_w:.0f} W")
        rows.append({
            "device": f"cuda:{gpu.index}",
            "name": gpu.name or "n/a",
            "memory": memory_text(gpu),
            "utilization": shown(gpu.utilization_pct, "{:.0f} %"),
            "temperature": shown(gpu.temperature_c, "{:.0f} °C"),
            "power": "n/a" if gpu.power_w is None else power,
            "energy": energy_text(gpu.energy_j),
            "runs": ", ".join(run_label(r) for r in runs_on(f"cuda:{gpu.index}", active,
                                                             [p.pid for p in gpu.processes])) or "—",
        })
    return pd.DataFrame(rows, columns=list(GPU_COLUMNS))


def process_table(gpu: GpuInfo, active: Sequence[Run]) -> pd.DataFrame:
    """The GPU's processes, each with the Arena run that owns it (matched by pid)."""
    by_pid = {run.pid: run for run in active if run.pid is not None}
    return pd.DataFrame([{
        "pid": process.pid,
        "memory": shown(None if process.used_memory_bytes is None else process.used_memory_bytes / GIB, "{:.2f} GiB"),
        "run": run_label(by_pid[process.pid]) if process.pid in by_pid else NOT_ARENA,
    } for process in gpu.processes], columns=["pid", "memory", "run"])


def error_captions(errors: dict[str, str]) -> list[str]:
    """"power: Not Supported (NVMLError_NotSupported)" per field NVML could not read."""
    return [f"{field.replace('_', ' ')}: {message}" for field, message in errors.items()]


def queue_table(queued: Sequence[Run]) -> pd.DataFrame:
    """Queued runs oldest first, with the device each asked for and what it waits for."""
    rows = []
    for position, run in enumerate(sorted(queued, key=lambda r: r.id), start=1):
        asked = (run.spec or {}).get("device", "auto")
        rows.append({"position": position, "run": run_label(run), "asked for": asked, "state": queue_state(run, asked)})
    return pd.DataFrame(rows, columns=["position", "run", "asked for", "state"])


def queue_state(run: Run, asked: str) -> str:
    if run.placed_device in IN_RAY_QUEUE:
        return IN_RAY_QUEUE[run.placed_device]
    if run.placed_device:
        return f"starting on {run.placed_device}" + (f" ({run.hostname})" if run.hostname else "")
    return f"waiting for {'a free device' if asked == 'auto' else asked}"


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
    return pd.DataFrame(rows, columns=list(NODE_COLUMNS))


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


@st.cache_resource(show_spinner=False)
def gpu_history() -> GpuHistory:
    return GpuHistory()


# Views ----------------------------------------------------------------------------------------
def history_chart(frame: pd.DataFrame, column: str, title: str, y_title: str, y_max: Optional[float]) -> go.Figure:
    fig = go.Figure(go.Scatter(x=frame["time"], y=frame[column], mode="lines+markers", marker=dict(size=3),
                               line=dict(color=common.UNKNOWN_FRAMEWORK_COLOR, width=2)))
    fig.update_layout(title=dict(text=title, x=0, font=dict(size=13)), height=CHART_HEIGHT_PX,
                      margin=dict(l=10, r=10, t=35, b=10), yaxis_title=y_title, showlegend=False)
    fig.update_yaxes(range=[0, y_max] if y_max else None, rangemode="tozero")
    return fig


def run_links(runs: Sequence[Run]) -> None:
    for run in runs:
        st.page_link(common.COMPARE_PAGE, label=f"{run_label(run)} ({run.status})", icon=":material/link:",
                     query_params={common.RUNS_PARAM: str(run.id)})


def gpu_card(gpu: GpuInfo, active: Sequence[Run], history: GpuHistory) -> None:
    with st.container(border=True):
        st.markdown(f"**cuda:{gpu.index} · {gpu.name or 'unknown GPU'}**"
                    + (f" · `{gpu.pci_bus_id}`" if gpu.pci_bus_id else ""))
        for caption in error_captions(gpu.errors):
            st.caption(f"n/a — {caption}")
        frame = history.frame(gpu.index)
        charts = st.columns(3)
        memory_gib = None if gpu.memory_total_bytes is None else gpu.memory_total_bytes / GIB
        for column, (name, title, unit, y_max) in zip(charts, [
            ("utilization_pct", "Utilisation", "%", 100.0), ("memory_used_gib", "Memory used", "GiB", memory_gib),
            ("power_w", "Power", "W", gpu.power_limit_w)]):
            column.plotly_chart(history_chart(frame, name, title, unit, y_max), key=f"gpu{gpu.index}_{name}")
        if gpu.processes:
            st.dataframe(process_table(gpu, active), hide_index=True, key=f"gpu{gpu.index}_processes")
        elif "processes" not in gpu.errors:
            st.caption("NVML lists no process on this GPU.")
        run_links(runs_on(f"cuda:{gpu.index}", active, [p.pid for p in gpu.processes]))


def cpu_card(found: Inventory, active: Sequence[Run]) -> None:
    with st.container(border=True):
        st.markdown(f"**cpu · {found.cpu_name}**")
        cells = st.columns(3)
        cells[0].metric("Logical cores", found.cpu_logical_cores)
        cells[1].metric("Host CPU", f"{found.cpu_percent:.0f} %")
        cells[2].metric("Host memory", f"{found.host_memory_used_bytes / GIB:.1f} / "
                                       f"{found.host_memory_total_bytes / GIB:.1f} GiB")
        on_cpu = runs_on(scheduler.CPU, active)
        if on_cpu:
            run_links(on_cpu)
        else:
            st.caption("No Arena run is on the CPU now.")


def scheduler_card(lease: Optional[SchedulerLease], queued: Sequence[Run], now: datetime, on_ray: bool = False) -> None:
    st.subheader("Scheduler")
    local_settings = ((scheduler.ENV_RUNS_PER_GPU, scheduler.runs_per_gpu),
                      (scheduler.ENV_CPU_SLOTS, scheduler.cpu_slots))
    if on_ray:
        st.caption("The scheduler hands queued runs to the Ray cluster, which places them "
                   f"(`{scheduler.ENV_RUNS_PER_GPU}` and `{scheduler.ENV_CPU_SLOTS}` apply to the local executor).")
    for variable, read in () if on_ray else local_settings:
        try:
            st.caption(f"`{variable}` = {read()}")
        except ValueError as exc:
            st.error(f"{exc}. Fix it (e.g. `export {variable}=1`) and restart the dashboard; "
                     "until then nothing is placed.", icon=":material/error:")
    try:
        this_one_schedules = scheduler.scheduling_enabled()
    except ValueError as exc:
        this_one_schedules = False
        st.error(f"{exc}. Fix it and restart the dashboard.", icon=":material/error:")
    if lease is None or lease.expires_at < now:
        hint = ("start the dashboard or `python -m engine scheduler`" if this_one_schedules else
                f"this dashboard does not schedule (`{scheduler.ENV_SCHEDULER}=off`): start "
                "`python -m engine scheduler` or a dashboard with it on")
        st.warning(f"No scheduler active — {hint}. Queued runs wait.", icon=":material/warning:")
    else:
        left_s = (lease.expires_at - now).total_seconds()
        mine = lease.pid == os.getpid() and lease.hostname == socket.gethostname()
        st.caption(f"Scheduler: {'this dashboard, ' if mine else ''}{lease.hostname} pid {lease.pid} "
                   f"(lease renewed every second, expires in {left_s:.0f} s).")
    if queued:
        st.dataframe(queue_table(queued), hide_index=True, key="devices_queue")
    else:
        st.caption("The queue is empty: runs you launch wait here for a free device.")
        st.page_link(common.LAUNCH_PAGE, label="Launch a run", icon=":material/rocket_launch:")


def cluster_card(active: Sequence[Run]) -> None:
    """The Ray cluster's nodes and GPUs as Ray accounts for them (ARENA_EXECUTOR=ray)."""
    st.subheader("Ray cluster")
    address = ray_executor.ray_address()
    try:
        nodes = ray_executor.cluster_nodes()
    except RuntimeError as exc:
        st.error(f"{exc}. Queued runs wait until the cluster answers.", icon=":material/error:")
        return
    alive = [node for node in nodes if node.alive]
    gpus = sum(node.gpus for node in alive)
    st.caption(f"`{ray_executor.ENV_EXECUTOR}=ray` · address `{address}` · {len(alive)} node(s) alive, "
               f"{sum(node.cpus for node in alive):g} CPUs, {gpus:g} GPUs. Each run asks Ray for "
               f"{'1 GPU (auto) or ' if gpus else ''}{ray_executor.cpus_per_run():g} CPU(s) and runs where Ray "
               "puts it; free counts are Ray's accounting, not measured load.")
    if common.db_url().startswith("sqlite") and len(alive) > 1:
        st.warning("The database is a SQLite file on this machine: runners on other nodes cannot open it. "
                   "Point Arena at PostgreSQL (`ARENA_DB_URL=postgresql+psycopg://...`) — see README, Scaling out.",
                   icon=":material/warning:")
    st.dataframe(node_table(nodes, active), column_config=NODE_COLUMNS, hide_index=True, key="devices_nodes")


def panel() -> None:
    found = inventory()
    history = gpu_history()
    history.add(found)
    with common.sessions().begin() as s:
        active = queries.list_runs(s, statuses=ACTIVE_STATUSES)
        lease = s.get(SchedulerLease, scheduler.LEASE_NAME)
    # A placed run still starting up already holds its device: it counts there, and in the queue.
    queued = [run for run in active if run.status == QUEUED]

    try:
        on_ray = ray_executor.executor_name() == ray_executor.RAY
    except ValueError as exc:
        on_ray = False
        st.error(f"{exc}. Fix it and restart the dashboard; until then queued runs wait.",
                 icon=":material/error:")
    if on_ray:
        cluster_card(active)
    st.subheader("GPUs of this machine" if on_ray else "GPUs")
    if not found.available:
        st.info(f"No NVIDIA GPU visible: {found.reason}. Runs use the CPU.", icon=":material/memory:")
    elif not found.gpus:
        st.info("NVML answered but lists no GPU. Runs use the CPU.", icon=":material/memory:")
    else:
        st.caption(f"Driver {found.driver_version or 'n/a'} · CUDA {found.cuda_version or 'n/a'}"
                   + "".join(f" · {caption}" for caption in error_captions(found.errors)))
        st.dataframe(gpu_table(found, active), column_config=GPU_COLUMNS, hide_index=True, key="devices_gpus")
        for gpu in found.gpus:
            gpu_card(gpu, active, history)
    st.subheader("CPU")
    cpu_card(found, active)
    scheduler_card(lease, queued, common.utc_now(), on_ray)


common.ensure_router()
st.title("Devices")
st.caption(f"Updating every {common.REFRESH_INTERVAL}. Process ids come from NVML: inside a container they can "
           "be host ids that match no run; runs are then matched by the device the scheduler placed them on.")
st.fragment(common.guarded(panel), run_every=common.REFRESH_INTERVAL)()
