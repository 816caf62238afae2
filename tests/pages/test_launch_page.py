"""Launch page: defaults per model, queuing through the real launcher, and errors that queue nothing."""
from __future__ import annotations

import pytest

from db import queries
from db.session import make_sessionmaker
from pages.common import COMPARE_PAGE, LAUNCH_PAGE, RUNS_PAGE


def stored_runs(url: str):
    with make_sessionmaker(url).begin() as s:
        return queries.list_runs(s)


def test_launch_form_starts_from_the_model_defaults(arena_db, open_page):
    at = open_page()

    assert at.title[0].value == "Launch"
    assert at.radio(key="framework").value == "both"
    assert at.number_input(key="mlp.digits.epochs").value == 20
    assert at.number_input(key="mlp.digits.lr").value == pytest.approx(1e-3)
    assert at.selectbox(key="mlp.digits.optimizer").value == "adam"
    both_note = " ".join(c.value for c in at.caption)
    assert "same initial weights" in both_note and "1e-8" in both_note
    assert at.get("form_submit_button")[0].label == "Queue 2 runs"


def test_switching_model_filters_datasets_and_prefills_its_defaults(arena_db, open_page):
    at = open_page()
    at.selectbox(key="model").select("powerlaw").run()

    assert not at.exception
    assert at.selectbox(key="dataset").options == [
        "powerlaw — samples of f(x) = x^phi on (0, 1]; the model learns phi"]
    assert at.number_input(key="powerlaw.powerlaw.lr").value == pytest.approx(0.05)
    assert at.number_input(key="powerlaw.powerlaw.noise").value == 0.0  # noise only exists for powerlaw


def test_submitting_both_queues_a_pair_with_identical_settings(stop_launched_runs, open_page):
    url = stop_launched_runs
    at = open_page()
    at.number_input(key="mlp.digits.epochs").set_value(1)
    at.number_input(key="mlp.digits.max_steps").set_value(2)
    at.number_input(key="mlp.digits.seed").set_value(7)
    at.get("form_submit_button")[0].click()
    at.run()

    assert not at.exception and not at.error
    runs = stored_runs(url)
    assert sorted(run.framework for run in runs) == ["tensorflow", "torch"]
    assert runs[0].group_tag and runs[0].group_tag == runs[1].group_tag
    specs = [{k: v for k, v in run.spec.items() if k != "framework"} for run in runs]
    assert specs[0] == specs[1]
    assert specs[0]["epochs"] == 1 and specs[0]["max_steps_per_epoch"] == 2 and specs[0]["seed"] == 7
    ids = sorted(run.id for run in runs)
    assert f"#{ids[0]} and #{ids[1]}" in at.success[0].value
    links = {link.proto.page: link.proto.query_string for link in at.get("page_link")}
    expected = f"runs={ids[0]}%2C{ids[1]}"
    assert any(page.endswith("runs") and query == expected for page, query in links.items()), links
    assert any(page.endswith("compare") and query == expected for page, query in links.items()), links


@pytest.mark.parametrize("key, value, words", [
    ("mlp.digits.batch_size", 5000, ["Batch size", "5000", "1437"]),
    ("mlp.digits.lr", 0.0, ["Learning rate", "must be > 0"]),
])
def test_invalid_settings_explain_the_fix_and_queue_nothing(arena_db, open_page, key, value, words):
    at = open_page()
    at.number_input(key=key).set_value(value)
    at.get("form_submit_button")[0].click()
    at.run()

    assert not at.exception
    assert len(at.error) == 1
    message = at.error[0].value
    for word in words:
        assert word in message
    assert "Nothing was queued" in message
    assert stored_runs(arena_db) == []
    assert not at.success


def test_page_constants_match_the_router(arena_db, open_page):
    at = open_page()
    for page in (LAUNCH_PAGE, RUNS_PAGE, COMPARE_PAGE):
        at.switch_page(page).run()
        assert not at.exception
