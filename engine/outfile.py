"""Writing a file the user named (export's --out) without ever writing over a database.

An export written over the SQLite file the command reads destroys every run in it, and one written
over a -wal file corrupts it; neither is ever done, --force or not. Any other existing file is
replaced only when the caller says so. SQLite files are recognised by path and by asking SQLite,
never by open()ing them: a process that opens and closes a database file it also holds connections
to drops their locks (SQLite's "How To Corrupt An SQLite Database File").
"""
from __future__ import annotations

import os
import sqlite3
import stat
import tempfile
from contextlib import closing
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import quote

SIDE_FILE_SUFFIXES = ("-wal", "-shm", "-journal")  # SQLite's files beside a database; replacing one corrupts it
CHECK_TIMEOUT_S = 1.0


class OutputPathError(ValueError):
    """The output file may not be written; the message names it and says why."""


def check_destination(path: Path, databases: Sequence[Path], overwrite: bool) -> None:
    """Raise OutputPathError when writing `path` would replace one of `databases`, any SQLite database, a side
    file (-wal, -shm, -journal) of either, even one not there yet, or (unless overwrite) any existing file."""
    never = "an export never writes over a database: choose another --out"
    owner = _owner(path)
    for database in databases:
        if _same_file(path, database):
            raise OutputPathError(f"{path} is the database {database} this command reads; {never}")
        if (owner is not None and _same_file(owner, database)) or any(
                _same_file(path, _side_file(database, suffix)) for suffix in SIDE_FILE_SUFFIXES):
            raise OutputPathError(f"{path} is {path.name}, a file of the database {database} this command "
                                  f"reads; {never}")
    if owner is not None and owner.is_file() and _database_doubt(owner) is not None:
        raise OutputPathError(f"{path} is {path.name}, a file of the SQLite database {owner}; {never}")
    if not os.path.lexists(path):
        return
    if path.is_dir():
        raise OutputPathError(f"{path} is a directory; choose another --out")
    if path.exists() and not path.is_file():
        raise OutputPathError(f"{path} exists and is not a regular file; choose another --out")
    doubt = _database_doubt(path)
    if doubt is not None:
        what = f"possibly an SQLite database (SQLite could not open it to tell: {doubt})" if doubt else \
            "an SQLite database"
        raise OutputPathError(f"{path} is {what}; {never}")
    if not overwrite:
        raise OutputPathError(f"{path} exists; add --force to replace it, or choose another --out")


def write(path: Path, data: bytes, overwrite: bool) -> None:
    """Write the bytes: into a new file, or (overwrite) through a temporary file renamed over the old one."""
    if not overwrite or not os.path.lexists(path):
        try:
            with open(path, "xb") as out:  # "x": a file that appeared since check_destination is not replaced
                try:
                    out.write(data)
                except BaseException:
                    path.unlink(missing_ok=True)
                    raise
        except FileExistsError:
            raise OutputPathError(f"{path} exists; add --force to replace it, or choose another --out") from None
        return
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
        if path.exists():
            os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))  # the replaced file's permissions, not 0600
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def _side_file(database: Path, suffix: str) -> Path:
    return database.with_name(database.name + suffix)


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (symlinks, hard links, relative paths); stat only, nothing is opened."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # either does not exist (yet)
        return False


def _owner(path: Path) -> Optional[Path]:
    """The database `path` is named as a side file of (x.db for x.db-wal), whether either exists or not."""
    for suffix in SIDE_FILE_SUFFIXES:
        if path.name.endswith(suffix) and len(path.name) > len(suffix):
            return path.with_name(path.name[:-len(suffix)])
    return None


def _database_doubt(path: Path) -> Optional[str]:
    """"" when SQLite reads the file as a database, its error when it cannot open it to tell, None when it
    is not one.

    An empty file is not counted: SQLite would make it a database, but it holds nothing to lose.
    mode=rw never creates a file, and PRAGMA schema_version reads the header page only.
    """
    try:
        if path.stat().st_size == 0:
            return None
    except OSError:
        return None
    doubt = ""
    for mode in ("rw", "ro"):  # ro: a file this process may not write can still be replaced by a rename
        try:
            with closing(sqlite3.connect(f"file:{quote(str(path.resolve()), safe='/')}?mode={mode}", uri=True,
                                         timeout=CHECK_TIMEOUT_S)) as connection:
                connection.execute("PRAGMA schema_version").fetchone()
            return ""
        except sqlite3.DatabaseError as exc:
            if getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB":
                return None
            if "locked" in str(exc) or "busy" in str(exc):
                return ""  # a writer holds it: it is a database
            doubt = str(exc)
    return doubt
