"""The dashboard stopped and started again mid-run: the run goes on, finishes, and the new dashboard shows it live.

A real `streamlit run app.py` hosts the scheduler (its first page view starts it, as a user's
would), which starts the run's runner process. The server is stopped with SIGTERM mid-run; the
runner, detached, keeps training and writing with no dashboard at all. A second server on the same
database then shows the run in Debian's Chromium: running, its epoch advancing, then finished, with
every point the runner produced in the database.
"""
from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from db import queries
from db.models import FINISHED, RUNNING
from db.session import make_sessionmaker
from engine.launch import queue_runs
from engine.spec import RunSpec
from tests import dashboard
from tests.conftest import NO_CALIBRATION
from tests.e2e.test_browser import CHROMIUM
from tests.reliability import assert_nothing_lost, stored_points

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="Debian's chromium is not installed (apt-get install chromium)"),
]

# Long enough to outlive one dashboard and be watched live by the next: about 25 s on a quiet 2-core
# machine (40 ms an epoch), three to four minutes when other test runs load it to 8.
EPOCHS = 600
SPEC = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=EPOCHS, **NO_CALIBRATION)
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 20
RUN_TIMEOUT_S = 600  # only stops a hang


def start_dashboard(tmp_path: Path, db_url: str, name: str) -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` on a free port against db_url; (process, base URL) once it answers."""
    return dashboard.start_dashboard(tmp_path / f"{name}.log", dashboard.arena_env(tmp_path / "home", db_url))


def wait_for(condition, timeout_s: float, what: str):
    """Poll condition() until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.3)
    return result


def test_the_run_outlives_its_dashboard_and_the_next_one_shows_it_live(tmp_path, browser_page, servers):
    from playwright.sync_api import expect

    page = browser_page
    db_url = f"sqlite:///{tmp_path / 'arena.db'}"
    sessions = make_sessionmaker(db_url)
    first, base = start_dashboard(tmp_path, db_url, "first")
    servers.append(first)
    page.goto(base)  # the first page view runs app.py, which starts this server's scheduler
    # A fresh server's first script run imports plotly, pandas and the engine: a cold start's allowance.
    expect(page.get_by_role("heading", name="Launch", exact=True)).to_be_visible(timeout=30_000)

    (run_id,) = queue_runs(sessions, [SPEC])  # queued only: the dashboard's scheduler starts it

    def running():
        with sessions.begin() as s:
            run = queries.get_run(s, run_id)
            return run if run.status == RUNNING and run.step > 0 else None

    run = wait_for(running, START_TIMEOUT_S * 2, "the dashboard's scheduler to start the run")
    runner = psutil.Process(run.pid)
    assert runner.ppid() == first.pid, "the first dashboard started the runner"

    first.send_signal(signal.SIGTERM)
    first.wait(timeout=STOP_TIMEOUT_S)
    assert not psutil.pid_exists(first.pid)

    # No dashboard anywhere: the runner trains on and keeps writing.
    with sessions.begin() as s:
        before, points_before = queries.get_run(s, run_id), stored_points(s, run_id)

    def still_writing():
        with sessions.begin() as s:
            now, points = queries.get_run(s, run_id), stored_points(s, run_id)
        return (now.status == RUNNING and now.heartbeat_at > before.heartbeat_at and now.step > before.step
                and all(points[kind] > points_before[kind] for kind in ("metric_points", "samples")))

    wait_for(still_writing, 60, "the runner to write with no dashboard running")
    assert runner.is_running() and runner.status() != psutil.STATUS_ZOMBIE

    second, base = start_dashboard(tmp_path, db_url, "second")
    servers.append(second)
    page.goto(f"{base}/runs")
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible(timeout=30_000)  # a cold start too
    expect(page.get_by_text("Updating every 2s while runs are active.")).to_be_visible()
    table = page.get_by_test_id("stDataFrame").first  # a canvas grid: its cells are in the DOM for accessibility
    expect(table).to_contain_text("running")
    epoch = re.compile(rf"(\d+)/{EPOCHS}")

    def shown_epoch() -> int:
        # The Epoch cell on its own: the table's whole text runs the Progress cell's digits into it
        # ("16.666666666666664100/600" is 100/600). The cells are the canvas grid's hidden accessible copy,
        # which get_by_role skips as invisible.
        cells = (epoch.fullmatch(text.strip()) for text in table.locator("[role=gridcell]").all_text_contents())
        return next((int(found.group(1)) for found in cells if found), -1)

    first_seen = wait_for(lambda: shown_epoch() + 1, 60, "the run's epoch in the table") - 1
    try:
        wait_for(lambda: shown_epoch() > first_seen, 120, "the table to show the epoch advancing")
    except AssertionError as exc:  # say which side stalled: the runner, or the page showing it
        with sessions.begin() as s:
            run = queries.get_run(s, run_id)
            stored_now = (run.status, run.epoch, run.heartbeat_at)
        raise AssertionError(f"{exc}; table showed epoch {shown_epoch()} (first {first_seen}), the database has "
                             f"(status, epoch, heartbeat) {stored_now}, runner alive {runner.is_running()}; table "
                             f"text: {(table.text_content() or '')[:300]!r}") from exc
    expect(table).to_contain_text("finished", timeout=RUN_TIMEOUT_S * 1000)

    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        assert (run.status, run.epoch, run.pid) == (FINISHED, EPOCHS, runner.pid), run.error
        stored = assert_nothing_lost(s, run)
    assert stored["metric_points"] > EPOCHS * run.summary["steps_per_epoch"] * 2  # loss and time of every step
    second.send_signal(signal.SIGTERM)
    second.wait(timeout=STOP_TIMEOUT_S)
