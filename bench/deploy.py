"""Deployment ratios measured side by side in one run (issue 17).

`.venv/bin/python bench/deploy.py [--model cnn] [--repeats 9] [--serve-s 3] [--json]`

Exports one model (the canonical weights drawn from seed 0; latency does not depend on their
values) in both frameworks through the Deploy page's own export worker, then prints:

1. **ONNX Runtime, one runtime, two graphs**: the p50 of one call at each batch size of
   PyTorch's ONNX export ÷ TensorFlow's, measured in alternating fresh processes (pairs; the
   order flips every pair), as the median of the per-pair ratios with a 95 % interval
   (bench/loop_report.median_interval).
2. **What serving costs**: for each format, the served p50 at concurrency 1 (Ray Serve, batching
   off, one-sample JSON requests from loadgen on this machine) ÷ the in-process p50 at batch 1 of
   the same artifact — the HTTP, JSON and Serve path per request, in multiples of the model's
   own call.

Like the other benchmarks, it warns when other processes kept more than NOISY_LOAD_CORES busy.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.loop_report import NOISY_LOAD_CORES, median_interval  # noqa: E402
from engine import child_env, kept_weights  # noqa: E402
from engine.deploy import export_worker, formats, loadgen  # noqa: E402
from engine.monitor import host_busy_cpu_s  # noqa: E402
from engine.processes import stop_process_trees  # noqa: E402
from engine.weights import initial_weights  # noqa: E402

SHAPES = {"mlp": (8, 8, 1), "cnn": (8, 8, 1), "mnist_cnn": (28, 28, 1), "resnet": (32, 32, 3), "lstm": (32,),
          "transformer": (32,)}
BATCHES = (1, 8, 32, 128)


def export(model: str, framework: str, names: list[str], directory: Path) -> dict:
    """The Deploy page's export worker on the seed-0 weights and 256 generated test samples."""
    directory.mkdir(parents=True)
    shape, classes = SHAPES[model], 10
    weights = initial_weights(model, shape, classes, seed=0)
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 100, (256, *shape)) if len(shape) == 1 else rng.random((256, *shape))).astype(
        np.int64 if len(shape) == 1 else np.float32)
    export_worker.write_job(directory, framework, model, shape, classes, names,
                            kept_weights.pack(weights, {"model": model}), x, rng.integers(0, classes, 256))
    subprocess.run([sys.executable, "-m", "engine.deploy.export_worker", str(directory)], cwd=ROOT, env=child_env(),
                   check=True, capture_output=True)
    return json.loads((directory / "export.json").read_text())


def measure(framework: str, name: str, path: str, directory: Path, min_time_s: float, batches=BATCHES) -> dict:
    out = directory / f"{name}.{time.monotonic_ns()}.json"
    subprocess.run([sys.executable, "-m", "engine.deploy.measure", "--framework", framework, "--format", name,
                    "--artifact", path, "--inputs", str(directory / "inputs.npz"), "--threads", "1",
                    "--batches", ",".join(map(str, batches)), "--min-time", str(min_time_s), "--out", str(out)],
                   cwd=ROOT, env=child_env(), check=True, capture_output=True)
    return json.loads(out.read_text())


def served_p50(framework: str, name: str, path: str, directory: Path, seconds: float) -> float:
    """p50 ms at concurrency 1 of one server (batching off) for `seconds`."""
    with np.load(directory / "inputs.npz") as inputs:
        samples = inputs["x"][:64]
    np.save(directory / "example.npy", samples[:8])
    port = loadgen.free_port()
    server = subprocess.Popen([sys.executable, "-m", "engine.deploy.serve", "--framework", framework, "--format", name,
                               "--path", path, "--threads", "1", "--port", str(port), "--no-batching", "--example",
                               str(directory / "example.npy")], cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, start_new_session=True, text=True)
    try:
        url = None
        for line in server.stdout:
            if line.startswith("ready "):
                url = line.split(" ", 1)[1].strip()
                break
        if url is None:
            raise RuntimeError(f"the {framework}/{name} server exited with code {server.wait()}")
        return loadgen.measure(url, samples, 1, seconds)["p50_ms"]
    finally:
        stop_process_trees([server.pid], grace_s=10.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn", choices=sorted(SHAPES))
    parser.add_argument("--repeats", type=int, default=9, help="pairs of ONNX Runtime measurements")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds timed per batch size and process")
    parser.add_argument("--serve-s", type=float, default=3.0, help="seconds of load per served format (0: skip)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    busy_before, clock_before = host_busy_cpu_s(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="arena-bench-deploy-") as scratch:
        root = Path(scratch)
        exported = {fw: export(args.model, fw, list(formats.names(fw)), root / fw) for fw in ("torch", "tensorflow")}
        ratios: dict[int, list[float]] = {b: [] for b in BATCHES}
        for pair in range(args.repeats):
            order = ("torch", "tensorflow") if pair % 2 == 0 else ("tensorflow", "torch")
            p50 = {}
            for fw in order:
                figures = measure(fw, "onnx", exported[fw]["onnx"]["path"], root / fw, args.min_time)
                p50[fw] = {x["batch"]: x["p50_ms"] for x in figures["latency"]}
            for b in BATCHES:
                ratios[b].append(p50["torch"][b] / p50["tensorflow"][b])
        onnx_rows = []
        for b in BATCHES:
            low, high = median_interval(ratios[b])
            onnx_rows.append({"batch": b, "ratio": float(np.median(ratios[b])), "low": low, "high": high})
        serve_rows = []
        if args.serve_s > 0:
            for fw, results in exported.items():
                for name, outcome in results.items():
                    if outcome["status"] != "ok":
                        serve_rows.append({"format": f"{fw}/{name}", "error": outcome["error"]})
                        continue
                    local = {x["batch"]: x["p50_ms"] for x in measure(
                        fw, name, outcome["path"], root / fw, args.min_time, batches=(1,))["latency"]}[1]
                    served = served_p50(fw, name, outcome["path"], root / fw, args.serve_s)
                    serve_rows.append({"format": f"{fw}/{name}", "in_process_p50_ms": local,
                                       "served_p50_ms": served, "ratio": served / local})
    other_cores = (host_busy_cpu_s() - busy_before) / (time.monotonic() - clock_before)
    if args.json:
        print(json.dumps({"model": args.model, "onnx_runtime": onnx_rows, "serving": serve_rows,
                          "machine_busy_cores": other_cores}))
        return 0
    print(f"model {args.model}, 1 intra-op thread, {args.repeats} pairs\n")
    print("ONNX Runtime: PyTorch's ONNX export / TensorFlow's (tf2onnx), p50 of one call")
    print("| batch | ratio | 95% interval |\n|---|---|---|")
    for row in onnx_rows:
        print(f"| {row['batch']} | {row['ratio']:.3f} | {row['low']:.3f}-{row['high']:.3f} |")
    if serve_rows:
        print("\nServed p50 at concurrency 1 (Ray Serve, JSON, batching off) / in-process p50 at batch 1")
        print("| format | in-process ms | served ms | served / in-process |\n|---|---|---|---|")
        for row in serve_rows:
            if "error" in row:
                print(f"| {row['format']} | not exported: {row['error'].splitlines()[-1]} | | |")
            else:
                print(f"| {row['format']} | {row['in_process_p50_ms']:.3f} | {row['served_p50_ms']:.2f} | "
                      f"{row['ratio']:,.0f} |")
    print(f"\nThe whole machine was busy {other_cores:.2f} cores on average (this benchmark's own processes included).")
    if other_cores > NOISY_LOAD_CORES + 1.0:
        print("WARNING: the machine was busier than this benchmark alone keeps it: the figures are noisy.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
