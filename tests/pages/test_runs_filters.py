"""Runs page filters (ui/run_filter_controls.py): carried by the URL through the real page."""
from __future__ import annotations

import pytest

from db.models import DIVERGED, FINISHED
from tests.analysis.test_run_filters import Fleet, make_fleet
from tests.pages.helpers import failures
from ui.router import RUNS_PAGE


@pytest.fixture
def fleet(arena_db, monkeypatch) -> Fleet:
    """Four made-up runs; the dashboard only watches (ARENA_SCHEDULER=off)."""
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    return make_fleet(arena_db)


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
