"""The Deploy page in AppTest: its empty state, the run choice from a link, a real deployment queued from the form
and shown when done, and a form with no format refused in words."""
from __future__ import annotations

import time

from db import deployments
from db.models import FINISHED
from db.session import make_sessionmaker
from ui.router import DEPLOY_PAGE


def test_with_no_deployable_run_the_page_says_what_to_do(arena_db, open_page):
    at = open_page(DEPLOY_PAGE)
    assert "No finished run has kept its trained weights yet" in at.info[0].value
    assert not at.multiselect


def test_a_linked_failed_run_is_named_and_a_format_must_be_picked(runs_db, open_page):
    at = open_page(DEPLOY_PAGE, runs=f"{runs_db.torch_id},{runs_db.failed_id}")
    assert at.multiselect(key="deploy_runs").value == [runs_db.torch_id]
    assert f"#{runs_db.failed_id} cannot be deployed" in at.warning[0].value
    formats = at.multiselect(key="deploy_formats_torch")
    assert formats.value == ["torchscript", "torch_export", "aoti", "onnx"]
    formats.set_value([])
    at.button[0].click().run()  # the form's submit button
    assert "Pick at least one PyTorch format." in at.error[0].value
    with make_sessionmaker(runs_db.url).begin() as s:
        assert deployments.jobs(s) == []


def test_a_deployment_queued_from_the_form_runs_and_its_results_are_drawn(runs_db, open_page):
    at = open_page(DEPLOY_PAGE, runs=str(runs_db.tensorflow_id))
    at.multiselect(key="deploy_formats_tensorflow").set_value(["tflite"])
    at.number_input(key="deploy_min_time").set_value(0.1)
    at.button[0].click().run()
    sessions = make_sessionmaker(runs_db.url)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        with sessions.begin() as s:
            (job,) = deployments.jobs(s, [runs_db.tensorflow_id])
        if job["status"] not in ("queued", "running"):
            break
        time.sleep(0.5)
    assert job["status"] == FINISHED, job["error"]
    at.run()
    table = at.dataframe[0].value
    assert table["format"].tolist() == ["LiteRT fp32"] and table["status"].tolist() == ["ok"]
    assert table["max_abs_diff"].iloc[0] <= 1e-4 and table["p50_batch1_ms"].iloc[0] > 0
    assert len(at.get("plotly_chart")) == 2  # latency against batch size, and its CDF
    assert any("TensorFlow Serving" in caption.value for caption in at.caption)
