"""analysis/spec_diff.py: the runs' specs side by side, only the differences by default, and what they mean."""
from __future__ import annotations

from dataclasses import fields

import pytest

from analysis import spec_diff
from engine.spec import RunSpec
from tests.analysis.test_summary import OLD_SPEC, make_run


def spec(framework: str = "torch", **overrides) -> dict:
    return RunSpec.with_model_defaults(framework, "mlp", "digits", epochs=2, **overrides).to_dict()


def test_nested_specs_flatten_to_dotted_keys():
    assert spec_diff.flatten({"a": 1, "b": {"c": 2, "d": {"e": 3}}, "f": {}}) == {"a": 1, "b.c": 2, "b.d.e": 3,
                                                                                "f": {}}


@pytest.mark.parametrize("value, text", [(0.001, "0.001"), (1e-5, "1e-05"), (32, "32"), (True, "true"),
                                         (False, "false"), (None, "none"), ("adam", "adam"), ([1, 2], "[1, 2]")])
def test_spec_values_read_as_text(value, text):
    assert spec_diff.spec_text(value) == text


def test_the_table_follows_runspecs_field_order_and_marks_keys_an_older_run_lacks():
    new = make_run(spec(mode="eager"), None, run_id=3)
    old = make_run({**OLD_SPEC, "extra": {"kept": 1}}, None, run_id=1)  # before modes; a key RunSpec lacks

    table = spec_diff.spec_table([new, old])

    assert list(table.columns) == ["#3 PyTorch", "#1 TensorFlow"]
    assert list(table.index) == [field.name for field in fields(RunSpec)] + ["extra.kept"]
    assert table.loc["framework"].tolist() == ["torch", "tensorflow"]
    assert table.loc["lr"].tolist() == ["0.001", "0.001"]
    assert table.loc["mode"].tolist() == ["eager", spec_diff.MISSING]
    assert table.loc["max_steps_per_epoch"].tolist() == ["none", "5"]
    assert table.loc["extra.kept"].tolist() == [spec_diff.MISSING, "1"]


def test_differing_rows_keep_only_rows_where_some_run_disagrees():
    runs = [make_run(spec(), None, run_id=1), make_run(spec("tensorflow"), None, run_id=2),
            make_run(spec(seed=1), None, run_id=3)]
    table = spec_diff.spec_table(runs)

    differing = spec_diff.differing_rows(table)

    assert list(differing.index) == ["framework", "seed", "mode"]  # in the table's order
    assert differing.loc["seed"].tolist() == ["0", "0", "1"]
    assert spec_diff.differing_rows(spec_diff.spec_table(runs[:1])).empty


@pytest.mark.parametrize("specs, note", [
    ([spec(mode="eager"), spec("tensorflow", mode="eager")],
     "The runs differ only in framework: a like-for-like comparison."),
    ([spec(), spec("tensorflow")],
     "The runs differ only in framework and each framework's execution mode (eager, graph): otherwise a "
     "like-for-like comparison."),
    ([spec(seed=0), spec(seed=1), spec(seed=2)], "The runs differ only in seed: their spread is run-to-run noise."),
    ([spec(), spec()], "The runs have identical settings: any difference between them is run-to-run noise."),
    ([spec(), spec("tensorflow", lr=0.01)], ""),  # a real difference: the table says which
    ([spec()], ""),
])
def test_the_note_says_in_words_when_the_comparison_is_like_for_like(specs, note):
    runs = [make_run(s, None, run_id=i) for i, s in enumerate(specs, start=1)]
    assert spec_diff.difference_note(spec_diff.spec_table(runs)) == note
