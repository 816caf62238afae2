"""Cold load of the Compare page in a real browser: navigation to the first chart drawn, 4 runs from the URL.

`python bench/compare_cold_load.py [--repeats N] [--steps N] [--json]`

A temporary database holds 4 finished runs shaped like real ones (a PyTorch and a TensorFlow
run of two seeds each: per-step loss and step times, per-epoch metrics, 10 Hz memory samples,
summaries). `streamlit run app.py` serves it on 127.0.0.1; Debian's Chromium, driven by
Playwright, opens /compare?runs=1,2,3,4 in a fresh browser context each time (no cache, no
cookies, no session), and the clock runs from `page.goto` to the moment the first plotly chart
has drawn its SVG — what a user sees as "the charts are there" — and on to the last chart of the
Learning section. The server is started once and served one page before timing, as a tracker's
server is already running when someone opens a link to it; that first, server-cold load is
printed apart.

Reference figures, measured on this kind of machine with 4 runs (from the issue):
TensorBoard's first chart 1.36 s, MLflow's chart view 2.07 s. Goal: <= 1.2 s.

Side by side, the floor Streamlit itself sets: a bare page with a title and one plotly chart of
the same size (4 lines of 2,000 points), served by its own `streamlit run`. Both servers run at
once and the loads alternate in pairs (page, floor; then floor, page), so a change in the
machine's load falls on both; the ratio is the median of the pair ratios with its 95 % interval
(bench/loop_report.median_interval). Goal (issue 16): the page adds at most 15 % to the floor.
Each load is split where its time went: the frontend starting (navigation to the websocket), the
server (websocket to the first chart's data arriving: the page's script up to that chart) and the
browser (data to the chart drawn).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from bench.loop_report import NOISY_LOAD_CORES, median_interval  # noqa: E402
from db import queries  # noqa: E402
from db.models import FINISHED  # noqa: E402
from db.session import make_sessionmaker  # noqa: E402
from engine.monitor import host_busy_cpu_s, process_tree_cpu_s  # noqa: E402
from engine.spec import RunSpec  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
GOAL_S = 1.2
GOAL_RATIO = 1.15  # issue 16: the page adds at most 15 % to the floor
MIN_PAIRS = 6  # the fewest pairs whose min-max interval covers the median ratio with >= 95 %
REFERENCES = {"TensorBoard, first chart": 1.36, "MLflow, chart view": 2.07}
FIRST_CHART = '[data-testid="stPlotlyChart"] .main-svg'


def fill(url: str, steps: int, epochs: int = 10) -> list[int]:
    """4 finished runs (torch and tensorflow, seeds 0 and 1) with the points a real run of `steps` steps records."""
    sessions = make_sessionmaker(url)
    ids = []
    t0 = time.time() - 3600
    for framework in ("torch", "tensorflow"):
        for seed in (0, 1):
            spec = RunSpec(framework=framework, model="mlp", dataset="digits", epochs=epochs, seed=seed).to_dict()
            with sessions.begin() as s:
                run = queries.create_run(s, spec, group_tag="bench", total_steps=steps)
                ids.append(run.id)
                per_epoch = steps // epochs
                step_rows = []
                for step in range(1, steps + 1):
                    wall = t0 + step * 0.004
                    loss = 2.3 * math.exp(-step / (steps / 3)) + 0.05 * math.sin(step * (seed + 1))
                    epoch = 1 + (step - 1) // per_epoch
                    step_rows.append(dict(run_id=run.id, name="step/train_loss", step=step, epoch=epoch,
                                          wall_time=wall, value=loss))
                    step_rows.append(dict(run_id=run.id, name="step/step_time_ms", step=step, epoch=epoch,
                                          wall_time=wall, value=4.0 + (step % 7) * 0.1 + (framework == "torch")))
                queries.add_metric_points(s, step_rows)
                queries.add_metric_points(s, [
                    dict(run_id=run.id, name=name, step=epoch * per_epoch, epoch=epoch,
                         wall_time=t0 + epoch * per_epoch * 0.004, value=value)
                    for epoch in range(1, epochs + 1)
                    for name, value in (("train_loss", 2.3 / epoch), ("test_loss", 2.4 / epoch),
                                        ("test_accuracy", 1 - 0.9 / epoch), ("samples_per_s", 8000.0 + seed),
                                        ("epoch_time_s", per_epoch * 0.004))])
                duration = steps * 0.004
                queries.add_system_samples(s, [
                    dict(run_id=run.id, time=t0 + i / 10, source="host", name="rss", value=4e8 + i * 1e5, unit="B")
                    for i in range(int(duration * 10))])
                queries.update_run(s, run.id, status=FINISHED, started_at=queries.utcnow(),
                                   finished_at=queries.utcnow(), epoch=epochs, step=steps,
                                   summary={"steady_samples_per_s": 8000.0 + seed, "step_time_p50_ms": 4.1,
                                            "step_time_p95_ms": 4.6, "compile_s": 0.2, "first_step_s": 0.3,
                                            "warmup_s": 0.5, "param_count": 9610})
    return ids


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


BARE_PAGE = """
import numpy as np, plotly.graph_objects as go, streamlit as st
st.title("Floor")
x = np.arange(2000)
st.plotly_chart(go.Figure([go.Scatter(x=x, y=np.exp(-x / (500 + 100 * k))) for k in range(4)]))
"""

# Streamlit serving exactly Arena's first chart at the same kind of link: a routed app (st.navigation, a
# home page and the page /compare) whose page draws a title and the figure Arena's Compare page sends.
ROUTED_FLOOR_PAGE = """
import json
from pathlib import Path

import streamlit as st

FIGURE = json.loads(Path(__file__).with_name("figure.json").read_text())


def compare():
    st.title("Compare")
    st.plotly_chart(FIGURE)


st.navigation([st.Page(lambda: st.title("Home"), title="Home", default=True),
               st.Page(compare, title="Compare", url_path="compare")], position="top").run()
"""


def first_figure(db_url: str, ids: list[int]) -> dict:
    """The first chart's figure exactly as Arena's Compare page sends it for these runs (run in AppTest)."""
    from streamlit.testing.v1 import AppTest

    saved = {key: os.environ.get(key) for key in ("ARENA_DB_URL", "ARENA_SCHEDULER")}
    os.environ.update(ARENA_DB_URL=db_url, ARENA_SCHEDULER="off")
    try:
        at = AppTest.from_file(str(ROOT / "pages" / "compare.py"), default_timeout=120)
        at.query_params["runs"] = ",".join(map(str, ids))
        at.run()
        return json.loads(at.get("plotly_chart")[0].proto.spec)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_server(db_url: str, home: str, log_path: Path, script: str = "app.py") -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "ARENA_DB_URL": db_url, "ARENA_HOME": home, "ARENA_SCHEDULER": "off"}
    server = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", script, "--server.address", "127.0.0.1", "--server.port",
         str(port), "--server.headless", "true", "--server.fileWatcherType", "none",
         "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return server, base
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise RuntimeError("the dashboard did not start:\n" + log_path.read_text())


def load(browser, url: str, learning_charts: int) -> dict[str, float]:
    """One navigation in a fresh context: seconds to the first chart drawn and to every Learning chart drawn,
    and where the time to the first chart went (the frontend starting, the server's script, the browser)."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    marks: dict[str, float] = {}

    def on_websocket(ws) -> None:
        marks.setdefault("socket", time.perf_counter())

        def on_frame(payload) -> None:
            # The first plotly chart's delta carries its figure's JSON: the first frame holding a layout.
            if isinstance(payload, bytes) and b'"layout"' in payload:
                marks.setdefault("chart_sent", time.perf_counter())

        ws.on("framereceived", on_frame)

    page.on("websocket", on_websocket)
    started = time.perf_counter()
    page.goto(url, wait_until="commit")
    page.wait_for_selector(FIRST_CHART, state="attached")
    drawn = time.perf_counter()
    page.wait_for_function(f"document.querySelectorAll('{FIRST_CHART}').length >= {learning_charts}")
    learning = time.perf_counter()
    context.close()
    socket_at, chart_at = marks.get("socket", started), marks.get("chart_sent", drawn)
    return {"first": drawn - started, "learning": learning - started, "frontend": socket_at - started,
            "server": chart_at - socket_at, "browser": drawn - chart_at}


CONTENDERS = ("Compare", "routed floor", "bare floor")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9,
                        help="rounds of loads, one of each page per round (default 9)")
    parser.add_argument("--steps", type=int, default=5000, help="optimizer steps per run (default 5,000)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        db_url = f"sqlite:///{tmp}/arena.db"
        ids = fill(db_url, args.steps)
        (Path(tmp) / "bare.py").write_text(BARE_PAGE)
        routed = Path(tmp) / "routed"
        routed.mkdir()
        (routed / "floor.py").write_text(ROUTED_FLOOR_PAGE)
        (routed / "figure.json").write_text(json.dumps(first_figure(db_url, ids)))
        me = psutil.Process()
        busy_before, own_before, clock_before = host_busy_cpu_s(), process_tree_cpu_s(me), time.monotonic()
        servers, urls = {}, {}
        try:
            servers["Compare"], base = start_server(db_url, f"{tmp}/home", Path(tmp) / "streamlit.log")
            urls["Compare"] = f"{base}/compare?runs={','.join(map(str, ids))}"
            servers["routed floor"], base = start_server("sqlite://", f"{tmp}/home-routed", Path(tmp) / "routed.log",
                                                         str(routed / "floor.py"))
            urls["routed floor"] = f"{base}/compare?runs={','.join(map(str, ids))}"
            servers["bare floor"], urls["bare floor"] = start_server("sqlite://", f"{tmp}/home-bare",
                                                                    Path(tmp) / "bare.log", str(Path(tmp) / "bare.py"))
            charts = {"Compare": 2, "routed floor": 1, "bare floor": 1}
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
                server_cold = load(browser, urls["Compare"], 2)
                for name in CONTENDERS[1:]:
                    load(browser, urls[name], 1)  # each floor's server imports plotly on its first run
                loads: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
                for i in range(args.repeats):
                    # Side by side, each round in a rotated order, so a drift in the machine's load falls on all.
                    for name in CONTENDERS[i % 3:] + CONTENDERS[:i % 3]:
                        loads[name].append(load(browser, urls[name], charts[name]))
                # Before anything exits: the servers', the browser's and this process's CPU time.
                others = host_busy_cpu_s() - busy_before - (process_tree_cpu_s(me) - own_before)
                elapsed = time.monotonic() - clock_before
                browser.close()
        finally:
            for server in servers.values():
                server.terminate()
                server.wait(timeout=20)
    report = summarise(loads, server_cold)
    print(format_report(report, args.repeats, args.steps, max(0.0, others / elapsed)))
    if args.json:
        print(json.dumps({**report, "loads": loads}))


def summarise(loads: dict[str, list[dict]], server_cold: dict) -> dict:
    """Medians of each phase per page, and the median of the per-round ratios Compare / each floor with its
    95 % interval."""
    report: dict = {"medians": {name: {key: statistics.median(load[key] for load in runs) for key in runs[0]}
                                for name, runs in loads.items()},
                    "server_cold_s": server_cold["first"], "goal_ratio": GOAL_RATIO, "goal_s": GOAL_S}
    for floor in CONTENDERS[1:]:
        ratios = [page["first"] / other["first"] for page, other in zip(loads["Compare"], loads[floor])]
        low, high = median_interval(ratios)
        report[floor] = {"ratio": statistics.median(ratios), "low": low, "high": high}
    return report


def ratio_verdict(low: float, high: float, repeats: int) -> str:
    if repeats < MIN_PAIRS:
        return f"too few rounds to tell (the interval of {repeats} covers less than 95 %): use --repeats 9 or more"
    if high <= GOAL_RATIO:
        return "PASS"
    if low > GOAL_RATIO:
        return "FAIL"
    return "TOO NOISY to tell: rerun with --repeats 20 on a quiet machine"


def format_report(report: dict, repeats: int, steps: int, other_cores: float) -> str:
    medians = report["medians"]
    page = medians["Compare"]
    lines = [
        f"Compare page, 4 runs x {steps:,} steps, opened from a link (/compare?runs=...) in a fresh browser context, "
        f"against two floors; {repeats} rounds of one load each, medians:",
        "- routed floor: Streamlit serving exactly the Compare page's first chart (the same figure, taken from the "
        "page) under a title, on a routed app (st.navigation) at the same link: what Arena adds is everything else",
        "- bare floor: a single-page app at / with a title and one chart of 4 lines x 2,000 points",
        "",
        "| | first chart drawn | frontend start (to the socket) | server (socket to the chart's data) "
        "| browser (data to chart drawn) | Learning charts all drawn |",
        "|---|---|---|---|---|---|",
    ]
    for name in CONTENDERS:
        row = medians[name]
        lines.append(f"| {name} | {row['first']:.2f} s | {row['frontend']:.2f} s | {row['server']:.2f} s "
                     f"| {row['browser']:.2f} s | {row['learning']:.2f} s |")
    lines.append("")
    for floor in CONTENDERS[1:]:
        ratio = report[floor]
        line = (f"Compare / {floor}: {ratio['ratio']:.2f}x (median of per-round ratios; 95 % interval "
                f"{ratio['low']:.2f}-{ratio['high']:.2f}) -> Arena's page adds "
                f"{page['first'] - medians[floor]['first']:+.2f} s")
        if floor == "routed floor":
            line += f". Goal <= {GOAL_RATIO:.2f}x: {ratio_verdict(ratio['low'], ratio['high'], repeats)}"
        lines.append(line)
    lines += [
        f"Server-cold first load (imports and caches warm up): {report['server_cold_s']:.2f} s to the first chart.",
        f"Absolute goal {GOAL_S} s: {'PASS' if page['first'] <= GOAL_S else 'FAIL'}"
        + (" (below the floor here: Streamlit's own start and plotly.js take longer on this machine)"
           if medians["bare floor"]["first"] > GOAL_S else ""),
    ]
    lines += [f"Reference {name}: {seconds:.2f} s -> Arena is {seconds / page['first']:.2f}x as fast"
              for name, seconds in REFERENCES.items()]
    lines.append(f"Other processes busy {other_cores:.2f} cores on average while measuring.")
    if other_cores > NOISY_LOAD_CORES:
        lines.append(f"WARNING: other processes kept {other_cores:.2f} cores busy on average: the figures are noisy.")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
