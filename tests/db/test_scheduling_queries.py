"""db/queries.py for the scheduler: the lease, placement, claiming, cancelling, and old databases upgraded."""
import sqlite3
import threading
from datetime import timedelta

from db import queries
from db.models import CANCELLED, FAILED, QUEUED, RUNNING, SchedulerLease
from db.session import make_sessionmaker
from engine.spec import RunSpec

SPEC = RunSpec(framework="torch", model="mlp", dataset="digits", epochs=3).to_dict()
TTL = timedelta(seconds=10)


def test_lease_is_held_by_one_holder_until_it_expires_or_is_released(db_url):
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        assert queries.acquire_lease(s, "scheduler", "a", "host", 1, TTL)
    with sessions.begin() as s:
        assert not queries.acquire_lease(s, "scheduler", "b", "host", 2, TTL)
        assert queries.acquire_lease(s, "scheduler", "a", "host", 1, TTL)  # renewal
        acquired = queries.lease(s, "scheduler").acquired_at
    with sessions.begin() as s:
        queries.acquire_lease(s, "scheduler", "a", "host", 1, TTL)
        assert queries.lease(s, "scheduler").acquired_at == acquired  # a renewal keeps the start
        s.query(SchedulerLease).update({"expires_at": queries.utcnow() - timedelta(seconds=1)})
    with sessions.begin() as s:
        assert queries.acquire_lease(s, "scheduler", "b", "host", 2, TTL)  # a crashed: b takes over
        assert queries.lease(s, "scheduler").holder == "b"
    with sessions.begin() as s:
        queries.release_lease(s, "scheduler", "a")  # not a's any more: nothing happens
        assert queries.lease(s, "scheduler").holder == "b"
        queries.release_lease(s, "scheduler", "b")
        assert queries.lease(s, "scheduler") is None
    with sessions.begin() as s:
        assert queries.acquire_lease(s, "scheduler", "c", "host", 3, TTL)


def test_racing_holders_never_both_get_the_lease(db_url):
    winners: list[str] = []
    barrier = threading.Barrier(4, timeout=60)

    def contend(holder):
        sessions = make_sessionmaker(db_url)  # one engine per "process"
        barrier.wait()
        for _ in range(20):
            with sessions.begin() as s:
                # A lease that cannot expire during the test: under load 20 rounds may outlast TTL, and then
                # a second winner would be the lease working, not failing.
                if queries.acquire_lease(s, "scheduler", holder, "host", 1, timedelta(hours=1)):
                    winners.append(holder)

    threads = [threading.Thread(target=contend, args=(f"h{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(winners)) == 1 and len(winners) == 20


def test_a_run_is_placed_once_and_claimed_once(db_url):
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        a, b = (queries.create_run(s, SPEC).id for _ in range(2))
    with sessions.begin() as s:
        assert [r.id for r in queries.unplaced_queue(s)] == [a, b]
        assert queries.place_run(s, a, "cuda:1", "host")
        assert not queries.place_run(s, a, "cuda:0", "host")  # already placed
        assert [r.id for r in queries.unplaced_queue(s)] == [b]
        assert [(r.id, r.placed_device) for r in queries.placed_active_runs(s, "host")] == [(a, "cuda:1")]
        assert queries.placed_active_runs(s, "elsewhere") == []
    with sessions.begin() as s:
        assert queries.claim_run(s, a, 11, "host")
        assert not queries.claim_run(s, a, 12, "host")
        assert queries.get_run(s, a).status == RUNNING and queries.get_run(s, a).pid == 11


def test_a_placement_that_never_got_a_process_goes_back_to_the_queue(db_url):
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        a, b = (queries.create_run(s, SPEC).id for _ in range(2))
        queries.place_run(s, a, "cpu", "host")
        queries.place_run(s, b, "cpu", "host")
        queries.set_launch_info(s, b, 99, "host", "")
    with sessions.begin() as s:
        assert queries.unplace_unstarted(s, timedelta(seconds=60)) == []  # too recent to judge
        assert queries.unplace_unstarted(s, timedelta(seconds=-1)) == [a]  # b has a process
        assert queries.get_run(s, a).placed_device is None and queries.get_run(s, b).placed_device == "cpu"


def test_cancel_waiting_only_takes_runs_without_a_process(db_url):
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        a, b = (queries.create_run(s, SPEC).id for _ in range(2))
        queries.set_launch_info(s, b, 99, "host", "")
    with sessions.begin() as s:
        assert queries.cancel_waiting(s, a) and not queries.cancel_waiting(s, b)
        run = queries.get_run(s, a)
        assert (run.status, run.reason, run.error) == (FAILED, "error", "stopped before it started")
        assert queries.get_run(s, b).status == QUEUED


def test_a_cancel_request_ends_a_queued_run_at_once_and_a_running_one_through_its_runner_once(db_url):
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        waiting, running = (queries.create_run(s, SPEC).id for _ in range(2))
        queries.claim_run(s, running, 11, "host")
    with sessions.begin() as s:
        assert queries.request_cancel(s, waiting, "cancelled by ann") == QUEUED
        assert queries.request_cancel(s, running, "cancelled by ann") == RUNNING
        assert queries.request_cancel(s, running, "cancelled by bob") == RUNNING  # the first request's text stays
        assert queries.request_cancel(s, 999, "cancelled by ann") is None
    with sessions.begin() as s:
        assert queries.get_run(s, waiting).status == CANCELLED
        assert queries.get_run(s, running).status == RUNNING and queries.cancel_requested(s, running) is not None
        assert queries.end_cancelled(s, running, {"recorded": {}})
        assert not queries.end_cancelled(s, running)  # its runner and its canceller may both try
    with sessions.begin() as s:
        run = queries.get_run(s, running)
        assert (run.status, run.error, run.reason) == (CANCELLED, "cancelled by ann", None)
        assert run.summary == {"recorded": {}}


def test_fail_run_records_reason_and_status(db_url):
    sessions = make_sessionmaker(db_url)
    with sessions.begin() as s:
        a = queries.create_run(s, SPEC).id
        queries.fail_run(s, a, "CUDA out of memory", {"peak_bytes": {"torch_allocated": 5.0}},
                         reason="out_of_memory")
        run = queries.get_run(s, a)
        assert (run.status, run.reason, run.summary["peak_bytes"]) == (FAILED, "out_of_memory", {"torch_allocated": 5.0})


def test_an_older_database_gains_the_new_columns_and_keeps_its_rows(tmp_path):
    # SQLite only: databases from before revision tracking are SQLite files (see test_migrations.py).
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as old:  # the runs table as the first release wrote it
        old.execute("CREATE TABLE runs (id INTEGER PRIMARY KEY, created_at DATETIME, started_at DATETIME, "
                    "finished_at DATETIME, status VARCHAR(16), framework VARCHAR(32), model VARCHAR(64), "
                    "dataset VARCHAR(64), spec JSON, environment JSON, summary JSON, error TEXT, epoch INTEGER, "
                    "total_epochs INTEGER, step INTEGER, hostname VARCHAR(255), pid INTEGER, heartbeat_at DATETIME)")
        old.execute("INSERT INTO runs (created_at, status, framework, model, dataset, spec, epoch, total_epochs, "
                    "step) VALUES ('2026-01-01 00:00:00', 'finished', 'torch', 'mlp', 'digits', '{}', 3, 3, 30)")
    sessions = make_sessionmaker(f"sqlite:///{path}")
    with sessions.begin() as s:
        run = queries.get_run(s, 1)
        assert (run.status, run.step, run.placed_device, run.reason, run.group_tag) == ("finished", 30, None, None, None)
        queries.update_run(s, 1, placed_device="cpu")
    make_sessionmaker(f"sqlite:///{path}")  # a second start finds nothing to add
    with sessions.begin() as s:
        assert queries.get_run(s, 1).placed_device == "cpu"
