"""Database URL resolution, engine and session factory (one per process)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.models import Base

ENV_DB_URL = "ARENA_DB_URL"
ENV_HOME = "ARENA_HOME"
# Milliseconds a writer waits for a lock before SQLite reports "database is locked".
SQLITE_BUSY_TIMEOUT_MS = 30_000


def arena_home() -> Path:
    """Directory for Arena's embedded database and run logs (ARENA_HOME, default ~/.arena)."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".arena").expanduser()


def default_db_url() -> str:
    """The embedded SQLite database: $ARENA_HOME/arena.db."""
    return f"sqlite:///{arena_home() / 'arena.db'}"


def resolve_db_url(url: Optional[str] = None) -> str:
    """An explicit URL wins, then ARENA_DB_URL, then the embedded SQLite default."""
    return url or os.environ.get(ENV_DB_URL) or default_db_url()


def make_engine(url: Optional[str] = None) -> Engine:
    """Create an engine and the schema; SQLite gets WAL, foreign keys and a busy timeout."""
    url = resolve_db_url(url)
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000} if is_sqlite else {},
        pool_pre_ping=not is_sqlite,
    )
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
    _create_schema(engine)
    return engine


def _create_schema(engine: Engine) -> None:
    """Create missing tables; tolerate another process creating them at the same moment."""
    for attempt in range(len(Base.metadata.tables) + 1):
        try:
            Base.metadata.create_all(engine)
            break
        except OperationalError as exc:
            # Another process created a table between our check and our CREATE; check again.
            if "already exists" not in str(exc) or attempt == len(Base.metadata.tables):
                raise
    _add_missing_columns(engine)
    _add_missing_indexes(engine)


def _add_missing_columns(engine: Engine) -> None:
    """Add nullable columns that newer Arena versions introduced to an older database, in place.

    Only additive, nullable columns: enough for the upgrades so far without losing a row.
    """
    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present or not column.nullable:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as connection:
                    connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
            except OperationalError as exc:
                if "duplicate column" not in str(exc).lower():
                    raise  # another process added it at the same moment otherwise


def _add_missing_indexes(engine: Engine) -> None:
    """Create indexes newer Arena versions declare on tables an older database already has."""
    inspector = inspect(engine)
    for table in Base.metadata.sorted_tables:
        if not inspector.has_table(table.name):
            continue
        present = {index["name"] for index in inspector.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in present:
                index.create(engine, checkfirst=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    # WAL + NORMAL is durable against process crashes (the case that matters: a killed runner).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB of page cache: the Runs table reads every run
    cursor.close()


def make_sessionmaker(url: Optional[str] = None) -> sessionmaker[Session]:
    """A sessionmaker bound to a fresh engine for the resolved URL."""
    return sessionmaker(make_engine(url), expire_on_commit=False)
