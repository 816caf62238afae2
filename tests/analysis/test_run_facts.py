"""analysis/run_facts.py: status, progress, ETA and device or queue state of runs, a single run as a one-row frame."""
from __future__ import annotations

import math
from datetime import datetime, timedelta

import pytest

from analysis import run_facts
from analysis.run_facts import facts_of
from db.models import Run


def make_run(**values) -> Run:
    spec = {"framework": "torch", "model": "mlp", "dataset": "digits", "epochs": 4, "batch_size": 32, "lr": 1e-3,
            "optimizer": "adam", "seed": 0, "device": "auto", "max_steps_per_epoch": 10, "noise": 0.0}
    defaults = dict(id=3, framework="torch", model="mlp", dataset="digits", status="running", spec=spec,
                    total_epochs=4, epoch=1, step=20, summary=None)
    return Run(**{**defaults, **values})


def test_progress_counts_steps_from_the_spec_before_the_run_reports_them():
    run = make_run(step=20)  # 10 steps per epoch (capped) x 4 epochs
    assert run_facts.total_steps(run.spec, run.total_epochs) == 40
    assert facts_of([run]).at[run.id, "progress"] == pytest.approx(0.5)


def test_eta_extrapolates_elapsed_time_by_the_fraction_left():
    start = datetime(2026, 1, 1, 12, 0, 0)
    run = make_run(step=10, started_at=start)
    assert facts_of([run], now=start + timedelta(seconds=30)).at[run.id, "eta_s"] == pytest.approx(90)
    assert math.isnan(facts_of([make_run(status="finished", started_at=start)], now=start).at[3, "eta_s"])


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
    facts = facts_of([run])
    assert facts.at[run.id, "status_words"] == words
    assert facts.at[run.id, "status"] == text


def test_diverged_has_its_own_colour():
    colours = [run_facts.status_color(s) for s in ("queued", "running", "finished", "failed", "diverged")]
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
    run = make_run(**values)
    # The queue: runs 9, 4 and 7 (the run itself among them when it has one of those ids).
    queue = [make_run(id=run_id, status="queued") for run_id in (9, 4, 7) if run_id != run.id]
    assert facts_of([run, *queue]).at[run.id, "device"] == text


def test_a_queue_table_leaves_the_place_out_and_says_where_a_run_starts():
    starting = make_run(status="queued", placed_device="cuda:0", hostname="gpu-box")
    waiting = make_run(id=4, status="queued", spec={"device": "cuda:1"})
    frame = run_facts.runs_frame([starting, waiting])
    assert run_facts.device_texts(frame, place_in_queue=False, host=True).tolist() == [
        "starting on cuda:0 (gpu-box)", "waiting for cuda:1"]


def test_every_ray_placement_has_its_words():
    from engine.executors.ray import RAY_PLACEMENTS

    assert set(run_facts.RAY_QUEUE_WORDS) == set(RAY_PLACEMENTS)
