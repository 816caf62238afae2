"""Bad input on the Launch form and in links: each is named (field and value), and nothing is queued or changed.

The values here are ones the browser's number inputs could not stop once their bounds were gone (or
that a crafted request sends): Streamlit used to replace them silently with the default, so "epochs 0"
queued the default 20 epochs. RunSpec now checks every range and the form says which field is wrong.
Links (?runs=, ?baseline=, ?smooth=) that hold no usable value are named on the page, not a traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from db import queries
from db.models import FINISHED
from db.session import make_sessionmaker
from engine.spec import RunSpec
from ui.router import COMPARE_PAGE, RUNS_PAGE
from tests.reliability import row_digests
from tests.pages.helpers import failures


@pytest.fixture
def one_run(arena_db, monkeypatch) -> tuple[str, int]:
    """The database with one finished run; this process schedules nothing."""
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    sessions = make_sessionmaker(arena_db)
    with sessions.begin() as s:
        run_id = queries.create_run(s, RunSpec("torch", "mlp", "digits").to_dict()).id
        queries.update_run(s, run_id, status=FINISHED)
    return arena_db, run_id


def database_file(url: str) -> Path:
    return Path(url.split("///", 1)[1])


def stored_ids(url: str) -> list[int]:
    with make_sessionmaker(url).begin() as s:
        return [run.id for run in queries.list_runs(s)]


def submit(at) -> str:
    """Click Queue; the one error shown (the test fails on an exception, a success or several errors)."""
    at.button(key="queue").click().run()
    assert not failures(at), failures(at)
    assert not at.success and len(at.error) == 1, [e.value for e in at.error]
    return at.error[0].value


def on_dataset(at, model: str, dataset: str):
    at.selectbox(key="model").select(model).run()
    at.selectbox(key="dataset").select(dataset).run()
    return at


@pytest.mark.parametrize("key, value, words", [
    ("mlp.digits.epochs", 0, ["**Epochs** = `0`", "must be >= 1"]),
    ("mlp.digits.epochs", 200_000, ["**Epochs** = `200000`", "must be <= 100000"]),
    ("mlp.digits.lr", -0.5, ["**Learning rate** = `-0.5`", "must be > 0"]),
    ("mlp.digits.target_accuracy", 1.5, ["**Target accuracy** = `1.5`", "must be a fraction in (0, 1]"]),
    ("warmup_steps", -1, ["**Warm-up steps** = `-1`", "must be >= 0"]),
    ("inference_iters", 1_000_000, ["**Inference iterations** = `1000000`", "must be <= 100000"]),
    ("sample_hz", 1000.0, ["**Memory samples per second** = `1000.0`", "must be <= 100"]),
    # Beyond 2**53 an int input fell back to its default without a word; counts are float inputs now, and
    # the browser sends 99999999999999999999 as the double 1e20, which is the value named.
    ("mlp.digits.epochs", 99999999999999999999, ["**Epochs** = `100000000000000000000`", "must be <= 100000"]),
    ("mlp.digits.batch_size", 99999999999999999999,
     ["**Batch size** = `100000000000000000000`", "larger than the digits training set"]),
    ("mlp.digits.max_steps", 1e30, ["**Max steps per epoch** = `1000000000000000000000000000000`",
                                    "must be <= 10000000"]),
    ("warmup_steps", 99999999999999999999, ["**Warm-up steps** = `100000000000000000000`", "must be <= 100000"]),
    ("inference_iters", 2**53 + 2, ["**Inference iterations** = `9007199254740994`", "must be <= 100000"]),
    ("mlp.digits.epochs", 2.5, ["**Epochs** = `2.5`", "expected a whole number"]),
    ("mlp.digits.max_steps", 0.5, ["**Max steps per epoch** = `0.5`", "expected a whole number"]),
], ids=["epochs-0", "epochs-200000", "lr-negative", "target-1.5", "warmup-negative", "inference-1e6", "sample-hz",
        "epochs-1e20", "batch-1e20", "max-steps-1e30", "warmup-1e20", "inference-2**53+2", "epochs-2.5",
        "max-steps-0.5"])
def test_an_out_of_range_number_is_named_and_nothing_is_queued(one_run, open_page, key, value, words):
    url, run_id = one_run
    before = row_digests(database_file(url))
    at = open_page()
    at.number_input(key=key).set_value(value).run()
    assert any(words[0] in w.value for w in at.warning)  # said before submitting, too
    message = submit(at)
    for word in words + ["Nothing was queued"]:
        assert word in message
    assert stored_ids(url) == [run_id]
    assert row_digests(database_file(url)) == before


@pytest.mark.parametrize("seeds, words", [
    ("-3", ["**Seeds** = `-3`", "must be in 0..2147483647"]),
    ("0-99999", ["**Seeds** = `0-99999`", "more than 200 seeds"]),
])
def test_bad_seeds_are_named_and_nothing_is_queued(one_run, open_page, seeds, words):
    url, run_id = one_run
    at = open_page()
    at.text_input(key="seeds").set_value(seeds).run()
    message = submit(at)
    assert all(word in message for word in words)
    assert stored_ids(url) == [run_id]


def test_a_batch_larger_than_a_small_synthetic_set_is_named(one_run, open_page):
    url, run_id = one_run
    at = on_dataset(open_page(), "mlp", "synthetic_images")
    at.number_input(key="mlp.synthetic_images.synthetic_size").set_value(100)
    at.number_input(key="mlp.synthetic_images.batch_size").set_value(128)
    message = submit(at)
    assert ("**Batch size** = `128` can't be used: larger than the synthetic_images training set (100 samples)"
            in message)
    assert stored_ids(url) == [run_id]


@pytest.mark.parametrize("key, value, words", [
    ("resnet.synthetic_images.synthetic_shape", "4096x4096x3",
     ["**Input shape** = `4096x4096x3`", "with 4,096 training samples", "too large for memory"]),
    ("resnet.synthetic_images.synthetic_shape", "32x32", ["**Input shape** = `32x32`", "'32x32x3'"]),
    ("resnet.synthetic_images.synthetic_classes", 1, ["**Classes** = `1`", "must be >= 2"]),
    ("resnet.synthetic_images.synthetic_shape", "32x32x3\n", ["**Input shape** = `32x32x3\n`", "'32x32x3'"]),
    ("resnet.synthetic_images.synthetic_classes", 99999999999999999999,
     ["**Classes** = `100000000000000000000`", "must be <= 1000"]),
    ("resnet.synthetic_images.synthetic_size", 99999999999999999999,
     ["**Training samples** = `100000000000000000000`", "must be <= 10000000"]),
], ids=["shape-too-large", "shape-without-channels", "one-class", "shape-newline", "classes-1e20", "size-1e20"])
def test_bad_synthetic_data_settings_are_named(one_run, open_page, key, value, words):
    url, run_id = one_run
    at = on_dataset(open_page(), "resnet", "synthetic_images")
    widget = at.text_input(key=key) if key.endswith("shape") else at.number_input(key=key)
    widget.set_value(value)
    message = submit(at)
    assert all(word in message for word in words), message
    assert stored_ids(url) == [run_id]


def test_a_framework_that_is_not_installed_is_named(one_run, open_page, monkeypatch):
    url, run_id = one_run
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` now fails, as without it
    at = open_page()
    message = submit(at)
    assert "**Framework** = `tensorflow` can't be used: TensorFlow is not installed in this Python" in message
    assert stored_ids(url) == [run_id]
    at.radio(key="framework").set_value("torch").run()  # the other framework still queues
    assert not at.warning and at.button(key="queue").label == "Queue run"


def test_a_file_dataset_without_its_files_is_refused_rather_than_queued_to_fail(one_run, open_page, tmp_path,
                                                                               monkeypatch):
    url, run_id = one_run
    monkeypatch.setenv("ARENA_DATA_DIR", str(tmp_path / "data"))
    at = on_dataset(open_page(), "mlp", "mnist")
    message = submit(at)
    assert "**Dataset** = `mnist` can't be used: its files are not in the data directory" in message
    assert stored_ids(url) == [run_id]


def test_a_bad_verify_setting_is_named_where_the_files_are_listed(one_run, open_page, monkeypatch):
    url, run_id = one_run
    monkeypatch.setenv("ARENA_DATA_VERIFY", "perhaps")
    at = on_dataset(open_page(), "mlp", "mnist")
    assert not failures(at)
    assert any("ARENA_DATA_VERIFY='perhaps': expected 1 (verify, the default) or 0" in w.value for w in at.warning)
    submit(at)
    assert stored_ids(url) == [run_id]


@pytest.mark.parametrize("variable, value", [("ARENA_CPU_SLOTS", "abc"), ("ARENA_RUNS_PER_GPU", "-1")])
def test_a_bad_scheduler_setting_is_named_before_anything_is_queued(one_run, open_page, monkeypatch, variable, value):
    url, run_id = one_run
    monkeypatch.setenv(variable, value)
    message = submit(open_page())
    assert f"{variable}='{value}'" in message.replace("\\", "") and "Nothing was queued" in message
    assert stored_ids(url) == [run_id]


# Links ------------------------------------------------------------------------------------------------------
@pytest.fixture
def two_runs(arena_db, monkeypatch) -> tuple[str, list[int]]:
    """Two finished runs with a few per-step and per-epoch metrics, so Compare draws its charts and summary."""
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    sessions = make_sessionmaker(arena_db)
    ids = []
    for framework in ("torch", "tensorflow"):
        with sessions.begin() as s:
            run_id = queries.create_run(s, RunSpec.with_model_defaults(framework, "mlp", "digits", epochs=2)
                                        .to_dict()).id
            rows = [dict(run_id=run_id, name="step/train_loss", step=step, epoch=1 + (step - 1) // 2,
                         wall_time=1.7e9 + step, value=1.0 / step) for step in range(1, 5)]
            rows += [dict(run_id=run_id, name=name, step=2 * epoch, epoch=epoch, wall_time=1.7e9 + 2 * epoch,
                          value=0.5 + epoch / 10) for epoch in (1, 2) for name in ("train_loss", "test_accuracy")]
            queries.add_metric_points(s, rows)
            queries.update_run(s, run_id, status=FINISHED, epoch=2, step=4)
        ids.append(run_id)
    sessions.kw["bind"].dispose()
    return arena_db, ids


def opened_without_failing(open_page, page: str, **query_params: str):
    """The page from a link: no exception and no error box (a failure shown in words is a failure too)."""
    at = open_page(page, **query_params)
    assert not failures(at) and not at.error, [e.value for e in [*at.exception, *at.error]]
    return at


@pytest.mark.parametrize("page, params, named", [
    (COMPARE_PAGE, {"runs": "²"}, "runs=²"),
    (RUNS_PAGE, {"runs": "²"}, "runs=²"),
    (COMPARE_PAGE, {"runs": "{a},{b}", "tab": "Summary", "baseline": "²"}, "baseline=²"),
    (COMPARE_PAGE, {"runs": "{a}," + "9" * 30}, "runs=" + "9" * 30),
    (RUNS_PAGE, {"runs": "9" * 30 + ",{a}"}, "runs=" + "9" * 30),
    (COMPARE_PAGE, {"runs": "{a},٣"}, "runs=٣"),
], ids=["compare-superscript", "runs-superscript", "baseline-superscript", "compare-30-digits", "runs-30-digits",
        "compare-arabic-digit"])
def test_a_run_id_in_a_link_that_is_not_one_is_named(two_runs, open_page, page, params, named):
    url, (a, b) = two_runs
    before = row_digests(database_file(url))
    at = opened_without_failing(open_page, page, **{k: v.format(a=a, b=b) for k, v in params.items()})
    warnings = [w.value for w in at.warning]
    assert any(named in w and "not a run id" in w for w in warnings), warnings
    assert row_digests(database_file(url)) == before


@pytest.mark.parametrize("smooth", ["nan", "inf", "-inf", "1e999", "²"])
def test_a_number_in_a_link_that_is_not_finite_is_named_and_the_default_used(two_runs, open_page, smooth):
    url, (a, b) = two_runs
    before = row_digests(database_file(url))
    at = opened_without_failing(open_page, COMPARE_PAGE, runs=f"{a},{b}", smooth=smooth)
    assert at.slider(key="compare_smoothing").value == 0.6
    assert any(f"Ignored in the link: smooth={smooth}." in c.value.replace("\\", "") for c in at.caption)
    assert row_digests(database_file(url)) == before
