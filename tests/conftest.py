"""Shared fixtures: every test gets its own database (SQLite file, or PostgreSQL database) and ARENA_HOME (run logs)."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import pytest

from tests import postgres

REPO_ROOT = Path(__file__).resolve().parent.parent

# make test runs pytest-xdist workers side by side (Makefile's TEST_WORKERS: 2 on 2 cores), so every core already
# has a test process. PyTorch's OpenMP team spins at each op's barrier while one of its threads waits for a core:
# a torch cnn run (digits, 20 epochs) that trains in 10.6 s alone took 253 s beside one busy core with its default
# 2 threads, and 10.6 s with 1 (TensorFlow's own pool: 10.5 s alone, 12.6 s beside it). So each worker, and the
# runners, servers and CLIs it starts (they inherit the environment), gets its share of the cores, as Arena gives
# each rank of a multi-worker run (ARENA_THREADS). Set before anything imports torch; a value already set wins.
_TEST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 1)
if _TEST_WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _TEST_WORKERS)))
# Derived data (engine.data.cache_dir: digits' split per seed) is kept across tests, as a user's runs share it; each
# test's ARENA_HOME is its own. tests/engine/test_data.py points it elsewhere to test the cache itself.
os.environ.setdefault("ARENA_CACHE_DIR", str(Path(tempfile.gettempdir()) / f"arena-test-cache-{os.getuid()}"))
# Runs whose test is about something else skip the after-training calibration and operator profile
# (on by default: 20 split/fused step pairs and 5 profiled steps, 1-2 s a run, tens on resnet);
# tests/engine/test_calibration.py, test_traces.py and the profile pages' tests keep them on.
NO_CALIBRATION = dict(calibration_steps=0, profile_steps=0)
NO_CALIBRATION_FLAGS = ["--calibration-steps", "0", "--profile-steps", "0"]


@pytest.fixture
def arena_db(tmp_path, monkeypatch) -> str:
    """A fresh SQLite database URL, also set as ARENA_DB_URL; ARENA_HOME points into tmp_path."""
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARENA_DB_URL", url)
    return url


@pytest.fixture(scope="session")
def postgres_server():
    """The admin URL of the session's PostgreSQL server (tests/postgres.py); skips, or fails in CI, without one."""
    yield from postgres.server()


@pytest.fixture
def postgres_url(postgres_server) -> Iterator[str]:
    """A fresh, empty PostgreSQL database of its own for this test (dropped after it): its URL."""
    with postgres.fresh_database(postgres_server) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path, monkeypatch) -> str:
    """A fresh database of each backend Arena supports, also set as ARENA_DB_URL; ARENA_HOME points into tmp_path."""
    url = f"sqlite:///{tmp_path / 'arena.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARENA_DB_URL", url)
    return url


T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout_s: float = 60.0, what: str = "condition",
               every_s: float = 0.1) -> T:
    """condition()'s first truthy value, polled every every_s; fails naming what did not happen in time."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout_s} s")
        time.sleep(every_s)


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m engine ARGS` from the repository root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(scope="session", autouse=True)
def _scan_streamlit_components_once():
    """Every AppTest's first run scans all installed packages' metadata for Streamlit components (email-parsing
    ~150 METADATA files, tensorflow's among them): a third of a Launch form test's time. The packages do not change
    during a session, so the scan's answer is kept for it; the app itself runs as it would."""
    from streamlit.components.v2 import manifest_scanner

    scan = manifest_scanner.scan_component_manifests
    found = scan()
    manifest_scanner.scan_component_manifests = lambda max_workers=None: list(found)
    yield
    manifest_scanner.scan_component_manifests = scan


@pytest.fixture(scope="session", autouse=True)
def _app_runs_as_in_the_dashboards_process():
    """After every script run Streamlit resets the state of Keras and matplotlib if the process imported them
    (script_runner._clean_problem_modules). The dashboard's process imports neither (tests/engine/test_imports.py
    checks it); a test worker imports TensorFlow once an in-process TensorFlow test ran there, and from then on
    every AppTest run paid Keras's clear_session, a garbage collection over TensorFlow's heap: 0.3 s a run,
    tests/pages/test_bad_inputs_form.py's 39 tests 7.7 s of CPU alone and 44 s after one. Here, as there, nothing
    is reset."""
    from streamlit.runtime.scriptrunner import script_runner

    reset = script_runner._clean_problem_modules
    script_runner._clean_problem_modules = lambda: None
    yield
    script_runner._clean_problem_modules = reset


@pytest.fixture(autouse=True)
def _stop_schedulers():
    """A test that launched runs in-process leaves no scheduler thread (or lease) behind."""
    yield
    from engine import scheduler

    scheduler.stop_all()


def stop_run(sessions, run_id: int) -> bool:
    """End a run the way an outside SIGTERM (a machine shutting down) does: a waiting one leaves the queue as
    failed; a started one's runner gets SIGTERM and records the stop. False when there was nothing to stop.

    Not the user's stop (engine.launch.cancel_runs ends a run cancelled); the runner's SIGTERM path, for tests.
    """
    import signal
    import socket

    from db import queries
    from db.models import ACTIVE_STATUSES
    from engine.processes import reap, runner_alive

    with sessions.begin() as s:
        if queries.cancel_waiting(s, run_id):
            return True
        run = queries.get_run(s, run_id)
        if run is None or run.status not in ACTIVE_STATUSES:
            return False
        pid, host = run.pid, run.hostname
    if pid is None or host != socket.gethostname() or not runner_alive(pid):
        reap(sessions)
        return False
    os.kill(pid, signal.SIGTERM)
    return True


@pytest.fixture
def a100_and_t4(monkeypatch, tmp_path):
    """A fake NVML with an A100 (0.8 GiB used) and a T4 (15 GiB): what device checks and labels read."""
    from tests.fakes import GIB, fake_gpu, fake_state, install_fake_nvml

    gpus = [fake_gpu(0, memory_used_bytes=GIB * 4 // 5),
            fake_gpu(1, name="NVIDIA Tesla T4", memory_total_bytes=15 * GIB)]
    return install_fake_nvml(monkeypatch, tmp_path, fake_state(gpus))
