"""Four runs writing while the dashboard reads, for over a minute: no "database is locked", no point lost.

This process plays the dashboard: it launches four runs the way the Launch page does (both
frameworks, two seeds, all four on the CPU at once, each in its own runner process) and, while
they write points, samples and layer statistics every half second, it reads what the open pages
read every half second (the Runs table, the Compare series, the memory and layer charts), writes
a note and a tag now and then, and its scheduler renews its lease every second.
"""
from __future__ import annotations

import time
import traceback

import pytest

from db import queries, run_table
from db.models import ACTIVE_STATUSES, FINISHED
from db.session import arena_home, make_sessionmaker
from engine.launch import launch
from engine.scheduler import ensure_running
from engine.spec import RunSpec
from tests.conftest import NO_CALIBRATION
from tests.reliability import KINDS, assert_nothing_lost

LOCKED = "database is locked"
READ_EVERY_S = 0.5  # a live page polls every 2 s; a few open tabs make it this often
WRITE_EVERY = 10  # reads between two dashboard writes (a note, a tag)
MODEL, STEPS_PER_EPOCH = "cnn", 40
# Four at once on a 2-core machine, each trains about a minute and a quarter. With four runs on two
# cores a PyTorch step of this model took ~130 ms, a TensorFlow one ~4.5 ms (median), so the
# frameworks get different epochs to write side by side all along. The deadline only stops a hang.
EPOCHS = {"torch": 6, "tensorflow": 125}
DEADLINE_S = 600

pytestmark = pytest.mark.slow


def test_four_runs_write_while_the_dashboard_reads_and_every_point_is_stored(arena_db, capfd, monkeypatch):
    monkeypatch.setenv("ARENA_CPU_SLOTS", "4")
    sessions = make_sessionmaker(arena_db)
    specs = [RunSpec(framework=framework, model=MODEL, dataset="digits", epochs=epochs, seed=seed,
                     max_steps_per_epoch=STEPS_PER_EPOCH, **NO_CALIBRATION)
             for framework, epochs in EPOCHS.items() for seed in (0, 1)]
    run_ids = launch(sessions, specs, arena_db)
    scheduler = ensure_running(sessions, arena_db)
    errors: list[str] = []
    reads, most_running, started = 0, 0, time.monotonic()
    while time.monotonic() - started < DEADLINE_S:
        try:
            statuses = dashboard_reads(sessions, write=reads % WRITE_EVERY == 0)
        except Exception:  # noqa: BLE001 - a failed read is a finding, kept to assert on
            errors.append(traceback.format_exc())
            statuses = ["running"]
        if scheduler.last_error:
            errors.append(f"scheduler: {scheduler.last_error}")
        most_running = max(most_running, statuses.count("running"))
        reads += 1
        if not any(status in ACTIVE_STATUSES for status in statuses):
            break
        time.sleep(READ_EVERY_S)
    elapsed = time.monotonic() - started

    assert not errors, errors[:3]
    assert most_running == 4, "all four runs must write at once"
    logs = {path.name: path.read_text() for path in (arena_home() / "logs").rglob("run-*.log")}
    assert len(logs) == 4
    for text in [capfd.readouterr().err, *logs.values()]:
        assert LOCKED not in text
    with sessions.begin() as s:
        runs = [queries.get_run(s, run_id) for run_id in run_ids]
        assert [run.status for run in runs] == [FINISHED] * 4, [run.error for run in runs]
        stored = {run.id: assert_nothing_lost(s, run) for run in runs}
        durations = [round((run.finished_at - run.started_at).total_seconds()) for run in runs]
    total = {kind: sum(counts[kind] for counts in stored.values()) for kind in KINDS}
    print(f"\n{reads} dashboard reads in {elapsed:.0f} s; runs took {durations} s and stored {total}")
    for spec, counts in zip(specs, stored.values()):
        assert counts["metric_points"] > spec.epochs * STEPS_PER_EPOCH * 2  # every step's loss and time, and more


def dashboard_reads(sessions, write: bool) -> list[str]:
    """One poll of an open dashboard; return the runs' statuses."""
    with sessions.begin() as s:
        overview = run_table.runs_overview(s)
        ids = overview["id"].tolist()
        queries.metric_frame(s, ids, ["step/train_loss", "step/step_time_ms"])
        queries.final_metrics(s, ids)
        queries.sample_frame(s, ids, "host", "rss")
        queries.tensor_stat_frame(s, ids)
    if write and ids:
        with sessions.begin() as s:
            queries.annotate_run(s, ids[0], notes=f"read at {time.time():.1f}", tags=["watched"])
    return overview["status"].tolist()
