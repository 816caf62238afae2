"""pages/common.py helpers: run ids in URLs, durations, progress and ETA."""
from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest

from db.models import Run
from pages import common


def make_run(**values) -> Run:
    spec = {"framework": "torch", "model": "mlp", "dataset": "digits", "epochs": 4, "batch_size": 32, "lr": 1e-3,
            "optimizer": "adam", "seed": 0, "device": "auto", "max_steps_per_epoch": 10, "noise": 0.0}
    defaults = dict(id=3, framework="torch", model="mlp", dataset="digits", status="running", spec=spec,
                    total_epochs=4, epoch=1, step=20, summary=None)
    return Run(**{**defaults, **values})


@pytest.mark.parametrize("text, ids", [("3,4", [3, 4]), ("#3, #4", [3, 4]), ("4,x,4,", [4]), ("", []), (None, [])])
def test_parse_run_ids_keeps_numbers_in_order_once(text, ids):
    assert common.parse_run_ids(text) == ids


@pytest.mark.parametrize("seconds, text", [
    (None, "—"), (0.035, "35 ms"), (4.24, "4.2 s"), (42.4, "42 s"), (185, "3 min 05 s"), (3720, "1 h 02 min"),
])
def test_format_duration_reads_like_a_person_would_say_it(seconds, text):
    assert common.format_duration(seconds) == text


def test_progress_counts_steps_from_the_spec_before_the_run_reports_them():
    run = make_run(step=20)  # 10 steps per epoch (capped) x 4 epochs
    assert common.total_steps(run) == 40
    assert common.progress_fraction(run) == pytest.approx(0.5)


def test_eta_extrapolates_elapsed_time_by_the_fraction_left():
    start = datetime(2026, 1, 1, 12, 0, 0)
    run = make_run(step=10, started_at=start)
    assert common.eta_s(run, now=start + timedelta(seconds=30)) == pytest.approx(90)
    assert common.eta_s(make_run(status="finished", started_at=start), now=start) is None


def test_nan_metrics_show_as_nan_and_are_left_out_of_medians():
    values = {"samples_per_s": [100.0, math.nan, 300.0], "train_loss": [1.0, math.nan]}
    assert common.median(values, "samples_per_s") == 200.0
    assert common.format_number(common.last(values, "train_loss")) == "NaN"
    assert common.format_percent(math.nan) == "NaN"


def test_each_run_gets_a_shade_of_its_framework_and_the_framework_s_line_style():
    runs = [make_run(id=1), make_run(id=2, framework="tensorflow"), make_run(id=5)]
    styles = common.trace_styles(runs)
    assert styles[1]["color"] == common.FRAMEWORK_COLORS["torch"]  # a pair looks the same on every page
    assert styles[2]["color"] == common.FRAMEWORK_COLORS["tensorflow"]
    assert styles[5]["color"] != styles[1]["color"] and styles[5]["color"] in common.FRAMEWORK_PALETTES["torch"]
    assert styles[1]["dash"] == styles[5]["dash"] == "solid" and styles[2]["dash"] == "dash"
    assert styles == common.trace_styles(list(reversed(runs)))  # stable: the order runs arrive in does not matter
    assert styles[1]["width"] > styles[2]["width"]  # coinciding curves stay visible


def test_error_summary_is_the_last_non_empty_line():
    assert common.error_summary("Traceback\n  File x\nValueError: bad\n\n") == "ValueError: bad"
    assert common.error_summary(None) == ""


@pytest.mark.parametrize("values, words, text", [
    (dict(status="finished"), "finished", "✓ finished"),
    (dict(status="failed", reason="error"), "failed", "✗ failed"),  # a plain error adds nothing to "failed"
    (dict(status="failed", reason="out_of_memory"), "failed · out of memory", "✗ failed · out of memory"),
    (dict(status="diverged", reason="non_finite_loss", summary={"diverged_at_step": 12}), "diverged at step 12",
     "△ diverged at step 12"),
    (dict(status="diverged", reason="non_finite_loss"), "diverged", "△ diverged"),
])
def test_status_says_why_a_run_ended_early(values, words, text):
    run = make_run(**values)
    assert common.status_words(run) == words
    assert common.status_text(run) == text
    assert common.run_label(run).endswith(f"({words})")


def test_diverged_has_its_own_colour():
    colours = [common.status_color(s) for s in ("queued", "running", "finished", "failed", "diverged")]
    assert len(set(colours)) == 5


@pytest.mark.parametrize("values, text", [
    (dict(status="running", placed_device="cuda:1"), "cuda:1"),
    (dict(status="queued", placed_device="cuda:0"), "starting on cuda:0"),
    (dict(status="queued", placed_device="ray:gpu"), "in Ray's queue, waiting for a free GPU"),
    (dict(status="queued", placed_device="ray:cpu"), "in Ray's queue, waiting for free CPUs"),
    (dict(id=7, status="queued"), "waiting for a free device (2nd in queue)"),  # spec device "auto"
    (dict(id=9, status="queued", spec={"device": "cuda:1"}), "waiting for cuda:1 (3rd in queue)"),
    (dict(status="finished", environment={"device": "cpu"}), "cpu"),  # stored before placement existed
    (dict(status="failed"), ""),
])
def test_device_text_says_where_a_run_is_or_what_it_waits_for(values, text):
    assert common.device_text(make_run(**values), queued_ids=[9, 4, 7]) == text


@pytest.mark.parametrize("n, text", [(1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"),
                                     (13, "13th"), (21, "21st"), (112, "112th")])
def test_ordinal(n, text):
    assert common.ordinal(n) == text
