"""db/migrate/ and db/migrations: databases of every earlier Arena upgrade in place, rows intact, schema = models.

The revisions run on both backends (db_url: a SQLite file and a PostgreSQL database). The
databases from before revision tracking are frozen SQLite files (legacy_schemas/), and what
their tests check is SQLite's (sqlite_master, rowid order, its write lock): those stay SQLite-only.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, create_engine, event, insert, inspect, select, text
from sqlalchemy.engine import make_url

from db import migrate, queries, run_results, run_table, session
from db.models import Base, Run
from db.session import make_sessionmaker
from engine.spec import RunSpec
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


def shape(url: str) -> dict[str, dict]:
    """Every table's columns (Python type, length, nullable, key), indexes and foreign keys, as reflected."""
    engine = create_engine(url)
    inspector = inspect(engine)
    tables = {}
    for table in inspector.get_table_names():
        primary = set(inspector.get_pk_constraint(table)["constrained_columns"])
        tables[table] = {
            "columns": {column["name"]: (column["type"].python_type, getattr(column["type"], "length", None),
                                         column["nullable"], column["name"] in primary)
                        for column in inspector.get_columns(table)},
            "indexes": sorted((index["name"], tuple(index["column_names"]), bool(index["unique"]))
                              for index in inspector.get_indexes(table)),
            "foreign_keys": sorted((tuple(key["constrained_columns"]), key["referred_table"],
                                    tuple(key["referred_columns"]), (key.get("options") or {}).get("ondelete"))
                                   for key in inspector.get_foreign_keys(table)),
        }
    engine.dispose()
    return tables


def test_an_empty_database_is_built_by_the_revisions_and_equals_the_models(db_url):
    sessions = make_sessionmaker(db_url)
    assert revision_of(db_url) == migrate.head_revision() == "0013"  # (a new revision updates this line)
    assert migrate.head_in_files() == migrate.head_revision()  # the Alembic-free head a start compares with
    assert schema_differences(db_url) == []
    assert set(inspect(sessions.kw["bind"]).get_table_names()) == set(Base.metadata.tables) | {"alembic_version"}
    assert migrate.upgrade_to_head(sessions.kw["bind"]) == []  # the next start finds nothing to do
    sessions.kw["bind"].dispose()


def test_postgresql_gets_the_same_tables_columns_indexes_and_keys_as_sqlite(postgres_url, tmp_path):
    sqlite_url = f"sqlite:///{tmp_path / 'arena.db'}"
    for url in (sqlite_url, postgres_url):
        make_sessionmaker(url).kw["bind"].dispose()
    built = shape(postgres_url)
    assert built == shape(sqlite_url)
    assert set(built) == set(Base.metadata.tables) | {"alembic_version"}
    for name, table in Base.metadata.tables.items():
        assert list(built[name]["columns"]) == [column.name for column in table.columns]  # in the models' order


def test_upgrading_a_database_at_head_again_changes_nothing(db_url):
    make_sessionmaker(db_url).kw["bind"].dispose()
    before = shape(db_url)
    engine = create_engine(db_url)
    config = migrate.alembic_config()
    with engine.begin() as connection:  # Alembic itself, past upgrade_to_head's early return
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    assert migrate.upgrade_to_head(engine) == []
    engine.dispose()
    make_sessionmaker(db_url).kw["bind"].dispose()  # and a second start
    assert shape(db_url) == before
    assert revision_of(db_url) == migrate.head_revision()


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


@pytest.mark.parametrize("name", sorted(MATCHES))
def test_a_database_of_every_earlier_arena_shows_each_runs_results_from_its_points(tmp_path, name):
    """Revision 0008 fills in the results the run rows keep (db/run_results.py) from the points stored."""
    path = legacy_db(tmp_path, name)
    fill(path)
    connection = sqlite3.connect(path)
    nan_allowed = MATCHES[name] != "0001"  # the NOT NULL of 850a401's metric values refuses a NaN (NULL)
    for run_id, metric, values in ((1, "test_accuracy", [0.5, 0.75]), (1, "samples_per_s", [10.0, 30.0, 20.0]),
                                   (2, "train_loss", [2.0, math.nan] if nan_allowed else [2.0]),
                                   (2, "phi_estimate", [1.1])):
        for epoch, value in enumerate(values, start=1):
            _insert(connection, "metric_points", {"run_id": run_id, "name": metric, "step": epoch * 10,
                                                  "epoch": epoch, "wall_time": 1000.0 + epoch, "value": value})
    connection.commit()
    connection.close()

    sessions = make_sessionmaker(f"sqlite:///{path}")

    with sessions.begin() as s:
        frame = run_table.runs_overview(s).set_index("id")
    assert (frame.loc[1, "test_accuracy"], frame.loc[1, "samples_per_s"], frame.loc[1, "train_loss"]) == (0.75, 20.0,
                                                                                                          None)
    loss = frame.loc[2, "train_loss"]
    assert math.isnan(loss) if nan_allowed else loss == 2.0  # NaN: recorded, not finite; not None
    assert (frame.loc[2, "phi_estimate"], frame.loc[2, "phi_true"]) == (1.1, None)
    assert math.isnan(frame.loc[2, "samples_per_s"])
    sessions.kw["bind"].dispose()


def at_revision(db_url: str, revision: str):
    """A new database built up to `revision` only: (its engine, its tables as they are then)."""
    engine = create_engine(db_url)
    config = migrate.alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    tables = MetaData()
    tables.reflect(engine)
    return engine, tables.tables


def test_the_upgrade_to_0008_fills_in_results_as_the_writer_computes_them(db_url):
    engine, tables = at_revision(db_url, "0007")
    runs, points = tables["runs"], tables["metric_points"]
    with engine.begin() as connection:
        run = insert(runs).values(created_at=datetime(2026, 12, 1), status="finished", framework="torch", model="mlp",
                                  dataset="digits", spec={"framework": "torch", "epochs": 4}, epoch=4, total_epochs=4,
                                  step=40).returning(runs.c.id)
        ids = [connection.execute(run).scalar_one() for _ in range(3)]
        trained, diverged, untouched = ids
        recorded = {  # as each run wrote them, in order (a per-step point of the days before chunks among them)
            trained: [("train_loss", 1.0), ("train_loss", 0.5), ("test_accuracy", 0.6), ("test_accuracy", 0.8),
                      ("samples_per_s", 100.0), ("samples_per_s", math.inf), ("samples_per_s", 300.0),
                      ("samples_per_s", 200.0), ("step/train_loss", 9.0), ("test_loss", 0.1)],
            diverged: [("train_loss", 1.0), ("train_loss", math.nan), ("samples_per_s", math.nan),
                       ("phi_estimate", 1.2), ("phi_true", 1.5)],
        }
        connection.execute(insert(points), [
            dict(run_id=run_id, name=metric, step=10 * index, epoch=index, wall_time=1000.0 + index, value=value)
            for run_id, written in recorded.items() for index, (metric, value) in enumerate(written, start=1)])
    engine.dispose()

    sessions = make_sessionmaker(db_url)  # upgrades to head

    with sessions.begin() as s:
        frame = run_table.runs_overview(s).set_index("id")
        backfilled = result_columns(s, ids)
        run_results.refresh(s, ids)  # what the writer computes from the same points
        assert result_columns(s, ids) == backfilled
    assert frame.loc[trained, ["test_accuracy", "phi_estimate", "phi_true", "train_loss", "samples_per_s"]
                     ].tolist() == [0.8, None, None, 0.5, 200.0]  # the median skips inf
    assert math.isnan(frame.loc[diverged, "train_loss"]) and frame.loc[diverged, "test_accuracy"] is None
    assert (frame.loc[diverged, "phi_estimate"], frame.loc[diverged, "phi_true"]) == (1.2, 1.5)
    assert math.isnan(frame.loc[diverged, "samples_per_s"])
    assert all(frame.loc[untouched, name] is None for name in run_table.LAST_METRICS)
    with sessions.begin() as s:  # and the next epoch's points move them on
        queries.add_metric_points(s, [dict(run_id=diverged, name=name, step=99, epoch=5, wall_time=2000.0, value=3.0)
                                      for name in ("train_loss", "samples_per_s")])
    with sessions.begin() as s:
        row = run_table.runs_overview(s).set_index("id").loc[diverged]
    assert (row["train_loss"], row["samples_per_s"], row["phi_true"]) == (3.0, 3.0, 1.5)
    sessions.kw["bind"].dispose()


def test_the_upgrade_to_0009_copies_mode_precision_and_seed_out_of_each_spec(db_url):
    engine, tables = at_revision(db_url, "0008")
    runs = tables["runs"]
    specs = [RunSpec("tensorflow", "cnn", "digits", mode="xla", precision="mixed", seed=7).to_dict(),
             {"framework": "torch", "model": "mlp", "dataset": "digits", "epochs": 2}]  # an old spec: no mode
    with engine.begin() as connection:
        ids = [connection.execute(insert(runs).values(
            created_at=datetime(2026, 12, 1), status="finished", framework=spec["framework"], model=spec["model"],
            dataset=spec["dataset"], spec=spec, epoch=2, total_epochs=2, step=0,
            summary={"mode": "eager"}).returning(runs.c.id)).scalar_one() for spec in specs]
    engine.dispose()

    sessions = make_sessionmaker(db_url)  # upgrades to head
    with sessions.begin() as s:
        stored = s.execute(select(Run.id, Run.mode, Run.precision, Run.seed).where(Run.id.in_(ids))
                           .order_by(Run.id)).tuples().all()
        frame = run_table.runs_overview(s).set_index("id")
        new_id = queries.create_run(s, RunSpec("torch", "mlp", "digits", seed=3).to_dict()).id
        written = s.execute(select(Run.mode, Run.precision, Run.seed).where(Run.id == new_id)).one()
    assert stored == [(ids[0], "xla", "mixed", 7), (ids[1], None, None, None)]
    assert frame.loc[ids[0], ["spec_mode", "precision", "seed"]].tolist() == ["xla", "mixed", 7]
    assert frame.loc[ids[1], "summary_mode"] == "eager"  # no mode asked for: the one it reported
    assert tuple(written) == ("eager", "fp32", 3)  # a new run gets its copies when it is queued
    sessions.kw["bind"].dispose()


def test_a_run_row_without_the_copies_is_read_from_its_spec(arena_db):
    """A row written by an Arena from before 0009 (a machine not yet upgraded) still shows its spec's fields."""
    sessions = make_sessionmaker(arena_db)
    with sessions.begin() as s:
        run_id = queries.create_run(s, RunSpec("tensorflow", "mlp", "digits", mode="eager", seed=5).to_dict()).id
        queries.update_run(s, run_id, mode=None, precision=None, seed=None)
        frame = run_table.runs_overview(s).set_index("id")
    assert frame.loc[run_id, ["spec_mode", "precision", "seed"]].tolist() == ["eager", "fp32", 5]


def result_columns(s, run_ids: list[int]) -> list[tuple]:
    """The runs' result columns as stored, NaN spelt "NaN" (PostgreSQL keeps one; NaN is not equal to itself)."""
    rows = s.execute(select(Run.id, *(getattr(Run, column) for column in run_results.RESULT_COLUMNS))
                     .where(Run.id.in_(run_ids)).order_by(Run.id)).all()
    return [tuple("NaN" if isinstance(value, float) and math.isnan(value) else value for value in row) for row in rows]


def test_an_issue_4_database_keeps_its_placements_failure_reasons_and_lease(tmp_path):
    path = legacy_db(tmp_path, "5cc286c_scheduling")
    fill(path)
    sessions = make_sessionmaker(f"sqlite:///{path}")
    with sessions.begin() as s:
        assert [(run.placed_device, run.reason) for run in queries.list_runs(s)] == [("cpu", "error"), ("cpu", None)]
        lease = queries.lease(s, "scheduler")
        assert (lease.holder, lease.pid, str(lease.expires_at)) == ("abc", 7, "2026-11-21 23:30:00")
        assert queries.tensor_stat_frame(s, [1, 2]).empty  # a table 0004 added


def test_a_new_sqlite_database_opens_while_another_process_migrates_it(tmp_path):
    # SQLite only: the journal mode is SQLite's. Found as a "database is locked" when four engines
    # opened one new file at once: the migration wrote the still-empty file in rollback-journal mode.
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    migrating = migrate._migration_engine(create_engine(url))
    with migrating.connect() as connection, connection.begin():  # BEGIN IMMEDIATE, as a migration holds it
        connection.execute(text("CREATE TABLE being_migrated (id INTEGER)"))
        opener = create_engine(url, connect_args={"timeout": 5})
        event.listen(opener, "connect", session._sqlite_pragmas)
        with opener.connect() as other:  # what make_engine does first; failed at once before
            assert other.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        opener.dispose()
    migrating.dispose()


def test_non_finite_numbers_older_versions_wrote_into_sqlite_json_become_null_and_the_runs_table_reads(tmp_path):
    url = f"sqlite:///{tmp_path / 'arena.db'}"
    engine = create_engine(url)
    config = migrate.alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "0006")
        spec = json.dumps(RunSpec(framework="torch", model="mlp", dataset="digits").to_dict())
        connection.execute(text(
            "INSERT INTO runs (id, status, framework, model, dataset, spec, summary, created_at, total_epochs, epoch, "
            "step, total_steps) VALUES (1, 'diverged', 'torch', 'mlp', 'digits', :spec, :summary, "
            "'2026-11-30 10:00:00', 1, 1, 5, 5)"),
            {"spec": spec, "summary": '{"train_loss": NaN, "peak": Infinity, "epoch_time_s": 1.5, "x": "NaN"}'})
    engine.dispose()

    sessions = make_sessionmaker(url)  # upgrades to head

    with sessions.begin() as s:
        assert queries.get_run(s, 1).summary == {"train_loss": None, "peak": None, "epoch_time_s": 1.5, "x": "NaN"}
        overview = run_table.runs_overview(s)
    assert overview["id"].tolist() == [1]


@pytest.mark.parametrize("revision", ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008"])
def test_a_database_stamped_at_an_earlier_revision_upgrades_from_there(db_url, revision):
    engine = create_engine(db_url)
    config = migrate.alembic_config()
    with engine.begin() as connection:  # the first revisions only, run for real
        config.attributes["connection"] = connection
        command.upgrade(config, revision)
    engine.dispose()
    fill_rows(db_url)
    before = table_rows(db_url)

    make_sessionmaker(db_url).kw["bind"].dispose()

    assert table_rows(db_url, before) == before
    assert revision_of(db_url) == migrate.head_revision()
    assert schema_differences(db_url) == []


def test_postgresql_point_tables_count_row_ids_past_2_to_the_31(postgres_url):
    sessions = make_sessionmaker(postgres_url)  # built by every revision: 0006 widened 0001's and 0004's ids
    with sessions.begin() as s:
        for table in ("metric_points", "metric_chunks", "system_samples", "tensor_stats"):
            s.execute(text("SELECT setval(pg_get_serial_sequence(:table, 'id'), :id)"), {"table": table, "id": 2**31})
        run_id = queries.create_run(s, {"framework": "torch", "model": "mlp", "dataset": "digits", "epochs": 1}).id
        queries.add_metric_points(s, [dict(run_id=run_id, name=name, step=1, epoch=1, wall_time=0.0, value=1.0)
                                      for name in ("test_loss", "step/train_loss")])
        queries.add_system_samples(s, [dict(run_id=run_id, time=0.0, source="host", name="rss", value=1.0, unit="B")])
        queries.add_tensor_stats(s, [dict(run_id=run_id, epoch=1, step=1, layer="dense.kernel", kind="weight",
                                          numel=4)])
    with sessions.begin() as s:
        ids = {table: s.execute(text(f"SELECT id FROM {table}")).scalar_one()
               for table in ("metric_points", "metric_chunks", "system_samples", "tensor_stats")}
        assert len(queries.metric_frame(s, [run_id])) == 2
    assert ids == dict.fromkeys(ids, 2**31 + 1)
    sessions.kw["bind"].dispose()


def fill_rows(url: str) -> None:
    """Rows in every table the database has, through SQLAlchemy: any backend (ids are the database's)."""
    engine = create_engine(url)
    tables = MetaData()
    tables.reflect(engine)
    when = datetime(2026, 11, 21, 23, 30)
    with engine.begin() as connection:
        runs = tables.tables["runs"]
        values = {"created_at": when, "status": "finished", "framework": "torch", "model": "mlp", "dataset": "digits",
                  "spec": {"framework": "torch", "epochs": 3}, "epoch": 3, "total_epochs": 3, "step": 30,
                  "placed_device": "cpu", "name": "run 1", "tags": ["baseline"]}
        run_id = connection.execute(insert(runs).values({k: v for k, v in values.items() if k in runs.c})
                                    .returning(runs.c.id)).scalar_one()
        connection.execute(insert(tables.tables["metric_points"]), [
            {"run_id": run_id, "name": "train_loss", "step": 10 * epoch, "epoch": epoch, "wall_time": 1000.0 + epoch,
             "value": 1.0 / epoch} for epoch in (1, 2, 3)])
        connection.execute(insert(tables.tables["system_samples"]).values(
            run_id=run_id, time=1000.5, source="host", name="rss", value=1e8, unit="bytes"))
        if "scheduler_lease" in tables.tables:
            connection.execute(insert(tables.tables["scheduler_lease"]).values(
                name="scheduler", holder="abc", hostname="h", pid=7, acquired_at=when, expires_at=when))
        if "tensor_stats" in tables.tables:
            connection.execute(insert(tables.tables["tensor_stats"]).values(
                run_id=run_id, epoch=1, step=10, layer="dense_1.kernel", kind="weight", numel=64, norm=2.5,
                histogram={"edges": [0.0, 1.0], "counts": [64]}))
        if "metric_chunks" in tables.tables:
            connection.execute(insert(tables.tables["metric_chunks"]).values(
                run_id=run_id, name="step/loss", first_step=1, last_step=1, count=1, steps=b"\x01" + bytes(7),
                epochs=b"\x01" + bytes(3), wall_times=bytes(8), values=bytes(8)))
    engine.dispose()


def table_rows(url: str, before: dict | None = None) -> dict[str, list[tuple]]:
    """Every data table's rows in key order (only the columns of `before`'s rows, when given)."""
    engine = create_engine(url)
    tables = MetaData()
    tables.reflect(engine)
    rows = {}
    with engine.connect() as connection:
        for name, table in tables.tables.items():
            if name == "alembic_version" or (before is not None and name not in before):
                continue
            columns = [table.c[column] for column in before[name][0]] if before else list(table.c)
            query = select(*columns).order_by(*table.primary_key.columns)
            rows[name] = ([column.name for column in columns], [tuple(row) for row in connection.execute(query)])
    engine.dispose()
    return rows


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


def test_two_processes_migrating_one_new_postgresql_database_at_once_both_start_and_it_migrates_once(postgres_url):
    import psycopg  # here, not above: without it the SQLite tests of this module still run

    child = (
        "import logging, sys\n"
        "from db.session import make_sessionmaker\n"
        "logging.basicConfig(level=logging.INFO, format='%(name)s: %(message)s')\n"
        "make_sessionmaker(sys.argv[1])\n"
    )
    # Hold the migration lock until both processes wait for it: they really migrate at the same time.
    blocker = psycopg.connect(make_url(postgres_url).set(drivername="postgresql").render_as_string(False),
                              autocommit=True)
    blocker.execute("SELECT pg_advisory_lock(%s)", [migrate.POSTGRES_LOCK_KEY])
    processes = [
        subprocess.Popen([sys.executable, "-c", child, postgres_url], cwd=REPO_ROOT, text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
        for _ in range(2)
    ]
    try:
        waiting, deadline = 0, time.monotonic() + 60
        while waiting < 2 and time.monotonic() < deadline and all(p.poll() is None for p in processes):
            time.sleep(0.1)
            waiting = blocker.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                                      "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
                                      ).fetchone()[0]
    finally:
        blocker.execute("SELECT pg_advisory_unlock(%s)", [migrate.POSTGRES_LOCK_KEY])
        blocker.close()
    outputs = [process.communicate(timeout=120) for process in processes]

    assert waiting == 2, outputs  # both were held at the lock
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert sum(stderr.count("db.migrate: Upgraded") for _, stderr in outputs) == 1, outputs
    assert revision_of(postgres_url) == migrate.head_revision()
    assert schema_differences(postgres_url) == []


def test_a_revision_failing_on_a_new_database_leaves_it_empty_and_names_the_revision(db_url, tmp_path, monkeypatch):
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", broken_migrations(tmp_path))

    with pytest.raises(migrate.MigrationError, match=r"failed in revision 0004 \(Compare .*disk full.*unchanged, "
                                                     r"still at an empty database"):
        make_sessionmaker(db_url)

    # 0001-0003's tables, 0004's work and the stamp: all rolled back (DDL is transactional on both).
    engine = create_engine(db_url)
    assert inspect(engine).get_table_names() == []
    engine.dispose()


def broken_migrations(tmp_path: Path) -> Path:
    """A copy of the migrations whose revision 0004 does its work, then fails."""
    broken = tmp_path / "migrations"
    shutil.copytree(migrate.MIGRATIONS_DIR, broken, ignore=shutil.ignore_patterns("__pycache__"))
    revision = broken / "versions" / "0004_compare.py"
    revision.write_text(revision.read_text() + (
        "\n\n_upgrade = upgrade\n\n\n"
        "def upgrade() -> None:\n"
        "    _upgrade()  # its tables, columns and index are made, then the disk fills\n"
        "    raise OSError('disk full')\n"
    ))
    return broken


def test_a_failing_revision_leaves_the_database_as_it_was_and_names_the_revision(tmp_path, monkeypatch):
    monkeypatch.setattr(migrate, "MIGRATIONS_DIR", broken_migrations(tmp_path))
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


def test_a_database_a_newer_arena_upgraded_is_refused_unchanged(db_url):
    make_sessionmaker(db_url).kw["bind"].dispose()
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    with pytest.raises(migrate.MigrationError, match="at revision 0099, which this Arena does not know.*newer Arena"):
        make_sessionmaker(db_url)
    assert revision_of(db_url) == "0099"


def test_every_revision_downgrades_to_an_empty_database_and_upgrades_again(db_url):
    make_sessionmaker(db_url).kw["bind"].dispose()
    engine = create_engine(db_url)
    config = migrate.alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "base")
        assert inspect(connection).get_table_names() == ["alembic_version"]
    engine.dispose()
    make_sessionmaker(db_url).kw["bind"].dispose()
    assert revision_of(db_url) == migrate.head_revision()
    assert schema_differences(db_url) == []


def test_revisions_downgrade_and_upgrade_again_with_rows_in_sqlite(tmp_path):
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
