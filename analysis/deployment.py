"""The Deploy page's numbers and charts, from db/deployments.py's rows: pure pandas and plotly, no Streamlit.

Rows are (run, format): a format is named by its framework's exporter and its label
(engine/deploy/formats.py). Colour is the framework's, as everywhere in Arena; the format is the
line's dash and marker, so "TorchScript against torch.export" and "PyTorch against TensorFlow"
both read from one chart.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Optional, Sequence

import pandas as pd
import plotly.graph_objects as go

from analysis.figure_layout import base_figure, fit_legend
from analysis.formatting import format_duration
from analysis.run_styles import framework_color
from db.models import QUEUED
from engine.catalog import framework_label
from engine.deploy.formats import FORMATS, get

_ORDER = {f.key: i for i, f in enumerate(FORMATS)}
_DASHES = ("solid", "dash", "dot", "dashdot")
_SYMBOLS = ("circle", "square", "diamond", "triangle-up")
SERVING_FAILED = "ok, serving failed"
STATUS_TEXT = {"ok": "ok", "mismatch": "MISMATCH", "not_exportable": "not exportable", "failed": "failed"}
TABLE_COLUMNS = ["run", "framework", "format", "status", "parity", "accuracy_trained", "accuracy_artifact",
                 "size_kib", "export_s", "load_ms", "first_call_ms", "p50_batch1_ms", "best_samples_per_s",
                 "peak_rss_mib", "why", "max_abs_diff"]


def label(framework: str, fmt: str) -> str:
    return get(framework, fmt).label


def _style(framework: str, fmt: str) -> dict[str, Any]:
    index = [f.name for f in FORMATS if f.framework == framework].index(fmt)
    return {"color": framework_color(framework), "dash": _DASHES[index % 4], "symbol": _SYMBOLS[index % 4]}


def _latency(result: dict, batch: int) -> Optional[dict]:
    return next((x for x in (result.get("figures") or {}).get("latency", []) if x["batch"] == batch), None)


def results_table(results: Sequence[dict], run_of_job: dict[int, int]) -> pd.DataFrame:
    """One row per (run, format), in format order: what was exported, how equal, how fast to load and call."""
    rows = []
    for r in sorted(results, key=lambda r: (run_of_job[r["deployment_id"]], _ORDER.get(f"{r['framework']}/{r['format']}", 99))):
        figures = r.get("figures") or {}
        parity = figures.get("parity") or {}
        latency = figures.get("latency") or []
        first = _latency(r, 1)
        why = (r.get("error") or "").strip()
        rows.append({
            "run": run_of_job[r["deployment_id"]], "framework": framework_label(r["framework"]),
            "format": label(r["framework"], r["format"]),
            # A format measured well whose server then failed keeps its figures, and says so.
            "status": SERVING_FAILED if r["status"] == "ok" and why else STATUS_TEXT.get(r["status"], r["status"]),
            "parity": parity_text(parity),
            "size_kib": None if r.get("size_bytes") is None else r["size_bytes"] / 1024,
            "export_s": r.get("export_s"),
            "load_ms": None if figures.get("load_s") is None else figures["load_s"] * 1e3,
            "first_call_ms": None if figures.get("first_call_s") is None else figures["first_call_s"] * 1e3,
            "max_abs_diff": parity.get("max_abs_diff"), "tolerance": parity.get("tolerance"),
            "accuracy_trained": parity.get("accuracy_reference"), "accuracy_artifact": parity.get("accuracy_artifact"),
            "p50_batch1_ms": None if first is None else first["p50_ms"],
            "best_samples_per_s": None if not latency else round(max(x["samples_per_s"] for x in latency)),
            "peak_rss_mib": None if figures.get("peak_rss_bytes") is None else figures["peak_rss_bytes"] / 2**20,
            "why": why.splitlines()[-1] if why else "",
        })
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def parity_text(parity: dict) -> str:
    """"2.9e-06 ≤ 1e-05" within the format's tolerance, "6.1e-02 (int8)" for a quantized one; "" unmeasured."""
    difference = parity.get("max_abs_diff")
    if difference is None:
        return ""
    tolerance = parity.get("tolerance")
    if tolerance is None:
        return f"{difference:.1e} (int8)"
    return f"{difference:.1e} {'≤' if difference <= tolerance else '>'} {tolerance:.0e}"


def same_runtime_sentence(results: Sequence[dict], run_of_job: dict[int, int], batch: int = 1) -> Optional[str]:
    """ONNX Runtime on both frameworks' ONNX files: one runtime, two exported graphs, at one batch size."""
    onnx = {r["framework"]: r for r in _measured(results) if r["format"] == "onnx" and r["status"] == "ok"}
    if set(onnx) != {"torch", "tensorflow"}:
        return None
    torch_point, tf_point = _latency(onnx["torch"], batch), _latency(onnx["tensorflow"], batch)
    if torch_point is None or tf_point is None:
        return None
    ratio = torch_point["p50_ms"] / tf_point["p50_ms"]
    return (f"**One runtime, two exported graphs.** ONNX Runtime ran PyTorch's graph (run #"
            f"{run_of_job[onnx['torch']['deployment_id']]}) at p50 {torch_point['p50_ms']:.3f} ms and TensorFlow's "
            f"(run #{run_of_job[onnx['tensorflow']['deployment_id']]}) at {tf_point['p50_ms']:.3f} ms per call at "
            f"batch {batch}: PyTorch's export takes {ratio:.2f}× the time. The runtime, threads and inputs are the "
            f"same; only the graph each exporter wrote differs.")


def latency_vs_batch(results: Sequence[dict], run_of_job: dict[int, int], several_runs: bool) -> go.Figure:
    """p50 latency of one call against batch size, log-log, one line per (run, format); p95 in the hover."""
    fig = base_figure("Latency of one call against batch size (p50; log-log)", "batch size", "ms per call",
                      log_y=True, x_type="log")
    for r in _measured(results):
        points = (r["figures"] or {}).get("latency") or []
        name = _name(r, run_of_job, several_runs)
        style = _style(r["framework"], r["format"])
        fig.add_trace(go.Scatter(
            x=[p["batch"] for p in points], y=[p["p50_ms"] for p in points], name=name, mode="lines+markers",
            line=dict(color=style["color"], dash=style["dash"]), marker=dict(symbol=style["symbol"], size=8),
            customdata=[[p["p95_ms"], p["p99_ms"], p["samples_per_s"]] for p in points],
            hovertemplate=f"{name}<br>batch %{{x}}: p50 %{{y:.3f}} ms, p95 %{{customdata[0]:.3f}}, "
                          f"p99 %{{customdata[1]:.3f}} ms, %{{customdata[2]:,.0f}} samples/s<extra></extra>"))
    batches = sorted({p["batch"] for r in _measured(results) for p in (r["figures"] or {}).get("latency") or []})
    fig.update_xaxes(tickvals=batches)  # the sizes timed, not a log axis's minor ticks
    fig.update_yaxes(dtick=1)  # decades
    fig.update_layout(hovermode="closest")
    fit_legend(fig)
    return fig


def latency_cdf(results: Sequence[dict], run_of_job: dict[int, int], batch: int, several_runs: bool) -> go.Figure:
    """The distribution of call times at one batch size, as a CDF: the tail shows where p99 comes from."""
    fig = base_figure(f"Latency distribution at batch {batch} (CDF)", "ms per call", "share of calls", x_type="log")
    for r in _measured(results):
        point = _latency(r, batch)
        if point is None or not point.get("quantiles_ms"):
            continue
        quantiles = point["quantiles_ms"]
        share = [i / (len(quantiles) - 1) for i in range(len(quantiles))]
        style = _style(r["framework"], r["format"])
        fig.add_trace(go.Scatter(x=quantiles, y=share, name=_name(r, run_of_job, several_runs), mode="lines",
                                 line=dict(color=style["color"], dash=style["dash"], shape="hv")))
    fig.update_yaxes(tickformat=".0%", range=[0, 1.02])
    fig.update_xaxes(dtick=1)  # decades
    fig.update_layout(hovermode="closest")
    fit_legend(fig)
    return fig


def served_frame(results: Sequence[dict], run_of_job: dict[int, int]) -> pd.DataFrame:
    """One row per (run, format, batching, concurrency) the server was measured at."""
    rows = []
    for r in results:
        for s in r.get("serving") or []:
            rows.append({"run": run_of_job[r["deployment_id"]], "framework": r["framework"], "format": r["format"],
                         "label": label(r["framework"], r["format"]), "batching": bool(s["batching"]),
                         "concurrency": s["concurrency"], "p50_ms": s.get("p50_ms"), "p99_ms": s.get("p99_ms"),
                         "requests_per_s": s.get("requests_per_s"), "errors": s.get("errors", 0)})
    return pd.DataFrame(rows, columns=["run", "framework", "format", "label", "batching", "concurrency", "p50_ms",
                                       "p99_ms", "requests_per_s", "errors"])


def served_figure(frame: pd.DataFrame, value: str, title: str, y_title: str, several_runs: bool) -> go.Figure:
    """A served figure against concurrency: solid with dynamic batching, dotted without."""
    fig = base_figure(title, "concurrent clients", y_title, x_type="log")
    for (run, framework, fmt, batching), points in frame.groupby(["run", "framework", "format", "batching"], sort=False):
        points = points.sort_values("concurrency")
        name = (f"#{run} " if several_runs else "") + f"{label(framework, fmt)}, batching {'on' if batching else 'off'}"
        style = _style(framework, fmt)
        fig.add_trace(go.Scatter(x=points["concurrency"], y=points[value], name=name, mode="lines+markers",
                                 line=dict(color=style["color"], dash="solid" if batching else "dot"),
                                 marker=dict(symbol=style["symbol"], size=8)))
    fig.update_xaxes(tickvals=sorted(frame["concurrency"].unique().tolist()))
    fig.update_layout(hovermode="closest")
    fit_legend(fig)
    return fig


def held_equal(jobs: Sequence[dict], results: Sequence[dict]) -> list[str]:
    """What every measured artifact had in common, as sentences for the page."""
    if not jobs:
        return []
    settings = [j["settings"] or {} for j in jobs]
    threads = sorted({s.get("threads") for s in settings})
    batches = sorted({tuple(s.get("batch_sizes", [])) for s in settings})
    samples = sorted({(r.get("figures") or {}).get("parity", {}).get("samples") for r in results} - {None})
    lines = [
        f"Threads: {', '.join(map(str, threads))} intra-op thread{'s' * (threads != [1])} in every runtime, inter-op 1.",
        "Device: the CPU; each artifact loaded and timed in a fresh process holding only its own runtime "
        "(torch, TensorFlow, LiteRT or ONNX Runtime), one process at a time, with no run training.",
        "Inputs: the run's own test set" + (f" ({', '.join(map(str, samples))} samples)" if samples else "")
        + ", in each framework's input layout (PyTorch NCHW, TensorFlow NHWC), converted before any timing.",
        f"Batch sizes: {'; '.join(', '.join(map(str, b)) for b in batches)}; each timed call returns host memory "
        "(it has finished computing), after 3 untimed calls.",
        "Parity: each artifact's outputs against the trained model's own (rebuilt from the kept weights, fp32, "
        "inference mode) on every test sample.",
    ]
    if any(s.get("serve") for s in settings):
        lines.append("Serving: one Ray Serve replica per artifact on 127.0.0.1, the same handler for every format; "
                     "one-sample JSON requests from a closed-loop load generator on this machine.")
    return lines


def queued_state(job: dict) -> str:
    """What a queued job waits for (the Deploy page's progress line, the Devices page's queue)."""
    if job.get("placed_device") is None:
        return "waits for the machine: runs queued before it go first, runs queued after it wait for it"
    host = f" of {job['hostname']}" if job.get("hostname") else ""
    return f"placed on {job['placed_device']}{host}, starting"


def job_progress(job: dict, now: datetime) -> tuple[float, str]:
    """(fraction done, "3 of 9 steps · 1 min 20 s left") for a job's progress bar."""
    if job.get("status") == QUEUED:
        return 0.0, queued_state(job)
    total, done = job["steps_total"] or 0, job["steps_done"] or 0
    fraction = done / total if total else 0.0
    text = f"{done} of {total} steps" if total else "starting"
    started = job.get("started_at")
    if started is not None and 0 < fraction < 1:
        left = (now - started).total_seconds() * (1 - fraction) / fraction
        text += f" · about {format_duration(left)} left"
    return fraction, text


def _measured(results: Sequence[dict]) -> list[dict]:
    return [r for r in results if r.get("figures")]


def _name(result: dict, run_of_job: dict[int, int], several_runs: bool) -> str:
    prefix = f"#{run_of_job[result['deployment_id']]} " if several_runs else ""
    return prefix + label(result["framework"], result["format"])
