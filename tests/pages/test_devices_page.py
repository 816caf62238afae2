"""Devices page: GPUs from a fake NVML with the Arena runs on them, a failing gauge, no NVML at all, the queue."""
from __future__ import annotations

import base64
import json
import socket
import time
from datetime import timedelta

import numpy as np
import pytest
import streamlit as st

from db import deployments, queries
from db.models import RUNNING, SchedulerLease
from db.session import make_sessionmaker
from engine.launch import queue_runs
from engine.spec import RunSpec
from tests.fakes import GIB, fake_gpu, fake_state, hide_nvml, install_fake_nvml, write_state

DEVICES_PAGE = "pages/devices.py"
RUN_PID, FOREIGN_PID = 777_001, 4242  # no such processes need to exist: NVML's list is what matters


@pytest.fixture(autouse=True)
def watch_only(monkeypatch):
    """These tests make up runs (on GPUs that do not exist); the dashboard must not schedule them for real."""
    monkeypatch.setenv("ARENA_SCHEDULER", "off")


@pytest.fixture(autouse=True)
def fresh_history():
    """The page keeps GPU history in st.cache_resource, which outlives one AppTest: start each test empty."""
    st.cache_resource.clear()
    yield
    st.cache_resource.clear()


def add_run(sessions, framework: str, device: str = "auto", **values) -> int:
    spec = RunSpec.with_model_defaults(framework, "mlp", "digits", epochs=1, device=device)
    with sessions.begin() as s:
        run_id = queries.create_run(s, spec.to_dict()).id
        if values:
            queries.update_run(s, run_id, **values)
    return run_id


@pytest.fixture
def machine(arena_db, monkeypatch, tmp_path):
    """Two GPUs: GPU 0 runs an Arena run's process and a foreign one; a run is placed on GPU 1, one on the CPU,
    two wait in the queue."""
    sessions = make_sessionmaker(arena_db)
    ids = {
        "by_pid": add_run(sessions, "torch", status=RUNNING, pid=RUN_PID),  # started before placement existed
        "placed": add_run(sessions, "tensorflow", "cuda:1", status=RUNNING, pid=RUN_PID + 1, placed_device="cuda:1"),
        "cpu": add_run(sessions, "torch", "cpu", status=RUNNING, pid=RUN_PID + 2, placed_device="cpu"),
        "queued_gpu": add_run(sessions, "torch", "cuda:1"),
        "queued_auto": add_run(sessions, "tensorflow"),
    }
    state = fake_state([
        fake_gpu(0, processes=[[RUN_PID, 3 * GIB], [FOREIGN_PID, None]]),
        fake_gpu(1, name="NVIDIA Tesla T4", memory_total_bytes=16 * GIB, memory_used_bytes=12 * GIB,
                 utilization_pct=97, power_mw=65_400, power_limit_mw=70_000, energy_mj=7_200_000_000),
    ])
    path = install_fake_nvml(monkeypatch, tmp_path, state)
    return sessions, ids, path, state


def texts(elements) -> list[str]:
    return [element.value for element in elements]


def table(at, column: str):
    """The first table with this column (dataframes carry no key in AppTest): GPUs "device",
    processes "pid", queue "position"."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def link_labels(at) -> list[str]:
    return [link.proto.label for link in at.get("page_link")]


def test_gpus_with_their_arena_runs_cpu_and_queue(machine, open_page):
    sessions, ids, _, _ = machine

    at = open_page(DEVICES_PAGE)

    assert at.title[0].value == "Devices"
    assert "Driver 550.54.15 · CUDA 12.4" in texts(at.caption)
    gpus = table(at, "device").set_index("device")
    assert list(gpus.index) == ["cuda:0", "cuda:1"]
    assert gpus.loc["cuda:0", "name"] == "NVIDIA A100-SXM4-80GB"
    assert gpus.loc["cuda:0", "memory"] == "4.0 / 80.0 GiB (5%)"
    assert gpus.loc["cuda:1", "memory"] == "12.0 / 16.0 GiB (75%)"
    assert (gpus.loc["cuda:1", "utilization"], gpus.loc["cuda:1", "power"]) == ("97 %", "65 W / 70 W")
    assert gpus.loc["cuda:0", "temperature"] == "45 °C" and gpus.loc["cuda:0", "energy"] == "5.0 kJ"
    assert gpus.loc["cuda:1", "energy"] == "2.00 kWh"  # 7.2e9 mJ
    assert gpus.loc["cuda:0", "runs"] == f"run {ids['by_pid']} · torch mlp/digits"
    assert gpus.loc["cuda:1", "runs"] == f"run {ids['placed']} · tensorflow mlp/digits"

    processes = table(at, "pid").set_index("pid")
    assert processes.loc[RUN_PID, "run"] == f"run {ids['by_pid']} · torch mlp/digits"
    assert processes.loc[RUN_PID, "memory"] == "3.00 GiB"
    assert (processes.loc[FOREIGN_PID, "run"], processes.loc[FOREIGN_PID, "memory"]) == ("not an Arena run", "n/a")
    # GPU 1: the placed run's pid is not in NVML's list (as with host pids in a container); it shows by placement.
    assert "NVML lists no process on this GPU." in texts(at.caption)

    links = link_labels(at)
    assert f"run {ids['by_pid']} · torch mlp/digits (running)" in links
    assert f"run {ids['placed']} · tensorflow mlp/digits (running)" in links
    assert f"run {ids['cpu']} · torch mlp/digits (running)" in links  # the CPU card
    assert len(at.get("plotly_chart")) == 6  # utilisation, memory and power per GPU
    assert [m.label for m in at.metric] == ["Logical cores", "Host CPU", "Host memory"]

    queue = table(at, "position")
    assert list(queue["position"]) == [1, 2]
    assert list(queue["run"]) == [f"run {ids['queued_gpu']} · torch mlp/digits",
                                  f"run {ids['queued_auto']} · tensorflow mlp/digits"]
    assert list(queue["asked for"]) == ["cuda:1", "auto"]
    assert list(queue["state"]) == ["waiting for cuda:1", "waiting for a free device"]
    assert "No scheduler active" in at.warning[0].value
    assert "`ARENA_RUNS_PER_GPU` = 1" in texts(at.caption) and "`ARENA_CPU_SLOTS` = 1" in texts(at.caption)


def test_a_gauge_nvml_cannot_read_shows_n_a_and_why(machine, open_page):
    _, _, path, state = machine
    state["gpus"][0]["fail"] = {"nvmlDeviceGetPowerUsage": "NotSupported"}
    write_state(path, state)

    at = open_page(DEVICES_PAGE)

    gpus = table(at, "device").set_index("device")
    assert gpus.loc["cuda:0", "power"] == "n/a"
    assert gpus.loc["cuda:0", "utilization"] == "35 %"  # the rest of GPU 0 still reads
    assert gpus.loc["cuda:1", "power"] == "65 W / 70 W"
    assert "n/a — power: Not Supported (NVMLError_NotSupported)" in texts(at.caption)


def test_without_nvml_the_page_says_why_and_shows_the_cpu(arena_db, monkeypatch, open_page):
    hide_nvml(monkeypatch)
    sessions = make_sessionmaker(arena_db)
    cpu_run = add_run(sessions, "tensorflow", "cpu", status=RUNNING, pid=RUN_PID, placed_device="cpu")

    at = open_page(DEVICES_PAGE)

    note = at.info[0].value
    assert note.startswith("No NVIDIA GPU visible: pynvml not importable") and note.endswith("Runs use the CPU.")
    assert not at.dataframe  # no GPU table, and the queue is empty
    assert [m.label for m in at.metric] == ["Logical cores", "Host CPU", "Host memory"]
    assert f"run {cpu_run} · tensorflow mlp/digits (running)" in link_labels(at)
    assert "The queue is empty: runs you launch wait here for a free device." in texts(at.caption)
    assert "Launch a run" in link_labels(at)


def test_failing_nvml_init_is_explained(arena_db, monkeypatch, tmp_path, open_page):
    install_fake_nvml(monkeypatch, tmp_path, fake_state([fake_gpu(0)], fail={"nvmlInit": "DriverNotLoaded"}))

    at = open_page(DEVICES_PAGE)

    assert at.info[0].value == ("No NVIDIA GPU visible: NVML unavailable: Driver Not Loaded "
                                "(NVMLError_DriverNotLoaded). Runs use the CPU.")
    assert "No Arena run is on the CPU now." in texts(at.caption)


def test_a_bad_scheduler_setting_is_an_error_saying_how_to_fix_it(arena_db, monkeypatch, open_page):
    hide_nvml(monkeypatch)
    monkeypatch.setenv("ARENA_RUNS_PER_GPU", "two")

    at = open_page(DEVICES_PAGE)

    assert "ARENA_RUNS_PER_GPU='two': expected a whole number >= 1" in at.error[0].value
    assert "export ARENA_RUNS_PER_GPU=1" in at.error[0].value


def test_the_lease_holder_is_shown(arena_db, monkeypatch, open_page):
    hide_nvml(monkeypatch)
    now = queries.utcnow()
    with make_sessionmaker(arena_db).begin() as s:
        s.add(SchedulerLease(name="scheduler", holder="abc", hostname="box-7", pid=31337, acquired_at=now,
                             expires_at=now + timedelta(seconds=60)))

    at = open_page(DEVICES_PAGE)

    assert not at.warning
    assert any(text.startswith("Scheduler: box-7 pid 31337 (lease renewed every second, expires in")
               for text in texts(at.caption))


def test_charts_keep_a_rolling_history_one_sample_per_second(machine, open_page):
    _, _, path, state = machine
    started = time.monotonic()
    at = open_page(DEVICES_PAGE)
    at.run()  # a refresh within a second (another tab, say) adds no sample
    elapsed = time.monotonic() - started

    # Three script runs: one sample, unless a busy machine spread them over more than a second.
    first = utilisation_points(at)
    assert set(first) == {35} and 1 <= len(first) <= 1 + int(elapsed), (first, elapsed)
    time.sleep(1.1)
    state["gpus"][0]["utilization_pct"] = 50
    write_state(path, state)
    at.run()
    assert utilisation_points(at) == first + [50]


def utilisation_points(at) -> list[float]:
    """The y values of GPU 0's utilisation chart."""
    figures = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    y = next(f for f in figures if f["layout"]["title"]["text"] == "Utilisation")["data"][0]["y"]
    if isinstance(y, dict):  # plotly 6 ships numeric arrays base64-encoded
        return np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"]).tolist()
    return y


def test_a_watch_only_dashboard_says_who_must_schedule(arena_db, monkeypatch, open_page):
    hide_nvml(monkeypatch)

    at = open_page(DEVICES_PAGE)

    assert any("this dashboard does not schedule (`ARENA_SCHEDULER=off`)" in w.value for w in at.warning)


def test_the_dashboard_that_schedules_says_so(arena_db, monkeypatch, open_page):
    hide_nvml(monkeypatch)
    monkeypatch.setenv("ARENA_SCHEDULER", "on")

    at = open_page(DEVICES_PAGE)  # starts this process's scheduler, which takes the lease on its first pass
    time.sleep(1.0)
    at.run()

    assert any(text.startswith("Scheduler: this dashboard, ") for text in texts(at.caption))


def test_a_deployment_job_measuring_here_is_shown_on_the_cpu_and_one_waiting_in_the_queue(arena_db, monkeypatch,
                                                                                           open_page):
    hide_nvml(monkeypatch)
    monkeypatch.setenv("ARENA_SCHEDULER", "off")  # the queue stays as the test made it
    sessions = make_sessionmaker(arena_db)
    with sessions.begin() as s:
        run = queries.create_run(s, RunSpec("torch", "mlp", "digits").to_dict()).id
        queries.claim_run(s, run, 1, "elsewhere")
        queries.finish_run(s, run, {})
        job, waiting = (deployments.create(s, run, ["onnx"], {}) for _ in range(2))
        deployments.place(s, job, "cpu", socket.gethostname())
        deployments.claim(s, job, 4242, socket.gethostname())
    (later,) = queue_runs(sessions, [RunSpec("torch", "mlp", "digits")])
    at = open_page(DEVICES_PAGE)
    assert (f"Deployment #{job} of run #{run} is measuring exported models here: it has the machine to itself, so "
            f"queued runs wait for it (Deploy page).") in texts(at.caption)
    assert "No Arena run is on the CPU now." not in texts(at.caption)
    queue = next(frame.value for frame in at.dataframe if "position" in frame.value.columns)
    # In the order queued: the job first, the run queued after it waits behind it.
    assert queue["run"].tolist() == [f"deployment {waiting} of run {run}", f"run {later} · torch mlp/digits"]
    assert queue["state"].iloc[0].startswith("waits for the machine")
