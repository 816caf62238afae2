"""Database URLs checked before anything connects: a supported dialect and driver, a usable SQLite path.

Every message names the URL with its password masked and says what to do. Nothing here creates
a file or a directory: make_engine does that once the URL has passed.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

EXAMPLES = "sqlite:////absolute/path/arena.db or postgresql+psycopg://user@host/arena"
SQLITE_DRIVERS = ("", "pysqlite")  # "" = SQLAlchemy's default for sqlite, the standard library's sqlite3
SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
POSTGRES_DRIVER = "psycopg"  # psycopg 3; plain postgresql:// would mean psycopg2, which Arena does not install
WHERE = "Give --db or ARENA_DB_URL another URL (or ARENA_HOME another directory for the default database)."


class DatabaseURLError(ValueError):
    """A database URL Arena cannot use; the message names it (password masked) and what to do."""


def masked(url: str) -> str:
    """The URL as it may be shown: its password replaced by ***, even when the URL does not parse."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def validate(url: str) -> str:
    """The URL unchanged when Arena can open it; DatabaseURLError naming it and the fix otherwise."""
    shown = masked(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # the parser's own message would repeat the URL, password and all
        raise DatabaseURLError(f"database URL {shown!r} cannot be parsed; expected dialect+driver://..., "
                               f"like {EXAMPLES}") from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend == "sqlite" and driver in SQLITE_DRIVERS:
        _check_sqlite(parsed, shown)
    elif backend == "postgresql" and driver == POSTGRES_DRIVER:
        if importlib.util.find_spec(POSTGRES_DRIVER) is None:
            raise DatabaseURLError(f"database URL {shown!r}: the psycopg driver is not installed in this Python "
                                   f"({sys.executable}); install it with `pip install \"psycopg[binary]\"`")
    elif backend == "postgresql":
        raise DatabaseURLError(f"database URL {shown!r}: Arena talks to PostgreSQL through psycopg 3; "
                               f"write postgresql+psycopg://{_after_scheme(parsed)}")
    else:
        raise DatabaseURLError(f"database URL {shown!r}: {parsed.drivername!r} is not supported; Arena stores runs "
                               f"in SQLite or PostgreSQL, like {EXAMPLES}")
    return url


def _after_scheme(parsed: URL) -> str:
    return parsed.render_as_string(hide_password=True).split("://", 1)[1]


def _check_sqlite(parsed: URL, shown: str) -> None:
    """A file that is, or can become, an SQLite database this process may write."""
    if not parsed.database or parsed.database == ":memory:":
        raise DatabaseURLError(f"database URL {shown!r} is an in-memory SQLite database: it lives in one process, "
                               f"so the runner processes would never see its runs. Name a file, like {EXAMPLES}")
    path = Path(parsed.database).expanduser()
    if path.is_dir():
        raise DatabaseURLError(f"database URL {shown!r}: {path} is a directory; name the database file inside it, "
                               f"like sqlite:///{path / 'arena.db'}")
    if path.exists():
        if not path.is_file():
            raise DatabaseURLError(f"database URL {shown!r}: {path} is not a regular file. {WHERE}")
        try:
            with open(path, "rb") as handle:
                head = handle.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise DatabaseURLError(f"database URL {shown!r}: cannot read {path} ({exc.strerror}). {WHERE}") from None
        if head and head != SQLITE_HEADER:  # an empty file is fine: SQLite makes it a database
            raise DatabaseURLError(f"database URL {shown!r}: {path} exists and is not an SQLite database "
                                   f"(it starts with {head!r}). {WHERE}")
        if not os.access(path, os.R_OK | os.W_OK):
            raise DatabaseURLError(f"database URL {shown!r}: no permission to read and write {path}. {WHERE}")
        return
    # A new database: its directory must exist, or be creatable from the nearest ancestor that does.
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        blocked = "not a directory the database can go in" if ancestor == path.parent else \
            f"so the directory {path.parent} cannot be created"
        raise DatabaseURLError(f"database URL {shown!r}: {ancestor} is a file, {blocked}. {WHERE}")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        what = "the database file" if ancestor == path.parent else f"the directory {path.parent}"
        raise DatabaseURLError(f"database URL {shown!r}: no permission to create {what} in {ancestor}. {WHERE}")
