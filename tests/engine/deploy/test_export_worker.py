"""engine/deploy/export_worker.py: one format's failure keeps its traceback and the others go on."""
from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np

from engine import kept_weights
from engine.deploy import export_worker, formats
from engine.weights import initial_weights


def fake_exporter(directory: Path):
    """A framework exporter whose second format raises, the third cannot express the model."""
    def export(fmt, module, model, example, target):
        if fmt == "torch_export":
            raise RuntimeError("the exporter broke on purpose")
        if fmt == "aoti":
            raise formats.NotExportable("AOTInductor needs a C++ compiler (g++), none on this machine")
        path = target / "model.bin"
        path.write_bytes(b"\0" * 100)
        return path
    return types.SimpleNamespace(
        build=lambda model, shape, outputs, weights: "module", to_input=lambda model, x: x.transpose(0, 3, 1, 2),
        reference_outputs=lambda module, x: np.zeros((len(x), 10), np.float32), export=export)


def test_a_failing_format_keeps_its_traceback_and_the_others_go_on(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "exporter_module", lambda framework: fake_exporter(tmp_path))
    weights = initial_weights("mlp", (8, 8, 1), 10, seed=0)
    (tmp_path / "weights.npz").write_bytes(kept_weights.pack(weights, {"model": "mlp"}))
    np.savez(tmp_path / "test.npz", x=np.zeros((20, 8, 8, 1), np.float32), y=np.zeros(20, np.int64))
    (tmp_path / "job.json").write_text(json.dumps({"framework": "torch", "model": "mlp", "input_shape": [8, 8, 1],
                                                   "num_outputs": 10, "formats": ["torchscript", "torch_export",
                                                                                  "aoti", "onnx"]}))
    results = export_worker.export_all(tmp_path)
    assert [results[f]["status"] for f in ("torchscript", "torch_export", "aoti", "onnx")] == [
        "ok", "failed", "not_exportable", "ok"]
    assert "Traceback" in results["torch_export"]["error"] and "broke on purpose" in results["torch_export"]["error"]
    assert results["aoti"]["error"].startswith("AOTInductor needs a C++ compiler")
    assert results["onnx"]["size_bytes"] == 100
    assert json.loads((tmp_path / "export.json").read_text()) == results  # on disk after every format
    with np.load(tmp_path / "inputs.npz") as inputs:  # the framework's layout, and the trained model's outputs
        assert inputs["x"].shape == (20, 1, 8, 8) and inputs["reference"].shape == (20, 10)
