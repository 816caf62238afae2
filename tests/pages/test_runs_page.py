"""Runs page: empty state, the live table, failures, the compare / edit / tag / stop / delete actions."""
from __future__ import annotations

import pandas as pd
from sqlalchemy import func, insert, select, text

from analysis import runs_table
from db import queries
from db.models import DIVERGED, FINISHED, NON_FINITE_LOSS, OUT_OF_MEMORY, Run
from db.session import make_sessionmaker
from engine.launch import launch
from engine.spec import RunSpec
from ui.router import RUNS_PAGE
from tests.conftest import wait_until
from tests.pages.helpers import failures, run_status


def shown(at) -> pd.DataFrame:
    """The runs table as the page drew it, indexed by run id; the coloured label columns read as text."""
    table = at.dataframe[0].value.set_index("id")
    for column in ("framework", "status"):
        table[column] = [cell[0] for cell in table[column]]
    return table


def test_empty_database_says_there_are_no_runs_and_links_to_launch(arena_db, open_page):
    at = open_page(RUNS_PAGE)

    assert "No runs yet" in at.info[0].value
    links = at.get("page_link")
    assert len(links) == 1 and links[0].proto.label == "Launch your first run"
    assert links[0].proto.page == ""  # Launch is the default page, served at the root URL
    assert not at.dataframe


def test_table_lists_every_run_with_progress_and_results(runs_db, open_page):
    at = open_page(RUNS_PAGE)

    table = shown(at)
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

    table = shown(at)
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

    assert not failures(at), failures(at)
    assert at.title[0].value == "Compare"
    assert at.query_params["runs"] == f"{ids[0]},{ids[1]}"  # the Compare page picks its runs from the link


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
    assert not failures(at)
    with sessions.begin() as s:
        assert queries.get_run(s, doomed) is None
    assert doomed not in set(at.dataframe[0].value["id"])


def test_cancel_button_cancels_an_active_run(stop_launched_runs, open_page):
    url = stop_launched_runs
    sessions = make_sessionmaker(url)
    (run_id,) = launch(sessions, [RunSpec.with_model_defaults("torch", "cnn", "digits", epochs=200)], url)
    wait_until(lambda: run_status(url, run_id)[0] == "running", what=f"run {run_id} to start")
    at = open_page(RUNS_PAGE, runs=str(run_id))
    assert "Updating every" in at.caption[0].value  # live while a run is active

    next(b for b in at.button if b.label == "Cancel 1 active").click().run()

    wait_until(lambda: run_status(url, run_id)[0] == "cancelled", what=f"run {run_id} to be cancelled")
    assert "cancelled by" in run_status(url, run_id)[1]


# Made-up runs ---------------------------------------------------------------------------------
def made_up(sessions, framework: str = "torch", model: str = "mlp", dataset: str = "digits", *,
            total_steps: int | None = 40, **values) -> int:
    """A run stored the way the runner leaves one, without training (ARENA_SCHEDULER=off in the test)."""
    spec = RunSpec.with_model_defaults(framework, model, dataset, epochs=4, max_steps_per_epoch=10,
                                       **values.pop("spec", {}))
    with sessions.begin() as s:
        run_id = queries.create_run(s, spec.to_dict(), total_steps=total_steps).id
        if values:
            queries.update_run(s, run_id, **values)
    return run_id


def epoch_points(run_id: int, **series: list) -> list[dict]:
    return [dict(run_id=run_id, name=name, step=10 * epoch, epoch=epoch, wall_time=float(epoch), value=value)
            for name, values in series.items() for epoch, value in enumerate(values, start=1)]


def test_names_and_tags_show_in_the_table_with_how_many_runs_there_are(arena_db, open_page, monkeypatch):
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    sessions = make_sessionmaker(arena_db)
    named, plain = made_up(sessions, status=FINISHED), made_up(sessions, status=FINISHED)
    with sessions.begin() as s:
        queries.annotate_run(s, named, name="baseline", tags=["keep", "lr-sweep"])
    at = open_page(RUNS_PAGE)

    table = shown(at)
    assert (table.loc[named, "name"], list(table.loc[named, "tags"])) == ("baseline", ["keep", "lr-sweep"])
    assert (table.loc[plain, "name"], list(table.loc[plain, "tags"])) == ("", [])
    assert any(caption.value == "2 of 2 runs." for caption in at.caption)


def test_results_sit_beside_the_run_and_empty_name_and_tag_columns_give_way(arena_db, open_page, monkeypatch):
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    sessions = make_sessionmaker(arena_db)
    first, second = made_up(sessions, status=FINISHED), made_up(sessions, status=FINISHED)
    order = list(open_page(RUNS_PAGE).dataframe[0].proto.column_order)
    assert order[:6] == ["id", "framework", "experiment", "status", "result", "progress"]
    assert not {"name", "tags", "error"} & set(order)  # nobody named or tagged a run, none failed
    with sessions.begin() as s:
        queries.annotate_run(s, second, name="baseline", tags=[])
    order = list(open_page(RUNS_PAGE).dataframe[0].proto.column_order)
    assert order[:3] == ["id", "name", "framework"] and "tags" not in order  # a name appears where runs are told apart
    with sessions.begin() as s:
        queries.annotate_run(s, first, tags=["keep"])
    assert "tags" in open_page(RUNS_PAGE).dataframe[0].proto.column_order


def click_and_settle(at, key: str):
    """Click a button that opens a form through st.rerun, then render once more.

    AppTest keys the widgets of a run that st.rerun started apart from those of the runs after it
    (the page-hash quirk conftest.open_page describes), so a form drawn in that run would not see
    its submit button's click; the browser keeps one key per widget.
    """
    at.button(key=key).click().run()
    at.run()
    assert not failures(at), failures(at)
    return at


def open_editor(open_page, run_id: int):
    return click_and_settle(open_page(RUNS_PAGE, runs=str(run_id)), "runs_edit_open")


def stored(arena_db, run_id: int) -> tuple:
    with make_sessionmaker(arena_db).begin() as s:
        run = queries.get_run(s, run_id)
        return run.name, run.tags, run.notes


def test_edit_renames_tags_and_notes_one_run(arena_db, open_page, monkeypatch):
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    sessions = make_sessionmaker(arena_db)
    run_id, other = made_up(sessions, status=FINISHED), made_up(sessions, status=FINISHED)
    with sessions.begin() as s:
        queries.annotate_run(s, other, tags=["keep"])
    at = open_editor(open_page, run_id)

    assert at.multiselect(key=f"runs_edit_tags_{run_id}").options == ["keep"]  # tags other runs have, offered
    at.run().run()  # reruns (the live table refreshes every 2 s) leave the form open: its state is the session's
    assert any(b.label == "Save" for b in at.button)
    at.text_input(key=f"runs_edit_name_{run_id}").set_value("  lr 3e-4 baseline ")
    at.multiselect(key=f"runs_edit_tags_{run_id}").set_value(["keep", "new-tag"])
    at.text_area(key=f"runs_edit_notes_{run_id}").set_value("Compared against #2.\nSame seed.")
    next(b for b in at.button if b.label == "Save").click().run()

    assert not failures(at) and not at.error
    assert stored(arena_db, run_id) == ("lr 3e-4 baseline", ["keep", "new-tag"], "Compared against #2.\nSame seed.")
    assert stored(arena_db, other) == (None, ["keep"], None)
    table = shown(at)
    assert table.loc[run_id, "name"] == "lr 3e-4 baseline" and list(table.loc[run_id, "tags"]) == ["keep", "new-tag"]
    assert not any(b.label == "Save" for b in at.button)  # the form closed
    assert [toast.value for toast in at.toast] == [f"Saved run #{run_id}."]  # said by the run after the rerun


def test_edit_rejects_a_name_over_200_characters_and_stores_nothing(arena_db, open_page, monkeypatch):
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    run_id = made_up(make_sessionmaker(arena_db), status=FINISHED)
    at = open_editor(open_page, run_id)

    at.text_input(key=f"runs_edit_name_{run_id}").set_value("n" * 201)
    at.text_area(key=f"runs_edit_notes_{run_id}").set_value("not stored either")
    next(b for b in at.button if b.label == "Save").click().run()

    assert "is 201 characters long; the limit is 200" in at.error[0].value
    assert stored(arena_db, run_id) == (None, None, None)
    assert any(b.label == "Save" for b in at.button)  # still open, to fix the name


def test_edit_rejects_a_tag_with_a_comma(arena_db, open_page, monkeypatch):
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    run_id = made_up(make_sessionmaker(arena_db), status=FINISHED)
    at = open_editor(open_page, run_id)

    at.text_input(key=f"runs_edit_name_{run_id}").set_value("kept out")
    at.multiselect(key=f"runs_edit_tags_{run_id}").set_value(["good", "lr,0.1"])
    next(b for b in at.button if b.label == "Save").click().run()

    assert "contains a comma; commas separate tags" in at.error[0].value
    assert "lr\\,0\\.1" in at.error[0].value or "lr,0\\.1" in at.error[0].value
    assert stored(arena_db, run_id) == (None, None, None)


def test_ticks_stay_on_the_same_runs_when_rows_move_or_hide(arena_db, open_page, monkeypatch):
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    sessions = make_sessionmaker(arena_db)
    ticked, other = made_up(sessions, status=FINISHED), made_up(sessions, "tensorflow", status=FINISHED)
    at = open_page(RUNS_PAGE, runs=f"{ticked},{other}")
    made_up(sessions, status=FINISHED)  # a newer run takes the top row; the ticked ones move down
    at.run()
    assert "Compare 2 selected" in [b.label for b in at.button]

    at.multiselect(key="f_fw").set_value(["torch"]).run()  # hides the TensorFlow run: its tick goes
    assert "Compare 1 selected" in [b.label for b in at.button]
    click_and_settle(at, "runs_edit_open")
    assert at.text_input(key=f"runs_edit_name_{ticked}")  # the form edits the ticked run, not its old row


def test_tag_adds_tags_to_every_selected_run(arena_db, open_page, monkeypatch):
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    sessions = make_sessionmaker(arena_db)
    first, second, untouched = (made_up(sessions, status=FINISHED) for _ in range(3))
    with sessions.begin() as s:
        queries.annotate_run(s, first, tags=["keep"])
    at = open_page(RUNS_PAGE, runs=f"{first},{second}")
    assert not any(b.label == "Edit…" for b in at.button)  # editing is for one run at a time

    click_and_settle(at, "runs_tag_open")
    assert at.multiselect(key="runs_bulk_tag_value").options == ["keep"]
    at.multiselect(key="runs_bulk_tag_value").set_value(["keep", "sweep-3"])
    next(b for b in at.button if b.label == "Add tags").click().run()

    assert not failures(at) and not at.error
    assert [stored(arena_db, i)[1] for i in (first, second, untouched)] == [["keep", "sweep-3"], ["keep", "sweep-3"],
                                                                            None]


def test_markup_in_names_tags_and_notes_shows_literally(arena_db, open_page, monkeypatch):
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    sessions = make_sessionmaker(arena_db)
    script, link = "<script>alert(1)</script>", "[x](javascript:alert(1))"
    run_id = made_up(sessions, status=FINISHED)
    with sessions.begin() as s:
        queries.annotate_run(s, run_id, name=script, notes=link, tags=["<b>bold</b>", "**x**"])
    at = open_editor(open_page, run_id)

    table = shown(at)
    assert table.loc[run_id, "name"] == script  # a cell is text, never markup
    assert list(table.loc[run_id, "tags"]) == ["<b>bold</b>", "**x**"]
    assert at.text_input(key=f"runs_edit_name_{run_id}").value == script
    assert at.text_area(key=f"runs_edit_notes_{run_id}").value == link
    rendered = [e.value for e in (*at.markdown, *at.caption, *at.warning, *at.info)] + [e.label for e in at.expander]
    assert not any(payload in text for text in rendered for payload in (script, link, "<b>bold</b>"))
    at.text_input(key="f_q").set_value("<script>").run()  # searchable as the text it is
    assert shown(at).index.tolist() == [run_id]


def count_rows(url: str, table: str, run_id: int) -> int:
    with make_sessionmaker(url).begin() as s:
        return s.execute(text(f"SELECT COUNT(*) FROM {table} WHERE run_id = :run_id"), {"run_id": run_id}).scalar()


def test_delete_after_confirmation_removes_the_run_its_points_and_samples(arena_db, open_page, monkeypatch):
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    sessions = make_sessionmaker(arena_db)
    doomed, kept = made_up(sessions, status=FINISHED), made_up(sessions, status=FINISHED)
    with sessions.begin() as s:
        for run_id in (doomed, kept):
            queries.add_metric_points(s, epoch_points(run_id, train_loss=[1.0, 0.5], samples_per_s=[10.0, 20.0]))
            queries.add_system_samples(s, [dict(run_id=run_id, time=float(t), source="host", name="rss",
                                                value=1e6, unit="bytes") for t in range(3)])
    at = open_page(RUNS_PAGE, runs=str(doomed))

    next(b for b in at.button if b.label == "Delete 1…").click().run()
    assert f"#{doomed}" in at.warning[0].value
    assert count_rows(arena_db, "metric_points", doomed) == 4  # nothing deleted before the confirmation
    at.button(key="confirm_delete_yes").click().run()

    assert not failures(at)
    assert [count_rows(arena_db, t, doomed) for t in ("metric_points", "system_samples")] == [0, 0]
    assert [count_rows(arena_db, t, kept) for t in ("metric_points", "system_samples")] == [4, 3]
    assert shown(at).index.tolist() == [kept]


def test_ten_thousand_runs_render_with_filters_and_a_capped_height(arena_db, open_page, monkeypatch):
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    sessions = make_sessionmaker(arena_db)
    spec = RunSpec.with_model_defaults("torch", "mlp", "digits", epochs=5).to_dict()
    now = queries.utcnow()
    with sessions.begin() as s:
        s.execute(insert(Run.__table__), [
            dict(created_at=now, started_at=now, finished_at=now, status=FINISHED,
                 framework=("torch", "tensorflow")[i % 2], model="mlp", dataset="digits", spec=spec, epoch=5,
                 total_epochs=5, step=220, total_steps=220, name=f"run {i}",
                 tags=["even" if i % 2 == 0 else "odd"], group_tag=f"pair-{i // 2}")
            for i in range(10_000)])
        ids = s.scalars(select(Run.id)).all()
        queries.add_metric_points(s, [point for run_id in ids for point in epoch_points(
            run_id, train_loss=[1.0, 0.5, 0.2, 0.1, 0.05], test_accuracy=[0.5, 0.6, 0.7, 0.8, 0.9],
            samples_per_s=[1e4, 2e4, 3e4, 2e4, 1e4])])
        assert s.scalar(select(func.count()).select_from(Run)) == 10_000
    at = open_page(RUNS_PAGE)

    table = shown(at)
    assert len(table) == 10_000 and (table["result"] == "90.0 % accuracy").all()
    assert runs_table.table_height(10_000) == runs_table.table_height(runs_table.ROWS_SHOWN) < runs_table.ROW_HEIGHT_PX * 20
    assert any(caption.value == "10,000 of 10,000 runs." for caption in at.caption)
    at.multiselect(key="f_tag").set_value(["odd"]).run()
    assert len(shown(at)) == 5_000 and set(shown(at)["framework"]) == {"TensorFlow"}
