"""Runs page: empty state, the live table, failures, and the compare / stop / delete actions."""
from __future__ import annotations

from db import queries
from db.models import DIVERGED, NON_FINITE_LOSS, OUT_OF_MEMORY
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


def test_statuses_say_why_runs_ended_and_the_device_column_where_they_run_or_wait(arena_db, open_page,
                                                                                   monkeypatch):
    monkeypatch.setenv("ARENA_SCHEDULER", "off")  # made-up runs: a watching dashboard must leave the queue alone
    sessions = make_sessionmaker(arena_db)
    with sessions.begin() as s:
        def new(device: str = "auto") -> int:
            spec = RunSpec.with_model_defaults("torch", "mlp", "digits", epochs=2, device=device)
            return queries.create_run(s, spec.to_dict()).id
        finished, oom, diverged = new("cuda:0"), new(), new()
        queries.update_run(s, finished, status="finished", placed_device="cuda:0")
        queries.fail_run(s, oom, "Traceback\ntorch.OutOfMemoryError: CUDA out of memory.", reason=OUT_OF_MEMORY)
        queries.fail_run(s, diverged, "FloatingPointError: train_loss became nan at step 7",
                         summary={"diverged_at_step": 7}, reason=NON_FINITE_LOSS, status=DIVERGED)
        waiting_gpu, waiting_any, starting = new("cuda:1"), new(), new()
        queries.update_run(s, starting, placed_device="cpu")
    at = open_page(RUNS_PAGE)

    table = at.dataframe[0].value.set_index("id")
    assert table.loc[oom, "status"] == "✗ failed · out of memory"
    assert table.loc[diverged, "status"] == "△ diverged at step 7"
    assert table.loc[diverged, "error"] == "FloatingPointError: train_loss became nan at step 7"
    assert table.loc[finished, "device"] == "cuda:0"
    assert table.loc[waiting_gpu, "device"] == "waiting for cuda:1 (1st in queue)"
    assert table.loc[waiting_any, "device"] == "waiting for a free device (2nd in queue)"
    assert table.loc[starting, "device"] == "starting on cpu"
    labels = [e.label for e in at.expander]  # markdown-escaped
    assert any(f"#{diverged} " in label and "diverged at step 7\\: FloatingPointError" in label for label in labels)
    assert any(f"#{oom} " in label and "failed · out of memory\\: torch" in label for label in labels)


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
