"""Runner logs are kept per database, and a lost run shows only its own lines."""
from __future__ import annotations

import socket
from pathlib import Path

from db import queries
from db.models import LOST
from db.session import database_key, make_sessionmaker
from engine.launch import queue_runs, reap
from engine.processes import start_runner
from engine.spec import RunSpec
from tests.conftest import NO_CALIBRATION

SPEC = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=1, max_steps_per_epoch=2, **NO_CALIBRATION)


def test_run_1_of_two_databases_writes_two_logs(tmp_path, monkeypatch):
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))
    logs = {}
    for name in ("first", "second"):
        url = f"sqlite:///{tmp_path / name / 'arena.db'}"
        sessions = make_sessionmaker(url)
        (run_id,) = queue_runs(sessions, [SPEC])
        with sessions.begin() as s:  # its runner finds nothing to do and says so in its log, in a second
            queries.request_cancel(s, run_id, "cancelled before it started")
        assert start_runner(sessions, run_id, url).wait(timeout=120) == 2
        with sessions.begin() as s:
            logs[name] = Path(queries.get_run(s, run_id).log_path)
        assert run_id == 1

    assert logs["first"] != logs["second"]
    for name, path in logs.items():
        assert path.parent == tmp_path / "home" / "logs" / database_key(f"sqlite:///{tmp_path / name / 'arena.db'}")
        text = path.read_text()
        assert text.startswith(f"{queries.LOG_HEADER} 1 of sqlite:///{tmp_path / name / 'arena.db'}, started ")
        assert f"run 1 is cancelled, not queued in sqlite:///{tmp_path / name / 'arena.db'}" in text
        assert f"/{'second' if name == 'first' else 'first'}/" not in text


def test_database_keys_name_the_database_and_ignore_its_password():
    first = database_key("postgresql+psycopg://arena:one@db-host/arena")
    assert first == database_key("postgresql+psycopg://arena:two@db-host/arena")  # a new password, the same logs
    assert first.startswith("arena-") and first != database_key("postgresql+psycopg://arena:one@other-host/arena")
    assert database_key("sqlite:////data/lab runs.db").startswith("lab_runs-")


def test_a_lost_run_shows_the_end_of_its_own_last_start_only(arena_db, tmp_path):
    sessions = make_sessionmaker(arena_db)
    log = tmp_path / "run-1.log"
    log.write_text(f"{queries.LOG_HEADER} 1 of another database, started 2026-01-01 00:00:00 UTC on old\n"
                   "Traceback: another run's error\n"
                   f"{queries.LOG_HEADER} 1 of {arena_db}, started 2026-12-06 10:00:00 UTC on here\n"
                   "epoch 1\nKilled\n")
    with sessions.begin() as s:
        run_id = queries.create_run(s, SPEC.to_dict()).id
        queries.claim_run(s, run_id, pid=2 ** 22 + 7, hostname=socket.gethostname())  # no such process
        queries.update_run(s, run_id, log_path=str(log))
    assert reap(sessions) == [run_id]
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
    assert run.status == LOST and run.error.endswith("Last lines of the runner log:\nepoch 1\nKilled\n")
    assert "another run's error" not in run.error
