"""ui/architecture_section.py: one model's layers and source in both frameworks, rendered by AppTest."""
from __future__ import annotations

import sys

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from engine import architecture
from engine.architecture import LayerRow, LayerTable
from analysis.architecture_tables import parameter_sentence, shape_text
from tests.pages.helpers import failures

RENDER_TIMEOUT_S = 120  # the first render starts both framework workers
FRAMEWORK_MODULES = ("torch", "tensorflow", "keras")


def _mlp_section() -> None:
    from ui.architecture_section import section

    section("mlp", "digits")


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty ARENA_HOME (no cached tables on disk) and no tables cached in memory."""
    monkeypatch.setenv("ARENA_HOME", str(tmp_path))
    st.cache_data.clear()
    yield tmp_path
    st.cache_data.clear()


def test_mlp_shows_both_tables_aligned_the_parameter_sentence_and_both_sources(fresh):
    before = set(sys.modules)
    at = AppTest.from_function(_mlp_section, default_timeout=RENDER_TIMEOUT_S).run()
    assert not failures(at), failures(at)
    assert [s.value for s in at.subheader] == ["Model: mlp in both frameworks"]
    assert len(at.dataframe) == 2
    torch_frame, tf_frame = (frame.value for frame in at.dataframe)
    assert list(torch_frame.columns) == list(tf_frame.columns) == ["layer", "type", "output shape", "parameters"]
    # Row i is the same layer in both: PyTorch's separate ReLU faces a blank row in TensorFlow.
    assert list(torch_frame["type"]) == ["_NHWCFlatten", "Linear", "ReLU", "Linear"]
    assert list(tf_frame["layer"]) == ["flatten", "dense1", "", "dense2"]
    assert list(tf_frame["output shape"]) == ["(None, 64)", "(None, 128)", "", "(None, 10)"]
    assert list(torch_frame["parameters"]) == ["0", "8,320", "0", "1,290"]
    markdown = [m.value for m in at.markdown]
    assert "Both have 9,610 trainable parameters." in markdown
    assert any("#EE4C2C" in m and "PyTorch" in m for m in markdown)
    captions = [c.value for c in at.caption]
    assert any("shapes in NCHW" in c for c in captions) and any("shapes in NHWC" in c for c in captions)
    assert any(c.startswith("A blank row") and "activation" in c for c in captions)
    assert [e.label for e in at.expander] == ["Source code"]
    codes = at.expander[0].code
    assert len(codes) == 2 and all(c.language == "python" and "def build_model(" in c.value for c in codes)
    assert "nn.Linear(" in codes[0].value and "layers.Dense(" in codes[1].value
    assert not at.error
    # The dashboard's process never imported a framework: the workers did.
    assert not (set(sys.modules) - before) & set(FRAMEWORK_MODULES)
    assert len(list((fresh / "cache" / "architecture").glob("*-mlp-8x8x1-10.json"))) == 2


def test_a_failing_worker_is_an_error_naming_what_failed_not_a_traceback(fresh, monkeypatch):
    monkeypatch.setattr(architecture, "WORKER_MODULE", "engine.backends.no_such_worker")
    at = AppTest.from_function(_mlp_section, default_timeout=RENDER_TIMEOUT_S).run()
    assert not failures(at), failures(at)
    errors = [e.value for e in at.error]
    assert len(errors) == 2 and not at.dataframe
    for error, name in zip(errors, ("PyTorch", "TensorFlow")):
        assert error.startswith(f"{name} could not list the layers of 'mlp' on digits (8x8x1)")
        assert "no_such_worker" in error and "Traceback" not in error
    assert [e.label for e in at.expander] == ["Source code"]  # the sources need no worker


def test_one_framework_failing_leaves_the_other_framework_shown(fresh, monkeypatch):
    real = architecture.worker_command

    def tensorflow_broken(framework, requests):
        if framework == "tensorflow":
            return [sys.executable, "-c", "raise SystemExit('ImportError: tensorflow is broken here')"]
        return real(framework, requests)

    monkeypatch.setattr(architecture, "worker_command", tensorflow_broken)
    at = AppTest.from_function(_mlp_section, default_timeout=RENDER_TIMEOUT_S).run()
    assert not failures(at), failures(at)
    assert len(at.dataframe) == 1 and list(at.dataframe[0].value["layer"]) == ["0", "1", "2", "3"]
    assert [e.value.split(":")[0] for e in at.error] == [
        "TensorFlow could not list the layers of 'mlp' on digits (8x8x1)"]
    assert "tensorflow is broken here" in at.error[0].value
    assert not any("trainable parameters." in m.value for m in at.markdown)  # no verdict from one side
    assert [p.name for p in (fresh / "cache" / "architecture").iterdir()] == ["torch-mlp-8x8x1-10.json"]


def _table(framework: str, params: int, non_trainable: int = 0) -> LayerTable:
    return LayerTable(framework, "lstm", "synthetic_text", (32,), 10, None, "0",
                      (LayerRow("lstm", "LSTM", (None, 64), params, non_trainable),), params, non_trainable)


def test_parameter_sentence_says_which_framework_has_more():
    assert parameter_sentence(_table("torch", 269_722), _table("tensorflow", 269_722)) == \
        "Both have 269,722 trainable parameters."
    assert parameter_sentence(_table("torch", 1_000), _table("tensorflow", 1_256)) == \
        "TensorFlow has 1,256 trainable parameters, PyTorch 1,000: 256 more. 1 layer differs in parameters (shaded)."
    assert parameter_sentence(_table("torch", 24_832, 256), _table("tensorflow", 24_832)).endswith(
        "Non-trainable values differ: PyTorch holds 256, TensorFlow 0.")
    assert shape_text((None, 32, 8, 8)) == "(None, 32, 8, 8)" and shape_text(None) == "—"
