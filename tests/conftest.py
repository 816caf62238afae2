"""Shared fixtures: every test gets its own SQLite file and ARENA_HOME (run logs) under tmp_path."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def arena_db(tmp_path, monkeypatch) -> str:
    """A fresh SQLite database URL, also set as ARENA_DB_URL; ARENA_HOME points into tmp_path."""
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARENA_DB_URL", url)
    return url


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m engine ARGS` from the repository root, as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture(autouse=True)
def _stop_schedulers():
    """A test that launched runs in-process leaves no scheduler thread (or lease) behind."""
    yield
    from engine import scheduler

    scheduler.stop_all()
