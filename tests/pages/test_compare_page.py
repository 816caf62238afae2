"""Compare page: empty state, charts in framework colours, and the "what was compared" verdict."""
from __future__ import annotations

import json
from datetime import datetime, timedelta

from db import queries
from db.session import make_sessionmaker
from engine.spec import RunSpec
from pages.common import COMPARE_PAGE, FRAMEWORK_COLORS


def chart_specs(at) -> dict[str, dict]:
    """Plotly figures on the page by chart key suffix ("chart_loss_step" ...)."""
    charts = at.get("plotly_chart")
    return {chart.proto.id.rsplit("-", 1)[-1]: json.loads(chart.proto.spec) for chart in charts}


def text_of(at) -> str:
    return "\n".join(e.value for kind in ("markdown", "subheader", "success", "warning", "info", "caption")
                     for e in getattr(at, kind))


def test_empty_database_says_there_are_no_runs_and_links_to_launch(arena_db, open_page):
    at = open_page(COMPARE_PAGE)

    assert "No runs yet" in at.info[0].value
    assert at.get("page_link")[0].proto.label == "Launch your first run"
    assert not at.multiselect and not at.get("plotly_chart")


def test_a_fair_pair_gets_every_chart_in_its_framework_colour(runs_db, open_page):
    ids = sorted([runs_db.torch_id, runs_db.tensorflow_id])
    at = open_page(COMPARE_PAGE, runs=f"{ids[0]},{ids[1]}")

    assert at.multiselect[0].value == ids
    specs = chart_specs(at)
    assert {"chart_loss_step", "chart_accuracy", "chart_test_loss", "chart_train_loss", "chart_throughput",
            "chart_epoch_time", "chart_first_step", "chart_rss", "chart_cpu"} <= set(specs)
    loss_traces = [t for t in specs["chart_loss_step"]["data"] if t.get("showlegend") is not False]
    colours = {trace["name"].split()[-1]: trace["line"]["color"] for trace in loss_traces}
    assert colours == {"PyTorch": FRAMEWORK_COLORS["torch"], "TensorFlow": FRAMEWORK_COLORS["tensorflow"]}
    assert specs["chart_throughput"]["data"][0]["marker"]["color"] == [
        FRAMEWORK_COLORS["torch" if i == runs_db.torch_id else "tensorflow"] for i in ids]


def test_what_was_compared_says_only_the_framework_differs(runs_db, open_page):
    at = open_page(COMPARE_PAGE, runs=f"{runs_db.torch_id},{runs_db.tensorflow_id}")

    text = text_of(at)
    assert "What was compared" in text
    assert "Identical in all: model `mlp`, dataset `digits`, epochs `2`" in text
    assert "Equal settings: only the framework differs." in text
    assert "first step" in text and "same initial weights" in text and "1e-8" in text
    assert "as many samples per second as" in text
    assert not at.warning
    summary = at.table[0].value
    assert list(summary.columns) == sorted(summary.columns, key=lambda name: int(name.split()[0][1:]))
    assert {"test accuracy", "throughput (median)", "first step (excluded)", "parameters",
            "framework version", "device"} <= set(summary.index)
    assert set(summary.loc["parameters"]) == {"9,610"}


def test_runs_with_different_settings_are_flagged_as_unequal(runs_db, open_page):
    sessions = make_sessionmaker(runs_db.url)
    spec = RunSpec.with_model_defaults("tensorflow", "mlp", "digits", epochs=2, max_steps_per_epoch=5, seed=3)
    with sessions.begin() as s:
        other = queries.create_run(s, spec.to_dict()).id
        queries.fail_run(s, other, "RuntimeError: never trained")
    at = open_page(COMPARE_PAGE, runs=f"{runs_db.torch_id},{other}")

    assert "**seed** differs" in text_of(at)
    assert len(at.warning) == 1
    assert "Not an equal comparison" in at.warning[0].value and "seed" in at.warning[0].value


def test_runs_that_trained_at_the_same_time_are_flagged(runs_db, open_page):
    sessions = make_sessionmaker(runs_db.url)
    start = datetime(2026, 1, 1, 12, 0, 0)
    ids = []
    with sessions.begin() as s:
        for framework, offset_s in (("torch", 0), ("tensorflow", 5)):
            spec = RunSpec.with_model_defaults(framework, "mlp", "digits", epochs=2)
            run = queries.create_run(s, spec.to_dict())
            started = start + timedelta(seconds=offset_s)
            queries.update_run(s, run.id, status="finished", hostname="box", started_at=started,
                               finished_at=started + timedelta(seconds=20))
            ids.append(run.id)
    at = open_page(COMPARE_PAGE, runs=f"{ids[0]},{ids[1]}")

    warning = next(w.value for w in at.warning if "same time" in w.value)
    assert "15 s" in warning and "speed" in warning
    assert "Equal settings: only the framework differs." in text_of(at)


def test_unknown_run_ids_in_the_url_are_reported(runs_db, open_page):
    at = open_page(COMPARE_PAGE, runs=f"{runs_db.torch_id},9999")

    assert "#9999" in at.warning[0].value
    assert at.multiselect[0].value == [runs_db.torch_id]


def test_without_a_selection_the_newest_runs_are_compared(runs_db, open_page):
    at = open_page(COMPARE_PAGE)

    assert len(at.multiselect[0].value) == 2
    assert at.query_params["runs"] == ",".join(str(i) for i in at.multiselect[0].value)
