"""Database URL resolution, engine and session factory (one per process)."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sqlite3
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from db.migrate import upgrade_to_head
from db.urls import validate

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


def database_key(url: str) -> str:
    """A short name for one database, the same in every process: its name and a hash of its URL (password left out).

    Keys what Arena keeps per database outside it (run logs): two databases never share a file.
    """
    parsed = make_url(url)
    canonical = parsed.render_as_string(hide_password=True)  # "***" for any password
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", Path(parsed.database or parsed.get_backend_name()).stem)[:40]
    return f"{stem}-{hashlib.sha256(canonical.encode()).hexdigest()[:10]}"


def run_log_path(url: str, run_id: int) -> Path:
    """Where the runner of a run of this database writes its output: $ARENA_HOME/logs/<database key>/run-N.log."""
    return arena_home() / "logs" / database_key(url) / f"run-{run_id}.log"


def resolve_db_url(url: Optional[str] = None) -> str:
    """An explicit URL wins, then ARENA_DB_URL, then the embedded SQLite default."""
    return url or os.environ.get(ENV_DB_URL) or default_db_url()


def make_engine(url: Optional[str] = None) -> Engine:
    """Create an engine and bring its schema to head (db.migrate); SQLite gets WAL, foreign keys, a busy timeout."""
    url = validate(resolve_db_url(url))  # a bad URL is named before anything connects or is created
    is_sqlite = url.startswith("sqlite")
    if is_sqlite:
        path = url.split("///", 1)[1] if "///" in url else ""
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        # PostgreSQL: an unroutable host fails in seconds, not after the system's TCP timeout.
        connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000} if is_sqlite else {"connect_timeout": 10},
        pool_pre_ping=not is_sqlite,
        json_serializer=json_text,
    )
    if is_sqlite:
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "handle_error", _drop_broken_sqlite_connections)
    # Created empty, older or current: every database is at the models' schema before anyone reads it.
    upgrade_to_head(engine)
    return engine


def json_text(value: Any) -> str:
    """A JSON column's text: a non-finite float (a diverged run's summary) is stored as null.

    NaN and Infinity are no JSON: PostgreSQL refuses the document, and SQLite's JSON functions
    (the Runs table reads fields with them) fail on it.
    """
    try:
        return json.dumps(value, allow_nan=False)
    except ValueError:
        return json.dumps(finite(value), allow_nan=False)


def finite(value: Any) -> Any:
    """The value with every non-finite float (NaN, inf) replaced by None, through dicts and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(item) for item in value]
    return value


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    # WAL + NORMAL is durable against process crashes (the case that matters: a killed runner).
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA cache_size=-65536")  # 64 MiB of page cache: the Runs table reads every run
    cursor.close()


# SQLite errors after which a connection may see a file that is no longer the database (a WAL or
# shared-memory index deleted under it, a damaged page in its cache): its pool is dropped, so the next
# call opens fresh connections instead of failing forever. Busy, locked, full and constraint errors
# leave the connection sound and keep it.
SQLITE_BROKEN_CONNECTION = ("SQLITE_IOERR", "SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_CANTOPEN",
                            "SQLITE_READONLY_DBMOVED", "SQLITE_READONLY_CANTINIT", "SQLITE_READONLY_RECOVERY")


def _drop_broken_sqlite_connections(context) -> None:
    """handle_error: treat a broken-file error like a lost server, so SQLAlchemy invalidates the pool."""
    error = context.original_exception
    name = getattr(error, "sqlite_errorname", None) or ""
    if name.startswith(SQLITE_BROKEN_CONNECTION) or type(error) is sqlite3.DatabaseError:
        context.is_disconnect = True


def make_sessionmaker(url: Optional[str] = None) -> sessionmaker[Session]:
    """A sessionmaker bound to a fresh engine for the resolved URL."""
    return sessionmaker(make_engine(url), expire_on_commit=False)
