"""pages/run_filters.py: each filter, the text search, and filters carried by the URL through the real page."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from db import queries, run_table
from db.models import DIVERGED, FAILED, FINISHED, NON_FINITE_LOSS
from db.session import make_sessionmaker
from engine.spec import RunSpec
from pages.common import RUNS_PAGE
from pages.run_filters import RunFilters, apply_filters
from tests.pages.helpers import failures


@dataclass(frozen=True)
class Fleet:
    url: str
    torch_mlp: int  # finished, named "Baseline LR", tags keep + lr-sweep, group pair-a
    tf_mlp: int  # finished, notes "compare with XLA", tag keep, group pair-a
    torch_cnn: int  # failed with a CUDA error, no tags
    tf_cnn: int  # diverged, tag nan-hunt, group matrix-7


@pytest.fixture
def fleet(arena_db, monkeypatch) -> Fleet:
    """Four made-up runs; the dashboard only watches (ARENA_SCHEDULER=off)."""
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    sessions = make_sessionmaker(arena_db)
    with sessions.begin() as s:
        def new(framework: str, model: str, group: str | None = None) -> int:
            spec = RunSpec.with_model_defaults(framework, model, "digits", epochs=2).to_dict()
            return queries.create_run(s, spec, group_tag=group, total_steps=88).id
        torch_mlp, tf_mlp = new("torch", "mlp", "pair-a"), new("tensorflow", "mlp", "pair-a")
        torch_cnn, tf_cnn = new("torch", "cnn"), new("tensorflow", "cnn", "matrix-7")
        for run_id in (torch_mlp, tf_mlp):
            queries.update_run(s, run_id, status=FINISHED)
        queries.fail_run(s, torch_cnn, "Traceback ...\nRuntimeError: CUDA error: device-side assert triggered")
        queries.fail_run(s, tf_cnn, "FloatingPointError: loss became nan", reason=NON_FINITE_LOSS, status=DIVERGED)
        queries.annotate_run(s, torch_mlp, name="Baseline LR", tags=["keep", "lr-sweep"])
        queries.annotate_run(s, tf_mlp, notes="compare with XLA", tags=["keep"])
        queries.annotate_run(s, tf_cnn, tags=["nan-hunt"])
    sessions.kw["bind"].dispose()
    return Fleet(arena_db, torch_mlp, tf_mlp, torch_cnn, tf_cnn)


def overview(fleet: Fleet):
    sessions = make_sessionmaker(fleet.url)
    with sessions.begin() as s:
        return run_table.runs_overview(s)


def ids(frame) -> set[int]:
    return set(frame["id"].tolist())


@pytest.mark.parametrize("filters, expected", [
    (RunFilters(), {"torch_mlp", "tf_mlp", "torch_cnn", "tf_cnn"}),
    (RunFilters(frameworks=("tensorflow",)), {"tf_mlp", "tf_cnn"}),
    (RunFilters(models=("cnn",)), {"torch_cnn", "tf_cnn"}),
    (RunFilters(datasets=("digits",)), {"torch_mlp", "tf_mlp", "torch_cnn", "tf_cnn"}),
    (RunFilters(datasets=("mnist",)), set()),
    (RunFilters(statuses=(FAILED, DIVERGED)), {"torch_cnn", "tf_cnn"}),
    (RunFilters(tags=("keep",)), {"torch_mlp", "tf_mlp"}),
    (RunFilters(tags=("lr-sweep", "nan-hunt")), {"torch_mlp", "tf_cnn"}),  # any of the chosen values
    (RunFilters(groups=("pair-a",)), {"torch_mlp", "tf_mlp"}),
    (RunFilters(frameworks=("torch",), tags=("keep",)), {"torch_mlp"}),  # every dimension must match
    (RunFilters(frameworks=("torch",), statuses=(DIVERGED,)), set()),
])
def test_each_filter_keeps_the_runs_matching_any_chosen_value(fleet, filters, expected):
    assert ids(apply_filters(overview(fleet), filters)) == {getattr(fleet, name) for name in expected}


@pytest.mark.parametrize("text, expected", [
    ("baseline", {"torch_mlp"}),  # name, any case
    ("XLA", {"tf_mlp"}),  # notes
    ("LR-SWEEP", {"torch_mlp"}),  # tags
    ("cnn", {"torch_cnn", "tf_cnn"}),  # model
    ("DIGITS", {"torch_mlp", "tf_mlp", "torch_cnn", "tf_cnn"}),  # dataset
    ("matrix-7", {"tf_cnn"}),  # group
    ("device-side", {"torch_cnn"}),  # the error's last line
    ("keep mlp", {"torch_mlp", "tf_mlp"}),  # every word must appear
    ("keep cnn", set()),
    ("nothing-like-this", set()),
    ("   ", {"torch_mlp", "tf_mlp", "torch_cnn", "tf_cnn"}),
])
def test_text_search_is_case_insensitive_over_names_notes_tags_experiment_group_and_errors(fleet, text, expected):
    assert ids(apply_filters(overview(fleet), RunFilters(text=text))) == {getattr(fleet, n) for n in expected}


def test_text_search_finds_a_run_by_its_id_and_only_that_run(fleet):
    frame = overview(fleet)
    assert ids(apply_filters(frame, RunFilters(text=f"#{fleet.tf_cnn}"))) == {fleet.tf_cnn}
    assert ids(apply_filters(frame, RunFilters(text=f"#{fleet.tf_cnn}0"))) == set()  # #40 is not #4


def test_filters_keep_the_overview_order(fleet):
    kept = apply_filters(overview(fleet), RunFilters(tags=("keep", "nan-hunt")))
    assert kept["id"].tolist() == [fleet.tf_cnn, fleet.tf_mlp, fleet.torch_mlp]  # newest first


def table_ids(at) -> set[int]:
    return set(at.dataframe[0].value["id"].tolist())


def test_filters_come_from_the_url_so_a_filtered_view_can_be_shared(fleet, open_page):
    at = open_page(RUNS_PAGE, f_fw="tensorflow", f_tag="keep,nan-hunt", f_q="xla")

    assert table_ids(at) == {fleet.tf_mlp}
    assert at.multiselect(key="f_fw").value == ["tensorflow"]
    assert at.multiselect(key="f_tag").value == ["keep", "nan-hunt"]
    assert at.text_input(key="f_q").value == "xla"
    assert any(caption.value == "1 of 4 runs match the filters." for caption in at.caption)


def test_chosen_filters_go_into_the_url_and_reload_the_same_view(fleet, open_page):
    at = open_page(RUNS_PAGE)
    at.multiselect(key="f_status").set_value([FINISHED, DIVERGED]).run()
    at.multiselect(key="f_group").set_value(["pair-a", "matrix-7"]).run()
    at.text_input(key="f_q").set_value("Keep").run()

    assert table_ids(at) == {fleet.torch_mlp, fleet.tf_mlp}
    link = {key: at.query_params[key] for key in ("f_status", "f_group", "f_q")}
    assert link == {"f_status": f"{FINISHED},{DIVERGED}", "f_group": "pair-a,matrix-7", "f_q": "Keep"}
    assert "f_fw" not in at.query_params  # filters left at "any" stay out of the link

    reloaded = open_page(RUNS_PAGE, **link)
    assert table_ids(reloaded) == {fleet.torch_mlp, fleet.tf_mlp}
    assert reloaded.multiselect(key="f_group").value == ["pair-a", "matrix-7"]

    reloaded.multiselect(key="f_status").set_value([]).run()
    assert "f_status" not in reloaded.query_params  # cleared filters leave the link


def test_unknown_values_in_a_link_are_ignored_and_named(fleet, open_page):
    at = open_page(RUNS_PAGE, f_fw="jax,torch", f_status="exploded", f_tag="no-such-tag", f_model="mlp")

    assert not failures(at)
    assert table_ids(at) == {fleet.torch_mlp}  # torch and mlp still apply
    ignored = next(c.value for c in at.caption if c.value.startswith("Ignored from the link"))
    assert "f\\_fw=jax" in ignored and "f\\_status=exploded" in ignored and "f\\_tag=no\\-such\\-tag" in ignored
    assert at.multiselect(key="f_fw").value == ["torch"]
