"""analysis/deployment.py: the Deploy page's table, sentences and figures from stored results."""
from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from analysis import deployment as dep


def result(job: int, framework: str, fmt: str, status: str = "ok", p50: float = 0.05, difference: float = 1e-6,
           tolerance=1e-5, error=None, serving=None) -> dict:
    figures = None if status in ("failed", "not_exportable") else {
        "load_s": 0.01, "first_call_s": 0.002, "peak_rss_bytes": 64 * 2**20, "threads": 1,
        "parity": {"samples": 360, "max_abs_diff": difference, "tolerance": tolerance,
                   "within_tolerance": None if tolerance is None else difference <= tolerance,
                   "accuracy_reference": 0.9, "accuracy_artifact": 0.9},
        "latency": [{"batch": b, "p50_ms": p50 * b, "p95_ms": p50 * b * 1.2, "p99_ms": p50 * b * 1.5,
                     "samples_per_s": 1e3 / p50, "quantiles_ms": [p50 * b * (1 + q / 100) for q in range(0, 101, 5)]}
                    for b in (1, 8)]}
    return {"id": job * 10 + len(fmt), "deployment_id": job, "framework": framework, "format": fmt, "status": status,
            "error": error, "export_s": 0.5, "size_bytes": 2048, "figures": figures, "serving": serving,
            "artifact_name": "model", "created_at": None}


RUN_OF_JOB = {1: 7, 2: 8}


def test_the_table_orders_formats_as_the_frameworks_list_them_and_names_every_outcome():
    results = [result(2, "tensorflow", "onnx", p50=0.04), result(1, "torch", "onnx"),
               result(1, "torch", "torchscript", status="mismatch", difference=3e-3),
               result(1, "torch", "aoti", status="not_exportable", error="AOTInductor needs a C++ compiler (g++)"),
               result(2, "tensorflow", "tflite_int8", difference=0.06, tolerance=None),
               result(2, "tensorflow", "savedmodel", error="serving with batching on: the server exited")]
    table = dep.results_table(results, RUN_OF_JOB)
    assert table["format"].tolist() == ["TorchScript", "AOTInductor package", "ONNX (torch.onnx)", "SavedModel",
                                        "LiteRT int8 (dynamic range)", "ONNX (tf2onnx)"]
    assert table["status"].tolist() == ["MISMATCH", "not exportable", "ok", dep.SERVING_FAILED, "ok", "ok"]
    assert table["parity"].tolist()[:3] == ["3.0e-03 > 1e-05", "", "1.0e-06 ≤ 1e-05"]
    assert table["parity"].iloc[4] == "6.0e-02 (int8)"
    assert table["why"].iloc[1] == "AOTInductor needs a C++ compiler (g++)"
    assert table["load_ms"].iloc[0] == pytest.approx(10.0) and table["size_kib"].iloc[0] == 2.0


def test_the_one_runtime_sentence_needs_both_frameworks_onnx_and_gives_their_ratio():
    both = [result(1, "torch", "onnx", p50=0.06), result(2, "tensorflow", "onnx", p50=0.04)]
    sentence = dep.same_runtime_sentence(both, RUN_OF_JOB)
    assert "p50 0.060 ms" in sentence and "0.040 ms" in sentence and "1.50×" in sentence
    assert dep.same_runtime_sentence(both[:1], RUN_OF_JOB) is None


def test_figures_draw_one_line_per_measured_format_in_its_frameworks_colour():
    results = [result(1, "torch", "onnx"), result(2, "tensorflow", "onnx"), result(1, "torch", "aoti", "failed")]
    latency = dep.latency_vs_batch(results, RUN_OF_JOB, several_runs=True)
    assert [t.name for t in latency.data] == ["#7 ONNX (torch.onnx)", "#8 ONNX (tf2onnx)"]
    assert [t.line.color for t in latency.data] == ["#EE4C2C", "#1A73E8"]
    assert list(latency.data[0].x) == [1, 8]
    cdf = dep.latency_cdf(results, RUN_OF_JOB, 1, several_runs=False)
    assert len(cdf.data) == 2 and cdf.data[0].y[0] == 0 and cdf.data[0].y[-1] == 1


def test_served_figures_are_one_row_per_batching_and_concurrency():
    serving = [{"batching": b, "concurrency": c, "p50_ms": 5.0 * c, "p99_ms": 9.0 * c, "requests_per_s": 100.0,
                "errors": 0} for b in (True, False) for c in (1, 8)]
    frame = dep.served_frame([result(1, "torch", "onnx", serving=serving)], RUN_OF_JOB)
    assert len(frame) == 4 and set(frame["concurrency"]) == {1, 8}
    figure = dep.served_figure(frame, "p50_ms", "t", "ms", several_runs=False)
    assert [t.line.dash for t in figure.data] == ["solid", "dot"]


def test_progress_and_eta_and_what_was_held_equal():
    now = datetime(2026, 12, 6, 12, 0, 0)
    job = {"steps_done": 1, "steps_total": 4, "started_at": now - timedelta(seconds=30)}
    fraction, text = dep.job_progress(job, now)
    assert fraction == 0.25 and text.startswith("1 of 4 steps · about 1 min 30 s left")
    assert dep.job_progress({"steps_done": 0, "steps_total": 0, "started_at": None}, now) == (0.0, "starting")
    lines = dep.held_equal([{"settings": {"threads": 2, "batch_sizes": [1, 8], "serve": True}}],
                           [result(1, "torch", "onnx")])
    assert lines[0].startswith("Threads: 2 intra-op threads") and "(360 samples)" in lines[2]
    assert any(line.startswith("Serving: one Ray Serve replica") for line in lines)
