"""ui/summary_section.py: the Compare page's summary and settings tables on a tiny page against a real database."""
from __future__ import annotations

from streamlit.testing.v1 import AppTest

from tests.analysis.test_summary import STEADY
from tests.pages.conftest import RENDER_TIMEOUT_S
from tests.pages.helpers import failures
from ui.summary_section import BASELINE_PARAM


# The section on a page, against a real database ------------------------------------------------------
def tables_page() -> None:
    """A tiny page: the Compare page's summary and settings tables of every stored run."""
    from db import queries
    from ui import settings_section, summary_section
    from ui.database import sessions

    with sessions().begin() as s:
        runs = sorted(queries.list_runs(s), key=lambda run: run.id)
        ids = [run.id for run in runs]
        metrics, samples = queries.metric_frame(s, ids), queries.sample_frame(s, ids)
    summary_section.summary_section(runs, metrics, samples)
    settings_section.spec_diff_section(runs)


def open_tables(**query_params: str) -> AppTest:
    at = AppTest.from_function(tables_page, default_timeout=RENDER_TIMEOUT_S)
    for key, value in query_params.items():
        at.query_params[key] = value
    at.run()
    assert not failures(at), failures(at)
    return at


def test_the_baseline_picked_changes_the_percentages_and_is_kept_in_the_url(pair):
    torch_id, tensorflow_id = pair
    at = open_tables()

    picker = at.selectbox(key="summary_baseline")
    assert picker.label == "Baseline" and picker.value == torch_id  # the first run by default
    assert at.query_params[BASELINE_PARAM] == str(torch_id)
    table = at.dataframe[0].value
    assert table.loc[STEADY].tolist() == ["1,000 samples/s", "1,100 samples/s (+10.0 %)"]
    assert table.loc[("Settings", "mode")].tolist() == ["eager", "tf.function (graph)"]
    assert table.loc[("Memory", "peak host RSS")].tolist() == ["500.0 MiB", "500.0 MiB (±0.0 %)"]
    assert f"difference to the baseline run #{torch_id} PyTorch" in at.caption[0].value
    assert "#15803D" in at.dataframe[0].proto.arrow_data.styler.styles  # the faster run is coloured better

    picker.set_value(tensorflow_id).run()

    table = at.dataframe[0].value
    assert list(table.columns) == [f"#{torch_id} PyTorch", f"#{tensorflow_id} TensorFlow (baseline)"]
    assert table.loc[STEADY].tolist() == ["1,000 samples/s (-9.1 %)", "1,100 samples/s"]
    assert at.query_params[BASELINE_PARAM] == str(tensorflow_id)
    assert f"baseline run #{tensorflow_id} TensorFlow" in at.caption[0].value


def test_a_baseline_in_the_url_is_picked_and_an_unknown_one_falls_back_to_the_first_run(pair):
    torch_id, tensorflow_id = pair
    assert open_tables(baseline=str(tensorflow_id)).selectbox(key="summary_baseline").value == tensorflow_id
    at = open_tables(baseline="999")
    assert at.selectbox(key="summary_baseline").value == torch_id
    assert at.query_params[BASELINE_PARAM] == str(torch_id)
