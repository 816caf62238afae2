"""The Compare page's Data tab (ui/data_section.py) on real runs trained by the CLI with the native pipeline."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

from analysis.run_styles import FRAMEWORK_COLORS, FRAMEWORK_PALETTES
from db import queries
from db.models import FINISHED
from db.session import make_sessionmaker
from engine.spec import RunSpec
from tests.pages.conftest import CLI_TIMEOUT_S, REPO_ROOT
from tests.pages.helpers import failures
from tests.pages.test_compare_page import array, chart_specs, text_of
from ui.router import COMPARE_PAGE

# Tiny: 12 steps of mlp on digits, the ceiling measured over 4 batches, the loader alone over the epoch's 12; no
# profile or inference.
FLAGS = ["--framework", "both", "--mode", "torch:eager", "graph", "fit", "--model", "mlp", "--dataset", "digits",
         "--pipeline", "native", "--loader-workers", "1", "--augment", "crop,flip", "--epochs", "1",
         "--max-steps-per-epoch", "12", "--warmup-steps", "2", "--calibration-steps", "4", "--profile-steps", "0",
         "--inference-iters", "0"]


@dataclass(frozen=True)
class DataRuns:
    url: str
    torch_id: int
    graph_id: int
    fit_id: int


@pytest.fixture(scope="module")
def data_runs(tmp_path_factory) -> DataRuns:
    """PyTorch eager, TensorFlow graph and TensorFlow fit over the native pipeline with crop and flip, one group."""
    home = tmp_path_factory.mktemp("arena-data")
    url = f"sqlite:///{home / 'arena.db'}"
    result = subprocess.run([sys.executable, "-m", "engine", "run", *FLAGS, "--db", url, "--json"], cwd=REPO_ROOT,
                            env={**os.environ, "ARENA_HOME": str(home), "ARENA_DB_URL": url}, capture_output=True,
                            text=True, timeout=CLI_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    records = json.loads(result.stdout.strip().splitlines()[-1])["runs"]
    ids = {(record["framework"], record["mode"]): record["run_id"] for record in records}
    return DataRuns(url, ids[("torch", "eager")], ids[("tensorflow", "graph")], ids[("tensorflow", "fit")])


@pytest.fixture
def data_db(data_runs, monkeypatch) -> DataRuns:
    monkeypatch.setenv("ARENA_DB_URL", data_runs.url)
    monkeypatch.setenv("ARENA_SCHEDULER", "off")  # trained already: nothing here may start a runner
    return data_runs


def test_data_tab_draws_each_runs_loader_training_ceiling_wait_fit_cost_and_samples(data_db, open_page):
    runs = data_db
    at = open_page(COMPARE_PAGE, runs=f"{runs.torch_id},{runs.graph_id},{runs.fit_id}", tab="Data")

    assert not failures(at)
    specs = chart_specs(at)
    loader, training, ceiling = specs["chart_data_throughput"]["data"]
    assert [trace["name"] for trace in (loader, training, ceiling)] == [
        "loader alone", "training", "ceiling: step on one fixed batch"]
    assert training["x"] == [f"#{runs.torch_id} PyTorch<br>eager",
                             f"#{runs.graph_id} TensorFlow<br>tf.function (graph)",
                             f"#{runs.fit_id} TensorFlow<br>Keras model.fit"]
    assert all(value > 0 for trace in (loader, training, ceiling) for value in array(trace["y"]))
    assert training["marker"]["color"] == [FRAMEWORK_COLORS["torch"], FRAMEWORK_COLORS["tensorflow"],
                                           FRAMEWORK_PALETTES["tensorflow"][1]]
    (waits,) = specs["chart_data_wait"]["data"]
    assert waits["x"] == training["x"][:2]  # model.fit's wait is inside its step: no bar
    assert all(0 <= value <= 100 for value in array(waits["y"]))

    (throughput, step) = at.metric
    assert throughput.label == f"#{runs.fit_id} ÷ #{runs.graph_id}: throughput" and throughput.value.endswith("×")
    assert step.label == f"#{runs.fit_id} ÷ #{runs.graph_id}: step time p50" and step.value.endswith("×")
    text = text_of(at)
    assert f"model.fit (#{runs.fit_id}) trains" in text and "steps_per_execution" in text
    assert f"**#{runs.fit_id} TensorFlow Keras model.fit**: the wait for data happens inside model.fit's step" in text
    assert "over 12 batches" in text
    assert "crops, flips and noise differ between the frameworks" in text

    images = at.get("image")
    assert len(images) == 3  # before and after of each run, side by side
    table = at.dataframe[0].value.set_index("run")
    assert list(table["pipeline"]) == ["native"] * 3 and list(table["loader workers"]) == ["1"] * 3
    assert table.loc[f"#{runs.torch_id} PyTorch eager", "loader"].startswith(
        "torch.utils.data.DataLoader(num_workers=1")
    assert table.loc[f"#{runs.graph_id} TensorFlow tf.function (graph)", "loader"].startswith("tf.data")
    assert set(table["augmentation"]) == {"crop: pad 1 px with zeros, random 8x8 crop; flip: horizontal, p=0.5"}


def test_a_fit_run_without_its_graph_run_says_how_to_get_the_cost(data_db, open_page):
    at = open_page(COMPARE_PAGE, runs=f"{data_db.torch_id},{data_db.fit_id}", tab="Data")

    assert not failures(at)
    assert not at.metric
    assert f"#{data_db.fit_id} has no tf.function (graph) run of the same spec among the chosen runs" in text_of(at)


def test_data_tab_without_input_figures_says_what_to_launch(arena_db, open_page, monkeypatch):
    """A run stored before Arena measured its input: a summary without "input"."""
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    sessions = make_sessionmaker(arena_db)
    with sessions.begin() as s:
        spec = RunSpec.with_model_defaults("torch", "mlp", "digits", epochs=1)
        run = queries.create_run(s, spec.to_dict(), total_steps=3)
        queries.add_metric_points(s, [dict(run_id=run.id, name="step/train_loss", step=step, epoch=1,
                                           wall_time=1.7e9 + step, value=1.0 / step) for step in range(1, 4)])
        queries.update_run(s, run.id, status=FINISHED, epoch=1, step=3, summary={"steady_samples_per_s": 900.0})
        run_id = run.id
    sessions.kw["bind"].dispose()
    at = open_page(COMPARE_PAGE, runs=str(run_id), tab="Data")

    assert not failures(at)
    assert not chart_specs(at)
    assert "None of these runs recorded input figures" in " ".join(info.value for info in at.info)
    assert "--pipeline native --augment crop,flip" in at.code[0].value
    assert "Launch runs with the native pipeline" in [link.proto.label for link in at.get("page_link")]
