"""Database errors in words someone fixing the database can act on, for runners, the CLI and the pages."""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Optional

from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

# SQLite's error names (extended codes share the prefix), in words someone fixing the database can act on.
_SQLITE_REASONS = (
    ("SQLITE_FULL", "the disk is full"),
    ("SQLITE_READONLY", "the database is read-only"),
    ("SQLITE_CANTOPEN", "the database file cannot be opened"),
    ("SQLITE_IOERR", "a disk I/O error"),
    ("SQLITE_BUSY", "the database is locked by another writer"),
    ("SQLITE_LOCKED", "the database is locked by another writer"),
    ("SQLITE_CORRUPT", "the database file is damaged"),
    ("SQLITE_NOTADB", "the file is not a SQLite database"),
)
# What PostgreSQL's driver says when it cannot connect, in the same words (psycopg has no error codes for these).
_SERVER_REASONS = (
    ("Connection refused", "connection refused: no server listens there"),
    ("could not translate host name", "the host name is unknown"),
    ("Name or service not known", "the host name is unknown"),
    ("timeout expired", "the server did not answer in time"),
    ("password authentication failed", "the server refused the user or password"),
    ("does not exist", "the server has no such database or user"),
)
_OS_REASONS = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
               errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.ENOENT: "the file or its directory does not exist", errno.ECONNREFUSED: "connection refused"}


def database_error(exc: BaseException, url: str) -> str:
    """'<url, password masked>: <why, in words> (<the driver's own words>)' for a failed database call."""
    parsed = make_url(url)
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    said = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    if parsed.password:
        said = said.replace(str(parsed.password), "***")
    name = getattr(cause, "sqlite_errorname", None) or ""
    reason = next((words for prefix, words in _SQLITE_REASONS if name.startswith(prefix)), None)
    if reason is None and parsed.get_backend_name() == "postgresql":
        reason = next((words for mark, words in _SERVER_REASONS if mark in said), None)
    if isinstance(cause, ModuleNotFoundError):
        reason = f"the database driver {cause.name} is not installed"
    elif isinstance(cause, OSError):
        reason = _OS_REASONS.get(cause.errno)
    if reason is not None and parsed.get_backend_name() == "sqlite":
        try:
            detail = _sqlite_file_problem(parsed.database or "", reason)
        except OSError:  # the file system would not say either: the driver's words must do
            detail = None
        reason += f"; {detail}" if detail else ""
    where = parsed.render_as_string(hide_password=True)
    if reason and said.lower() not in reason.lower():
        return f"{where}: {reason} ({said})"
    return f"{where}: {reason or said}"


def _sqlite_file_problem(database: str, reason: str) -> Optional[str]:
    """What the file system says about a SQLite file SQLite could not use (None: nothing more to say)."""
    if not database or database == ":memory:":
        return None
    path = Path(database.removeprefix("file:").split("?", 1)[0]).expanduser()
    if not path.parent.is_dir():
        return f"its directory {path.parent} does not exist"
    if reason == "the disk is full":
        return f"{shutil.disk_usage(path.parent).free:,} bytes free in {path.parent}"
    if not path.exists():
        return f"{path} does not exist"
    if os.statvfs(path.parent).f_flag & os.ST_RDONLY:
        return f"{path.parent} is on a read-only file system"
    # access(2), not open(2): this process holds connections to the file, and closing any descriptor
    # of it would drop their POSIX locks (SQLite's "How To Corrupt", section 2.2).
    if not os.access(path, os.W_OK):
        return f"{path} is not writable by this process"
    return None
