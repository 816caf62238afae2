"""Take the README's Launch, Runs, Compare-speed and Deploy screenshots from a real dashboard on real runs.

`.venv/bin/python docs/screenshots.py [--out docs/screenshots] [--keep DIR] [--scaling-only | --data-only]`

--scaling-only: the Compare page's Scaling tab alone, on a scaling study trained for it (both
frameworks, 1 and 2 workers, about a minute): compare-scaling.png.
--data-only: the Data tab alone, on PyTorch eager, TensorFlow graph and Keras model.fit runs over the
native pipelines with augmentation (about a minute): compare-data.png and compare-data-samples.png.

Trains a few tiny runs through the real CLI into a temporary database (both frameworks, two
seeds, one run that diverges, one left queued), deploys the seed-0 pair in every format and serves
each (`python -m engine deploy 1 2 --serve`, about 10 minutes here), starts `streamlit run app.py` on it and drives
Debian's Chromium at 1500x1100. Nothing here is a test: it writes PNG files.
"""
from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from db import queries  # noqa: E402
from db.session import make_sessionmaker  # noqa: E402
from engine.launch import queue_runs  # noqa: E402
from engine.spec import RunSpec  # noqa: E402
from tests import dashboard  # noqa: E402
from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS  # noqa: E402

RUNS = [  # (framework, seed, extra flags): what a small study leaves in the table
    ("torch", 0, []), ("tensorflow", 0, []), ("torch", 1, []), ("tensorflow", 1, []),
    ("torch", 2, ["--lr", "1e6", "--optimizer", "sgd"]),  # diverges
]
NAMES = {1: ("cnn torch s0", ["baseline", "cnn"]), 2: ("cnn tf s0", ["cnn"]), 3: ("cnn torch s1", ["cnn"]),
         4: ("cnn tf s1", ["cnn"]), 5: ("lr too high", ["sweep"])}


def train(url: str, env: dict[str, str]) -> None:
    for framework, seed, extra in RUNS:
        subprocess.run([sys.executable, "-m", "engine", "run", "--framework", framework, "--model", "cnn",
                        "--dataset", "digits", "--epochs", "3", "--seed", str(seed), "--db", url, *extra],
                       cwd=ROOT, env=env, check=False, capture_output=True, timeout=900)
    # A pair left waiting: queued only, as the Launch page queues them (the dashboard below places nothing).
    sessions = make_sessionmaker(url)
    with sessions.begin() as s:
        for run_id, (name, tags) in NAMES.items():
            queries.annotate_run(s, run_id, name=name, tags=tags)
    sessions.kw["bind"].dispose()
    # Every format of the seed-0 pair, served too; before the queued pair below, which a deployment would wait for.
    subprocess.run([sys.executable, "-m", "engine", "deploy", "1", "2", "--serve", "--serve-duration", "2",
                    "--min-time", "0.5", "--db", url], cwd=ROOT, env=env, check=True, capture_output=True,
                   timeout=3600)
    sessions = make_sessionmaker(url)
    queue_runs(sessions, [RunSpec.with_model_defaults(framework, "resnet", "digits", epochs=5)
                          for framework in ("torch", "tensorflow")])
    sessions.kw["bind"].dispose()


@contextlib.contextmanager
def browser_page() -> Iterator:
    """A page of Debian's Chromium at 1500x1100, closed afterwards."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser.new_context(viewport={"width": 1500, "height": 1100}).new_page()
        finally:
            browser.close()


def train_cli(flags: list[str], url: str, env: dict[str, str]) -> None:
    """`python -m engine run FLAGS` into the database: runs as a user queues them from the command line."""
    subprocess.run([sys.executable, "-m", "engine", "run", *flags, "--db", url], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=1800)


def shoot(base: str, out: Path) -> None:
    from playwright.sync_api import expect

    with browser_page() as page:
        page.goto(base)
        expect(page.get_by_role("heading", name="Launch", exact=True)).to_be_visible(timeout=60_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "launch.png"))
        page.goto(f"{base}/runs")
        expect(page.get_by_test_id("stDataFrame").first).to_contain_text("finished", timeout=60_000)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "runs.png"))
        page.goto(f"{base}/compare?runs=1,2,3,4")  # two seeds per framework
        page.get_by_role("tab", name="Speed").click()
        heading = page.get_by_role("heading", name="Where the time goes")
        expect(heading).to_be_visible(timeout=60_000)
        page.wait_for_timeout(2500)  # plotly draws after the element appears
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str(out / "compare-speed.png"))
        heading.scroll_into_view_if_needed()
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "compare-profile.png"))
        page.goto(f"{base}/deploy?runs=1,2")
        expect(page.get_by_text("Latency of one call against batch size")).to_be_visible(timeout=60_000)
        page.wait_for_timeout(2500)
        page.screenshot(path=str(out / "deploy.png"))


SCALING_FLAGS = ["--framework", "both", "--model", "mlp", "--dataset", "digits", "--epochs", "5", "--batch-size", "64",
                 "--workers", "1", "2", "--deterministic", "--max-steps-per-epoch", "20", "--target-accuracy", "0.6",
                 "--calibration-steps", "0", "--profile-steps", "0"]


def train_scaling(url: str, env: dict[str, str]) -> None:
    """A scaling study as the CLI queues it: PyTorch and TensorFlow, 1 and 2 workers, one group (runs 1-4)."""
    train_cli(SCALING_FLAGS, url, env)


def shoot_scaling(base: str, out: Path) -> None:
    from playwright.sync_api import expect

    with browser_page() as page:
        page.goto(f"{base}/compare?runs=1,2,3,4&tab=Scaling")
        expect(page.get_by_text("Throughput against workers")).to_be_visible(timeout=60_000)
        page.wait_for_timeout(2500)
        page.get_by_text("What ran:").scroll_into_view_if_needed()
        page.screenshot(path=str(out / "compare-scaling.png"))


DATA_FLAGS = ["--framework", "both", "--mode", "torch:eager", "graph", "fit", "--model", "cnn", "--dataset", "digits",
              "--pipeline", "native", "--loader-workers", "1", "--augment", "crop,flip,noise", "--epochs", "2",
              "--max-steps-per-epoch", "40", "--calibration-steps", "20", "--profile-steps", "0",
              "--inference-iters", "0"]


def train_data(url: str, env: dict[str, str]) -> None:
    """PyTorch eager, TensorFlow graph and Keras model.fit over the native pipelines with augmentation (runs 1-3)."""
    train_cli(DATA_FLAGS, url, env)


def shoot_data(base: str, out: Path) -> None:
    from playwright.sync_api import expect

    with browser_page() as page:
        page.goto(f"{base}/compare?runs=1,2,3&tab=Data")
        expect(page.get_by_text("Loader alone, training and the ceiling")).to_be_visible(timeout=60_000)
        page.wait_for_timeout(2500)
        page.mouse.move(750, 600)
        page.mouse.wheel(0, 280)  # Streamlit scrolls its main block, not the window: the tab row to the top
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "compare-data.png"))
        page.mouse.wheel(0, 560)  # fit's cost and the augmentation samples (already partly in view: scroll on)
        page.wait_for_timeout(1500)
        page.screenshot(path=str(out / "compare-data-samples.png"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    parser.add_argument("--keep", type=Path, help="train into this directory and keep it (default: a temporary one)")
    parser.add_argument("--scaling-only", action="store_true", help="only the Scaling tab, on a scaling study")
    parser.add_argument("--data-only", action="store_true", help="only the Data tab, on native-pipeline runs")
    args = parser.parse_args(argv)
    train_runs, shoot_page, written = (
        (train_scaling, shoot_scaling, "compare-scaling.png") if args.scaling_only else
        (train_data, shoot_data, "compare-data.png and compare-data-samples.png") if args.data_only else
        (train, shoot, "launch.png, runs.png, compare-speed.png, compare-profile.png and deploy.png"))
    with tempfile.TemporaryDirectory(prefix="arena-screenshots-") as scratch:
        home = args.keep or Path(scratch)
        home.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{home / 'arena.db'}"
        env = dashboard.arena_env(home, url)
        if not (home / "arena.db").exists():
            train_runs(url, env)
        server, base = dashboard.start_dashboard(home / "streamlit.log", {**env, "ARENA_SCHEDULER": "off"})
        try:
            shoot_page(base, args.out)
        finally:
            dashboard.stop_dashboard(server)
    print(f"wrote {written} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
