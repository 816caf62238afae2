"""db/migrate.py and db/migrations: databases of every earlier Arena upgrade in place, rows intact, schema = models."""
from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from db import migrate, queries
from db.models import Base
from db.session import make_sessionmaker
from tests.conftest import REPO_ROOT

# sqlite_master of databases that earlier Arena commits created (see each file's first line):
# frozen here so the test needs neither git history nor the old code.
LEGACY = Path(__file__).parent / "legacy_schemas"
# The newest revision each one has in full (0003 for c54befb and 0a2c959: they hold part of 0004).
MATCHES = {
    "850a401_first": "0001",
    "07b8bbf_nan_points": "0002",
    "5cc286c_scheduling": "0003",
    "c54befb_names_and_layer_stats": "0003",
    "0a2c959_metric_chunks": "0003",
    "d9aa788_covering_index": "0004",
    "lived_850a401_to_d9aa788": "0001",  # every later column, but metric values still NOT NULL
}
WHEN = "2026-11-21 23:30:00.000000"  # as SQLAlchemy stores a DateTime in SQLite


def legacy_db(tmp_path: Path, name: str) -> Path:
    """A database with the schema an earlier Arena created, in WAL mode as every Arena left it."""
    path = tmp_path / f"{name}.db"
    with sqlite3.connect(path) as connection:
        connection.executescript((LEGACY / f"{name}.sql").read_text())
        connection.execute("PRAGMA journal_mode=WAL")
    connection.close()
    return path


def fill(path: Path) -> None:
    """Rows as that Arena's runner would have written them, in every table the database has."""
    connection = sqlite3.connect(path)
    tables = _tables(connection)
    runs = _columns(connection, "runs")
    not_null = {row[1] for row in connection.execute("PRAGMA table_info(metric_points)") if row[3]}
    nan_allowed = "value" not in not_null
    for run_id, framework, status in ((1, "torch", "finished"), (2, "tensorflow", "failed")):
        values = {
            "id": run_id, "created_at": WHEN, "started_at": WHEN, "finished_at": WHEN, "status": status,
            "framework": framework, "model": "mlp", "dataset": "digits", "group_tag": "pair1",
            "spec": json.dumps({"framework": framework, "epochs": 3}), "environment": json.dumps({"python": "3.11"}),
            "summary": json.dumps({"test_accuracy": 0.9}), "error": None if status == "finished" else "boom",
            "epoch": 3, "total_epochs": 3, "step": 30, "total_steps": 30, "hostname": "h", "pid": 100 + run_id,
            "heartbeat_at": WHEN, "log_path": f"/logs/{run_id}.log",
            "placed_device": "cpu", "reason": None if status == "finished" else "error",
            "name": f"run {run_id}", "notes": "kept", "tags": json.dumps(["baseline"]),
        }
        _insert(connection, "runs", {column: value for column, value in values.items() if column in runs})
        for epoch in (1, 2, 3):
            _insert(connection, "metric_points", {"run_id": run_id, "name": "train/loss", "step": epoch * 10,
                                                  "epoch": epoch, "wall_time": 1000.0 + epoch, "value": 1.0 / epoch})
            _insert(connection, "system_samples", {"run_id": run_id, "time": 1000.5 + epoch, "source": "host",
                                                   "name": "rss", "value": 1e8 * epoch, "unit": "bytes"})
        if nan_allowed:  # a diverged loss: SQLite stores the NaN as NULL
            _insert(connection, "metric_points", {"run_id": run_id, "name": "train/loss", "step": 31, "epoch": 3,
                                                  "wall_time": 1004.0, "value": math.nan})
    if "scheduler_lease" in tables:
        _insert(connection, "scheduler_lease", {"name": "scheduler", "holder": "abc", "hostname": "h", "pid": 7,
                                                "acquired_at": WHEN, "expires_at": WHEN})
    if "tensor_stats" in tables:
        _insert(connection, "tensor_stats", {"run_id": 1, "epoch": 1, "step": 10, "layer": "dense_1.kernel",
                                             "kind": "weight", "numel": 64, "norm": 2.5, "histogram": "{}"})
    if "metric_chunks" in tables:
        _insert(connection, "metric_chunks", {"run_id": 1, "name": "step/loss", "first_step": 1, "last_step": 1,
                                              "count": 1, "steps": b"\x01" + bytes(7), "epochs": b"\x01" + bytes(3),
                                              "wall_times": bytes(8), "values": bytes(8)})
    connection.commit()
    connection.close()


def snapshot(path: Path) -> dict[str, tuple[list[str], list[tuple]]]:
    """Every data table's columns and rows, in rowid order (alembic_version is no data)."""
    connection = sqlite3.connect(path)
    tables = {table: _columns(connection, table) for table in _tables(connection) if table != "alembic_version"}
    connection.close()
    return rows_now(path, {table: (columns,) for table, columns in tables.items()})


def rows_now(path: Path, before: dict) -> dict[str, tuple[list[str], list[tuple]]]:
    """The tables and columns of `before` read again, e.g. after an upgrade added columns."""
    connection = sqlite3.connect(path)
    rows = {}
    for table, (columns, *_) in before.items():
        names = ", ".join(f'"{column}"' for column in columns)
        rows[table] = (columns, connection.execute(f'SELECT {names} FROM "{table}" ORDER BY rowid').fetchall())
    connection.close()
    return rows


def schema_differences(url: str) -> list:
    """What Alembic's autogenerate finds between the database and db/models.py (nothing, when equal)."""
    engine = create_engine(url)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    return differences


def revision_of(url: str) -> str | None:
    """The revision stamped in the database at url."""
    engine = create_engine(url)
    with engine.connect() as connection:
        revision = migrate.current_revision(connection)
    engine.dispose()
    return revision


def test_an_empty_database_is_built_by_the_revisions_and_equals_the_models(tmp_path):
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    sessions = make_sessionmaker(url)
    assert revision_of(url) == migrate.head_revision() == "0005"  # (a new revision updates this line)
    assert schema_differences(url) == []
    assert set(inspect(sessions.kw["bind"]).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    assert migrate.upgrade_to_head(sessions.kw["bind"]) == []  # the next start finds nothing to do


@pytest.mark.parametrize("name", sorted(MATCHES))
def test_an_untracked_database_is_recognised_as_the_revision_it_has_in_full(tmp_path, name):
    engine = create_engine(f"sqlite:///{legacy_db(tmp_path, name)}")
    with engine.connect() as connection:
        assert migrate.legacy_revision(connection) == MATCHES[name]
    engine.dispose()


@pytest.mark.parametrize("name", sorted(MATCHES))
def test_a_database_of_every_earlier_arena_upgrades_on_start_with_every_row_intact(tmp_path, name):
    path = legacy_db(tmp_path, name)
    fill(path)
    before = snapshot(path)
    url = f"sqlite:///{path}"

    sessions = make_sessionmaker(url)  # the app's own start path

    assert rows_now(path, before) == before
    assert revision_of(url) == migrate.head_revision()
    assert schema_differences(url) == []
    with sessions.begin() as s:
        runs = queries.list_runs(s)
        assert [(run.id, run.framework, run.status, run.step, run.spec["epochs"]) for run in runs] == [
            (2, "tensorflow", "failed", 30, 3), (1, "torch", "finished", 30, 3)]
        assert all(run.cancel_requested_at is None for run in runs)  # a column no earlier Arena had
        had_names = "name" in before["runs"][0]
        assert [(run.name, run.tags) for run in runs] == (
            [("run 2", ["baseline"]), ("run 1", ["baseline"])] if had_names else [(None, None)] * 2)
        frame = queries.metric_frame(s, [1, 2])
        # Old databases with NOT NULL values could not keep a NaN; the upgrade lets them keep new ones.
        nan_points = 0 if MATCHES[name] == "0001" else 1
        assert len(frame[frame["name"] == "train/loss"]) == 2 * (3 + nan_points)
        loss = frame[(frame["run_id"] == 1) & (frame["name"] == "train/loss")]
        assert loss["value"].iloc[:3].tolist() == [1.0, 0.5, 1.0 / 3]
        assert loss["value"].iloc[3:].isna().all()
        assert len(queries.sample_frame(s, [1, 2])) == 6
        queries.add_metric_points(s, [{"run_id": 1, "name": "train/loss", "step": 40, "epoch": 4,
                                       "wall_time": 1005.0, "value": math.nan}])
    with sessions.begin() as s:
        assert math.isnan(queries.metric_frame(s, [1])["value"].iloc[-1])


def test_an_issue_4_database_keeps_its_placements_failure_reasons_and_lease(tmp_path):
    path = legacy_db(tmp_path, "5cc286c_scheduling")
    fill(path)
    sessions = make_sessionmaker(f"sqlite:///{path}")
    with sessions.begin() as s:
        assert [(run.placed_device, run.reason) for run in queries.list_runs(s)] == [("cpu", "error"), ("cpu", None)]
        lease = queries.lease(s, "scheduler")
        assert (lease.holder, lease.pid, str(lease.expires_at)) == ("abc", 7, "2026-11-21 23:30:00")
        assert queries.tensor_stat_frame(s, [1, 2]).empty  # a table 0004 added


@pytest.mark.parametrize("revision", ["0001", "0002", "0003", "0004"])
def test_a_database_stamped_at_an_earlier_revision_upgrades_from_there(tmp_path, revision):
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    engine = create_engine(url)
    config = migrate.alembic_config()
    with engine.begin() as connection:  # the first revisions only, run for real
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    engine.dispose()
    fill(tmp_path / "arena.db")
    before = snapshot(tmp_path / "arena.db")

    make_sessionmaker(url)

    assert rows_now(tmp_path / "arena.db", before) == before
    assert revision_of(url) == migrate.head_revision()
    assert schema_differences(url) == []


def test_two_processes_opening_an_old_database_at_once_migrate_it_once(tmp_path):
    path = legacy_db(tmp_path, "850a401_first")
    fill(path)
    before = snapshot(path)
    child = (
        "import logging, sys, time\n"
        "from db.session import make_sessionmaker\n"
        "logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')\n"
        "print('ready', flush=True)\n"
        "started = time.monotonic()\n"
        "make_sessionmaker(sys.argv[1])\n"
        "print(time.monotonic() - started, flush=True)\n"
    )
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # hold the write lock until both processes wait for it
    processes = [
        subprocess.Popen([sys.executable, "-c", child, f"sqlite:///{path}"], cwd=REPO_ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        for _ in range(2)
    ]
    try:
        assert [process.stdout.readline().strip() for process in processes] == ["ready", "ready"]
        time.sleep(1.5)  # both now wait on BEGIN IMMEDIATE
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    outputs = [process.communicate(timeout=120) for process in processes]

    assert [process.returncode for process in processes] == [0, 0], outputs
    waited = [float(stdout.strip()) for stdout, _ in outputs]
    assert min(waited) > 1.0, waited  # both were held at the lock, so they really started together
    assert sum(stderr.count("db.migrate: Upgraded") for _, stderr in outputs) == 1, outputs
    assert rows_now(path, before) == before
    assert revision_of(f"sqlite:///{path}") == migrate.head_revision()


def test_a_failing_revision_leaves_the_database_as_it_was_and_names_the_revision(tmp_path, monkeypatch):
    broken = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, broken, ignore=shutil.ignore_patterns("__pycache__"))
    revision = broken / "versions" / "0004_compare.py"
    revision.write_text(revision.read_text() + (
        "\n\n_upgrade = upgrade\n\n\n"
        "def upgrade() -> None:\n"
        "    _upgrade()  # its tables, columns and index are made, then the disk fills\n"
        "    raise OSError('disk full')\n"
    ))
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", broken)
    path = legacy_db(tmp_path, "850a401_first")
    fill(path)
    before = snapshot(path)
    schema = _schema(path)

    with pytest.raises(migrate.MigrationError, match=r"failed in revision 0004 \(Compare .*disk full.*unchanged, "
                                                     r"still at its untracked schema \(that of revision 0001\)"):
        make_sessionmaker(f"sqlite:///{path}")

    # 0002's table copy, 0003's columns and table, 0004's work and the stamp: all rolled back.
    assert _schema(path) == schema
    assert snapshot(path) == before


def test_a_database_a_newer_arena_upgraded_is_refused_unchanged(tmp_path):
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    make_sessionmaker(url).kw["bind"].dispose()
    with sqlite3.connect(tmp_path / "arena.db") as connection:
        connection.execute("UPDATE alembic_version SET version_num = '0099'")
    connection.close()
    with pytest.raises(migrate.MigrationError, match="at revision 0099, which this Arena does not know.*newer Arena"):
        make_sessionmaker(url)
    assert revision_of(url) == "0099"


def test_revisions_downgrade_and_upgrade_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    make_sessionmaker(url).kw["bind"].dispose()
    fill(tmp_path / "arena.db")
    engine = create_engine(url)  # foreign keys off, as SQLite starts: a table copy must not cascade
    config = migrate.alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")  # not to 0001: its NOT NULL would refuse the NaN points
    with engine.connect() as connection:
        assert set(inspect(connection).get_table_names()) == {"alembic_version", "runs", "metric_points",
                                                             "system_samples"}
        assert "placed_device" not in {column["name"] for column in inspect(connection).get_columns("runs")}
        assert connection.exec_driver_sql("SELECT count(*) FROM metric_points").scalar() == 8
        assert migrate.legacy_revision(connection) == "0002"
    make_sessionmaker(url).kw["bind"].dispose()
    assert schema_differences(url) == []

    with engine.begin() as connection:  # every revision's downgrade, on an emptied database
        for table in ("metric_points", "system_samples", "tensor_stats", "metric_chunks", "runs"):
            connection.exec_driver_sql(f"DELETE FROM {table}")
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
        assert inspect(connection).get_table_names() == ["alembic_version"]
    engine.dispose()


def _schema(path: Path) -> list[tuple]:
    connection = sqlite3.connect(path)
    rows = connection.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    connection.close()
    return rows


def _tables(connection: sqlite3.Connection) -> list[str]:
    return [row[0] for row in connection.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]


def _columns(connection: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in connection.execute(f'PRAGMA table_info("{table}")')]


def _insert(connection: sqlite3.Connection, table: str, values: dict) -> None:
    names = ", ".join(f'"{name}"' for name in values)
    marks = ", ".join("?" * len(values))
    connection.execute(f'INSERT INTO "{table}" ({names}) VALUES ({marks})', list(values.values()))
