"""Devices: the machine's GPUs and CPU, which Arena run uses each, the scheduler and its queue — live."""
from __future__ import annotations

import socket

import streamlit as st

from analysis.device_tables import error_captions, gpu_table
from db import deployments, queries
from db.models import ACTIVE_STATUSES, QUEUED, SchedulerLease
from engine import executors, scheduler
from engine.nvml import inventory
from ui.database import sessions
from ui.device_cards import GPU_COLUMNS, cluster_card, cpu_card, gpu_card, gpu_history, scheduler_card
from ui.page_errors import guarded
from ui.router import ensure_router
from ui.widgets import REFRESH_INTERVAL


def panel() -> None:
    found = inventory()
    history = gpu_history()
    history.add(found)
    with sessions().begin() as s:
        active = queries.list_runs(s, statuses=ACTIVE_STATUSES)
        lease = s.get(SchedulerLease, scheduler.LEASE_NAME)
        jobs = deployments.jobs(s, statuses=list(ACTIVE_STATUSES))
    here = socket.gethostname()
    holding = [job for job in jobs if job["hostname"] == here]  # placed here (starting) or measuring here
    queued_jobs = [job for job in jobs if job["status"] == QUEUED]
    # A placed run still starting up already holds its device: it counts there, and in the queue.
    queued = [run for run in active if run.status == QUEUED]

    try:
        on_ray = executors.executor_name() == executors.RAY
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
    cpu_card(found, active, holding)
    scheduler_card(lease, queued, queries.utcnow(), on_ray, queued_jobs)


ensure_router()
st.title("Devices")
st.caption(f"Updating every {REFRESH_INTERVAL}. Process ids come from NVML: inside a container they can "
           "be host ids that match no run; runs are then matched by the device the scheduler placed them on.")
st.fragment(guarded(panel), run_every=REFRESH_INTERVAL)()
