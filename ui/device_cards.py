"""The Devices page's cards: each GPU with its history and processes, the CPU, the scheduler and its queue,
the Ray cluster."""
from __future__ import annotations

import os
import socket
from datetime import datetime
from typing import Optional, Sequence

import streamlit as st

from analysis.device_tables import (
    GIB, GpuHistory, error_captions, history_chart, node_table, process_table, queue_table, run_label, runs_on,
)
from db.models import RUNNING, Run, SchedulerLease
from engine import scheduler
from engine.executors import ENV_EXECUTOR
from engine.executors import local as local_executor
from engine.executors import ray as ray_executor
from engine.nvml import GpuInfo, Inventory
from ui.database import db_url
from ui.router import COMPARE_PAGE, LAUNCH_PAGE
from ui.widgets import RUNS_PARAM

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



@st.cache_resource(show_spinner=False)
def gpu_history() -> GpuHistory:
    """Recent GPU samples, shared by every session of this process."""
    return GpuHistory()


def run_links(runs: Sequence[Run]) -> None:
    for run in runs:
        st.page_link(COMPARE_PAGE, label=f"{run_label(run)} ({run.status})", icon=":material/link:",
                     query_params={RUNS_PARAM: str(run.id)})


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


def cpu_card(found: Inventory, active: Sequence[Run], measuring: Sequence[dict] = ()) -> None:
    """The CPU, the Arena runs on it, and the deployment jobs holding this machine (nothing runs beside one)."""
    with st.container(border=True):
        st.markdown(f"**cpu · {found.cpu_name}**")
        cells = st.columns(3)
        cells[0].metric("Logical cores", found.cpu_logical_cores)
        cells[1].metric("Host CPU", f"{found.cpu_percent:.0f} %")
        cells[2].metric("Host memory", f"{found.host_memory_used_bytes / GIB:.1f} / "
                                       f"{found.host_memory_total_bytes / GIB:.1f} GiB")
        on_cpu = runs_on(local_executor.CPU, active)
        if on_cpu:
            run_links(on_cpu)
        elif not measuring:
            st.caption("No Arena run is on the CPU now.")
        for job in measuring:
            doing = "is measuring exported models here" if job["status"] == RUNNING else "is starting here"
            st.caption(f"Deployment #{job['id']} of run #{job['run_id']} {doing}: it has the machine to itself, so "
                       f"queued runs wait for it (Deploy page).")


def scheduler_card(lease: Optional[SchedulerLease], queued: Sequence[Run], now: datetime, on_ray: bool = False,
                   queued_jobs: Sequence[dict] = ()) -> None:
    st.subheader("Scheduler")
    local_settings = ((local_executor.ENV_RUNS_PER_GPU, local_executor.runs_per_gpu),
                      (local_executor.ENV_CPU_SLOTS, local_executor.cpu_slots))
    if on_ray:
        st.caption("The scheduler hands queued runs to the Ray cluster, which places them "
                   f"(`{local_executor.ENV_RUNS_PER_GPU}` and `{local_executor.ENV_CPU_SLOTS}` apply to the local executor).")
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
    if queued or queued_jobs:
        st.dataframe(queue_table(queued, queued_jobs), hide_index=True, key="devices_queue")
    else:
        st.caption("The queue is empty: runs you launch wait here for a free device.")
        st.page_link(LAUNCH_PAGE, label="Launch a run", icon=":material/rocket_launch:")


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
    st.caption(f"`{ENV_EXECUTOR}=ray` · address `{address}` · {len(alive)} node(s) alive, "
               f"{sum(node.cpus for node in alive):g} CPUs, {gpus:g} GPUs. Each run asks Ray for "
               f"{'1 GPU (auto) or ' if gpus else ''}{ray_executor.cpus_per_run():g} CPU(s) and runs where Ray "
               "puts it; free counts are Ray's accounting, not measured load.")
    if db_url().startswith("sqlite") and len(alive) > 1:
        st.warning("The database is a SQLite file on this machine: runners on other nodes cannot open it. "
                   "Point Arena at PostgreSQL (`ARENA_DB_URL=postgresql+psycopg://...`) — see README, Scaling out.",
                   icon=":material/warning:")
    st.dataframe(node_table(nodes, active), column_config=NODE_COLUMNS, hide_index=True, key="devices_nodes")
