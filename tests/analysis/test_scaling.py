"""analysis/scaling.py: runs that differ in workers grouped into studies; efficiency, the ideal line, straggling."""
from __future__ import annotations

from typing import Optional

import pandas as pd
import pytest

from analysis import scaling
from analysis.run_styles import FRAMEWORK_COLORS
from db.models import Run

MIB = 2**20


def make_run(run_id: int, framework: str, workers: int, samples_per_s: Optional[float], seed: int = 0,
             **summary) -> Run:
    spec = {"framework": framework, "model": "mlp", "dataset": "digits", "seed": seed, "batch_size": 64,
            "lr": 0.001, "optimizer": "adam", "same_init": True, "workers": workers, "sync_batchnorm": False,
            "mode": "eager" if framework == "torch" else "graph", "warmup_steps": 2}
    summary = {"workers": workers, "warmup_steps": 2, **summary}
    if samples_per_s is not None:
        summary["steady_samples_per_s"] = samples_per_s
    return Run(id=run_id, framework=framework, model="mlp", dataset="digits", spec=spec, summary=summary)


def study_runs() -> list[Run]:
    """PyTorch 1, 2 and 4 workers; TensorFlow 1 and 2; ids interleaved as a matrix would be."""
    return [make_run(1, "torch", 1, 1000.0), make_run(2, "torch", 2, 1800.0), make_run(3, "tensorflow", 1, 800.0),
            make_run(4, "tensorflow", 2, 1200.0), make_run(5, "torch", 4, 2000.0)]


def test_runs_that_differ_only_in_workers_form_one_study_per_framework():
    found = scaling.studies(study_runs())

    assert [(s.label, [r.id for r in s.runs]) for s in found] == [("PyTorch", [1, 2, 5]), ("TensorFlow", [3, 4])]
    assert [s.color for s in found] == [FRAMEWORK_COLORS["torch"], FRAMEWORK_COLORS["tensorflow"]]


def test_a_framework_with_two_studies_labels_them_by_what_differs():
    compiled = make_run(6, "torch", 2, 2500.0)
    compiled.spec = {**compiled.spec, "mode": "compiled"}
    found = scaling.studies([*study_runs(), compiled])

    assert [s.label for s in found] == ["PyTorch eager", "PyTorch torch.compile", "TensorFlow"]
    assert found[0].color != found[1].color  # the framework's next shade


def test_efficiency_is_throughput_over_n_times_the_one_worker_run():
    frame = scaling.run_frame(study_runs()).set_index("run_id")

    assert frame.loc[2, "efficiency"] == pytest.approx(1800 / 2000)
    assert frame.loc[5, "efficiency"] == pytest.approx(2000 / 4000)
    assert frame.loc[4, "efficiency"] == pytest.approx(1200 / 1600)  # TensorFlow against its own 1-worker run
    assert frame.loc[5, "ideal_samples_per_s"] == pytest.approx(4000)
    assert frame.loc[2, "baseline"] == "#1"
    assert pd.isna(frame.loc[1, "efficiency"])  # a 1-worker run is the baseline, not a point on the bars


def test_the_baseline_is_the_same_seeds_one_worker_run_else_their_median():
    runs = [make_run(1, "torch", 1, 1000.0, seed=0), make_run(2, "torch", 1, 1200.0, seed=1),
            make_run(3, "torch", 2, 1800.0, seed=1), make_run(4, "torch", 2, 1500.0, seed=7)]
    frame = scaling.run_frame(runs).set_index("run_id")

    assert frame.loc[3, "efficiency"] == pytest.approx(1800 / 2400) and frame.loc[3, "baseline"] == "#2"
    assert frame.loc[4, "efficiency"] == pytest.approx(1500 / 2200) and frame.loc[4, "baseline"] == "#1, #2"


def test_no_one_worker_run_means_no_ideal_and_no_efficiency():
    runs = [make_run(2, "torch", 2, 1800.0), make_run(5, "torch", 4, 2000.0), make_run(6, "torch", 1, None)]
    (study,) = scaling.studies(runs)

    assert scaling.ideal_line(study) is None  # the 1-worker run has not measured its throughput (yet)
    assert scaling.run_frame(runs)["efficiency"].isna().all()


def test_ideal_line_spans_the_studys_worker_counts():
    torch_study = scaling.studies(study_runs())[0]
    assert scaling.ideal_line(torch_study) == ([1, 2, 4], [1000.0, 2000.0, 4000.0])


def test_straggling_from_the_summary_else_from_the_ranks_medians():
    recorded = make_run(1, "torch", 2, 1800.0, straggling=1.25)
    ranks = [{"rank": r, "step_time_p50_ms": ms} for r, ms in enumerate([10.0, 10.0, 12.0, 11.0])]
    computed = make_run(2, "torch", 4, 2000.0, ranks=ranks)

    assert scaling.straggling(recorded) == 1.25
    assert scaling.straggling(computed) == pytest.approx(12.0 / 10.5)
    assert scaling.straggling(make_run(3, "torch", 1, 900.0)) is None


def test_workers_come_from_the_summary_then_the_spec_then_one():
    run = make_run(1, "torch", 2, None)
    run.summary = None
    assert scaling.workers_of(run) == 2
    run.spec = {k: v for k, v in run.spec.items() if k != "workers"}  # stored before workers existed
    assert scaling.workers_of(run) == 1


def test_throughput_figure_draws_each_study_and_its_ideal_line():
    fig = scaling.throughput_figure(study_runs())

    names = [trace.name for trace in fig.data]
    assert "PyTorch ideal (1 worker × N)" in names and "TensorFlow ideal (1 worker × N)" in names
    ideal = next(trace for trace in fig.data if trace.name == "PyTorch ideal (1 worker × N)")
    assert list(ideal.x) == [1, 2, 4] and list(ideal.y) == [1000.0, 2000.0, 4000.0]
    assert ideal.line.dash == "dot" and ideal.line.color == FRAMEWORK_COLORS["torch"]
    assert list(fig.layout.xaxis.tickvals) == [1, 2, 4]


def test_efficiency_figure_has_a_bar_per_multi_worker_run():
    runs = study_runs()
    fig = scaling.efficiency_figure(scaling.run_frame(runs), runs)

    (bars,) = [trace for trace in fig.data if trace.type == "bar"]
    assert list(bars.text) == ["90 %", "50 %", "75 %"]
    assert [label.split("<br>")[0] for label in bars.x] == ["#2 PyTorch", "#5 PyTorch", "#4 TensorFlow"]


def test_rank_step_times_after_warm_up_make_a_box_per_rank():
    runs = study_runs()[:2]
    rows = [dict(run_id=run_id, rank=rank, step=step, value=10.0 + rank)
            for run_id, ranks in ((1, 1), (2, 2)) for rank in range(ranks) for step in range(1, 6)]
    fig = scaling.rank_step_time_figure(pd.DataFrame(rows), runs)

    assert [trace.name for trace in fig.data] == ["#1 rank 0", "#2 rank 0", "#2 rank 1"]
    assert all(len(trace.y) == 3 for trace in fig.data)  # steps 1-2 are warm-up


def test_rank_memory_from_the_ranks_or_a_one_worker_runs_own_peak():
    single = make_run(1, "torch", 1, 1000.0, peak_bytes={"host_rss": 300 * MIB})
    double = make_run(2, "torch", 2, 1800.0, ranks=[{"rank": 0, "peak_rss_bytes": 310.0 * MIB},
                                                     {"rank": 1, "peak_rss_bytes": 290.0 * MIB}])
    unknown = make_run(3, "torch", 2, 1800.0, ranks=[{"rank": 0, "peak_rss_bytes": None}])
    memory = scaling.rank_memory_frame([single, double, unknown])

    assert memory.values.tolist() == [[1, 0, 300 * MIB], [2, 0, 310 * MIB], [2, 1, 290 * MIB]]


def test_the_line_says_what_ran_and_what_was_held_equal():
    runs = study_runs()
    runs[1].summary.update(strategy="DistributedDataParallel (gloo)", threads_per_worker=1, sync_batchnorm="off")
    runs[4].summary.update(strategy="DistributedDataParallel (gloo)", threads_per_worker=1, sync_batchnorm="off")

    ran = scaling.what_ran(runs)
    assert "**PyTorch**: DistributedDataParallel (gloo), 1 thread per worker, sync batch norm off" in ran
    assert "**TensorFlow**: not recorded yet" in ran
    held = scaling.held_equal(runs)
    assert "the global batch of 64 samples per step (32 per worker at 2 workers, 16 per worker at 4 workers)" in held
    assert "the sample order and initial weights (seed 0)" in held and "the optimizer (Adam, learning rate" in held
    assert scaling.workers_differ(runs) and not scaling.workers_differ([runs[1], runs[3]])


def test_loss_agreement_is_the_largest_relative_difference_from_the_same_seeds_one_worker_run_over_20_steps():
    runs = [make_run(1, "torch", 1, 1000.0), make_run(2, "torch", 2, 1800.0), make_run(3, "tensorflow", 2, 1200.0)]
    frame = scaling.run_frame(runs)
    steps = list(range(1, 31))
    single = [2.0 - 0.01 * step for step in steps]
    double = list(single)
    double[4] *= 1 + 3e-7  # step 5: inside the first 20
    double[25] *= 1.5  # step 26: after them, not checked
    losses = pd.DataFrame({"run_id": [1] * 30 + [2] * 30, "step": steps * 2, "value": single + double})

    agreement = scaling.loss_agreement(losses, frame)

    assert set(agreement) == {2}  # the TensorFlow run has no 1-worker run to be checked against
    assert agreement[2] == pytest.approx(3e-7, rel=1e-3)
    shown = scaling.table(frame, runs, agreement).set_index("run")
    assert shown.loc["#2 PyTorch", "loss vs 1 worker, first 20 steps"] == "3.0e-07 relative"
    assert shown.loc["#3 TensorFlow", "loss vs 1 worker, first 20 steps"] == "—"
