"""A real `streamlit run app.py` for tests: on a free 127.0.0.1 port, against a given environment."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

from tests.conftest import REPO_ROOT

START_TIMEOUT_S = 60  # a cold server imports plotly, pandas and SQLAlchemy before it answers
# The options `make run` passes; a test that checks .streamlit/config.toml itself passes none.
SERVER_OPTIONS = ("--server.address", "127.0.0.1", "--server.headless", "true", "--server.fileWatcherType", "none",
                  "--browser.gatherUsageStats", "false")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_dashboard(log_path: Path, env: dict[str, str], options: Sequence[str] = SERVER_OPTIONS,
                    port: Optional[int] = None) -> tuple[subprocess.Popen, str]:
    """Start the dashboard and return (process, base URL) once /_stcore/health answers; the log goes to log_path."""
    port = port or free_port()
    with open(log_path, "wb") as log:  # the child keeps its own copy of the handle
        server = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app.py", *options,
                                   "--server.port", str(port)],
                                  cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return server, base
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError("the dashboard did not start:\n" + log_path.read_text())
        time.sleep(0.3)


def stop_dashboard(server: subprocess.Popen) -> None:
    server.terminate()
    server.wait(timeout=20)


def arena_env(home: Path, db_url: str, **extra: str) -> dict[str, str]:
    """This process's environment with Arena pointed at home and db_url."""
    return {**os.environ, "ARENA_HOME": str(home), "ARENA_DB_URL": db_url, **extra}
