"""analysis/step_profile.py: the phase table, its sentence and bars, and the operator tables, from stored summaries."""
from __future__ import annotations

import pytest

from analysis.run_styles import FRAMEWORK_COLORS
from analysis.step_profile import (PHASE_COLORS, PHASE_LABELS, operator_caption, operator_frame, phase_bars,
                                   phase_sentence, phase_table, short_labels)
from db.models import Run


def run(run_id: int, framework: str, mode: str, medians: dict | None = None, fused: float = 10.0,
        profile: dict | None = None) -> Run:
    summary: dict = {"mode": mode}
    if medians is not None:
        summary["phases"] = {"steps": 20, "median_ms": medians, "fused_step_median_ms": fused,
                             "sum_median_ms": sum(medians.values()), "backward_repeats_forward": framework != "torch"}
    if profile is not None:
        summary["operator_profile"] = profile
    return Run(id=run_id, framework=framework, model="mlp", dataset="digits", spec={"mode": mode}, summary=summary)


TORCH = run(3, "torch", "eager", {"data": 0.5, "copy": 0.5, "forward": 2.0, "backward": 4.1, "optimizer": 2.9}, 9.5)
TF = run(4, "tensorflow", "graph", {"data": 0.5, "copy": 0.5, "forward": 3.0, "backward": 2.8, "optimizer": 3.2}, 9.0)
OLD = run(5, "torch", "eager")  # trained before phases existed


def test_the_table_has_a_row_per_run_with_phases_and_each_phases_share_of_the_sum():
    table = phase_table([TORCH, TF, OLD])
    assert table["run_id"].tolist() == [3, 4]
    assert table["label"].tolist() == ["PyTorch eager", "TensorFlow graph"]
    assert table["sum_ms"].tolist() == pytest.approx([10.0, 10.0])
    assert table["backward_share"].tolist() == pytest.approx([0.41, 0.28])
    assert table["backward_repeats_forward"].tolist() == [False, True]


def test_the_sentence_names_the_phase_that_takes_the_most_and_each_runs_share_of_it():
    assert phase_sentence(phase_table([TORCH, TF])) == (
        "PyTorch eager spends 41 % of a step in backward, TensorFlow graph 28 %.")
    assert phase_sentence(phase_table([TF])) == "TensorFlow graph spends 32 % of a step in optimizer."
    assert phase_sentence(phase_table([OLD])) is None


def test_runs_that_would_read_the_same_are_told_apart_by_their_id():
    twin = run(6, "torch", "eager", TORCH.summary["phases"]["median_ms"])
    assert short_labels([TORCH, twin, TF]) == {3: "PyTorch eager #3", 6: "PyTorch eager #6", 4: "TensorFlow graph"}


def test_the_bars_stack_one_colour_per_phase_and_mark_the_unsplit_step_in_the_framework_colour():
    fig = phase_bars(phase_table([TORCH, TF]))
    bars = [trace for trace in fig.data if trace.type == "bar"]
    assert [bar.name for bar in bars] == list(PHASE_LABELS.values())
    assert [bar.marker.color for bar in bars] == list(PHASE_COLORS.values())
    assert all(list(bar.y) == ["#3 PyTorch eager", "#4 TensorFlow graph"] for bar in bars)
    assert list(bars[3].x) == [4.1, 2.8] and fig.layout.barmode == "stack"
    (marker,) = [trace for trace in fig.data if trace.type == "scatter"]
    assert list(marker.x) == [9.5, 9.0]
    assert list(marker.marker.color) == [FRAMEWORK_COLORS["torch"], FRAMEWORK_COLORS["tensorflow"]]
    assert not set(PHASE_COLORS.values()) & set(FRAMEWORK_COLORS.values())


def test_the_operator_table_is_per_profiled_step():
    profiled = run(7, "torch", "eager", profile={
        "steps": 5, "profiler": "torch.profiler 2.13.0+cpu", "measure": "CPU self time", "total_ms": 10.0,
        "operators": 40, "wall_ms": 12.5,
        "top": [{"name": "aten::addmm", "self_ms": 4.0, "calls": 10, "percent": 40.0},
                {"name": "aten::mm", "self_ms": 1.0, "calls": 15, "percent": 10.0}]})
    frame = operator_frame(profiled)
    assert frame.values.tolist() == [["aten::addmm", 0.8, 2.0, 40.0], ["aten::mm", 0.2, 3.0, 10.0]]
    assert operator_caption(profiled) == ("torch.profiler 2.13.0+cpu, CPU self time over 5 steps: 2 ms of operators "
                                          "per step (2.5 ms wall, profiler included); top 2 of 40 operators.")
    assert operator_frame(OLD).empty


def test_the_wait_for_the_next_batch_is_named_beside_the_phases_where_the_run_timed_it():
    from analysis.step_profile import data_wait_note

    native = run(6, "torch", "eager", {"data": 0.5, "copy": 0.5, "forward": 2.0, "backward": 4.1, "optimizer": 2.9})
    native.summary["input"] = {"pipeline": "native", "data_wait_p50_ms": 1.25, "data_wait_share": 0.38}
    assert data_wait_note(phase_table([native, TF]), [native, TF]) == (
        "In training, waiting for the next batch (the loop's own timer, not a phase above): PyTorch eager 1.25 ms a "
        "step (38 % of training, native pipeline). The Data tab has the loader alone and the ceiling.")
    assert data_wait_note(phase_table([TORCH, TF]), [TORCH, TF]) is None  # trained before the wait was timed
