"""A database that fails under a runner: read-only, full, unreachable. A clear error, no damaged row.

Real faults, made as root: an immutable file (chattr +i; root ignores chmod), a tmpfs remounted
read-only, a tmpfs of a few MB filled up, a directory removed, a closed port. Each is skipped with
the reason when this machine does not allow it.
"""
from __future__ import annotations

import importlib.util
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import text

from db import queries
from db.models import FAILED, FINISHED, LOST, QUEUED
from db.session import make_sessionmaker, run_log_path
from engine import child_env
from engine.launch import queue_runs, reap
from engine.processes import start_runner
from engine.recorder import Recorder, RecorderError
from engine.spec import RunSpec
from tests.conftest import NO_CALIBRATION, REPO_ROOT
from tests.reliability import (KINDS, copy_database, file_bytes_unopened, integrity, recorded, row_digests,
                               stored_points)

TINY = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=1, max_steps_per_epoch=5, **NO_CALIBRATION)
# Trains for minutes: the disk fills long before it would end.
ENDLESS = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=400)
RUNNER_TIMEOUT_S = 240  # a runner still going by then hangs: the test fails rather than wait on
FREE_LEFT_BYTES = 160 * 1024  # what the ballast leaves on the small disk: seconds of a run's points


# A database with one finished run, made once by a real runner; each test works on a copy ----------
@pytest.fixture(scope="module")
def finished_db(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("seed")
    path = home / "arena.db"
    url = f"sqlite:///{path}"
    sessions = make_sessionmaker(url)
    (run_id,) = queue_runs(sessions, [TINY])
    result = runner(run_id, url, {"ARENA_HOME": str(home)})
    with sessions.begin() as s:
        run = queries.get_run(s, run_id)
        assert (result.returncode, run.status) == (0, FINISHED), result.stderr
    sessions.kw["bind"].dispose()  # the last connection checkpoints: one self-contained file to copy
    return path


def copy_with_queued_run(seed: Path, path: Path, spec: RunSpec = TINY) -> tuple[str, int]:
    """The seed database at path with one more run queued; (URL, the queued run's id). No connection stays open."""
    path.parent.mkdir(parents=True, exist_ok=True)
    copy_database(seed, path)
    url = f"sqlite:///{path}"
    sessions = make_sessionmaker(url)
    (run_id,) = queue_runs(sessions, [spec])
    sessions.kw["bind"].dispose()
    return url, run_id


def runner(run_id: int, url: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m engine.runner RUN_ID --db URL` as the scheduler starts it, waited for."""
    return subprocess.run([sys.executable, "-m", "engine.runner", str(run_id), "--db", url], cwd=REPO_ROOT,
                          env={**child_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=RUNNER_TIMEOUT_S)


def sh(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, text=True)


@contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at path (root only); skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN): {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def run_of(url: str, run_id: int):
    with make_sessionmaker(url).begin() as s:
        return queries.get_run(s, run_id)


def one_line_error(stderr: str) -> None:
    """A fault the runner understands is a sentence, not a Python traceback."""
    assert "Traceback" not in stderr, stderr


# The recorder: one transaction per flush, rows kept on failure, a stop when nothing gets through -----
@pytest.fixture
def recorder_db(arena_db):
    sessions = make_sessionmaker(arena_db)
    with sessions.begin() as s:
        run_id = queries.create_run(s, TINY.to_dict(), total_steps=5).id
    return sessions, run_id


def feed(recorder: Recorder, steps: range) -> None:
    """What the loop and the monitor hand the recorder for these steps."""
    recorder.step_metrics("train_loss", [(step, 1, 1.0 / step, 1000.0 + step) for step in steps])
    recorder.step_metrics("step_time_ms", [(step, 1, 2.0, 1000.0 + step) for step in steps])
    recorder.samples([(1000.0 + step, "host", "rss", 1e8, "bytes") for step in steps])
    recorder.tensor_stats([dict(epoch=1, step=steps[-1], layer="dense.kernel", kind="weight", numel=4, norm=1.0,
                                mean=0.0, std=1.0, min=-1.0, max=1.0, histogram=None)])
    recorder.epoch_metrics(1, steps[-1], {"train_loss": 0.5, "test_accuracy": 0.9})


def refuse_tensor_stats(sessions, on: bool) -> None:
    """A trigger that fails the batch's last insert: what was inserted before it must not survive."""
    with sessions.begin() as s:
        s.execute(text("DROP TRIGGER IF EXISTS refuse"))
        if on:
            s.execute(text("CREATE TRIGGER refuse BEFORE INSERT ON tensor_stats "
                           "BEGIN SELECT RAISE(ABORT, 'no room for tensor stats'); END"))


def test_a_failed_flush_writes_nothing_keeps_its_rows_and_the_next_writes_each_once(recorder_db, arena_db):
    sessions, run_id = recorder_db
    with sessions.begin() as s:
        heartbeat = queries.get_run(s, run_id).heartbeat_at
    recorder = Recorder(sessions, run_id)
    refuse_tensor_stats(sessions, on=True)
    feed(recorder, range(1, 51))  # its tensor_stats() writes at once, fails and keeps every row
    recorder.progress(0, 50)
    with pytest.raises(RecorderError, match="no room for tensor stats") as failure:
        recorder.flush()
    assert arena_db.removeprefix("sqlite:///") in str(failure.value) and "153 points wait" in str(failure.value)
    with sessions.begin() as s:  # the metric chunks and samples inserted before the trigger fired are gone too
        assert stored_points(s, run_id) == dict.fromkeys(KINDS, 0)
        run = queries.get_run(s, run_id)
        assert (run.step, run.heartbeat_at) == (0, heartbeat)
    counts = recorder.counts()
    assert counts["metric_points"] == {"produced": 102, "stored": 0} and counts["failed_flushes"] == 2

    refuse_tensor_stats(sessions, on=False)
    feed(recorder, range(51, 61))  # tensor_stats() writes everything so far but the epoch metrics after it
    recorder.flush()
    counts = recorder.counts()
    with sessions.begin() as s:
        stored = stored_points(s, run_id)
        steps = queries.metric_frame(s, [run_id], ["step/train_loss"])["step"].tolist()
    assert steps == list(range(1, 61))  # each step once, in order
    assert stored == {kind: counts[kind]["produced"] for kind in KINDS} == {kind: counts[kind]["stored"]
                                                                           for kind in KINDS}
    assert stored == {"metric_points": 124, "samples": 60, "tensor_stats": 2}


def test_layer_statistics_are_written_by_the_call_not_left_to_the_flush_thread(recorder_db):
    """The loop hands them over between epochs: their encoding and writing must not fall into the next epoch."""
    sessions, run_id = recorder_db
    recorder = Recorder(sessions, run_id, flush_interval_s=3600).start()  # its thread never gets to flush
    try:
        feed(recorder, range(1, 11))
        with sessions.begin() as s:
            stored = stored_points(s, run_id)
        # Everything handed over before them went in the same transaction; the epoch metrics after them wait.
        assert stored == {"metric_points": 20, "samples": 10, "tensor_stats": 1}
        assert recorder.counts()["tensor_stats"] == {"produced": 1, "stored": 1}
    finally:
        recorder.close()
    with sessions.begin() as s:
        assert stored_points(s, run_id) == {"metric_points": 22, "samples": 10, "tensor_stats": 1}


def test_a_database_that_takes_nothing_stops_the_run_with_the_reason(recorder_db, arena_db, capsys):
    sessions, run_id = recorder_db
    refuse_tensor_stats(sessions, on=True)
    recorder = Recorder(sessions, run_id, flush_interval_s=0.05, give_up_after_s=0.5).start()
    feed(recorder, range(1, 11))
    deadline = time.monotonic() + 30
    with pytest.raises(RecorderError, match=r"nothing could be written for \d+ s, so the run stops") as stop:
        while time.monotonic() < deadline:  # the training loop reports progress every drain
            recorder.progress(1, 10)
            time.sleep(0.05)
    assert "no room for tensor stats" in str(stop.value) and arena_db.removeprefix("sqlite:///") in str(stop.value)
    with pytest.raises(RecorderError):
        recorder.close()
    assert "arena recorder: run" in capsys.readouterr().err  # the first failure is in the runner's log at once
    with sessions.begin() as s:
        assert stored_points(s, run_id) == dict.fromkeys(KINDS, 0)
    assert recorder.counts()["failed_flushes"] >= 2


# Read-only database ------------------------------------------------------------------------------
@contextmanager
def immutable_file(path: Path) -> Iterator[None]:
    """chattr +i: not even root may write the file (chmod 0444 stops everyone but root)."""
    made = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"this file system takes no immutable flag (chattr +i): {made.stderr.strip()}")
    try:
        yield
    finally:
        sh("chattr", "-i", str(path))


@contextmanager
def read_only_file_system(path: Path) -> Iterator[None]:
    """The tmpfs holding path remounted read-only: SQLite can create neither -wal nor -shm beside it."""
    sh("mount", "-o", "remount,ro", str(path.parent))
    try:
        yield
    finally:
        sh("mount", "-o", "remount,rw", str(path.parent))


@pytest.mark.parametrize("how", ["immutable file", "read-only file system"])
def test_a_runner_on_a_read_only_database_says_so_and_changes_no_row(finished_db, tmp_path, how):
    folder = tmp_path / "db"
    with small_disk(folder, "16m") if how == "read-only file system" else nullcontext():
        path = folder / "arena.db"
        url, run_id = copy_with_queued_run(finished_db, path)
        before, file_bytes = row_digests(path), file_bytes_unopened(path)
        with immutable_file(path) if how == "immutable file" else read_only_file_system(path):
            result = runner(run_id, url, {"ARENA_HOME": str(tmp_path / "home")})
        assert result.returncode != 0
        one_line_error(result.stderr)
        assert str(path) in result.stderr, result.stderr
        assert "read-only" in result.stderr or "permission" in result.stderr, result.stderr
        assert row_digests(path) == before and file_bytes_unopened(path) == file_bytes
        assert run_of(url, run_id).status == QUEUED  # it can run once the file is writable again


# Full disk ---------------------------------------------------------------------------------------
def test_a_full_disk_ends_the_run_saying_so_and_keeps_every_row_written_before(finished_db, tmp_path, monkeypatch):
    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))  # the runner's log is on the big disk
    with small_disk(tmp_path / "disk", "4m") as disk:
        path = disk / "arena.db"
        url, run_id = copy_with_queued_run(finished_db, path, ENDLESS)
        earlier = row_digests(path, run_id=1)
        sessions = make_sessionmaker(url)
        runner_process = start_runner(sessions, run_id, url)
        wait_for_points(sessions, run_id)  # rows of its own written before, to find intact after
        with open(disk / "ballast", "wb") as ballast:  # leave the run a few seconds of room
            ballast.write(b"\0" * (shutil.disk_usage(disk).free - FREE_LEFT_BYTES))
        try:
            code = runner_process.wait(timeout=RUNNER_TIMEOUT_S)
        finally:
            runner_process.kill()
        log = run_log_path(url, run_id).read_text()
        assert code != 0 and "the disk is full" in log and str(path) in log, log[-3000:]

        (disk / "ballast").unlink()
        assert integrity(path) == "ok"
        assert row_digests(path, run_id=1) == earlier
        reap(sessions)  # where the runner could not store its end on the full disk, its log says why
        with sessions.begin() as s:
            run = queries.get_run(s, run_id)
            steps = queries.metric_frame(s, [run_id], ["step/train_loss"])["step"].tolist()
            stored = stored_points(s, run_id)
        assert run.status in (FAILED, LOST) and "the disk is full" in run.error, (run.status, run.error)
        assert steps and steps == list(range(1, len(steps) + 1)), "whole flushes only: no gap, no step twice"
        if run.summary:  # the runner stored its end itself: its count of what got through is the database's
            assert {kind: recorded(run)[kind]["stored"] for kind in KINDS} == stored
        sessions.kw["bind"].dispose()


def wait_for_points(sessions, run_id: int) -> None:
    deadline = time.monotonic() + RUNNER_TIMEOUT_S
    while time.monotonic() < deadline:
        with sessions.begin() as s:
            if stored_points(s, run_id)["metric_points"] > 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} stored no point in {RUNNER_TIMEOUT_S} s")


# Unreachable database ----------------------------------------------------------------------------
def test_a_runner_whose_database_directory_is_gone_says_so_and_creates_nothing(finished_db, tmp_path):
    path = tmp_path / "gone" / "arena.db"
    url, run_id = copy_with_queued_run(finished_db, path)
    shutil.rmtree(path.parent)
    result = runner(run_id, url, {"ARENA_HOME": str(tmp_path / "home")})
    assert result.returncode != 0
    one_line_error(result.stderr)
    assert str(path) in result.stderr and "does not exist" in result.stderr, result.stderr
    assert not path.parent.exists()  # no new, empty database where the old one was


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


def test_a_runner_whose_server_cannot_be_reached_names_it_without_the_password_and_ends(tmp_path):
    url = f"postgresql+psycopg://arena:s3cret-pw@127.0.0.1:{closed_port()}/arena"
    result = runner(1, url, {"ARENA_HOME": str(tmp_path / "home")})  # within RUNNER_TIMEOUT_S, or it hangs
    assert result.returncode != 0
    one_line_error(result.stderr)
    assert "s3cret-pw" not in result.stderr
    assert url.replace("s3cret-pw", "***") in result.stderr, result.stderr
    if importlib.util.find_spec("psycopg") is None:
        assert "psycopg" in result.stderr and "not installed" in result.stderr, result.stderr
    else:
        assert "refused" in result.stderr.lower(), result.stderr
