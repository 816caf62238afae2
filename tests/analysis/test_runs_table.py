"""analysis/runs_table.py: the Runs table from the overview's columns reads as run_facts of the Run objects."""
from __future__ import annotations

import math
import statistics
from datetime import timedelta
from typing import Optional

import pandas as pd

from analysis.formatting import error_summary, format_duration, format_percent
from analysis.run_facts import facts_of
from analysis.runs_table import runs_table
from db import queries, run_table
from db.models import DIVERGED, FINISHED, NON_FINITE_LOSS, OUT_OF_MEMORY, QUEUED, RUNNING, Run
from db.run_table import ENDED_EARLY
from db.session import make_sessionmaker
from engine.spec import RunSpec
from tests.pages.test_runs_page import epoch_points, made_up

# Per-epoch metrics, read point by point as the table read them before run_table kept results on the run.
EPOCH_METRICS = ("train_loss", "test_loss", "test_accuracy", "phi_estimate", "phi_true", "samples_per_s")


def epoch_metrics(s, run_ids) -> dict[int, dict[str, list[float]]]:
    """Per-epoch metric values in epoch order, per run, read point by point: {run_id: {name: [v1, v2, ...]}}."""
    result: dict[int, dict[str, list[float]]] = {int(r): {} for r in run_ids}
    frame = queries.metric_frame(s, list(run_ids), EPOCH_METRICS) if run_ids else None
    if frame is None or frame.empty:
        return result
    for (run_id, name), group in frame.groupby(["run_id", "name"], sort=False):
        result[int(run_id)][name] = group.sort_values("epoch")["value"].astype(float).tolist()
    return result


def last(values: dict[str, list[float]], name: str) -> Optional[float]:
    """The final value of a per-epoch metric, or None when it was never recorded."""
    series = values.get(name)
    return series[-1] if series else None


def median(values: dict[str, list[float]], name: str) -> Optional[float]:
    """The median over epochs, NaN epochs skipped, or None."""
    series = [v for v in values.get(name, []) if math.isfinite(v)]
    return statistics.median(series) if series else None


def old_table_row(run: Run, facts: pd.Series, metrics: dict) -> dict:
    """What the table shows for a run read as a Run object: its run_facts (from runs_frame, not the overview's
    columns) and its results from the metric points (not the results the overview keeps on the run's row)."""
    values = metrics.get(run.id, {})
    accuracy, phi, phi_true = (last(values, name) for name in ("test_accuracy", "phi_estimate", "phi_true"))
    if accuracy is not None:
        result = f"{format_percent(accuracy)} accuracy"
    elif phi is not None:
        result = f"φ {phi:.4f}" + (f" (true {phi_true:.4f})" if phi_true is not None else "")
    else:
        result = ""
    throughput = median(values, "samples_per_s")
    eta_s, elapsed_s = (None if math.isnan(facts[name]) else facts[name] for name in ("eta_s", "elapsed_s"))
    return {
        "status": facts["status"], "mode": facts["mode"], "precision": facts["precision"],
        "device": facts["device"], "epochs": f"{run.epoch}/{run.total_epochs}",
        "progress": 100 * facts["progress"],
        "eta": format_duration(eta_s) if run.status == RUNNING else "",
        "duration": format_duration(elapsed_s), "result": result,
        "train_loss": last(values, "train_loss"),
        "throughput": None if throughput is None else round(throughput),
        "error": error_summary(run.error) if run.status in ENDED_EARLY else "",
    }


def test_table_from_the_overview_matches_the_per_run_helpers(arena_db):
    sessions = make_sessionmaker(arena_db)
    now = queries.utcnow()
    started = now - timedelta(seconds=30)
    ids = [
        made_up(sessions, status=FINISHED, started_at=started, finished_at=now, placed_device="cuda:0",
                summary={"mode": "eager"}, epoch=4, step=40),
        made_up(sessions, "tensorflow", status=RUNNING, started_at=started, epoch=1, step=10, placed_device="cpu",
                spec={"mode": "xla", "precision": "mixed"}, heartbeat_at=now),
        made_up(sessions, status=RUNNING, started_at=started, epoch=2, step=25, total_steps=None,
                environment={"device": "cpu"}, heartbeat_at=now),  # stored before total_steps existed
        made_up(sessions, status=QUEUED, spec={"device": "cuda:1"}),
        made_up(sessions, status=QUEUED, placed_device="cpu"),
        made_up(sessions, status=QUEUED),
        made_up(sessions, "torch", "powerlaw", "powerlaw", status=FINISHED, started_at=started,
                finished_at=now, epoch=4, step=40),
        made_up(sessions, status=RUNNING, total_steps=0, epoch=0, step=0, heartbeat_at=now),
        made_up(sessions, status=QUEUED, placed_device="ray:gpu"),  # handed to Ray, waiting in its queue
    ]
    with sessions.begin() as s:  # stored before specs named a mode: the summary says it, or nothing does
        for summary in ({"mode": "xla"}, None):
            old_spec = {k: v for k, v in RunSpec.with_model_defaults("tensorflow", "mlp", "digits").to_dict().items()
                        if k != "mode"}
            ids.append(queries.create_run(s, old_spec).id)
            queries.update_run(s, ids[-1], status=FINISHED, summary=summary)
    with sessions.begin() as s:
        oom, diverged = made_up(sessions), made_up(sessions)
        queries.fail_run(s, oom, "Traceback\n  x\ntorch.OutOfMemoryError: CUDA out of memory.\n",
                         reason=OUT_OF_MEMORY)
        queries.fail_run(s, diverged, "FloatingPointError: train_loss became nan at step 7",
                         summary={"diverged_at_step": 7}, reason=NON_FINITE_LOSS, status=DIVERGED)
        queries.add_metric_points(s, [
            *epoch_points(ids[0], test_accuracy=[0.5, 0.9], train_loss=[1.0, 0.25],
                          samples_per_s=[100.0, float("nan"), 300.0, 250.0]),
            *epoch_points(ids[1], test_accuracy=[None], samples_per_s=[50.0]),
            *epoch_points(ids[6], phi_estimate=[1.1, 1.42], phi_true=[1.5, 1.5]),
            *epoch_points(diverged, train_loss=[2.0, None], samples_per_s=[None]),
        ])
    ids += [oom, diverged]
    with sessions.begin() as s:
        table = runs_table(run_table.runs_overview(s), now).set_index("id")
        old_runs = queries.list_runs(s)
        metrics = epoch_metrics(s, [run.id for run in old_runs])
    facts = facts_of(old_runs, now)

    assert sorted(table.index) == sorted(ids)
    for run in old_runs:
        expected, row = old_table_row(run, facts.loc[run.id], metrics), table.loc[run.id]
        for column, value in expected.items():
            got = row[column]
            if isinstance(value, float) or value is None:
                assert (value is None or math.isnan(value)) == pd.isna(got), (run.id, column, value, got)
                assert pd.isna(got) or got == value, (run.id, column, value, got)
            else:
                assert got == value, (run.id, column, value, got)
    assert table.loc[ids[1], "result"] == "NaN accuracy" and table.loc[ids[6], "result"] == "φ 1.4200 (true 1.5000)"
    assert table.loc[ids[2], "progress"] == 62.5 and table.loc[ids[1], "eta"] == "1 min 30 s"
    assert list(table.loc[ids[9:11], "mode"]) == ["xla", "graph"]


def test_the_weights_column_shows_the_kept_weights_size_and_nothing_without(arena_db):
    sessions = make_sessionmaker(arena_db)
    with sessions.begin() as s:
        kept, bare = (queries.create_run(s, RunSpec("torch", "mlp", "digits", seed=seed).to_dict()).id for seed in (1, 2))
        queries.add_artifact(s, kept, "weights", "weights.npz", "application/x-npz", b"\0" * 4321, 4321)
    with sessions.begin() as s:
        table = runs_table(run_table.runs_overview(s), queries.utcnow()).set_index("id")
    assert table.loc[kept, "weights"] == "4.2 KiB" and table.loc[bare, "weights"] == ""


def test_a_multi_worker_run_says_its_workers_and_the_column_gives_way_when_every_run_has_one(tmp_path):
    from ui.run_selection import column_order

    sessions = make_sessionmaker(f"sqlite:///{tmp_path / 'workers.db'}")
    with sessions.begin() as s:
        for workers in (1, 2):
            spec = RunSpec(framework="torch", model="mlp", dataset="digits", batch_size=64, workers=workers)
            queries.create_run(s, spec.to_dict())
        frame = run_table.runs_overview(s)
    table = runs_table(frame, queries.utcnow()).set_index("id")

    assert table["workers"].to_dict() == {1: "", 2: "2"}
    assert "workers" in column_order(table.reset_index())
    assert "workers" not in column_order(table.loc[[1]].reset_index())  # one-worker runs only: no column
