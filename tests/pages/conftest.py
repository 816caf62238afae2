"""Dashboard fixtures: AppTest on app.py against a temp database; real runs made by the real CLI."""
from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import pytest
from streamlit.testing.v1 import AppTest

from db import queries
from db.models import ACTIVE_STATUSES, Run
from db.session import make_sessionmaker
from engine import launch as launch_module
from engine import processes
from engine.spec import RunSpec
from ui.router import LAUNCH_PAGE
from tests.conftest import stop_run
from tests.pages.helpers import failures

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_PATH = REPO_ROOT / "app.py"
RENDER_TIMEOUT_S = 30  # the first render in a process imports plotly, pandas and SQLAlchemy
CLI_TIMEOUT_S = 180
# 2 epochs of 10 steps: more than the default 10 warm-up steps, so the runs have steady-state step times.
STEPS_PER_EPOCH = 10
FAILED_ERROR = (
    "Traceback (most recent call last):\n"
    '  File "engine/loop.py", line 80, in train\n'
    "FloatingPointError: train_loss became nan in epoch 1: lower lr (now 5.0)?\n"
)


@dataclass(frozen=True)
class StoredRuns:
    url: str
    home: Path
    torch_id: int
    tensorflow_id: int
    failed_id: int


@pytest.fixture(scope="session")
def trained_runs(tmp_path_factory) -> StoredRuns:
    """Real runs, trained once per test session by the real CLI: PyTorch and TensorFlow with the same
    settings, plus a failed run."""
    home = tmp_path_factory.mktemp("arena-trained")
    url = f"sqlite:///{home / 'arena.db'}"
    env = {**os.environ, "ARENA_HOME": str(home), "ARENA_DB_URL": url}
    sessions = make_sessionmaker(url)
    run_ids = {}
    # One after the other, as a fair speed comparison needs (the Compare page warns about overlap).
    for framework in ("torch", "tensorflow"):
        result = subprocess.run(
            [sys.executable, "-m", "engine", "run", "--framework", framework, "--model", "mlp", "--dataset", "digits",
             "--epochs", "2", "--max-steps-per-epoch", str(STEPS_PER_EPOCH), "--db", url, "--json"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
        )
        assert result.returncode == 0, f"the {framework} run failed:\n{result.stderr}"
        run_ids[framework] = json.loads(result.stdout.strip().splitlines()[-1])["run_id"]
    spec = RunSpec.with_model_defaults("torch", "mlp", "digits", epochs=2, lr=5.0, optimizer="sgd")
    with sessions.begin() as s:
        # They trained beside the other test worker, which the runs measured (summary's others_busy_cores) and the
        # Compare page would flag as a busy machine on every page test; they stand for quiet runs here, so read so.
        # tests/pages/test_compare_page.py shows the flag on runs that say they were not.
        for run_id in run_ids.values():
            run = s.get(Run, run_id)
            run.summary = {**run.summary, "others_busy_cores": 0.0}
        failed_id = queries.create_run(s, spec.to_dict()).id
        queries.fail_run(s, failed_id, FAILED_ERROR)
    sessions.kw["bind"].dispose()
    return StoredRuns(url, home, run_ids["torch"], run_ids["tensorflow"], failed_id)


@pytest.fixture(scope="module")
def stored_runs(trained_runs, tmp_path_factory) -> StoredRuns:
    """This module's own copy of the trained runs: a module may add or delete runs without touching others."""
    home = tmp_path_factory.mktemp("arena-home")
    with closing(sqlite3.connect(trained_runs.url.split("///", 1)[1])) as source, \
            closing(sqlite3.connect(home / "arena.db")) as copy:
        source.backup(copy)  # consistent even with a WAL file beside the database
    return replace(trained_runs, url=f"sqlite:///{home / 'arena.db'}", home=home)


@pytest.fixture
def runs_db(stored_runs, monkeypatch) -> StoredRuns:
    """Point the dashboard at the module's database of stored runs."""
    monkeypatch.setenv("ARENA_HOME", str(stored_runs.home))
    monkeypatch.setenv("ARENA_DB_URL", stored_runs.url)
    return stored_runs


@pytest.fixture
def open_page() -> Callable[..., AppTest]:
    """Render app.py, switch to a page (with ?query=params) and fail on any uncaught exception.

    Always switching, even to the default page, matters: AppTest resets Streamlit's legacy
    pages-folder flag before every run, so the first run (through app.py) and later runs (the
    page alone) would key widgets differently and a value set after the first run would be lost.
    """
    def _open(page: str = LAUNCH_PAGE, **query_params: str) -> AppTest:
        at = AppTest.from_file(str(APP_PATH), default_timeout=RENDER_TIMEOUT_S).run()
        assert not failures(at), failures(at)
        for key, value in query_params.items():
            at.query_params[key] = value
        at.switch_page(page).run()
        assert not failures(at), failures(at)
        return at
    return _open


@pytest.fixture
def stop_launched_runs(arena_db):
    """After the test: stop the runs the dashboard launched, reap their processes, leave none active."""
    yield arena_db
    sessions = make_sessionmaker(arena_db)
    with sessions.begin() as s:
        active = [run.id for run in queries.list_runs(s, statuses=ACTIVE_STATUSES)]
    for run_id in active:
        stop_run(sessions, run_id)
    # The runners are children of this process: wait, so none outlives the test or lingers as a zombie.
    for child in list(processes.children):
        child.wait(timeout=60)
    launch_module.reap(sessions)  # a runner stopped before it claimed its run is marked failed here
    with sessions.begin() as s:
        assert queries.list_runs(s, statuses=ACTIVE_STATUSES) == []
