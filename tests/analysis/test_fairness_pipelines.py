"""What was compared names the input pipeline, the loader workers and the augmentations, old runs included."""
from analysis.fairness import split_settings
from db.models import Run
from engine.spec import RunSpec


def run(run_id: int, framework: str, **fields) -> Run:
    return Run(id=run_id, framework=framework, spec=RunSpec(framework, "mlp", "digits", **fields).to_dict())


def test_a_native_run_beside_an_arrays_run_is_a_difference_that_names_both():
    split = split_settings([run(1, "torch", pipeline="native", augment="flip,crop"),
                            run(2, "tensorflow", pipeline="arrays", augment="crop,flip")])
    different = {key: values for key, _, values in split.different}
    identical = {key: value for key, _, value in split.identical}
    assert different["pipeline"] == {1: "native", 2: "arrays"}
    assert identical["loader_workers"] == "2"
    assert identical["augment"] == "crop, flip"


def test_runs_stored_before_pipelines_existed_read_as_the_arrays_without_augmentation():
    old = run(1, "torch")
    del old.spec["pipeline"], old.spec["augment"], old.spec["loader_workers"]
    split = split_settings([old, run(2, "tensorflow")])
    identical = {key: value for key, _, value in split.identical}
    assert identical["pipeline"] == "arrays" and identical["augment"] == "none"
    assert "loader_workers" not in identical  # only said where a native pipeline ran
