"""analysis/run_filters.py: each filter and the text search over the runs overview."""
from __future__ import annotations

from dataclasses import dataclass

import pytest

from analysis.run_filters import RunFilters, apply_filters
from db import queries, run_table
from db.models import DIVERGED, FAILED, FINISHED, NON_FINITE_LOSS
from db.session import make_sessionmaker
from engine.spec import RunSpec


@dataclass(frozen=True)
class Fleet:
    url: str
    torch_mlp: int  # finished, named "Baseline LR", tags keep + lr-sweep, group pair-a
    tf_mlp: int  # finished, notes "compare with XLA", tag keep, group pair-a
    torch_cnn: int  # failed with a CUDA error, no tags
    tf_cnn: int  # diverged, tag nan-hunt, group matrix-7


def make_fleet(url: str) -> Fleet:
    """Four made-up runs in the database at url."""
    sessions = make_sessionmaker(url)
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
    return Fleet(url, torch_mlp, tf_mlp, torch_cnn, tf_cnn)


@pytest.fixture
def fleet(arena_db) -> Fleet:
    return make_fleet(arena_db)


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
