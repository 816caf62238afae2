"""The real dashboard in a real browser: launch a run from the form, see it finish, compare it.

Starts `streamlit run app.py` on a free localhost port against a temporary database and drives
Debian's Chromium with Playwright (never a downloaded browser).
"""
from __future__ import annotations

import re
import time
import zipfile
from pathlib import Path

import pytest

from db import deployments, queries
from db.session import make_sessionmaker
from tests.dashboard import arena_env, start_dashboard, stop_dashboard

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (apt-get install chromium)"),
]


@pytest.fixture
def dashboard(tmp_path):
    """A live dashboard on 127.0.0.1:<free port> with its own database; yields (base URL, db URL)."""
    db_url = f"sqlite:///{tmp_path / 'arena.db'}"
    server, base = start_dashboard(tmp_path / "streamlit.log", arena_env(tmp_path / "home", db_url))
    yield base, db_url
    stop_dashboard(server)


@pytest.fixture
def page(tmp_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        page = context.new_page()
        page.set_default_timeout(30_000)
        yield page
        page.screenshot(path=str(tmp_path / "last.png"), full_page=True)
        browser.close()


def settled(page, locator, timeout_ms: float = 5_000):
    """The one element a locator means, after Streamlit's rerun has replaced stale elements."""
    from playwright.sync_api import expect

    expect(locator).to_have_count(1, timeout=timeout_ms)
    return locator


def test_launch_a_run_watch_it_finish_and_compare_it(dashboard, page):
    from playwright.sync_api import expect

    base, db_url = dashboard
    page.goto(base)
    # The first script run of a fresh server imports plotly, pandas and the engine: allow a cold start.
    expect(page.get_by_role("heading", name="Launch", exact=True)).to_be_visible(timeout=30_000)

    # A tiny PyTorch run: 1 epoch of 5 steps.
    page.get_by_text("PyTorch", exact=True).click()
    # The rerun is done when the submit button stops offering a pair.
    expect(page.get_by_role("button", name="Queue run", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Queue 2 runs")).to_have_count(0)
    epochs = settled(page, page.get_by_role("spinbutton", name="Epochs", exact=True))
    epochs.fill("1")
    epochs.press("Tab")
    steps = settled(page, page.get_by_role("spinbutton", name="Max steps per epoch", exact=True))
    steps.fill("5")
    steps.press("Tab")
    page.get_by_role("button", name="Queue run", exact=True).click()
    expect(page.get_by_text("Queued run #1")).to_be_visible()
    expect(page.get_by_text("1 1 True local")).to_have_count(0)  # no bare expression drawn by Streamlit's magic
    expect(page.get_by_role("button", name="Deploy")).to_have_count(0)  # .streamlit/config.toml: toolbarMode

    with make_sessionmaker(db_url).begin() as s:
        (run,) = queries.list_runs(s)
        assert (run.framework, run.model, run.spec["epochs"], run.spec["max_steps_per_epoch"]) == ("torch", "mlp", 1, 5)

    # Runs page: the table refreshes itself until the run is finished.
    page.get_by_role("link", name="Follow on Runs").click()
    expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible()
    # The table is a canvas grid: its cells are in the DOM for accessibility, not "visible".
    table = page.get_by_test_id("stDataFrame").first
    expect(table).to_contain_text("finished", timeout=120_000)
    with make_sessionmaker(db_url).begin() as s:
        assert queries.get_run(s, run.id).status == "finished"

    # Compare: the run is selected and its curves are drawn.
    page.goto(f"{base}/compare?runs={run.id}")
    expect(page.get_by_role("heading", name="Compare", exact=True)).to_be_visible()
    expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
    expect(page.get_by_text("#1 PyTorch").first).to_be_visible()
    # At 1500x1100 the first chart starts on the first screen: "What was compared" is one line, its
    # details open on request.
    page.set_viewport_size({"width": 1500, "height": 1100})
    expect(page.get_by_text("What was compared:")).to_be_visible()
    page.wait_for_timeout(500)  # the layout settles after the resize
    assert page.locator(".js-plotly-plot").first.bounding_box()["y"] < 1100 - 100
    expect(page.get_by_text("How the runs were measured")).not_to_be_visible()
    page.get_by_role("button", name="Run settings").click()
    expect(page.get_by_text("How the runs were measured")).to_be_visible()
    page.keyboard.press("Escape")

    # Tabs: only the open one is drawn, and the link keeps it (and the runs) for a reload or a colleague.
    page.get_by_role("tab", name="Speed").click()
    expect(page).to_have_url(re.compile(r"tab=Speed"))
    expect(page.get_by_text("Samples/s per step after warm-up").first).to_be_visible(timeout=60_000)
    page.reload()
    expect(page.get_by_role("tab", name="Speed", selected=True)).to_be_visible(timeout=60_000)

    # Export: the CSV download holds every step the run recorded.
    page.get_by_role("tab", name="Export").click()
    with page.expect_download(timeout=60_000) as download:
        page.get_by_role("button", name="CSV (zip)").click()
    path = download.value.path()
    with zipfile.ZipFile(path) as archive:
        metrics = archive.read("metrics.csv").decode().splitlines()
    assert download.value.suggested_filename == f"arena-runs-{run.id}.csv.zip"
    assert sum(1 for line in metrics if ",step/train_loss," in line) == 5

    # Deploy: from the Export tab to the Deploy page with the run chosen; one format exported, checked, timed.
    page.get_by_role("link", name="Deploy these runs").click()
    expect(page.get_by_role("heading", name="Deploy", exact=True)).to_be_visible()
    formats = page.get_by_test_id("stMultiSelect").filter(has_text="PyTorch formats")
    formats.get_by_role("button", name="Clear all").click()
    formats.locator("input").fill("ONNX")
    page.keyboard.press("Enter")
    page.keyboard.press("Escape")
    expect(formats).to_contain_text("ONNX (torch.onnx)")
    expect(formats).not_to_contain_text("TorchScript")
    page.get_by_role("button", name="Queue deployment").click()
    expect(page.get_by_text("Latency of one call against batch size")).to_be_visible(timeout=180_000)
    expect(page.get_by_test_id("stDataFrame").first).to_contain_text("ONNX (torch.onnx)")
    with make_sessionmaker(db_url).begin() as s:
        (job,) = deployments.jobs(s, [run.id])
        (result,) = deployments.results(s, [job["id"]])
    assert job["status"] == "finished" and result["status"] == "ok"
    assert result["figures"]["parity"]["max_abs_diff"] <= 1e-5



def test_a_deep_link_opened_first_after_a_server_start_still_starts_the_scheduler(dashboard, page):
    # Streamlit serves a pages/ link opened first without running app.py; the queue must not wait for a click.
    from engine.launch import queue_runs
    from engine.spec import RunSpec

    base, db_url = dashboard
    sessions = make_sessionmaker(db_url)
    spec = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=1, max_steps_per_epoch=3, sample_hz=0)
    run_id = queue_runs(sessions, [spec])[0]
    page.goto(f"{base}/devices")
    # The server's first script run imports plotly, pandas and the engine: allow a cold start on a busy machine.
    settled(page, page.get_by_text("Scheduler: this dashboard", exact=False), timeout_ms=30_000)

    def status() -> str:
        with sessions.begin() as s:
            return queries.get_run(s, run_id).status

    deadline = time.monotonic() + 120
    while status() != "finished" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status() == "finished"
