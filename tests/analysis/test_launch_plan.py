"""analysis/launch_plan.py: the run matrix behind the Launch form, its description and its error messages."""
from __future__ import annotations

import pytest

from engine.spec import SpecError
from analysis import launch_plan

BASE = {"model": "mlp", "dataset": "digits", "epochs": 1, "max_steps_per_epoch": 2}


@pytest.mark.parametrize("seeds, text", [([0, 1, 2, 3, 7], "0-3, 7"), ([5], "5"), ([3, 1, 2], "1-3"), ([0, 2], "0, 2")])
def test_format_seeds_joins_runs_of_consecutive_seeds(seeds, text):
    assert launch_plan.format_seeds(seeds) == text


def test_modes_are_chosen_per_framework_even_when_a_name_exists_in_both():
    specs = launch_plan.build_matrix(BASE, {"torch": ["eager"], "tensorflow": ["graph"]}, ["fp32"], "0-1")

    assert [(s.framework, s.mode, s.seed) for s in specs] == [
        ("torch", "eager", 0), ("torch", "eager", 1), ("tensorflow", "graph", 0), ("tensorflow", "graph", 1)]
    assert launch_plan.describe_matrix(specs) == ("PyTorch eager fp32 × seeds 0-1 · "
                                                  "TensorFlow tf.function (graph) fp32 × seeds 0-1")


def test_a_matrix_over_the_limit_is_refused_naming_its_size():
    with pytest.raises(SpecError) as caught:
        launch_plan.build_matrix(BASE, {"torch": ["eager", "compiled"], "tensorflow": ["graph", "eager", "xla"]},
                                 ["fp32", "mixed"], "0-29")
    assert caught.value.field == "matrix" and caught.value.value == 300


def test_error_messages_name_the_field_in_words_and_the_value():
    message = launch_plan.spec_error_message(SpecError("precisions", [], "choose at least one of fp32, mixed"))
    assert message.startswith("**Precision** = `none` can't be used: choose at least one of fp32, mixed.")
    assert message.endswith("Nothing was queued.")
    live = launch_plan.spec_error_message(SpecError("seeds", "a: b", "expected whole numbers"), submitted=False)
    assert live == "**Seeds** = `a: b` can't be used: expected whole numbers. Change seeds to queue runs."


def test_run_names_read_naturally():
    assert launch_plan.run_names([3]) == "#3"
    assert launch_plan.run_names([3, 4]) == "#3 and #4"
    assert launch_plan.run_names([3, 4, 5]) == "#3, #4 and #5"
    assert launch_plan.run_names(list(range(10, 30))) == "#10–#29"


def test_file_datasets_are_looked_for_in_the_data_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("ARENA_DATA_DIR", str(tmp_path))
    assert launch_plan.data_files_note("digits") is None  # bundled: nothing to fetch
    present, note = launch_plan.data_files_note("cifar10")
    assert not present and "python -m engine download cifar10" in note and str(tmp_path / "cifar10") in note
    assert "`cifar-10-binary.tar.gz (or its unpacked cifar-10-batches-bin/" in note
    mnist = tmp_path / "mnist"
    mnist.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (mnist / name).write_bytes(b"x")
    assert launch_plan.missing_data_files("mnist") == ["t10k-labels-idx1-ubyte.gz (or t10k-labels-idx1-ubyte)"]
    (mnist / "t10k-labels-idx1-ubyte").write_bytes(b"x")
    # Uncompressed cannot be checked against the published MD5s of the .gz files...
    assert "cannot be verified" in launch_plan.missing_data_files("mnist")[0]
    monkeypatch.setenv("ARENA_DATA_VERIFY", "0")  # ...so it counts only when checking is off
    present, note = launch_plan.data_files_note("mnist")
    assert present and str(mnist) in note


def test_the_input_is_described_only_where_it_differs_from_the_shared_arrays():
    modes = {"torch": ["eager"], "tensorflow": ["graph", "fit"]}
    native = launch_plan.build_matrix({**BASE, "pipeline": "native", "loader_workers": 1, "augment": ("noise",)},
                                      modes, ["fp32"], "0")
    assert launch_plan.describe_input(native) == ("each framework's own pipeline (DataLoader against tf.data) with "
                                                  "1 loader worker; augmentation noise")
    arrays = launch_plan.build_matrix(BASE, {"torch": ["eager"]}, ["fp32"], "0")
    assert launch_plan.describe_input(arrays) == ""
    with pytest.raises(SpecError, match="use pipeline native") as caught:
        launch_plan.build_matrix(BASE, modes, ["fp32"], "0")
    assert launch_plan.spec_error_message(caught.value, submitted=False).startswith("**Pipeline** = `arrays`")
