"""engine/deploy/tensorflow_formats.py, runtime_tensorflow.py, runtime_litert.py (and runtime_onnx.py on tf2onnx's
files): every artifact, loaded in a fresh process through its runtime module, gives the trained model's outputs
at every batch size.

The exports run here (a TensorFlow process), each model built once; each runtime loads all of its artifacts in
one fresh subprocess of its own, the three side by side, as the measuring process does, and reports as JSON.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from engine.backends import tensorflow_models
from engine.deploy import formats, tensorflow_formats
from engine.deploy.formats import NotExportable
from engine.weights import initial_weights
from tests.conftest import REPO_ROOT
from tests.engine.deploy.zoo import BATCHES, FRAMEWORKS, PARITY_SAMPLES, SHAPES, inputs

# Dynamic-range int8 has no tolerance (formats.py): its logits move by ~1e-2 on these models; the class should not.
INT8_MIN_ARGMAX_AGREEMENT = 0.9
INT8_MAX_ABS_DIFF = 0.1

# Runs in a fresh interpreter: loads each artifact through its format's runtime module, one intra-op thread.
LOADER = """
import json, sys
from pathlib import Path
import numpy as np
from engine.deploy import formats
report = {}
for item in json.loads(sys.argv[1]):
    predict = formats.runtime_module("tensorflow", item["format"]).load(item["format"], Path(item["path"]), 1)
    x, reference = np.load(item["x"]), np.load(item["reference"])
    y = predict(x[:%(parity)d])
    row = {"parity": float(np.abs(y - reference[:%(parity)d]).max()),
           "argmax_agreement": float(np.mean(y.argmax(1) == reference[:%(parity)d].argmax(1))), "batches": {}}
    for batch in %(batches)r:
        y = predict(x[:batch])
        row["batches"][str(batch)] = {"shape": list(y.shape), "dtype": str(y.dtype),
                                      "max_abs_diff": float(np.abs(y - reference[:batch]).max())}
    # Back to a size seen before (LiteRT keeps an interpreter per batch size).
    row["again_max_abs_diff"] = float(np.abs(predict(x[:8]) - reference[:8]).max())
    report[item["model"] + "/" + item["format"]] = row
loaded = sorted(%(frameworks)r & {name.split(".")[0] for name in sys.modules})
print(json.dumps({"report": report, "frameworks": loaded}))
""" % {"parity": PARITY_SAMPLES, "batches": BATCHES, "frameworks": FRAMEWORKS}


def _module(model: str) -> keras.Model:
    shape, outputs = SHAPES[model]
    weights = initial_weights(model, shape, outputs, seed=0)
    if model == "powerlaw":
        weights["phi"] = np.float32(1.5)  # phi starts at 1, the identity, which any artifact gets right
    return tensorflow_formats.build(model, shape, outputs, weights)


def _load_in_fresh_processes(manifests: dict[str, list[dict]]) -> dict[str, dict]:
    """runtime -> the loader's JSON; one fresh process per runtime, all running at once."""
    running = {runtime: subprocess.Popen([sys.executable, "-c", LOADER, json.dumps(manifest)], cwd=REPO_ROOT,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for runtime, manifest in manifests.items()}
    reports = {}
    for runtime, process in running.items():
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, f"{runtime}: {stderr[-3000:]}"
        reports[runtime] = json.loads(stdout.strip().splitlines()[-1])
    return reports


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """"model/format" -> artifact path, every model x format, with x.npy and reference.npy beside each model's."""
    root = tmp_path_factory.mktemp("tensorflow_formats")
    paths = {}
    for model in SHAPES:
        module, directory = _module(model), root / model
        x = tensorflow_formats.to_input(model, inputs(model))
        directory.mkdir()
        np.save(directory / "x.npy", x)
        np.save(directory / "reference.npy", tensorflow_formats.reference_outputs(module, x))
        for fmt in tensorflow_formats.FORMATS:
            (directory / fmt).mkdir()
            paths[f"{model}/{fmt}"] = tensorflow_formats.export(fmt, module, model, x[:4], directory / fmt)
    return paths


@pytest.fixture(scope="module")
def loaded(exported) -> dict[str, dict]:
    """runtime name -> the loader's JSON for every artifact that runtime loads."""
    manifests: dict[str, list[dict]] = {}
    for key, path in exported.items():
        model, fmt = key.split("/")
        manifests.setdefault(formats.get("tensorflow", fmt).runtime, []).append(
            {"model": model, "format": fmt, "path": str(path), "x": str(path.parent.parent / "x.npy"),
             "reference": str(path.parent.parent / "reference.npy")})
    return _load_in_fresh_processes(manifests)


@pytest.mark.parametrize("fmt", tensorflow_formats.FORMATS)
@pytest.mark.parametrize("model", list(SHAPES))
def test_every_artifact_gives_the_trained_model_s_outputs_at_every_batch_size(exported, loaded, model, fmt):
    path = exported[f"{model}/{fmt}"]
    assert path.name == formats.get("tensorflow", fmt).file and path.exists()
    row = loaded[formats.get("tensorflow", fmt).runtime]["report"][f"{model}/{fmt}"]
    tolerance = formats.get("tensorflow", fmt).tolerance
    if tolerance is None:  # tflite_int8
        tolerance = INT8_MAX_ABS_DIFF
        if SHAPES[model][1] > 1:
            assert row["argmax_agreement"] >= INT8_MIN_ARGMAX_AGREEMENT, f"{model}/{fmt}: {row}"
    assert row["parity"] <= tolerance, f"{model}/{fmt}: max |diff| {row['parity']:.3g} over {PARITY_SAMPLES} samples"
    assert [int(b) for b in row["batches"]] == list(BATCHES)
    for batch, result in row["batches"].items():
        assert result["shape"] == [int(batch), SHAPES[model][1]] and result["dtype"] == "float32", \
            f"{model}/{fmt} batch {batch}"
        assert result["max_abs_diff"] <= tolerance, f"{model}/{fmt} batch {batch}: {result['max_abs_diff']:.3g}"
    assert row["again_max_abs_diff"] <= tolerance, f"{model}/{fmt} batch 8 again: {row['again_max_abs_diff']:.3g}"


def test_the_outputs_compared_are_not_trivial(exported):
    """Parity means something: the reference logits vary between samples and are far above the tolerances."""
    for model, (_, outputs) in SHAPES.items():
        reference = np.load(exported[f"{model}/onnx"].parent.parent / "reference.npy")
        assert reference.shape == (max(BATCHES), outputs) and reference.dtype == np.float32
        # The LSTM's logits are the smallest at initialisation: ~0.02, still 2,000 times the 1e-5 tolerance.
        assert np.abs(reference).max() > 0.01 and np.ptp(reference, axis=0).max() > 1e-2, model


def test_each_runtime_process_holds_its_runtime_only(loaded):
    """LiteRT runs without TensorFlow; importing TensorFlow imports Keras, nothing else comes along."""
    assert loaded["litert"]["frameworks"] == ["ai_edge_litert"]
    assert loaded["onnxruntime"]["frameworks"] == ["onnxruntime"]
    assert loaded["tensorflow"]["frameworks"] == ["keras", "tensorflow"]


def test_the_savedmodel_serves_a_named_signature_with_a_free_batch(exported):
    """What TF Serving reads: "serving_default", one input "inputs" (N, H, W, C) and one output "logits" (N, 10)."""
    signature = tf.saved_model.load(str(exported["resnet/savedmodel"])).signatures["serving_default"]
    (name, spec), = signature.structured_input_signature[1].items()
    assert name == "inputs" and spec.shape.as_list() == [None, 8, 8, 1] and spec.dtype == tf.float32
    assert {k: v.shape.as_list() for k, v in signature.structured_outputs.items()} == {"logits": [None, 10]}
    tokens = tf.saved_model.load(str(exported["lstm/savedmodel"])).signatures["serving_default"]
    assert tokens.structured_input_signature[1]["inputs"].dtype == tf.int32


def test_dynamic_range_quantization_stores_int8_weights(exported):
    """tflite_int8 holds its matrices in int8: about a quarter of the fp32 file wherever the weights dominate."""
    for model in ("mlp", "cnn", "resnet", "transformer"):
        fp32, int8 = (exported[f"{model}/{fmt}"].stat().st_size for fmt in ("tflite", "tflite_int8"))
        assert int8 < 0.6 * fp32, f"{model}: {int8} bytes int8 against {fp32} fp32"


def test_onnx_names_a_batch_dimension(exported):
    import onnx

    graph = onnx.load(str(exported["cnn/onnx"])).graph
    dims = [[d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in (*graph.input, *graph.output)]
    assert dims == [["batch", 8, 8, 1], ["batch", 10]]
    assert [v.name for v in (*graph.input, *graph.output)] == ["inputs", "logits"]


def test_an_lstm_of_free_length_is_not_exportable_to_litert(tmp_path):
    """Unrolling needs the sequence length; the while loop's TensorList ops need the Flex delegate LiteRT lacks."""
    module = tensorflow_models.build_model("lstm", (16,), 10, free_length=True)
    x = tensorflow_formats.to_input("lstm", inputs("lstm", 4))
    for fmt in ("tflite", "tflite_int8"):
        with pytest.raises(NotExportable, match=r"free sequence length cannot be unrolled.*tf\.TensorListReserve.*"
                                                r"SELECT_TF_OPS, whose Flex delegate ai_edge_litert"):
            tensorflow_formats.export(fmt, module, "lstm", x, tmp_path)
    assert not list(tmp_path.iterdir())


def test_ops_outside_the_targets_are_not_exportable(tmp_path):
    """An op LiteRT has no builtin for, or tf2onnx no conversion for, names itself (tf2onnx keeps such ops as they
    are and would write a file ONNX Runtime cannot load)."""
    x = np.ones((2, 3), np.float32)
    bessel = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(tf.math.bessel_i0e)])
    with pytest.raises(NotExportable, match=r"needs TensorFlow ops outside LiteRT's builtins \(tf\.BesselI0e\)"):
        tensorflow_formats.export("tflite", bessel, "bessel", x, tmp_path)
    import tf2onnx

    lgamma = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(tf.math.lgamma)])
    versions = rf"tf2onnx {tf2onnx.__version__} \(TensorFlow {tf.__version__}\)"
    with pytest.raises(NotExportable, match=rf"{versions} has no ONNX conversion for Lgamma"):
        tensorflow_formats.export("onnx", lgamma, "lgamma", x, tmp_path)
    assert not list(tmp_path.iterdir())


def test_build_is_in_inference_mode():
    """Dropout is off (mnist_cnn's outputs repeat) and batch norm reads its moving statistics (a resnet sample's
    logits do not depend on the batch around it)."""
    mnist_cnn = _module("mnist_cnn")
    x = tensorflow_formats.to_input("mnist_cnn", inputs("mnist_cnn", 8))
    np.testing.assert_array_equal(tensorflow_formats.reference_outputs(mnist_cnn, x),
                                  tensorflow_formats.reference_outputs(mnist_cnn, x))
    resnet = _module("resnet")
    x = tensorflow_formats.to_input("resnet", inputs("resnet", 8))
    together = tensorflow_formats.reference_outputs(resnet, x)
    one_by_one = tensorflow_formats.reference_outputs(resnet, x, batch_size=1)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5, rtol=0)
    training = resnet(x, training=True).numpy()  # what the batch statistics would give: far off
    assert np.abs(training - together).max() > 1e-2


def test_to_input_lays_out_what_the_artifacts_take():
    images = np.arange(2 * 8 * 8 * 3, dtype=np.float64).reshape(2, 8, 8, 3)
    nhwc = tensorflow_formats.to_input("cnn", images)
    assert nhwc.shape == (2, 8, 8, 3) and nhwc.dtype == np.float32 and nhwc.flags.c_contiguous
    assert nhwc[1, 3, 4, 2] == images[1, 3, 4, 2]
    tokens = tensorflow_formats.to_input("lstm", np.array([[1, 2, 3]], dtype=np.int64))
    assert tokens.dtype == np.int32 and tokens.tolist() == [[1, 2, 3]]
    assert tensorflow_formats.to_input("powerlaw", np.ones((4, 1))).dtype == np.float32


def test_bad_formats_are_refused(tmp_path):
    module = _module("mlp")
    x = tensorflow_formats.to_input("mlp", inputs("mlp", 2))
    with pytest.raises(ValueError, match="'torchscript' is not one of tensorflow's"):
        tensorflow_formats.export("torchscript", module, "mlp", x, tmp_path)
    assert tensorflow_formats.FORMATS == ("savedmodel", "tflite", "tflite_int8", "onnx")
    from engine.deploy import runtime_tensorflow

    with pytest.raises(ValueError, match="'tflite' is not one TensorFlow's runtime loads"):
        runtime_tensorflow.load("tflite", tmp_path / "model.tflite", 1)
    probe = ("from engine.deploy import runtime_litert\n"
             f"runtime_litert.load('savedmodel', {str(tmp_path)!r}, 1)\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert "ValueError: format 'savedmodel' is not one LiteRT loads" in result.stderr
