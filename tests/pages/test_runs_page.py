"""Runs page: empty state, the live table, failures, and the compare / stop / delete actions."""
from __future__ import annotations

from db import queries
from db.session import make_sessionmaker
from engine.launch import launch
from engine.spec import RunSpec
from pages.common import RUNS_PAGE
from tests.pages.helpers import run_status, wait_until


def test_empty_database_says_there_are_no_runs_and_links_to_launch(arena_db, open_page):
    at = open_page(RUNS_PAGE)

    assert "No runs yet" in at.info[0].value
    links = at.get("page_link")
    assert len(links) == 1 and links[0].proto.label == "Launch your first run"
    assert links[0].proto.page == ""  # Launch is the default page, served at the root URL
    assert not at.dataframe


def test_table_lists_every_run_with_progress_and_results(runs_db, open_page):
    at = open_page(RUNS_PAGE)

    table = at.dataframe[0].value.set_index("id")
    assert sorted(table.index) == sorted([runs_db.torch_id, runs_db.tensorflow_id, runs_db.failed_id])
    finished = table.loc[[runs_db.torch_id, runs_db.tensorflow_id]]
    assert list(finished["status"]) == ["✓ finished", "✓ finished"]
    assert set(finished["framework"]) == {"PyTorch", "TensorFlow"}
    assert list(finished["epochs"]) == ["2/2", "2/2"]
    modes = dict(zip(finished["framework"], finished["mode"]))
    assert modes == {"PyTorch": "eager", "TensorFlow": "graph"}
    assert list(finished["precision"]) == ["fp32", "fp32"]
    assert list(finished["progress"]) == [100.0, 100.0]
    assert all(text.endswith("accuracy") for text in finished["result"])
    assert (finished["throughput"] > 0).all()
    assert table.loc[runs_db.failed_id, "status"] == "✗ failed"
    assert table.loc[runs_db.failed_id, "error"].startswith("FloatingPointError: train_loss became nan")


def test_failed_run_shows_its_last_error_line_and_full_traceback(runs_db, open_page):
    at = open_page(RUNS_PAGE)

    failures = [e for e in at.expander if f"#{runs_db.failed_id}" in e.label]
    assert len(failures) == 1
    assert "train\\_loss became nan" in failures[0].label  # markdown-escaped in the label
    assert "Traceback (most recent call last)" in failures[0].code[0].value


def test_runs_from_the_url_are_selected_and_lead_to_compare(runs_db, open_page):
    ids = sorted([runs_db.torch_id, runs_db.tensorflow_id])
    at = open_page(RUNS_PAGE, runs=f"{ids[1]},{ids[0]}")

    labels = [button.label for button in at.button]
    assert "Compare 2 selected" in labels and "Delete 2…" in labels
    assert not any(label.startswith("Stop") for label in labels)  # nothing active
    next(b for b in at.button if b.label == "Compare 2 selected").click().run()

    assert at.title[0].value == "Compare"
    assert at.multiselect[0].value == ids
    assert at.query_params["runs"] == f"{ids[0]},{ids[1]}"


def test_delete_asks_first_then_removes_the_run(runs_db, open_page):
    sessions = make_sessionmaker(runs_db.url)
    spec = RunSpec.with_model_defaults("tensorflow", "cnn", "digits", epochs=1)
    with sessions.begin() as s:
        doomed = queries.create_run(s, spec.to_dict()).id
        queries.fail_run(s, doomed, "RuntimeError: made to be deleted")
    at = open_page(RUNS_PAGE, runs=str(doomed))

    next(b for b in at.button if b.label == "Delete 1…").click().run()
    assert f"#{doomed}" in at.warning[0].value and "cannot be undone" in at.warning[0].value
    with sessions.begin() as s:
        assert queries.get_run(s, doomed) is not None  # nothing deleted before the confirmation

    at.button(key="confirm_delete_yes").click().run()
    assert not at.exception
    with sessions.begin() as s:
        assert queries.get_run(s, doomed) is None
    assert doomed not in set(at.dataframe[0].value["id"])


def test_stop_button_stops_an_active_run(stop_launched_runs, open_page):
    url = stop_launched_runs
    sessions = make_sessionmaker(url)
    (run_id,) = launch(sessions, [RunSpec.with_model_defaults("torch", "cnn", "digits", epochs=200)], url)
    wait_until(lambda: run_status(url, run_id)[0] == "running", what=f"run {run_id} to start")
    at = open_page(RUNS_PAGE, runs=str(run_id))
    assert "Updating every" in at.caption[0].value  # live while a run is active

    next(b for b in at.button if b.label == "Stop 1 active").click().run()

    wait_until(lambda: run_status(url, run_id)[0] == "failed", what=f"run {run_id} to stop")
    assert "SIGTERM" in run_status(url, run_id)[1]
