"""`python -m engine.deploy.export_worker DIR`: export one run's trained model in one framework's process.

DIR holds job.json ({"framework", "model", "input_shape", "num_outputs", "formats"}), weights.npz
(engine/kept_weights.py's file) and test.npz (canonical "x", and "y"). The worker rebuilds the
trained model from the weights (inference mode, fp32, CPU), writes inputs.npz (the test inputs in
the framework's artifact layout, and the trained model's own outputs on them: what parity compares
with), then exports every format into DIR/<format>/. After each format it rewrites export.json
({format: {"status": "ok" | "not_exportable" | "failed", "path", "export_s", "size_bytes",
"error"}}), so a crash keeps what was done; one format's failure keeps its traceback and the
others go on.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from engine import kept_weights
from engine.deploy import formats

OK, NOT_EXPORTABLE, FAILED = "ok", "not_exportable", "failed"
EXAMPLE_SAMPLES = 8  # what the exporters trace with; every artifact takes any batch size


def write_job(directory: Path, framework: str, model: str, input_shape, num_outputs: int, names: list[str],
              weights: bytes, x: np.ndarray, y=None) -> None:
    """What export_all reads: job.json, weights.npz (kept_weights' bytes) and test.npz (canonical x, and y)."""
    (directory / "weights.npz").write_bytes(weights)
    np.savez(directory / "test.npz", x=x, **({"y": y} if y is not None else {}))
    (directory / "job.json").write_text(json.dumps({"framework": framework, "model": model,
                                                    "input_shape": list(input_shape), "num_outputs": int(num_outputs),
                                                    "formats": list(names)}))


def size_on_disk(path: Path) -> int:
    """Bytes of a file, or of every file under a directory (a SavedModel)."""
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def export_all(directory: Path) -> dict:
    job = json.loads((directory / "job.json").read_text())
    framework, model = job["framework"], job["model"]
    exporter = formats.exporter_module(framework)  # imports the framework, and only it
    kept = kept_weights.unpack((directory / "weights.npz").read_bytes())
    with np.load(directory / "test.npz", allow_pickle=False) as test:
        x, y = test["x"], test["y"] if "y" in test.files else None
    module = exporter.build(model, tuple(job["input_shape"]), int(job["num_outputs"]), kept.weights)
    inputs = exporter.to_input(model, x)
    reference = exporter.reference_outputs(module, inputs)
    np.savez(directory / "inputs.npz", x=inputs, reference=np.asarray(reference, dtype=np.float32),
             **({"y": y} if y is not None else {}))
    results: dict = {}
    for name in job["formats"]:
        target = directory / name
        target.mkdir(exist_ok=True)
        started = time.perf_counter()
        try:
            path = exporter.export(name, module, model, inputs[:EXAMPLE_SAMPLES], target)
            results[name] = {"status": OK, "path": str(path), "export_s": time.perf_counter() - started,
                             "size_bytes": size_on_disk(Path(path)), "error": None}
        except formats.NotExportable as exc:
            results[name] = {"status": NOT_EXPORTABLE, "error": str(exc)}
        except Exception:  # noqa: BLE001 - one format's failure is its result; the others go on
            results[name] = {"status": FAILED, "error": traceback.format_exc(),
                             "export_s": time.perf_counter() - started}
        (directory / "export.json").write_text(json.dumps(results, indent=1))
        print(f"exported {framework}/{name}: {results[name]['status']}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m engine.deploy.export_worker DIR", file=sys.stderr)
        return 2
    export_all(Path(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
