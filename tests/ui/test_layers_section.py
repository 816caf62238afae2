"""ui/layers_section.py: the layer section rendered by a tiny script on made-up statistics (no training)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from db.models import Run
from analysis import layer_stats
from analysis.run_styles import FRAMEWORK_COLORS, trace_styles
from tests.pages.helpers import failures
from tests.pages.test_compare_page import array, chart_specs

LAYERS = ["dense1/kernel", "dense1/bias", "dense2/kernel"]
EPOCHS = [0, 1, 2, 3]
TORCH_ID, TF_ID, OLD_ID = 3, 4, 5
EDGES = [-1.0, -0.5, 0.0, 0.5, 1.0]
SCRIPT = """
import streamlit as st
from ui import layers_section
from tests.ui.test_layers_section import made_up_runs, made_up_stats

stats = made_up_stats()
layers_section.section(made_up_runs(), stats.iloc[:0] if st.session_state.get("no_stats") else stats)
"""


def made_up_runs() -> list[Run]:
    """A PyTorch/TensorFlow pair with statistics and an older PyTorch run without any."""
    spec = {"epochs": 3, "seed": 0}
    return [Run(id=run_id, framework=framework, model="mlp", dataset="digits", status="finished", spec=spec,
                summary={}, total_epochs=3, epoch=3, step=30)
            for run_id, framework in ((TORCH_ID, "torch"), (TF_ID, "tensorflow"), (OLD_ID, "torch"))]


def norm_of(run_id: int, epoch: int, layer: str, kind: str) -> float:
    """Weights grow and gradients shrink with the epochs; TensorFlow is 1 % above PyTorch."""
    base = 1.0 + LAYERS.index(layer) + (0.1 * epoch if kind == "weight" else -0.2 * epoch)
    return base * (1.01 if run_id == TF_ID else 1.0)


def made_up_stats() -> pd.DataFrame:
    """tensor_stat_frame's shape: one row per (run, epoch, layer, kind), histograms shifting right over epochs;
    as the loop records them, epoch 0 holds weights only."""
    rows = []
    for run_id in (TORCH_ID, TF_ID):
        for epoch in EPOCHS:
            for kind in ("weight", "grad") if epoch else ("weight",):
                for layer in LAYERS:
                    counts = np.roll([1, 4, 10, 4], epoch % 4).tolist()
                    rows.append(dict(run_id=run_id, epoch=epoch, step=10 * epoch, layer=layer, kind=kind,
                                     numel=19, norm=norm_of(run_id, epoch, layer, kind), mean=0.0, std=0.5,
                                     min=-1.0, max=1.0, histogram={"edges": EDGES, "counts": counts}))
    return pd.DataFrame(rows)


@pytest.fixture
def section() -> AppTest:
    at = AppTest.from_string(SCRIPT, default_timeout=30).run()
    assert not failures(at), failures(at)
    return at


def test_controls_start_at_the_first_layer_weights_and_the_last_epoch(section):
    assert section.subheader[0].value == "Weights and gradients per layer"
    assert section.selectbox(key="tensor_layer").options == LAYERS
    assert section.selectbox(key="tensor_layer").value == "dense1/kernel"
    assert section.radio(key="tensor_kind").value == "weight"
    assert section.select_slider(key="tensor_epoch").value == 3


def test_norm_histogram_and_one_ridgeline_per_run_in_the_run_colours(section):
    specs = chart_specs(section)
    assert set(specs) == {"chart_tensor_norm", "chart_tensor_histogram", f"chart_tensor_ridge_{TORCH_ID}",
                          f"chart_tensor_ridge_{TF_ID}"}  # the run without statistics gets no ridgeline
    colours = {run_id: style["color"] for run_id, style in trace_styles(made_up_runs()[:2]).items()}
    assert colours == {TORCH_ID: FRAMEWORK_COLORS["torch"], TF_ID: FRAMEWORK_COLORS["tensorflow"]}

    norms = specs["chart_tensor_norm"]["data"]
    assert [trace["name"] for trace in norms] == ["#3 PyTorch", "#4 TensorFlow"]
    for trace, run_id in zip(norms, (TORCH_ID, TF_ID)):
        assert array(trace["x"]) == EPOCHS and trace["line"]["color"] == colours[run_id]
        assert array(trace["y"]) == pytest.approx([norm_of(run_id, e, "dense1/kernel", "weight") for e in EPOCHS])

    bars = specs["chart_tensor_histogram"]["data"]
    assert [bar["marker"]["color"] for bar in bars] == [colours[TORCH_ID], colours[TF_ID]]
    for bar in bars:  # densities: the bars' area is 1
        assert sum(np.array(array(bar["y"])) * np.array(array(bar["width"]))) == pytest.approx(1.0)
    assert "at epoch 3" in specs["chart_tensor_histogram"]["layout"]["title"]["text"]

    for run_id in (TORCH_ID, TF_ID):
        ridges = specs[f"chart_tensor_ridge_{run_id}"]["data"]
        assert [trace["name"] for trace in ridges] == [f"epoch {e}" for e in EPOCHS]
        assert ridges[-1]["line"]["color"] == colours[run_id] and ridges[-1]["fillcolor"] == colours[run_id]
        assert ridges[0]["fillcolor"] != colours[run_id]  # the first epoch is a lighter shade
        assert max(array(ridges[0]["y"])) == pytest.approx(layer_stats.RIDGE_HEIGHT)  # epoch 0 at the top
        assert max(array(ridges[-1]["y"])) == pytest.approx(layer_stats.RIDGE_HEIGHT - 3)


def test_the_table_holds_every_layer_at_the_last_epoch_and_the_relative_difference(section):
    table = section.dataframe[0].value
    assert table.index.tolist() == LAYERS
    assert table[f"#{TORCH_ID} PyTorch ‖W‖"].tolist() == pytest.approx(
        [norm_of(TORCH_ID, 3, layer, "weight") for layer in LAYERS])
    assert table[f"#{TF_ID} TensorFlow ‖∇‖"].tolist() == pytest.approx(
        [norm_of(TF_ID, 3, layer, "grad") for layer in LAYERS])
    assert table[f"rel. diff ‖W‖ #{TORCH_ID} vs #{TF_ID}"].tolist() == pytest.approx([0.01 / 1.01] * 3)
    captions = " ".join(caption.value for caption in section.caption)
    assert f"#{OLD_ID} recorded no layer statistics" in captions and "one fixed batch" in captions


def test_another_layer_kind_and_epoch_redraw_the_charts(section):
    section.selectbox(key="tensor_layer").select("dense2/kernel").run()
    section.radio(key="tensor_kind").set_value("grad").run()
    section.select_slider(key="tensor_epoch").set_value(1).run()
    assert not failures(section)

    specs = chart_specs(section)
    torch_norms = specs["chart_tensor_norm"]["data"][0]
    assert array(torch_norms["x"]) == EPOCHS[1:]  # no gradient before the first step
    assert array(torch_norms["y"]) == pytest.approx([norm_of(TORCH_ID, e, "dense2/kernel", "grad")
                                                     for e in EPOCHS[1:]])
    assert specs["chart_tensor_norm"]["layout"]["title"]["text"] == "Gradients norm per epoch · dense2/kernel"
    assert specs["chart_tensor_histogram"]["layout"]["title"]["text"] == "Gradients of dense2/kernel at epoch 1"
    ridges = specs[f"chart_tensor_ridge_{TORCH_ID}"]["data"]
    assert [trace["line"]["width"] for trace in ridges] == [2.5, 0.6, 0.6]  # epochs 1-3, the chosen one outlined


def test_an_epoch_the_other_kind_lacks_falls_back_to_the_last_one(section):
    section.select_slider(key="tensor_epoch").set_value(0).run()
    assert "at epoch 0" in chart_specs(section)["chart_tensor_histogram"]["layout"]["title"]["text"]
    section.radio(key="tensor_kind").set_value("grad").run()
    assert not failures(section)
    assert section.select_slider(key="tensor_epoch").options == ["1", "2", "3"]
    assert section.select_slider(key="tensor_epoch").value == 3


def test_runs_without_statistics_say_why_and_how_to_get_them():
    at = AppTest.from_string(SCRIPT, default_timeout=30)
    at.session_state["no_stats"] = True
    at.run()
    assert not failures(at)
    text = " ".join(caption.value for caption in at.caption)
    assert "These runs recorded no layer statistics" in text and "**Layer statistics**" in text
    assert "Launch" in text and not at.get("plotly_chart") and not at.selectbox


def test_ridgelines_of_many_epochs_are_thinned_evenly_keeping_the_chosen_one():
    drawn = layer_stats.ridge_epochs(range(101), chosen=37, limit=11)
    assert drawn[0] == 0 and drawn[-1] == 100 and 37 in drawn and len(drawn) == 12
    assert layer_stats.ridge_epochs([0, 1, 2], chosen=1) == [0, 1, 2]


@pytest.mark.parametrize("a, b, expected", [(1.0, 1.01, 0.01 / 1.01), (0.0, 0.0, 0.0), (2.0, None, None),
                                            (float("nan"), 1.0, None), (-1.0, 1.0, 2.0)])
def test_relative_difference(a, b, expected):
    assert layer_stats.relative_difference(a, b) == (pytest.approx(expected) if expected is not None else None)


def test_a_run_in_its_first_epoch_has_weights_but_no_gradients_yet():
    script = SCRIPT.replace("stats = made_up_stats()", "stats = made_up_stats().query('epoch == 0')")
    at = AppTest.from_string(script, default_timeout=30).run()
    assert not failures(at)
    assert at.select_slider(key="tensor_epoch").value == 0 and at.select_slider(key="tensor_epoch").disabled
    at.radio(key="tensor_kind").set_value("grad").run()
    assert not failures(at)
    assert "No gradients of dense1/kernel yet" in " ".join(caption.value for caption in at.caption)
    assert not at.get("plotly_chart") and at.dataframe[0].value.index.tolist() == LAYERS
