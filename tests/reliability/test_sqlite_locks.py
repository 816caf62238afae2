"""The dashboard keeps its SQLite locks while other processes come and go (issue 14).

Closing any descriptor of a database file drops every POSIX lock the process holds on it, its
SQLite connections' included. The dashboard once checked the file's header with open() on every
page call: a runner or a CLI that then closed its last connection believed itself alone,
checkpointed and deleted the WAL and the shared-memory index under the dashboard's connections, and
whatever the dashboard wrote from then on went to deleted files (a rename never stored, a queued
run a runner could not find), until its reads failed with "database disk image is malformed".

Real processes throughout: `streamlit run app.py` driven in Debian's Chromium, real runners, the
real CLI, writer processes through the real Recorder. The test process keeps no connection open
while the others exit: it would hold the locks the dashboard lost and hide the fault.
"""
from __future__ import annotations

import json
import random
import re
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import psutil
import pytest

from db import queries
from db.models import FINISHED
from db.session import make_sessionmaker
from engine.launch import queue_runs
from engine.spec import RunSpec
from tests import dashboard
from tests.conftest import NO_CALIBRATION, REPO_ROOT, run_cli
from tests.e2e.test_browser import CHROMIUM
from tests.reliability import assert_nothing_lost, held_deleted, integrity

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)"),
]

TINY = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=2, max_steps_per_epoch=10, **NO_CALIBRATION)
# What a dashboard whose connections lost their files says, in its log or on a page.
BROKEN = re.compile(r"malformed|disk I/O error|not a database|DatabaseError|OperationalError|Traceback")
RUN_TIMEOUT_S = 180
FIRST_PAGE_MS = 60_000  # a cold server imports plotly, pandas and the engine first, slowly on a busy machine
PAGE_MS = 30_000


def sqlite_rows(path: Path, sql: str) -> list[tuple]:
    """Rows read by a process of their own: a third party that sees only what reached the file."""
    code = ("import json, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "print(json.dumps(c.execute(sys.argv[2]).fetchall())); c.close()")
    result = subprocess.run([sys.executable, "-c", code, str(path), sql], capture_output=True, text=True, timeout=60,
                            check=True)
    return [tuple(row) for row in json.loads(result.stdout)]


def run_row(path: Path, run_id: int) -> tuple:
    """(status, pid, name) of a run, read with a connection opened and closed at once."""
    with closing(sqlite3.connect(path, timeout=30)) as connection:
        return connection.execute("SELECT status, pid, name FROM runs WHERE id = ?", (run_id,)).fetchone()


def assert_page_whole(page) -> None:
    """The page drew no error: neither Streamlit's exception box nor Arena's failure message."""
    from playwright.sync_api import expect

    expect(page.get_by_test_id("stException")).to_have_count(0)
    expect(page.get_by_text("could not be read or written")).to_have_count(0)
    expect(page.get_by_text("could not be shown")).to_have_count(0)


def start(tmp_path: Path, url: str, **env: str):
    return dashboard.start_dashboard(tmp_path / "streamlit.log", dashboard.arena_env(tmp_path / "home", url, **env))


def test_pages_read_while_a_runner_finishes_and_exits_break_nothing(tmp_path, browser_page, servers):
    from playwright.sync_api import expect

    page, path = browser_page, tmp_path / "arena.db"
    url = f"sqlite:///{path}"
    server, base = start(tmp_path, url)
    servers.append(server)
    page.goto(f"{base}/runs")  # the page and the dashboard's scheduler hold connections from here on
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible(timeout=FIRST_PAGE_MS)
    sessions = make_sessionmaker(url)
    (run_id,) = queue_runs(sessions, [TINY])  # the dashboard's scheduler starts its runner
    sessions.kw["bind"].dispose()

    reads, exited_at = 0, None
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while exited_at is None or time.monotonic() - exited_at < 8:  # and 8 s of reads after the runner is gone
        assert time.monotonic() < deadline, f"run {run_id} did not finish: {run_row(path, run_id)}"
        page.goto(f"{base}/runs" if reads % 2 == 0 else f"{base}/compare?runs={run_id}")
        expect(page.get_by_role("heading", name=re.compile("^(Runs|Compare)$"))).to_be_visible(timeout=PAGE_MS)
        page.wait_for_timeout(400)
        assert_page_whole(page)
        reads += 1
        status, pid, _ = run_row(path, run_id)
        if exited_at is None and status == FINISHED and not (pid and psutil.pid_exists(pid) and
                                                               psutil.Process(pid).status() != psutil.STATUS_ZOMBIE):
            exited_at = time.monotonic()

    page.goto(f"{base}/runs")
    expect(page.get_by_test_id("stDataFrame").first).to_contain_text("finished", timeout=PAGE_MS)
    assert_page_whole(page)
    assert held_deleted(server.pid, path) == []
    log = (tmp_path / "streamlit.log").read_text()
    assert not BROKEN.search(log), log[-3000:]
    assert integrity(path) == "ok"
    sessions = make_sessionmaker(url)
    with sessions.begin() as s:
        assert_nothing_lost(s, queries.get_run(s, run_id))
    print(f"\n{reads} page reads; the runner exited and the dashboard read on")


def test_a_cli_that_exits_beside_the_dashboard_loses_none_of_its_writes(tmp_path, browser_page, servers):
    from playwright.sync_api import expect

    page, path = browser_page, tmp_path / "arena.db"
    url = f"sqlite:///{path}"
    sessions = make_sessionmaker(url)
    (run_id,) = queue_runs(sessions, [TINY])
    sessions.kw["bind"].dispose()
    server, base = start(tmp_path, url, ARENA_SCHEDULER="off")  # the runs stay queued: only the writes matter
    servers.append(server)
    page.goto(f"{base}/runs?runs={run_id}")
    expect(page.get_by_role("button", name="Edit…")).to_be_visible(timeout=FIRST_PAGE_MS)

    listed = run_cli("runs", "--db", url)  # opens the database, reads, closes its last connection, exits
    assert listed.returncode == 0, listed.stderr

    page.get_by_role("button", name="Edit…").click()
    page.get_by_label("Name").fill("renamed after the CLI left")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text(f"Saved run #{run_id}.")).to_be_visible(timeout=PAGE_MS)
    page.goto(base)
    page.get_by_text("PyTorch", exact=True).click()
    expect(page.get_by_role("button", name="Queue run", exact=True)).to_be_visible(timeout=PAGE_MS)
    page.get_by_role("button", name="Queue run", exact=True).click()
    expect(page.get_by_text(f"Queued run #{run_id + 1}")).to_be_visible(timeout=PAGE_MS)

    # A third process sees both writes in the file, and the dashboard writes to no deleted file.
    assert sqlite_rows(path, "SELECT id, name, status FROM runs ORDER BY id") == [
        (run_id, "renamed after the CLI left", "queued"), (run_id + 1, None, "queued")]
    assert held_deleted(server.pid, path) == []
    assert not BROKEN.search((tmp_path / "streamlit.log").read_text())
    assert integrity(path) == "ok"


# Stress, in the spirit of SQLite's own: writers coming and going beside a dashboard ---------------------
STRESS_S = 60  # ~17 writers exit; the lock bug this guards against broke the dashboard within seconds
MIN_WRITERS = 20  # writers that come and go at least: on a busy machine (tests in parallel) the stress lasts longer
WRITERS_AT_ONCE = 3
WRITER_LIFE_S = (0.5, 6.0)  # each writer writes this long (at random), then exits


@pytest.mark.slow
def test_writers_exiting_at_random_beside_a_reading_dashboard_lose_nothing(tmp_path, browser_page, servers):
    from playwright.sync_api import expect

    page, path = browser_page, tmp_path / "arena.db"
    url = f"sqlite:///{path}"
    make_sessionmaker(url).kw["bind"].dispose()  # the schema, made before anyone reads
    server, base = start(tmp_path, url)  # its scheduler renews its lease every second: the dashboard writes too
    servers.append(server)
    page.goto(f"{base}/runs")
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible(timeout=FIRST_PAGE_MS)
    reader = subprocess.Popen([sys.executable, "-m", "tests.reliability.sqlite_peers", "read", url, str(STRESS_S),
                               "0.1"], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rng = random.Random(14)
    writers: list[subprocess.Popen] = []
    finished: list[subprocess.CompletedProcess] = []
    page_reads, page_errors, started = 0, [], time.monotonic()
    while (time.monotonic() - started < STRESS_S - 5 or len(finished) + len(writers) < MIN_WRITERS) \
            and time.monotonic() - started < 3 * STRESS_S:
        for writer in [w for w in writers if w.poll() is not None]:
            writers.remove(writer)
            finished.append(subprocess.CompletedProcess(writer.args, writer.returncode, *writer.communicate()))
        while len(writers) < WRITERS_AT_ONCE:
            writers.append(subprocess.Popen(
                [sys.executable, "-m", "tests.reliability.sqlite_peers", "write", url,
                 f"{rng.uniform(*WRITER_LIFE_S):.2f}", rng.choice(["close", "abrupt"])],
                cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        page.goto(f"{base}/runs" if page_reads % 3 else f"{base}/compare?runs=1,2")
        try:
            expect(page.get_by_role("heading", name=re.compile("^(Runs|Compare)$"))).to_be_visible(timeout=PAGE_MS)
            assert_page_whole(page)
        except AssertionError as exc:
            page_errors.append(str(exc))
        page_reads += 1
    for writer in writers:
        finished.append(subprocess.CompletedProcess(writer.args, writer.wait(timeout=60), *writer.communicate()))
    read_out, read_err = reader.communicate(timeout=60)

    failed = [w.stderr[-2000:] for w in finished if w.returncode != 0]
    assert failed == [], failed[:2]
    reads = json.loads(read_out.strip().splitlines()[-1])
    assert reads["errors"] == [], reads["errors"][:2]
    assert page_errors == [], page_errors[:2]
    assert held_deleted(server.pid, path) == []
    assert not BROKEN.search((tmp_path / "streamlit.log").read_text())
    assert integrity(path) == "ok"
    run_ids = [int(w.stdout.split()[-1]) for w in finished]
    sessions = make_sessionmaker(url)
    with sessions.begin() as s:
        stored = [assert_nothing_lost(s, queries.get_run(s, run_id))["metric_points"] for run_id in run_ids]
    assert len(run_ids) >= MIN_WRITERS and all(count > 0 for count in stored)
    print(f"\n{len(run_ids)} writers came and went ({sum(stored):,} points, none lost); the dashboard drew "
          f"{page_reads} pages and a reader polled {reads['reads']} times, without an error")
