"""engine/architecture.py and engine/backends/layers_worker.py: layer tables from both frameworks, and sources."""
import ast
import json
import subprocess
import sys
import time

import pytest

from engine import architecture
from engine.architecture import ArchitectureError, LayerRow, LayerTable
from engine.catalog import EXPECTED_PARAM_COUNTS, FRAMEWORKS, MODELS
from engine.parity import default_dataset
from engine.weights import parameter_count
from tests.conftest import REPO_ROOT

# Every model on its default dataset, plus the full-size shapes the README quotes.
CASES = [(model, default_dataset(model)) for model in MODELS] + [("resnet", "cifar10"), ("mnist_cnn", "mnist")]
# What builds each model, by framework: a class or function of its own, else build_model itself.
BUILDERS = {
    ("torch", "resnet"): "class _ResNet", ("tensorflow", "resnet"): "def _resnet",
    ("torch", "lstm"): "class _LSTMClassifier",
    ("torch", "transformer"): "class _Transformer", ("tensorflow", "transformer"): "def _transformer",
    ("torch", "powerlaw"): "class _PowerLaw", ("tensorflow", "powerlaw"): "class _PowerLaw",
}


@pytest.fixture(scope="module")
def arena_home(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        home = tmp_path_factory.mktemp("arena-architecture")
        patch.setenv("ARENA_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def zoo(arena_home) -> dict:
    """Every case in both frameworks: one worker per framework, both at once; the first and a second call."""
    cases = [(fw, model, dataset) for model, dataset in CASES for fw in FRAMEWORKS]
    started = time.perf_counter()
    first = architecture.layer_tables(cases)
    first_s = time.perf_counter() - started
    started = time.perf_counter()
    second = architecture.layer_tables(cases)
    second_s = time.perf_counter() - started
    return {"tables": {(t.framework, t.model, t.dataset): t for t in first}, "first": first, "second": second,
            "first_s": first_s, "second_s": second_s}


def _pair(zoo: dict, model: str, dataset: str) -> tuple[LayerTable, LayerTable]:
    return zoo["tables"]["torch", model, dataset], zoo["tables"]["tensorflow", model, dataset]


@pytest.mark.parametrize("model, dataset", CASES)
def test_trainable_totals_match_each_other_and_the_canonical_count(zoo, model, dataset):
    torch_table, tf_table = _pair(zoo, model, dataset)
    expected = parameter_count(model, torch_table.input_shape, torch_table.num_outputs)
    assert torch_table.total_params == tf_table.total_params == expected
    if (model, dataset) in EXPECTED_PARAM_COUNTS:
        assert expected == EXPECTED_PARAM_COUNTS[model, dataset]
    for table in (torch_table, tf_table):
        assert sum(row.params for row in table.rows) == table.total_params
        assert table.framework_version and not table.from_cache


@pytest.mark.parametrize("model, dataset", CASES)
def test_parameterised_layers_match_one_for_one(zoo, model, dataset):
    torch_table, tf_table = _pair(zoo, model, dataset)
    torch_counts = [row.params for row in torch_table.parameterised()]
    assert torch_counts == [row.params for row in tf_table.parameterised()]
    assert torch_counts and all(count > 0 for count in torch_counts)


def test_shapes_are_in_each_frameworks_own_layout_with_the_zoos_names(zoo):
    torch_cnn, tf_cnn = _pair(zoo, "cnn", "digits")
    assert (torch_cnn.layout, tf_cnn.layout) == ("NCHW", "NHWC")
    assert torch_cnn.rows[0] == LayerRow("0", "Conv2d", (None, 32, 8, 8), 320, 0)
    assert tf_cnn.rows[0] == LayerRow("conv1", "Conv2D", (None, 8, 8, 32), 320, 0)
    assert [row.layer for row in tf_cnn.parameterised()] == ["conv1", "conv2", "dense1", "dense2"]
    assert torch_cnn.rows[-1].output_shape == tf_cnn.rows[-1].output_shape == (None, 10)

    torch_resnet, tf_resnet = _pair(zoo, "resnet", "cifar10")
    assert torch_resnet.total_params == 269_722
    assert "stage3.block3.conv2" in [row.layer for row in tf_resnet.rows]
    assert "stages.2.2.conv2" in [row.layer for row in torch_resnet.rows]
    # Moving statistics are non-trainable in both: mean and variance of every batch norm.
    assert torch_resnet.total_non_trainable == tf_resnet.total_non_trainable == 2 * (16 + 6 * (16 + 32 + 64))

    torch_lstm, tf_lstm = _pair(zoo, "lstm", "synthetic_text")
    assert torch_lstm.layout is None and tf_lstm.layout is None
    lstm_rows = {t.framework: next(r for r in t.rows if r.layer == "lstm") for t in (torch_lstm, tf_lstm)}
    assert lstm_rows["torch"].params == lstm_rows["tensorflow"].params == 24_832
    # PyTorch's second bias, frozen at zero so both learn one: there, but not trained.
    assert (lstm_rows["torch"].non_trainable, lstm_rows["tensorflow"].non_trainable) == (256, 0)
    assert lstm_rows["torch"].output_shape == (None, 32, 64) and lstm_rows["tensorflow"].output_shape == (None, 64)


def test_side_by_side_pairs_layers_and_gives_missing_ones_a_row_of_their_own(zoo):
    rows = architecture.side_by_side(*_pair(zoo, "mlp", "digits"))
    assert [(r["torch_layer"], r["tensorflow_layer"]) for r in rows] == [
        ("0", "flatten"), ("1", "dense1"), ("2", None), ("3", "dense2")]
    assert rows[2]["torch_type"] == "ReLU" and rows[2]["tensorflow_params"] is None
    assert not any(r["params_differ"] for r in rows)

    rows = architecture.side_by_side(*_pair(zoo, "resnet", "digits"))
    both = [r for r in rows if r["torch_layer"] and r["tensorflow_layer"]]
    assert not any(r["params_differ"] for r in rows)
    assert all(r["torch_params"] == r["tensorflow_params"] for r in both)
    pairs = [(r["torch_layer"], r["tensorflow_layer"]) for r in both]
    assert ("stages.1.0.shortcut", "stage2.block1.shortcut") in pairs
    for fw in FRAMEWORKS:  # every layer once, in its own order
        table = zoo["tables"][fw, "resnet", "digits"]
        assert [r[f"{fw}_layer"] for r in rows if r[f"{fw}_layer"]] == [row.layer for row in table.rows]


def _table(framework: str, rows: list[LayerRow]) -> LayerTable:
    return LayerTable(framework, "mlp", "digits", (8, 8, 1), 10, None, "0", tuple(rows),
                      sum(r.params for r in rows), 0)


def test_side_by_side_marks_differing_and_unmatched_parameters():
    dense = LayerRow("d", "Dense", (None, 10), 650, 0)
    rows = architecture.side_by_side(
        _table("torch", [LayerRow("a", "Linear", (None, 10), 660, 0), LayerRow("b", "Linear", (None, 4), 44, 0)]),
        _table("tensorflow", [dense]))
    assert [(r["torch_layer"], r["tensorflow_layer"], r["params_differ"]) for r in rows] == [
        ("a", "d", True), ("b", None, True)]
    with pytest.raises(ValueError, match="'torch'"):
        architecture.side_by_side(_table("torch", [dense]), _table("torch", [dense]))


def test_second_call_reads_the_disk_cache(zoo, arena_home):
    assert all(table.from_cache for table in zoo["second"])
    assert zoo["second"] == zoo["first"]
    assert zoo["second_s"] < 1.0 < zoo["first_s"]  # the first pays for two framework imports
    cached = arena_home / "cache" / "architecture" / "torch-resnet-32x32x3-10.json"
    assert cached == architecture.cache_path("torch", "resnet", "cifar10") and cached.is_file()


def test_a_cache_file_from_another_framework_version_is_recomputed(zoo, arena_home):
    path = architecture.cache_path("torch", "mlp", "digits")
    stored = json.loads(path.read_text())
    stored["key"]["versions"]["torch"] = "0.0.1"
    stored["table"]["total_params"] = -1  # would show if the stale file were served
    path.write_text(json.dumps(stored))
    table = architecture.layer_table("torch", "mlp", "digits")
    assert not table.from_cache and table.total_params == 9_610
    assert json.loads(path.read_text())["key"]["versions"]["torch"] != "0.0.1"
    assert architecture.layer_table("torch", "mlp", "digits").from_cache


@pytest.mark.parametrize("framework", FRAMEWORKS)
@pytest.mark.parametrize("model", list(MODELS))
def test_model_source_is_the_builder_for_that_model_alone(framework, model):
    source = architecture.model_source(framework, model)
    ast.parse(source)  # branches dropped, the rest still Python
    assert "def build_model(" in source
    assert BUILDERS.get((framework, model), "def build_model") in source
    others = [m for m in MODELS if m != model]
    assert not any(f'model == "{other}"' in source for other in others)


def test_model_source_keeps_helpers_and_comments_and_leaves_other_models_out():
    torch_resnet = architecture.model_source("torch", "resnet")
    for helper in ("class _BasicBlock", "class _Shortcut", "def _batch_norm"):
        assert helper in torch_resnet
    assert "_LSTMClassifier" not in torch_resnet and "_NHWCFlatten" not in torch_resnet
    tf_mnist = architecture.model_source("tensorflow", "mnist_cnn")
    assert "# mnist_cnn: pytorch/examples mnist/main.py, layer for layer" in tf_mnist  # the else line's comment
    assert 'layers.Dropout(0.5)' in tf_mnist and "layers.Flatten(**fmt)]" in tf_mnist
    assert "_resnet" not in tf_mnist and "layers = keras.layers" in tf_mnist


def test_model_source_imports_no_framework():
    code = ("import sys\nfrom engine.architecture import model_source\n"
            "from engine.catalog import FRAMEWORKS, MODELS\n"
            "sizes = [len(model_source(fw, m)) for fw in FRAMEWORKS for m in MODELS]\n"
            "print(min(sizes), sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    smallest, imported = out.stdout.strip().split(" ", 1)
    assert int(smallest) > 200 and imported == "[]"


@pytest.mark.parametrize("call, named", [
    (lambda: architecture.layer_table("torch", "vgg", "digits"), "'vgg'"),
    (lambda: architecture.layer_table("jax", "mlp", "digits"), "'jax'"),
    (lambda: architecture.layer_table("torch", "mlp", "imagenet"), "'imagenet'"),
    (lambda: architecture.layer_table("torch", "lstm", "digits"), "'digits'"),
    (lambda: architecture.model_source("tensorflow", "vgg"), "'vgg'"),
    (lambda: architecture.model_source("jax", "mlp"), "'jax'"),
])
def test_bad_names_raise_value_error_naming_them(call, named):
    with pytest.raises(ValueError, match=named):
        call()


def test_a_failing_worker_raises_naming_model_framework_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("ARENA_HOME", str(tmp_path))
    monkeypatch.setattr(architecture, "WORKER_MODULE", "engine.backends.no_such_worker")
    with pytest.raises(ArchitectureError) as caught:
        architecture.layer_tables([("torch", "mlp", "digits"), ("tensorflow", "mlp", "digits")])
    assert set(caught.value.failures) == set(FRAMEWORKS)
    for fw, message in caught.value.failures.items():
        assert "'mlp' on digits (8x8x1)" in message and "no_such_worker" in message
        assert f"Check that {fw} imports" in message and "Traceback" not in message
    assert not list(tmp_path.rglob("*.json"))  # nothing cached from a failure


@pytest.mark.parametrize("args, named", [
    (["--input-shape", "8,x", "--classes", "10"], "'8,x'"),
    (["--input-shape", "8,8,1", "--classes", "10", "--model", "cnn"], "got 2, 1 and 1"),
])
def test_worker_rejects_bad_arguments_with_exit_2(args, named):
    result = subprocess.run([sys.executable, "-m", architecture.WORKER_MODULE, "--framework", "torch",
                             "--model", "mlp", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and named in result.stderr and "Traceback" not in result.stderr
