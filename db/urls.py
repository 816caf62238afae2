"""Database URLs checked before anything connects: a supported dialect and driver, a usable SQLite path.

Every message names the URL with its password masked and says what to do. Nothing here creates
a file or a directory: make_engine does that once the URL has passed.

Nothing here opens a database file either, except through SQLite. This runs in processes that hold
connections to the same file (the dashboard on every page call), and closing any descriptor of a
file drops every POSIX lock the process holds on it, its SQLite connections' included ("How To
Corrupt An SQLite Database File", section 2.2). A runner ending then believes it is alone, and
checkpoints and deletes the WAL under those connections. SQLite itself keeps such a descriptor open
while another connection of the process holds locks, so the header is checked by asking SQLite.
"""
from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

EXAMPLES = "sqlite:////absolute/path/arena.db or postgresql+psycopg://user@host/arena"
SQLITE_DRIVERS = ("", "pysqlite")  # "" = SQLAlchemy's default for sqlite, the standard library's sqlite3
# How long the header check waits for a lock: WAL readers never wait, only a recovery or a migration's
# write lock (a locked file is a database, so the wait is only for a clearer message).
SQLITE_CHECK_TIMEOUT_S = 2.0
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
    if parsed.database.startswith("file:") or parsed.query:
        # sqlite:///file:x?mode=memory&uri=true is a URI filename: in memory, or a file of that literal name.
        given = "a URI filename (file:...)" if parsed.database.startswith("file:") else \
            f"parameters ({', '.join(sorted(parsed.query))})"
        raise DatabaseURLError(f"database URL {shown!r} has {given}: Arena opens SQLite databases by path, with "
                               f"its own settings, and every runner process must open the same file. Name a file, "
                               f"like {EXAMPLES}")
    path = Path(parsed.database).expanduser()
    if path.is_dir():
        raise DatabaseURLError(f"database URL {shown!r}: {path} is a directory; name the database file inside it, "
                               f"like sqlite:///{path / 'arena.db'}")
    if path.exists():
        if not path.is_file():
            raise DatabaseURLError(f"database URL {shown!r}: {path} is not a regular file. {WHERE}")
        if not os.access(path, os.R_OK | os.W_OK):
            raise DatabaseURLError(f"database URL {shown!r}: no permission to read and write {path}. {WHERE}")
        problem = _not_a_database(path)
        if problem:
            raise DatabaseURLError(f"database URL {shown!r}: {path} exists and is not an SQLite database "
                                   f"(SQLite says: {problem}). {WHERE}")
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


def _not_a_database(path: Path) -> str | None:
    """What SQLite says when it cannot read the file as a database; None when it can (an empty file can).

    Asked through SQLite, never by reading the file: see the module docstring. mode=rw never creates
    the file, and the check reads the header page only.
    """
    try:
        with closing(sqlite3.connect(f"file:{_uri_path(path)}?mode=rw", uri=True,
                                     timeout=SQLITE_CHECK_TIMEOUT_S)) as connection:
            connection.execute("PRAGMA schema_version").fetchone()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            return None  # a writer holds it: it is a database
        return str(exc)
    except sqlite3.DatabaseError as exc:  # "file is not a database", encrypted, damaged header
        return str(exc)
    return None


def _uri_path(path: Path) -> str:
    """A path as an SQLite URI filename: '?', '#' and '%' escaped (and made absolute)."""
    return quote(str(path.resolve()), safe="/")
