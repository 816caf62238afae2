"""One process's connections to a SQLite database: they keep their locks, and a broken one is never handed out again."""
from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DatabaseError, IntegrityError

from db import queries
from db.session import make_sessionmaker
from db.urls import validate
from engine.spec import RunSpec
from tests.conftest import REPO_ROOT
from tests.reliability import corrupt_schema, held_deleted

SPEC = RunSpec(framework="torch", model="mlp", dataset="digits")


def another_process(url: str, code: str) -> None:
    """Open the database in a process of its own, run code with `s` a session, close every connection and exit."""
    script = ("import sys\nfrom db.session import make_sessionmaker\nfrom db import queries\n"
              f"sessions = make_sessionmaker(sys.argv[1])\nwith sessions.begin() as s:\n    {code}\n"
              "sessions.kw['bind'].dispose()\n")
    subprocess.run([sys.executable, "-c", script, url], cwd=REPO_ROOT, check=True, capture_output=True, timeout=60)


def file_rows(path: Path, sql: str) -> list[tuple]:
    """What the file holds, read by a connection opened for it (the test's pool stays as it is)."""
    with closing(sqlite3.connect(path)) as connection:
        return connection.execute(sql).fetchall()


def test_validating_the_url_beside_open_connections_keeps_their_locks(tmp_path):
    path = tmp_path / "arena.db"
    url = f"sqlite:///{path}"
    sessions = make_sessionmaker(url)
    with sessions.begin() as s:  # a pooled connection from here on, as a dashboard has
        queries.create_run(s, SPEC.to_dict())
    validate(url)  # what every page call does: it once opened and closed the file, dropping those locks
    another_process(url, "queries.create_run(s, queries.get_run(s, 1).spec)")  # the last one out checkpoints

    assert held_deleted(os.getpid(), path) == []
    with sessions.begin() as s:  # a write through the pool this process kept ...
        queries.annotate_run(s, 1, name="written after the other process left")
    # ... is in the file for every other process to see.
    assert file_rows(path, "SELECT id, name FROM runs ORDER BY id") == [(1, "written after the other process left"),
                                                                        (2, None)]


def test_a_connection_that_raised_a_database_error_is_not_handed_out_again(tmp_path):
    path = tmp_path / "arena.db"
    sessions = make_sessionmaker(f"sqlite:///{path}")
    engine = sessions.kw["bind"]
    with engine.connect() as connection:
        before = connection.connection.dbapi_connection
    corrupt_schema(path, corrupt=True)

    with pytest.raises(DatabaseError, match="malformed database schema") as caught:
        with sessions.begin() as s:
            s.execute(text("SELECT count(*) FROM runs"))
    assert caught.value.connection_invalidated  # so the pool drops it, and every connection it had

    corrupt_schema(path, corrupt=False)
    with engine.connect() as connection:
        assert connection.connection.dbapi_connection is not before
        assert connection.execute(text("SELECT count(*) FROM runs")).scalar() == 0


def test_a_constraint_error_leaves_the_connection_in_the_pool(tmp_path):
    sessions = make_sessionmaker(f"sqlite:///{tmp_path / 'arena.db'}")
    with sessions.begin() as s:
        queries.create_run(s, SPEC.to_dict())
    with pytest.raises(IntegrityError) as caught:
        with sessions.begin() as s:
            s.execute(text("INSERT INTO runs (id, created_at, status, framework, model, dataset, spec, total_epochs) "
                           "SELECT id, created_at, status, framework, model, dataset, spec, total_epochs FROM runs"))
    assert not caught.value.connection_invalidated
