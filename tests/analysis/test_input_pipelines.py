"""analysis/input_pipelines.py: the Data tab's figures, sentences, fit's cost and augmentation samples."""
from __future__ import annotations

import gzip
import json
from typing import Optional

import numpy as np
import pytest

from analysis import input_pipelines as ip
from analysis.run_styles import FRAMEWORK_COLORS
from db.models import Run


def make_run(run_id: int, framework: str, mode: str, training: Optional[float], group: str = "g",
             step_ms: Optional[float] = None, seed: int = 0, **figures) -> Run:
    spec = {"framework": framework, "model": "mlp", "dataset": "digits", "seed": seed, "batch_size": 32,
            "mode": mode, "pipeline": "native", "loader_workers": 2, "augment": ["crop", "flip"]}
    summary = {"input": {"pipeline": "native", "loader_workers": 2, "source": "arrays in memory",
                         "augment": {"crop": "pad 1 px with zeros, random 8x8 crop", "flip": "horizontal, p=0.5"},
                         "loader": f"{framework} loader", "augment_by": f"{framework} ops", "batches": 20, **figures}}
    if training is not None:
        summary["steady_samples_per_s"] = training
    if step_ms is not None:
        summary["step_time_p50_ms"] = step_ms
    return Run(id=run_id, framework=framework, model="mlp", dataset="digits", spec=spec, summary=summary,
               group_tag=group)


def pair() -> list[Run]:
    """PyTorch input-bound (40 % waiting), TensorFlow graph hardly waiting, and a fit run of the graph run's spec."""
    return [
        make_run(1, "torch", "eager", 3000.0, step_ms=10.0, loader_samples_per_s=3500.0, ceiling_samples_per_s=5000.0,
                 data_wait_share=0.4, data_wait_p50_ms=4.2, data_wait_mean_ms=4.5),
        make_run(2, "tensorflow", "graph", 8000.0, step_ms=4.0, loader_samples_per_s=20000.0,
                 ceiling_samples_per_s=9000.0, data_wait_share=0.03, data_wait_p50_ms=0.1),
        make_run(3, "tensorflow", "fit", 6000.0, step_ms=5.0, loader_samples_per_s=20000.0,
                 ceiling_samples_per_s=9000.0, data_wait="inside model.fit's step"),
    ]


def test_runs_without_input_figures_are_left_out():
    old = Run(id=9, framework="torch", model="mlp", dataset="digits", spec={"mode": "eager"},
              summary={"steady_samples_per_s": 100.0})
    running = Run(id=10, framework="torch", model="mlp", dataset="digits", spec={"mode": "eager"}, summary=None)
    assert [run.id for run in ip.with_figures([*pair(), old, running])] == [1, 2, 3]


def test_the_throughput_figure_groups_three_measures_per_run_in_framework_colours():
    fig = ip.throughput_figure(pair())

    assert [trace.name for trace in fig.data] == ["loader alone", "training", "ceiling: step on one fixed batch"]
    loader, training, ceiling = fig.data
    assert list(training.x) == ["#1 PyTorch<br>eager", "#2 TensorFlow<br>tf.function (graph)",
                                "#3 TensorFlow<br>Keras model.fit"]
    assert list(loader.y) == [3500.0, 20000.0, 20000.0] and list(ceiling.y) == [5000.0, 9000.0, 9000.0]
    assert list(training.marker.color)[:2] == [FRAMEWORK_COLORS["torch"], FRAMEWORK_COLORS["tensorflow"]]
    assert loader.marker.pattern.shape == "/"  # the measure is the fill, the colour the framework
    assert fig.layout.yaxis.type == "log" and fig.layout.barmode == "group"
    assert list(fig.layout.yaxis.ticktext) == ["2k", "5k", "10k", "20k"]


def test_the_wait_figure_draws_the_timed_waits_only_against_the_input_bound_line():
    fig = ip.wait_figure(pair())

    (bars,) = fig.data
    assert list(bars.x) == ["#1 PyTorch<br>eager", "#2 TensorFlow<br>tf.function (graph)"]  # fit: not timed apart
    assert list(bars.text) == ["40 %", "3 %"]
    assert fig.layout.shapes[0].y0 == pytest.approx(100 * ip.INPUT_BOUND_SHARE)


def test_verdicts_name_input_bound_runs_fit_runs_and_the_rest():
    sentences = ip.verdicts(pair())

    assert sentences[0] == ("**#1 PyTorch eager** is input-bound: each step waits 40 % of its time for the next batch "
                            "(median 4.20 ms). The step alone on one fixed batch runs at 5,000 samples/s, 1.7× "
                            "training's 3,000 samples/s.")
    assert sentences[1].startswith("**#3 TensorFlow Keras model.fit**: the wait for data happens inside model.fit's "
                                   "step and is not timed apart.")
    assert sentences[-1] == "Not input-bound: #2 waits less than 20 % of each step for data."


def test_a_run_far_below_its_ceiling_without_waiting_says_its_step_was_slower():
    slow = make_run(4, "torch", "eager", 500.0, loader_samples_per_s=6000.0, ceiling_samples_per_s=28000.0,
                    data_wait_share=0.05)
    (sentence, summary) = ip.verdicts([slow])
    assert sentence.startswith("**#4 PyTorch eager** trains at 2 % of its ceiling (500 samples/s against 28,000 "
                               "samples/s) although it waits only 5 % of each step for data")
    assert summary == "Not input-bound: #4 waits less than 20 % of each step for data."


def test_fit_is_measured_against_the_graph_run_of_the_same_spec():
    other_seed = make_run(5, "tensorflow", "graph", 1000.0, seed=1, step_ms=30.0)
    (cost,), alone = ip.fit_costs([*pair(), other_seed])

    assert (cost.fit.id, cost.graph.id) == (3, 2) and alone == []
    assert cost.throughput_ratio == pytest.approx(0.75) and cost.step_ratio == pytest.approx(1.25)
    assert ip.ratio_text(cost.throughput_ratio) == "0.75×"
    assert ip.fit_cost_words(cost).startswith("model.fit (#3) trains 25 % fewer samples per second than the bare "
                                              "tf.function loop (#2): 6,000 samples/s against 8,000 samples/s")
    costs, alone = ip.fit_costs([pair()[2], other_seed])  # another seed is another spec
    assert costs == [] and [run.id for run in alone] == [3]


def test_a_graph_run_of_the_fit_runs_own_group_is_preferred():
    fit = make_run(7, "tensorflow", "fit", 600.0, group="b")
    graphs = [make_run(5, "tensorflow", "graph", 800.0, group="a"), make_run(6, "tensorflow", "graph", 900.0,
                                                                            group="b")]
    (cost,), _ = ip.fit_costs([*graphs, fit])
    assert cost.graph.id == 6 and cost.step_ratio is None  # no step times recorded: no ratio, not a guess


def test_settings_table_says_what_each_pipeline_was():
    table = ip.settings_table(pair()).set_index("run")

    row = table.loc["#1 PyTorch eager"]
    assert (row["pipeline"], row["loader"], row["loader workers"]) == ("native", "torch loader", "2")
    assert row["augmentation"] == "crop: pad 1 px with zeros, random 8x8 crop; flip: horizontal, p=0.5"
    assert (row["training ÷ ceiling"], row["data-wait share"], row["data wait p50"]) == ("60 %", "40.0 %", "4.20 ms")
    assert table.loc["#3 TensorFlow Keras model.fit", "notes"] == "inside model.fit's step"


def samples_document(by: str, count: int = 3, height: int = 8, channels: int = 1) -> dict:
    rng = np.random.default_rng(0)
    before = rng.integers(0, 256, size=(count, height, height, channels))
    return {"epoch": 1, "indices": list(range(10, 10 + count)), "shape": [height, height, channels],
            "augment": ["crop", "flip"], "by": by, "before": before.tolist(), "after": before[:, :, ::-1].tolist()}


def test_samples_are_read_from_gzip_json_and_laid_out_before_above_after():
    document = ip.load_samples(gzip.compress(json.dumps(samples_document("torch")).encode()))
    grid = ip.sample_grid(document, height_px=64)

    scale = 8  # 8-pixel images enlarged to 64
    assert grid.shape == (2 * 64 + ip.GAP_PX, 3 * 64 + 2 * ip.GAP_PX, 3) and grid.dtype == np.uint8
    before = np.asarray(document["before"], dtype=np.uint8)
    assert (grid[0, 0] == before[0, 0, 0, 0]).all()  # grey images become RGB
    assert grid[64 + ip.GAP_PX + scale * 2, scale * 7, 0] == before[0, 2, 0, 0]  # after: the flipped image, below
    assert (grid[64:64 + ip.GAP_PX] == 255).all()
    with pytest.raises(ValueError, match="holds before and after"):
        ip.load_samples(gzip.compress(b'{"epoch": 1}'))


def test_samples_note_says_whose_draws_the_images_show():
    runs = pair()[:2]
    native = ip.samples_note({1: samples_document("torch"), 2: samples_document("tensorflow")}, runs)
    assert native.startswith("The same training images of the same seed (0) in every run.")
    assert "crops, flips and noise differ between the frameworks" in native
    arrays = ip.samples_note({1: samples_document("numpy"), 2: samples_document("numpy")}, runs)
    assert "both frameworks train on identical augmented images" in arrays
    caption = ip.samples_caption(runs[0], samples_document("torch"))
    assert caption == ("#1 PyTorch eager · crop, flip by torch · training images 10, 11, 12 of epoch 1 (seed 0): "
                       "top before, bottom after")
