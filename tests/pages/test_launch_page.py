"""Launch page: model defaults, the live matrix preview, queuing through the real launcher, errors queue nothing."""
from __future__ import annotations

import pytest

from db import queries
from db.session import make_sessionmaker
from ui.router import COMPARE_PAGE, LAUNCH_PAGE, RUNS_PAGE
from tests.pages.helpers import failures


def stored_runs(url: str):
    with make_sessionmaker(url).begin() as s:
        return queries.list_runs(s)


def preview(at) -> str:
    return " ".join(info.value for info in at.info if "This will queue" in info.value)


def tiny(at, model_dataset: str = "mlp.digits") -> None:
    """One epoch of two steps: runs the fixture can stop before they cost anything."""
    at.number_input(key=f"{model_dataset}.epochs").set_value(1)
    at.number_input(key=f"{model_dataset}.max_steps").set_value(2)


def test_launch_form_starts_from_the_model_defaults_equal_for_both_frameworks(arena_db, open_page):
    at = open_page()

    assert at.title[0].value == "Launch"
    assert at.radio(key="framework").value == "both"
    assert at.number_input(key="mlp.digits.epochs").value == 20
    assert at.number_input(key="mlp.digits.lr").value == pytest.approx(1e-3)
    assert at.selectbox(key="mlp.digits.optimizer").value == "adam"
    assert at.text_input(key="seeds").value == "0"
    assert at.multiselect(key="modes.torch").value == ["eager"]
    assert at.multiselect(key="modes.tensorflow").value == ["graph"]
    assert at.multiselect(key="precisions").value == ["fp32"]
    assert at.toggle(key="tf32").value is False and at.toggle(key="deterministic").value is False
    assert at.toggle(key="same_init").value is True
    assert at.number_input(key="warmup_steps").value == 10
    assert at.number_input(key="inference_iters").value == 30
    assert at.number_input(key="mlp.digits.target_accuracy").value == pytest.approx(0.95)
    layout = at.selectbox(key="layout")
    assert layout.value == "channels_last" and layout.disabled  # mlp has no convolutions
    both_note = " ".join(c.value for c in at.caption)
    assert "same initial weights" in both_note and "1e-8" in both_note
    assert "This will queue **2 runs** as one group: PyTorch eager fp32 × seed 0 · " \
           "TensorFlow tf.function (graph) fp32 × seed 0." in preview(at)
    assert at.button(key="queue").label == "Queue 2 runs"


def test_switching_model_filters_datasets_and_prefills_its_defaults(arena_db, open_page):
    at = open_page()
    at.selectbox(key="model").select("powerlaw").run()

    assert not failures(at)
    assert at.selectbox(key="dataset").options == [
        "powerlaw — samples of f(x) = x^phi on (0, 1]; the model learns phi"]
    assert at.number_input(key="powerlaw.powerlaw.lr").value == pytest.approx(0.05)
    assert at.number_input(key="powerlaw.powerlaw.noise").value == 0.0  # noise only exists for powerlaw
    assert not [w for w in at.number_input if w.key.endswith("target_accuracy")]  # regression: no accuracy


def test_conv_models_enable_layout_and_synthetic_datasets_ask_for_a_shape(arena_db, open_page):
    at = open_page()
    at.selectbox(key="model").select("resnet").run()
    at.selectbox(key="dataset").select("synthetic_images").run()

    assert not failures(at)
    assert not at.selectbox(key="layout").disabled
    assert "TensorFlow on a CPU runs channels_last only." in [c.value for c in at.caption]
    assert at.text_input(key="resnet.synthetic_images.synthetic_shape").value == "32x32x3"
    assert at.number_input(key="resnet.synthetic_images.synthetic_classes").value == 10

    at.text_input(key="resnet.synthetic_images.synthetic_shape").set_value("32x32").run()
    assert "**Input shape** = `32x32` can't be used" in at.warning[0].value
    assert at.button(key="queue").label == "Queue runs"


def test_file_datasets_say_where_files_are_looked_for_and_how_to_fetch_them(arena_db, open_page, tmp_path,
                                                                             monkeypatch):
    monkeypatch.setenv("ARENA_DATA_DIR", str(tmp_path / "data"))
    at = open_page()
    at.selectbox(key="dataset").select("mnist").run()

    note = next(w.value for w in at.warning if "mnist" in w.value)
    assert str(tmp_path / "data") in note and "python -m engine download mnist" in note


def test_preview_counts_every_combination_of_modes_precisions_and_seeds(arena_db, open_page):
    at = open_page()
    at.radio(key="framework").set_value("torch").run()
    at.multiselect(key="modes.torch").set_value(["eager", "compiled"]).run()
    at.multiselect(key="precisions").set_value(["fp32", "mixed"]).run()
    at.text_input(key="seeds").set_value("0, 3, 7").run()

    text = preview(at)
    assert "This will queue **12 runs** as one group" in text
    assert "PyTorch eager fp32 × seeds 0, 3, 7" in text and "PyTorch torch.compile mixed × seeds 0, 3, 7" in text
    assert at.button(key="queue").label == "Queue 12 runs"
    assert stored_runs(arena_db) == []  # a preview queues nothing


def test_submitting_both_queues_a_pair_with_identical_settings(stop_launched_runs, open_page):
    url = stop_launched_runs
    at = open_page()
    tiny(at)
    at.text_input(key="seeds").set_value("7")
    at.button(key="queue").click().run()

    assert not failures(at) and not at.error
    runs = stored_runs(url)
    assert sorted(run.framework for run in runs) == ["tensorflow", "torch"]
    assert runs[0].group_tag and runs[0].group_tag == runs[1].group_tag
    specs = [{k: v for k, v in run.spec.items() if k not in ("framework", "mode")} for run in runs]
    assert specs[0] == specs[1]
    assert specs[0]["epochs"] == 1 and specs[0]["max_steps_per_epoch"] == 2 and specs[0]["seed"] == 7
    assert {run.spec["mode"] for run in runs} == {"eager", "graph"}  # each framework's default
    ids = sorted(run.id for run in runs)
    assert f"#{ids[0]} and #{ids[1]}" in at.success[0].value
    links = {link.proto.page: link.proto.query_string for link in at.get("page_link")}
    expected = f"runs={ids[0]}%2C{ids[1]}"
    assert any(page.endswith("runs") and query == expected for page, query in links.items()), links
    assert any(page.endswith("compare") and query == expected for page, query in links.items()), links


def test_a_matrix_of_both_frameworks_and_two_seeds_queues_four_runs_as_one_group(stop_launched_runs, open_page):
    url = stop_launched_runs
    at = open_page()
    tiny(at)
    at.text_input(key="seeds").set_value("0-1").run()
    assert "This will queue **4 runs** as one group" in preview(at) and "seeds 0-1" in preview(at)
    at.button(key="queue").click().run()

    assert not failures(at) and not at.error
    runs = stored_runs(url)
    assert sorted((run.framework, run.spec["seed"]) for run in runs) == [
        ("tensorflow", 0), ("tensorflow", 1), ("torch", 0), ("torch", 1)]
    tags = {run.group_tag for run in runs}
    assert len(tags) == 1 and None not in tags
    (tag,) = tags
    assert "Queued 4 runs" in at.success[0].value and f"`{tag}`" in at.success[0].value
    ids = sorted(run.id for run in runs)
    at.switch_page(COMPARE_PAGE).run()  # Compare picks up the runs just launched
    assert at.session_state["compare_selected"] == ids
    assert at.query_params["runs"] in (",".join(map(str, ids)), [",".join(map(str, ids))])


@pytest.mark.parametrize("seeds, words", [
    ("0-x", ["Seeds", "`0-x`", "whole numbers"]),
    ("4-2", ["Seeds", "`4-2`", "must go up"]),
    ("", ["Seeds", "at least one seed"]),
])
def test_bad_seeds_name_the_value_and_queue_nothing(arena_db, open_page, seeds, words):
    at = open_page()
    at.text_input(key="seeds").set_value(seeds).run()
    assert any("Seeds" in w.value for w in at.warning)  # said before submitting, too

    at.button(key="queue").click().run()

    assert not failures(at)
    assert len(at.error) == 1
    for word in words:
        assert word in at.error[0].value
    assert "Nothing was queued" in at.error[0].value
    assert stored_runs(arena_db) == [] and not at.success


@pytest.mark.parametrize("key, value, words", [
    ("mlp.digits.batch_size", 5000, ["Batch size", "5000", "1437"]),
    ("mlp.digits.lr", 0.0, ["Learning rate", "must be > 0"]),
])
def test_invalid_settings_explain_the_fix_and_queue_nothing(arena_db, open_page, key, value, words):
    at = open_page()
    at.number_input(key=key).set_value(value)
    at.button(key="queue").click().run()

    assert not failures(at)
    assert len(at.error) == 1
    message = at.error[0].value
    for word in words:
        assert word in message
    assert "Nothing was queued" in message
    assert stored_runs(arena_db) == []
    assert not at.success


def test_a_framework_without_a_mode_is_an_error(arena_db, open_page):
    at = open_page()
    at.multiselect(key="modes.tensorflow").set_value([]).run()
    at.button(key="queue").click().run()

    assert "**Mode** = `none` can't be used: choose at least one TensorFlow mode" in at.error[0].value
    assert stored_runs(arena_db) == []


def test_page_constants_match_the_router(arena_db, open_page):
    at = open_page()
    for page in (LAUNCH_PAGE, RUNS_PAGE, COMPARE_PAGE):
        at.switch_page(page).run()
        assert not failures(at)


def test_a_workers_matrix_queues_a_scaling_study_as_one_group(arena_db, open_page, monkeypatch):
    monkeypatch.setenv("ARENA_SCHEDULER", "off")  # the runs only need queuing: nothing here may start a runner
    at = open_page()
    at.radio(key="framework").set_value("torch").run()
    tiny(at)
    at.text_input(key="workers").set_value("1, 2").run()
    assert "This will queue **2 runs** as one group: PyTorch eager fp32 × seed 0 × workers 1, 2." in preview(at)
    at.button(key="queue").click().run()

    assert not failures(at) and not at.error
    runs = stored_runs(arena_db)
    assert sorted(run.spec["workers"] for run in runs) == [1, 2]
    assert len({run.group_tag for run in runs}) == 1 and runs[0].group_tag is not None
    specs = [{k: v for k, v in run.spec.items() if k != "workers"} for run in runs]
    assert specs[0] == specs[1]  # a scaling study: only the workers differ
    assert "Queued 2 runs" in at.success[0].value


def test_several_tensorflow_workers_offer_mirrored_strategy_for_those_runs_only(arena_db, open_page, monkeypatch):
    monkeypatch.setenv("ARENA_SCHEDULER", "off")  # the runs only need queuing: nothing here may start a runner
    at = open_page()
    tiny(at)
    assert "tf_strategy" not in [box.key for box in at.selectbox]  # one worker: nothing to spread
    at.text_input(key="workers").set_value("1, 2").run()
    at.selectbox(key="tf_strategy").set_value("mirrored").run()
    assert ("TensorFlow tf.function (graph) fp32 × seed 0 × workers 1, 2 (MirroredStrategy: one process)"
            in preview(at))
    at.button(key="queue").click().run()

    assert not failures(at) and not at.error
    runs = stored_runs(arena_db)
    assert sorted((run.framework, run.spec["workers"], run.spec["tf_strategy"]) for run in runs) == [
        ("tensorflow", 1, "multi_worker"), ("tensorflow", 2, "mirrored"), ("torch", 1, "multi_worker"),
        ("torch", 2, "multi_worker")]
    at.radio(key="framework").set_value("torch").run()
    assert "tf_strategy" not in [box.key for box in at.selectbox]  # PyTorch runs one process per worker


@pytest.mark.parametrize("workers, words", [
    ("3", ["**Batch size** = `32`", "split evenly between 3 workers"]),
    ("1, 9", ["**Workers** = `9`", "must be <= 8"]),
    ("2, 2", ["**Workers** = `2`", "listed twice"]),
    ("two", ["**Workers** = `two`", "whole numbers"]),
])
def test_bad_worker_counts_are_refused_at_the_form_naming_the_value(arena_db, open_page, workers, words):
    at = open_page()
    at.number_input(key="mlp.digits.batch_size").set_value(32)
    at.text_input(key="workers").set_value(workers).run()
    at.button(key="queue").click().run()

    assert not failures(at)
    message = at.error[0].value
    assert all(word in message for word in words), message
    assert "Nothing was queued" in message and stored_runs(arena_db) == []


def test_native_pipeline_with_augmentation_queues_fit_beside_graph_in_one_group(arena_db, open_page, monkeypatch):
    """Issue 19: a fit run sits next to a graph run of the same spec; the input settings reach every run."""
    monkeypatch.setenv("ARENA_SCHEDULER", "off")  # the runs only need queuing: nothing here may start a runner
    at = open_page()
    tiny(at)
    assert "loader_workers" not in [box.key for box in at.number_input]  # arrays: nothing to load in parallel
    assert "Keras model.fit" in at.multiselect(key="modes.tensorflow").options
    at.radio(key="pipeline").set_value("native").run()
    at.number_input(key="loader_workers").set_value(3)
    at.multiselect(key="augment").set_value(["flip", "crop"])
    at.multiselect(key="modes.tensorflow").set_value(["graph", "fit"]).run()

    text = preview(at)
    assert "This will queue **3 runs** as one group" in text
    assert "TensorFlow tf.function (graph) fp32 × seed 0 · TensorFlow Keras model.fit fp32 × seed 0" in text
    assert ("Input: each framework's own pipeline (DataLoader against tf.data) with 3 loader workers; "
            "augmentation crop, flip.") in text
    at.button(key="queue").click().run()

    assert not failures(at) and not at.error
    runs = stored_runs(arena_db)
    assert sorted((run.framework, run.spec["mode"]) for run in runs) == [
        ("tensorflow", "fit"), ("tensorflow", "graph"), ("torch", "eager")]
    assert {(run.spec["pipeline"], run.spec["loader_workers"], tuple(run.spec["augment"])) for run in runs} == {
        ("native", 3, ("crop", "flip"))}
    assert len({run.group_tag for run in runs}) == 1
    fit, graph = sorted((run for run in runs if run.framework == "tensorflow"), key=lambda run: run.spec["mode"])
    assert {k: v for k, v in fit.spec.items() if k != "mode"} == {k: v for k, v in graph.spec.items() if k != "mode"}


def test_fit_with_the_arrays_pipeline_is_refused_at_the_form_naming_the_fix(arena_db, open_page):
    at = open_page()
    at.multiselect(key="modes.tensorflow").set_value(["graph", "fit"]).run()

    assert not failures(at)
    warning = at.warning[0].value
    assert "**Pipeline** = `arrays` can't be used: mode fit trains over the framework's own input pipeline" in warning
    assert "use pipeline native" in warning
    assert at.button(key="queue").label == "Queue runs"
    at.button(key="queue").click().run()
    assert "Nothing was queued" in at.error[0].value and stored_runs(arena_db) == []
    at.radio(key="pipeline").set_value("native").run()  # the fix the message names
    assert not at.warning and at.button(key="queue").label == "Queue 3 runs"


def test_input_fields_follow_the_dataset_and_name_bad_loader_workers(arena_db, open_page):
    at = open_page()
    at.radio(key="pipeline").set_value("native").run()
    at.number_input(key="loader_workers").set_value(17).run()
    assert "**Loader workers** = `17` can't be used" in at.warning[0].value

    at.selectbox(key="model").select("powerlaw").run()
    assert not failures(at)
    assert "augment" not in [box.key for box in at.multiselect]  # no images: nothing to crop or flip
    assert "Augmentation is for image datasets; powerlaw holds none." in [c.value for c in at.caption]
