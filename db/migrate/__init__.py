"""Schema upgrades on start: Alembic brings any Arena database, new or old, to the schema of db/models.py.

Alembic is configured here in code, not by an alembic.ini: the database URL is only known at run
time (ARENA_DB_URL, ARENA_HOME), every process migrates the database it opens on its own, and
the migrations directory (db/migrations) is found from this file whatever the working directory.
`python -m db.migrate` (db/migrate/__main__.py) runs the upgrade by hand: a command of its own, since
it opens the database through db.session, which imports this module.
"""
from __future__ import annotations

import logging
import re
import zlib
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.pool import NullPool


if TYPE_CHECKING:
    # Alembic is imported where a database is migrated or inspected by revision: a process opening a
    # database already at head (every CLI call, every runner) checks that without it (0.16 s less to start).
    from alembic.config import Config
    from alembic.script import Script, ScriptDirectory

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Seconds a starting process waits for another process's migration to finish (SQLite busy
# timeout on the write lock): long enough for a big database's table copy, short of a hang.
MIGRATION_WAIT_S = 600
# Any fixed 32-bit number that every Arena process agrees on: the PostgreSQL advisory lock key.
POSTGRES_LOCK_KEY = zlib.crc32(b"arena db.migrate")

log = logging.getLogger(__name__)


class MigrationError(RuntimeError):
    """The database could not be brought to the current schema; the message says how to recover."""


def alembic_config() -> Config:
    """Alembic's configuration for the migrations next to this module."""
    return _config(str(MIGRATIONS_DIR))


def head_revision() -> str:
    """The newest revision: the schema of db/models.py."""
    return _scripts(str(MIGRATIONS_DIR)).get_current_head()


def current_revision(connection: Connection) -> Optional[str]:
    """The revision stamped in a database (None: empty, or from before Arena tracked revisions)."""
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


@lru_cache(maxsize=None)
def head_in_files() -> str:
    """The head revision read from the migration files' `revision` and `down_revision` lines, without Alembic:
    the one revision no other revision follows. tests/db/test_migrations.py checks it against Alembic's."""
    revisions, parents = set(), set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        source = path.read_text()
        revision = re.search(r'^revision\s*=\s*["\']([^"\']+)["\']', source, re.MULTILINE)
        parent = re.search(r'^down_revision\s*=\s*["\']([^"\']+)["\']', source, re.MULTILINE)
        if revision:
            revisions.add(revision.group(1))
        if parent:
            parents.add(parent.group(1))
    heads = revisions - parents
    if len(heads) != 1:
        raise MigrationError(f"the migrations in {MIGRATIONS_DIR} have {len(heads)} heads ({sorted(heads)}), not one")
    return heads.pop()


def _stamped_revision(connection: Connection) -> Optional[str]:
    """The database's one stamped revision read with plain SQL, or None (no stamp, or not exactly one row)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    rows = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    return rows[0] if len(rows) == 1 else None


def upgrade_to_head(engine: Engine) -> list[str]:
    """Bring the engine's database to the head revision; return the revisions applied, oldest first.

    Several processes may start on one database at once (dashboard, scheduler, runners): one
    migrates under a lock, the others wait for it and then find the database at head.
    """
    with engine.connect() as connection:
        if _stamped_revision(connection) == head_in_files():
            return []  # the usual start: no lock taken, nothing written, Alembic not imported
    migrator = _migration_engine(engine)
    try:
        with migrator.connect() as connection, connection.begin():
            if connection.dialect.name == "postgresql":
                # Held to the end of this transaction, so a crashed process cannot leave it taken.
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_LOCK_KEY})
            return _upgrade_locked(connection)
    finally:
        if migrator is not engine:
            migrator.dispose()


def legacy_revision(connection: Connection) -> Optional[str]:
    """The newest revision whose changes, and every earlier one's, an untracked database has in full."""
    from db.migrations.legacy import missing  # Alembic's op module: imported only when inspecting a legacy schema

    inspector = inspect(connection)
    matched = None
    for script in _oldest_first(_scripts(str(MIGRATIONS_DIR))):
        step = getattr(script.module, "LEGACY_STEP", None)
        if step is None or missing(inspector, step):
            break
        matched = script.revision
    return matched


def _upgrade_locked(connection: Connection) -> list[str]:
    """Stamp an untracked database, then apply the missing revisions in order, in the caller's transaction."""
    from alembic import command

    scripts = _scripts(str(MIGRATIONS_DIR))
    config = alembic_config()
    config.attributes["connection"] = connection
    url = connection.engine.url.render_as_string(hide_password=True)
    current = current_revision(connection)  # again: another process may have migrated while we waited
    start = f"revision {current}" if current else "an empty database"
    if current is None and inspect(connection).get_table_names():
        current = legacy_revision(connection)
        start = f"its untracked schema (that of revision {current})" if current else "its untracked schema"
        log.info("%s has an Arena schema from before revision tracking, matching revision %s", url, current or "none")
        if current:
            command.stamp(config, current)
    known = [script.revision for script in _oldest_first(scripts)]
    if current is not None and current not in known:
        raise MigrationError(
            f"{url} is at revision {current}, which this Arena does not know (it knows {', '.join(known)}): "
            "a newer Arena upgraded it. Open it with that version or a newer one; nothing was changed."
        )
    pending = known[known.index(current) + 1:] if current else known
    # One Alembic upgrade to the last pending revision: Alembic reads the revision files once per upgrade call, and
    # one call per revision read all 13 files 13 times (0.35 s to create a database, 0.03 s now). env.py passes
    # this hook to Alembic, which calls it after each revision, so a failure still names its revision.
    applied: list[str] = []
    config.attributes["on_version_apply"] = [lambda step, **_: applied.append(step.up_revision_id)]
    if pending:
        try:
            command.upgrade(config, pending[-1])
        except Exception as exc:
            revision = pending[min(len(applied), len(pending) - 1)]
            doc = scripts.get_revision(revision).doc
            raise MigrationError(
                f"Upgrading {url} failed in revision {revision} ({doc}): {exc}. The upgrade runs in one "
                f"transaction, which was rolled back: the database is unchanged, still at {start}. Fix the "
                "cause and start Arena again, or run `python -m db.migrate` to retry and see the whole "
                "error; until then the Arena version that last opened this database still works with it."
            ) from exc
        log.info("Upgraded %s from %s to revision %s", url, start, pending[-1])
    return pending


def _migration_engine(engine: Engine) -> Engine:
    """An engine whose transactions cover DDL and hold the write lock (SQLite), else the engine itself."""
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        # PostgreSQL has transactional DDL and takes an advisory lock; a private in-memory
        # database has no other process to wait for.
        return engine
    migrator = create_engine(engine.url, poolclass=NullPool, connect_args={"timeout": MIGRATION_WAIT_S})
    event.listen(migrator, "connect", _sqlite_migration_pragmas)
    # BEGIN IMMEDIATE takes the write lock before the re-check: a second process waits here.
    event.listen(migrator, "begin", lambda connection: connection.exec_driver_sql("BEGIN IMMEDIATE"))
    return migrator


def _sqlite_migration_pragmas(dbapi_connection, _record) -> None:
    # pysqlite begins transactions only before INSERT/UPDATE/DELETE, so DDL would commit as it
    # goes; with its own handling off, the BEGIN above makes every statement part of one transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # WAL like every other connection (db.session): a new file is still empty, so the WAL that other
    # connections asked for is not recorded in it yet, and a migration writing it in rollback-journal
    # mode makes their "PRAGMA journal_mode=WAL" fail at once with "database is locked" (SQLite
    # skips the busy wait there) -- two processes opening a new database at once.
    cursor.execute("PRAGMA journal_mode=WAL")
    # A batch-mode table copy drops the old table: with foreign keys on, that would cascade to its children.
    cursor.execute("PRAGMA foreign_keys=OFF")
    cursor.close()


def _config(directory: str) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", directory.replace("%", "%%"))  # an ini value: % escapes
    return config


@lru_cache(maxsize=None)
def _scripts(directory: str) -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    # Parsed once per process: every make_engine() asks for the head.
    return ScriptDirectory.from_config(_config(directory))


def _oldest_first(scripts: ScriptDirectory) -> list[Script]:
    return list(reversed(list(scripts.walk_revisions("base", "heads"))))
