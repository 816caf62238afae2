"""engine/deploy/torch_formats.py, runtime_torch.py and runtime_onnx.py: every artifact, loaded in a fresh process
through its runtime module, gives the trained model's outputs at every batch size.

The exports run here (a torch process); each runtime loads all of its artifacts in one fresh subprocess
of its own, as the measuring process does, and reports what it computed as JSON.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.deploy import formats, torch_formats
from engine.deploy.formats import NotExportable
from engine.weights import initial_weights, input_kind
from tests.conftest import REPO_ROOT
from tests.engine.deploy.zoo import BATCHES, FRAMEWORKS, PARITY_SAMPLES, SHAPES, inputs

# TorchScript and torch.export for every model (under 2 s each); ONNX (2-7 s each) for a convolution, the LSTM
# and attention; AOTInductor (15-30 s of C++ compilation) for the mlp, and the resnet under the slow mark.
PLAN = {model: ("torchscript", "torch_export") for model in SHAPES}
PLAN.update({model: PLAN[model] + ("onnx",) for model in ("cnn", "lstm", "transformer")})

# Runs in a fresh interpreter: loads each artifact through its format's runtime module, one intra-op thread.
LOADER = """
import json, sys
from pathlib import Path
import numpy as np
from engine.deploy import formats
report = {}
for item in json.loads(sys.argv[1]):
    predict = formats.runtime_module("torch", item["format"]).load(item["format"], Path(item["path"]), 1)
    x, reference = np.load(item["x"]), np.load(item["reference"])
    row = {"parity": float(np.abs(predict(x[:%(parity)d]) - reference[:%(parity)d]).max()), "batches": {}}
    if x.ndim == 4:  # the same images as a transposed NHWC array: with one channel numpy calls it C-contiguous
        nhwc_view = np.ascontiguousarray(np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
        row["nhwc_strides_parity"] = float(np.abs(predict(nhwc_view[:%(parity)d]) - reference[:%(parity)d]).max())
    for batch in %(batches)r:
        y = predict(x[:batch])
        row["batches"][str(batch)] = {"shape": list(y.shape), "dtype": str(y.dtype),
                                      "max_abs_diff": float(np.abs(y - reference[:batch]).max())}
    report[item["model"] + "/" + item["format"]] = row
loaded = sorted(%(frameworks)r & {name.split(".")[0] for name in sys.modules})
print(json.dumps({"report": report, "frameworks": loaded}))
""" % {"parity": PARITY_SAMPLES, "batches": BATCHES, "frameworks": FRAMEWORKS}


def _module(model: str) -> torch.nn.Module:
    shape, outputs = SHAPES[model]
    return torch_formats.build(model, shape, outputs, initial_weights(model, shape, outputs, seed=0))


def _export(model: str, fmt: str, directory: Path) -> dict:
    """Export one artifact next to its inputs and reference outputs; the loader's manifest entry."""
    module = _module(model)
    x = torch_formats.to_input(model, inputs(model))
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "x.npy", x)
    np.save(directory / "reference.npy", torch_formats.reference_outputs(module, x))
    path = torch_formats.export(fmt, module, model, x[:4], directory)
    assert path == directory / formats.get("torch", fmt).file and path.is_file()
    return {"model": model, "format": fmt, "path": str(path), "x": str(directory / "x.npy"),
            "reference": str(directory / "reference.npy")}


def _load_in_fresh_process(manifest: list[dict]) -> dict:
    result = subprocess.run([sys.executable, "-c", LOADER, json.dumps(manifest)], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> dict[str, dict]:
    """runtime name -> the loader's JSON, for every model x cheap format, each runtime in its own fresh process."""
    root = tmp_path_factory.mktemp("torch_formats")
    by_runtime: dict[str, list[dict]] = {}
    for model, planned in PLAN.items():
        for fmt in planned:
            by_runtime.setdefault(formats.get("torch", fmt).runtime, []).append(_export(model, fmt, root / model / fmt))
    return {runtime: {**_load_in_fresh_process(manifest), "manifest": manifest}
            for runtime, manifest in by_runtime.items()}


def _assert_equals_the_model(row: dict, model: str, fmt: str) -> None:
    tolerance = formats.get("torch", fmt).tolerance
    outputs = SHAPES[model][1]
    assert row["parity"] <= tolerance, f"{model}/{fmt}: max |diff| {row['parity']:.3g} over {PARITY_SAMPLES} samples"
    if input_kind(model) == "image":
        assert row["nhwc_strides_parity"] <= tolerance, f"{model}/{fmt} fed NHWC strides: {row['nhwc_strides_parity']}"
    assert [int(b) for b in row["batches"]] == list(BATCHES)
    for batch, result in row["batches"].items():
        assert result["shape"] == [int(batch), outputs] and result["dtype"] == "float32", f"{model}/{fmt} batch {batch}"
        assert result["max_abs_diff"] <= tolerance, f"{model}/{fmt} batch {batch}: {result['max_abs_diff']:.3g}"


@pytest.mark.parametrize(("model", "fmt"), [(model, fmt) for model, planned in PLAN.items() for fmt in planned])
def test_every_artifact_gives_the_trained_model_s_outputs_at_every_batch_size(loaded, model, fmt):
    report = loaded[formats.get("torch", fmt).runtime]["report"]
    _assert_equals_the_model(report[f"{model}/{fmt}"], model, fmt)


def test_the_outputs_compared_are_not_trivial():
    """Parity means something: the reference logits vary between samples and are of ordinary size."""
    for model in SHAPES:
        x = torch_formats.to_input(model, inputs(model, 16))
        reference = torch_formats.reference_outputs(_module(model), x, batch_size=5)  # 5, 5, 5, 1
        assert reference.shape == (16, SHAPES[model][1]) and reference.dtype == np.float32
        # Fresh weights give small logits (the LSTM's stay near 0.02), so 1e-5 is still a tight bound.
        assert np.abs(reference).max() > 0.01 and np.ptp(reference, axis=0).max() > 1e-3, model


def test_each_runtime_process_holds_its_runtime_only(loaded):
    assert loaded["onnxruntime"]["frameworks"] == ["onnxruntime"]
    assert loaded["torch"]["frameworks"] == ["torch"]


def test_runtime_onnx_imports_neither_torch_nor_tensorflow(loaded):
    """Importing the ONNX loader, loading a torch-exported file and predicting leaves both frameworks out."""
    path = next(item["path"] for item in loaded["onnxruntime"]["manifest"] if item["model"] == "cnn")
    probe = ("import sys\n"
             "import numpy as np\n"
             "from engine.deploy import runtime_onnx\n"
             f"predict = runtime_onnx.load('onnx', {path!r}, 1)\n"
             "assert predict(np.zeros((3, 1, 8, 8), np.float32)).shape == (3, 10)\n"
             "print(sorted({'torch', 'tensorflow', 'keras'} & {m.split('.')[0] for m in sys.modules}))\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "[]"


def test_the_aoti_package_of_the_mlp_gives_its_outputs_at_every_batch_size(tmp_path):
    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("AOTInductor needs a C++ compiler (the next test checks the refusal)")
    report = _load_in_fresh_process([_export("mlp", "aoti", tmp_path)])
    _assert_equals_the_model(report["report"]["mlp/aoti"], "mlp", "aoti")
    assert report["frameworks"] == ["torch"]


@pytest.mark.slow
def test_the_aoti_package_of_the_resnet_reads_one_channel_images_in_either_stride_layout(tmp_path):
    """Regression: Inductor lays the resnet out channels_last; compiled from a one-channel example with NHWC
    strides, the package trusted those strides and computed garbage (max |diff| 0.2) for plain NCHW ones.
    ~30 s of C++ compilation on 2 cores."""
    if not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("AOTInductor needs a C++ compiler")
    report = _load_in_fresh_process([_export("resnet", "aoti", tmp_path)])
    _assert_equals_the_model(report["report"]["resnet/aoti"], "resnet", "aoti")


def test_aoti_without_a_compiler_is_not_exportable(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(NotExportable, match="AOTInductor needs a C\\+\\+ compiler"):
        _export("mlp", "aoti", tmp_path)


def test_an_example_of_one_sample_still_exports_a_dynamic_batch(tmp_path):
    module = _module("cnn")
    x = torch_formats.to_input("cnn", inputs("cnn", 5))
    path = torch_formats.export("torch_export", module, "cnn", x[:1], tmp_path)
    program = torch.export.load(str(path)).module()
    with torch.inference_mode():
        assert tuple(program(torch.from_numpy(x)).shape) == (5, 10)


def test_build_is_in_inference_mode():
    """Dropout is off (mnist_cnn's outputs repeat) and batch norm reads its moving statistics (a resnet sample's
    logits do not depend on the batch around it)."""
    mnist_cnn = _module("mnist_cnn")
    assert not any(m.training for m in mnist_cnn.modules())
    x = torch_formats.to_input("mnist_cnn", inputs("mnist_cnn", 8))
    np.testing.assert_array_equal(torch_formats.reference_outputs(mnist_cnn, x),
                                  torch_formats.reference_outputs(mnist_cnn, x))
    resnet = _module("resnet")
    x = torch_formats.to_input("resnet", inputs("resnet", 8))
    together = torch_formats.reference_outputs(resnet, x)
    one_by_one = torch_formats.reference_outputs(resnet, x, batch_size=1)
    np.testing.assert_allclose(together, one_by_one, atol=1e-5, rtol=0)


def test_to_input_lays_out_what_the_artifacts_take():
    images = np.arange(2 * 8 * 8 * 3, dtype=np.float64).reshape(2, 8, 8, 3)
    nchw = torch_formats.to_input("cnn", images)
    assert nchw.shape == (2, 3, 8, 8) and nchw.dtype == np.float32 and nchw.flags.c_contiguous
    assert nchw[1, 2, 3, 4] == images[1, 3, 4, 2]
    # One channel: plain NCHW strides, not the NHWC ones a transposed view keeps (AOTInductor reads strides).
    assert torch_formats.to_input("cnn", np.zeros((2, 8, 8, 1))).strides == (256, 256, 32, 4)
    tokens = torch_formats.to_input("lstm", np.array([[1, 2, 3]], dtype=np.int32))
    assert tokens.dtype == np.int64 and tokens.tolist() == [[1, 2, 3]]
    assert torch_formats.to_input("powerlaw", np.ones((4, 1))).dtype == np.float32
    with pytest.raises(ValueError, match=r"\(N, H, W, C\) images, got shape \(64, 1\)"):
        torch_formats.to_input("mlp", np.ones((64, 1)))


def test_bad_formats_and_training_mode_are_refused(tmp_path):
    module = _module("mlp")
    x = torch_formats.to_input("mlp", inputs("mlp", 2))
    with pytest.raises(ValueError, match="'tflite' is not one of torch's"):
        torch_formats.export("tflite", module, "mlp", x, tmp_path)
    with pytest.raises(ValueError, match="eval mode"):
        torch_formats.export("onnx", module.train(), "mlp", x, tmp_path)
    assert torch_formats.FORMATS == ("torchscript", "torch_export", "aoti", "onnx")
    from engine.deploy import runtime_onnx, runtime_torch
    with pytest.raises(ValueError, match="'onnx' is not one the torch runtime loads"):
        runtime_torch.load("onnx", tmp_path / "model.onnx", 1)
    with pytest.raises(ValueError, match="'torchscript' is not one ONNX Runtime loads"):
        runtime_onnx.load("torchscript", tmp_path / "model.torchscript.pt", 1)
