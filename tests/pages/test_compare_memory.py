"""The Compare page's Memory tab (ui/memory_section.py, analysis/memory.py) on real and made-up runs."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pytest

from analysis import memory
from analysis.formatting import unix_time
from analysis.run_styles import FRAMEWORK_COLORS
from db import queries
from db.models import DIVERGED, NON_FINITE_LOSS, OUT_OF_MEMORY
from db.session import make_sessionmaker
from engine.spec import RunSpec
from tests.pages.helpers import failures
from tests.pages.test_compare_page import array, chart_specs, text_of
from ui.router import COMPARE_PAGE

MIB = 2**20
OOM_LINE = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
START = datetime(2026, 1, 1, 12, 0, 0)
SAMPLE_EVERY_S = 0.002  # 500 Hz for 12 s: 6,000 samples per series, more than the 2,000 a chart draws
SPIKE_MIB = 900.0  # one sample of the NVML series: the downsampler must keep it


# Real CPU runs ---------------------------------------------------------------------------------------
def memory_traces(at) -> list[dict]:
    return chart_specs(at)["chart_memory"]["data"]


def test_real_cpu_runs_show_host_rss_over_time_and_over_steps(runs_db, open_page):
    ids = sorted([runs_db.torch_id, runs_db.tensorflow_id])
    at = open_page(COMPARE_PAGE, runs=f"{ids[0]},{ids[1]}", tab="Memory")

    traces = memory_traces(at)
    names = {trace["name"]: trace for trace in traces}
    for run_id, framework, label in ((runs_db.torch_id, "torch", "PyTorch"),
                                     (runs_db.tensorflow_id, "tensorflow", "TensorFlow")):
        rss = names[f"#{run_id} {label} · host RSS"]
        assert rss["line"]["dash"] == "dashdot" and rss["line"]["color"] == FRAMEWORK_COLORS[framework]
        assert all(100 < mib < 10_000 for mib in array(rss["y"]))  # a Python process with a framework, in MiB
        assert min(array(rss["x"])) >= -1  # seconds since the run started
    layout = chart_specs(at)["chart_memory"]["layout"]
    assert layout["xaxis"]["title"]["text"] == "seconds since run start" and layout["yaxis"]["title"]["text"] == "MiB"
    assert "chart_cpu" in chart_specs(at) and "chart_gpu_util" not in chart_specs(at)  # no GPU here
    peaks = peaks_table(at)
    assert all(cell.endswith("MiB") for cell in peaks.loc["peak host RSS"])
    assert "**host RSS** (dashdot)" in text_of(at) and "Sampling** at 10 Hz" in text_of(at)

    at.radio(key="memory_x_axis").set_value("step").run()
    assert not failures(at)
    by_step = {trace["name"]: trace for trace in memory_traces(at)}
    for run_id, label in ((runs_db.torch_id, "PyTorch"), (runs_db.tensorflow_id, "TensorFlow")):
        steps = array(by_step[f"#{run_id} {label} · host RSS"]["x"])
        assert 1 <= min(steps) and max(steps) <= 20  # 2 epochs x 10 steps; outside samples sit at the ends
    layout = chart_specs(at)["chart_memory"]["layout"]
    assert layout["xaxis"]["title"]["text"] == "optimizer step"
    assert [shape["x0"] for shape in layout["shapes"]] == [10]  # the epoch boundary, shared by both runs


# Made-up GPU runs --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuRuns:
    gpu_id: int  # finished, with torch allocator, NVML process and utilisation samples
    oom_id: int  # failed: out of memory
    diverged_id: int
    exact_allocated_mib: float
    sampled_reserved_mib: float


def _steps(run_id: int, t0: float) -> list[dict]:
    """20 steps, 10 per epoch, the k-th ending at t0 + 1 + 0.5 k."""
    return [dict(run_id=run_id, name="step/train_loss", step=k, epoch=1 if k <= 10 else 2,
                 wall_time=t0 + 1 + 0.5 * k, value=1.0 / k) for k in range(1, 21)]


def _series(run_id: int, t0: float, source: str, name: str, values, unit: str = "bytes") -> list[dict]:
    return [dict(run_id=run_id, time=t0 + i * SAMPLE_EVERY_S, source=source, name=name, value=float(v), unit=unit)
            for i, v in enumerate(values)]


@pytest.fixture(scope="module")
def gpu_runs(stored_runs) -> GpuRuns:
    sessions = make_sessionmaker(stored_runs.url)
    n = int(12 / SAMPLE_EVERY_S)
    ramp = np.linspace(0.0, 1.0, n)
    allocated, reserved = (100 + 40 * ramp) * MIB, (200 + 60 * ramp) * MIB
    process = np.full(n, 600.0 * MIB)
    process[n // 2] = SPIKE_MIB * MIB
    exact_allocated = 150.0 * MIB  # the allocator's counter saw more than any sample did
    with sessions.begin() as s:
        ids = []
        for _ in range(3):
            spec = RunSpec.with_model_defaults("torch", "cnn", "digits", epochs=2, device="cuda:0").to_dict()
            ids.append(queries.create_run(s, spec).id)
        gpu_id, oom_id, diverged_id = ids
        for offset_h, run_id in enumerate(ids):
            queries.update_run(s, run_id, status="running", started_at=START + timedelta(hours=offset_h),
                               placed_device="cuda:0")
        t0 = {run_id: unix_time(START + timedelta(hours=h)) for h, run_id in enumerate(ids)}
        queries.add_metric_points(s, [row for run_id in ids for row in _steps(run_id, t0[run_id])])
        queries.add_system_samples(s, _series(gpu_id, t0[gpu_id], "torch", "allocated", allocated)
                                   + _series(gpu_id, t0[gpu_id], "torch", "reserved", reserved)
                                   + _series(gpu_id, t0[gpu_id], "nvml", "process_gpu_memory", process)
                                   + _series(gpu_id, t0[gpu_id], "nvml", "gpu_utilization", 90 * ramp, "%")
                                   + _series(gpu_id, t0[gpu_id], "nvml", "gpu_power", 100 + 50 * ramp, "W"))
        queries.finish_run(s, gpu_id, {"peak_bytes": {"torch_allocated": exact_allocated}, "energy_j": 1234.0,
                                       "samples_per_j": 5.5})
        # The OOM run's memory climbs for 6 s, then it dies.
        queries.add_system_samples(s, _series(oom_id, t0[oom_id], "nvml", "process_gpu_memory",
                                              np.linspace(1000, 7000, n // 2) * MIB))
        queries.fail_run(s, oom_id, f"Traceback (most recent call last):\n  File x\n{OOM_LINE}\n",
                         reason=OUT_OF_MEMORY)
        queries.add_system_samples(s, _series(diverged_id, t0[diverged_id], "host", "rss", np.full(n, 500 * MIB)))
        queries.fail_run(s, diverged_id, "FloatingPointError: train_loss became nan at step 15",
                         summary={"diverged_at_step": 15}, reason=NON_FINITE_LOSS, status=DIVERGED)
    sessions.kw["bind"].dispose()
    return GpuRuns(gpu_id, oom_id, diverged_id, exact_allocated / MIB, float(reserved.max() / MIB))


def peaks_table(at):
    return next(table.value for table in at.table if any(str(i).startswith("peak ") for i in table.value.index))


def test_each_source_has_its_dash_and_each_run_its_colour(runs_db, gpu_runs, open_page):
    at = open_page(COMPARE_PAGE, runs=f"{gpu_runs.gpu_id},{gpu_runs.oom_id}", tab="Memory")

    traces = {trace["name"]: trace for trace in memory_traces(at)}
    gpu, oom = f"#{gpu_runs.gpu_id} PyTorch", f"#{gpu_runs.oom_id} PyTorch"
    assert {name: trace["line"]["dash"] for name, trace in traces.items() if name.startswith(gpu)} == {
        f"{gpu} · NVML process": "solid", f"{gpu} · allocator allocated": "dot",
        f"{gpu} · allocator reserved": "dash"}
    colours = memory.run_colors([stored_run(runs_db.url, i) for i in (gpu_runs.gpu_id, gpu_runs.oom_id)])
    assert traces[f"{gpu} · NVML process"]["line"]["color"] == FRAMEWORK_COLORS["torch"] == colours[gpu_runs.gpu_id]
    assert traces[f"{oom} · NVML process"]["line"]["color"] == colours[gpu_runs.oom_id] != colours[gpu_runs.gpu_id]
    process = traces[f"{gpu} · NVML process"]
    assert len(array(process["y"])) <= memory.MAX_POINTS < 6000  # downsampled on the server
    assert chart_specs(at)["chart_memory"]["layout"]["yaxis"]["title"]["text"] == "GiB"  # the OOM run reached 7 GiB
    assert max(array(process["y"])) == SPIKE_MIB / 1024  # the one-sample spike survived
    assert "**NVML process** (solid)" in text_of(at) and "CUDA context" in text_of(at)
    specs = chart_specs(at)
    assert {"chart_gpu_util", "chart_gpu_power"} <= set(specs)
    assert [t["name"] for t in specs["chart_gpu_util"]["data"]] == [gpu]


def test_a_run_that_ran_out_of_memory_gets_a_red_cross_at_its_last_sample(runs_db, gpu_runs, open_page):
    at = open_page(COMPARE_PAGE, runs=f"{gpu_runs.gpu_id},{gpu_runs.oom_id}", tab="Memory")

    traces = {trace["name"]: trace for trace in memory_traces(at)}
    marker = traces[f"#{gpu_runs.oom_id} PyTorch · out of memory"]
    assert marker["marker"]["symbol"] == "x" and marker["marker"]["color"] == memory.OOM_COLOR
    assert marker["hovertext"] == [f"out of memory: {OOM_LINE}"]
    line = traces[f"#{gpu_runs.oom_id} PyTorch · NVML process"]
    assert array(marker["x"]) == [array(line["x"])[-1]] and array(marker["y"]) == [7000 / 1024]  # GiB
    assert not any(name.endswith("out of memory") for name in traces if name.startswith(f"#{gpu_runs.gpu_id}"))
    at.session_state["compare_picker_open"] = True  # the table of runs is built while its expander is open
    picker = at.run().dataframe[0].value.set_index("id")
    assert picker.loc[gpu_runs.oom_id, "status"] == "✗ failed · out of memory"


def test_a_diverged_run_is_marked_at_the_step_its_loss_went_non_finite(runs_db, gpu_runs, open_page):
    at = open_page(COMPARE_PAGE, runs=str(gpu_runs.diverged_id), tab="Memory")
    at.radio(key="memory_x_axis").set_value("step").run()

    traces = {trace["name"]: trace for trace in memory_traces(at)}
    marker = traces[f"#{gpu_runs.diverged_id} PyTorch · loss not finite"]
    assert array(marker["x"]) == [15.0] and array(marker["y"]) == [500.0]
    assert marker["hovertext"] == ["loss not finite from step 15"]
    at.session_state["compare_tab"] = "Summary"
    summary = next(d.value for d in at.run().dataframe if ("Settings", "status") in d.value.index)
    assert summary.loc[("Settings", "status")].tolist() == ["△ diverged at step 15"]


def test_peaks_are_exact_from_the_summary_or_marked_sampled(runs_db, gpu_runs, open_page):
    at = open_page(COMPARE_PAGE, runs=f"{gpu_runs.gpu_id},{gpu_runs.oom_id}", tab="Memory")

    peaks = peaks_table(at)
    gpu, oom = f"#{gpu_runs.gpu_id} PyTorch", f"#{gpu_runs.oom_id} PyTorch"
    assert peaks.loc["peak allocator allocated", gpu] == f"{gpu_runs.exact_allocated_mib:.1f} MiB"
    assert peaks.loc["peak allocator reserved", gpu] == f"{gpu_runs.sampled_reserved_mib:.1f} MiB (sampled)"
    assert peaks.loc["peak NVML process", gpu] == f"{SPIKE_MIB:.1f} MiB (sampled)"
    assert peaks.loc["peak NVML process", oom] == "6.84 GiB (sampled)"
    assert peaks.loc["peak allocator allocated", oom] == "—"
    assert peaks.loc["energy (training)", gpu] == "1.23 kJ" and peaks.loc["samples per joule", gpu] == "5.5"
    assert "peak host RSS" not in peaks.index  # neither run sampled it


def test_units_switch_to_gib(runs_db, gpu_runs, open_page):
    at = open_page(COMPARE_PAGE, runs=str(gpu_runs.oom_id), tab="Memory")  # 7 GiB: GiB from the start
    assert at.radio(key="memory_unit").value == "GiB"
    line = next(t for t in memory_traces(at) if t["name"].endswith("NVML process"))
    assert max(array(line["y"])) == pytest.approx(7000 / 1024)


def test_runs_without_memory_samples_say_so(runs_db, open_page):
    sessions = make_sessionmaker(runs_db.url)
    with sessions.begin() as s:
        old = queries.create_run(s, RunSpec.with_model_defaults("torch", "mlp", "digits", epochs=2).to_dict()).id
        queries.add_metric_points(s, _steps(old, unix_time(START)))
        queries.fail_run(s, old, "RuntimeError: from before memory was sampled")
    at = open_page(COMPARE_PAGE, runs=str(old), tab="Memory")

    assert any("No memory samples for these runs" in info.value and "Launch a new run" in info.value
               for info in at.info)
    assert "chart_memory" not in chart_specs(at) and "chart_cpu" not in chart_specs(at)


def stored_run(url: str, run_id: int):
    with make_sessionmaker(url).begin() as s:
        run = queries.get_run(s, run_id)
        s.expunge(run)
        return run


def test_the_memory_axis_and_unit_come_from_the_link_and_go_back_into_it(runs_db, gpu_runs, open_page):
    at = open_page(COMPARE_PAGE, runs=str(gpu_runs.gpu_id), tab="Memory", mx="step", unit="GiB")
    assert at.radio(key="memory_x_axis").value == "step" and at.radio(key="memory_unit").value == "GiB"

    at.radio(key="memory_x_axis").set_value("time").run()
    assert "mx" not in at.query_params and at.query_params["unit"] in ("GiB", ["GiB"])
