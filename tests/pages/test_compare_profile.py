"""The Compare page's Speed tab, "Where the time goes": real runs' phases, operator tables and trace downloads.

The session's trained runs (tests/pages/conftest.py, made by the real CLI) carry phases and an
operator profile; the failed run there has neither and shows the empty state.
"""
from __future__ import annotations

from streamlit.testing.v1 import AppTest

from analysis.run_styles import FRAMEWORK_COLORS
from ui.router import COMPARE_PAGE
from analysis.step_profile import OPERATOR_COLUMNS, PHASE_LABELS
from tests.pages.conftest import RENDER_TIMEOUT_S
from tests.pages.helpers import failures
from tests.pages.test_compare_page import array, chart_specs, text_of

SECTION = """
from db import queries
from ui import profile_section
from ui.database import sessions
with sessions().begin() as s:
    runs = [queries.get_run(s, run_id) for run_id in {run_ids!r}]
    for run in runs:
        s.expunge(run)
profile_section.section(runs)
"""


def operator_tables(at) -> list:
    return [frame.value for frame in at.dataframe if list(frame.value.columns) == OPERATOR_COLUMNS]


def test_the_speed_tab_shows_each_runs_phases_top_operators_and_trace(runs_db, open_page):
    torch_id, tf_id = runs_db.torch_id, runs_db.tensorflow_id
    at = open_page(COMPARE_PAGE, runs=f"{torch_id},{tf_id}", tab="Speed")

    figure = chart_specs(at)["chart_phases"]
    bars = [trace for trace in figure["data"] if trace["type"] == "bar"]
    assert [bar["name"] for bar in bars] == list(PHASE_LABELS.values())
    assert bars[0]["y"] == [f"#{torch_id} PyTorch eager", f"#{tf_id} TensorFlow graph"]
    assert all(value >= 0 for bar in bars for value in array(bar["x"]))
    assert sum(sum(array(bar["x"])) for bar in bars) > 0
    (fused,) = [trace for trace in figure["data"] if trace["type"] == "scatter"]
    assert fused["marker"]["color"] == [FRAMEWORK_COLORS["torch"], FRAMEWORK_COLORS["tensorflow"]]
    text = text_of(at)
    assert "PyTorch eager spends " in text and "% of a step in " in text and ", TensorFlow graph " in text

    torch_table, tf_table = operator_tables(at)
    assert any(name.startswith("aten::") for name in torch_table["operator"])
    assert any("MatMul" in name for name in tf_table["operator"])
    assert (torch_table["self ms per step"] > 0).all() and len(tf_table) >= 15

    buttons = at.get("download_button")
    assert len(buttons) == 2 and all(button.proto.label.startswith("Trace (") for button in buttons)
    assert all(button.proto.deferred_file_id for button in buttons)  # read from the database only on click
    assert f"arena-run-{torch_id}-torch-trace.json.gz" in text and "Perfetto" in text
    assert f"arena-run-{tf_id}-tensorflow-profile.xplane.pb.gz" in text and "TensorBoard" in text

    (compiled,) = [frame.value for frame in at.dataframe if "compiler" in frame.value.columns]
    assert compiled["run"].tolist() == [f"#{torch_id} PyTorch eager", f"#{tf_id} TensorFlow graph"]
    assert compiled["compiler"].tolist() == ["none (eager)", "tf.function"]
    assert compiled["compiled"].tolist()[1] == "step traced 1×, 0 retraces" and (compiled["input shapes"] == 1).all()


def test_a_run_without_phases_or_a_profile_gets_a_line_saying_so(runs_db, open_page):
    at = open_page(COMPARE_PAGE, runs=f"{runs_db.torch_id},{runs_db.failed_id}", tab="Speed")

    assert "chart_phases" in chart_specs(at) and len(operator_tables(at)) == 1
    text = text_of(at)
    assert f"#{runs_db.failed_id} has no phase breakdown" in text
    assert f"#{runs_db.failed_id} has no operator profile" in text


def test_runs_without_either_show_the_empty_state_and_nothing_else(runs_db):
    at = AppTest.from_string(SECTION.format(run_ids=[runs_db.failed_id]), default_timeout=RENDER_TIMEOUT_S).run()
    assert not failures(at), failures(at)
    text = text_of(at)
    assert "No phase breakdown for these runs" in text and "No operator profile for these runs" in text
    assert not at.get("plotly_chart") and not at.dataframe and not at.get("download_button")
