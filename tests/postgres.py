"""A real PostgreSQL server for the tests, started by the tests: one per test session, a fresh database per test.

ARENA_TEST_POSTGRES_URL names a developer's own server instead (PostgreSQL 13 or newer): the URL
of a role that may create databases (postgresql://user:password@host/postgres). Otherwise Debian's
binaries (apt-get install postgresql) run a throwaway server in a temporary directory on
127.0.0.1, stopped and deleted when the session ends. With neither, the PostgreSQL tests skip and
say how to get one, unless ARENA_REQUIRE_POSTGRES=1 (CI) makes that a failure: CI never passes by
silently skipping them.
"""
from __future__ import annotations

import atexit
import glob
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest
from sqlalchemy.engine import URL, make_url

ENV_URL = "ARENA_TEST_POSTGRES_URL"
ENV_REQUIRE = "ARENA_REQUIRE_POSTGRES"
HOW = f"apt-get install postgresql, or set {ENV_URL} to the URL of a server where you may create databases"
DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin"
SYSTEM_USER = "postgres"  # Debian's package creates it; initdb refuses to run as root
SUPERUSER = "postgres"
# Durability buys nothing on a server deleted after the tests: without these every commit and
# every CREATE DATABASE waits for the disk.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
TIMEOUT_S = 120


def server() -> Iterator[URL]:
    """The body of the session fixture: the admin URL of a server to create test databases on."""
    if importlib.util.find_spec("psycopg") is None:
        _unavailable("the psycopg driver is not installed (pip install -r requirements.txt)")
    given = os.environ.get(ENV_URL)
    if given:
        url = _psycopg_url(given)
        _check_reachable(url)
        yield url
        return
    binaries = newest_binaries()
    if binaries is None:
        _unavailable(f"no PostgreSQL server binaries in {DEBIAN_BINARIES} and {ENV_URL} is not set")
    local = LocalServer(binaries)
    atexit.register(local.stop)  # a session that dies before its fixtures tear down leaves no server either
    try:
        yield local.start()
    finally:
        local.stop()


@contextmanager
def fresh_database(admin: URL) -> Iterator[str]:
    """A new, empty database on the server (its URL for Arena), dropped afterwards with any connection left."""
    name = f"arena_t_{secrets.token_hex(6)}"
    _execute(admin, f'CREATE DATABASE "{name}"')
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        # FORCE: engines a test did not dispose still hold connections to it.
        _execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def newest_binaries() -> Optional[Path]:
    """Debian's bin directory of the newest PostgreSQL installed (/usr/lib/postgresql/VERSION/bin), or None."""
    found = [Path(path).parent for path in glob.glob(f"{DEBIAN_BINARIES}/initdb")]
    usable = [directory for directory in found if (directory / "pg_ctl").is_file()]
    return max(usable, key=lambda directory: _version(directory.parent.name), default=None)


class LocalServer:
    """A PostgreSQL server in a temporary directory, on 127.0.0.1 at a free port; stop() removes every trace."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.directory: Optional[Path] = None

    def start(self) -> URL:
        """initdb, then start the server; the admin URL of its superuser."""
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise RuntimeError(f"initdb refuses to run as root, and there is no {SYSTEM_USER!r} user to run it "
                                   f"as (Debian's postgresql package creates one); {HOW}") from None
        self.directory = Path(tempfile.mkdtemp(prefix="arena-postgres-"))
        if os.geteuid() == 0:
            shutil.chown(self.directory, SYSTEM_USER, SYSTEM_USER)  # the server's files are the postgres user's
        data = self.directory / "data"
        locale = ["--locale=C.UTF-8"]
        if _version(self.binaries.parent.name) >= (15,):
            # Sorting like the en_US servers most clusters run, not byte order as SQLite does: an
            # ORDER BY that only byte order makes right fails here instead of on a user's server.
            locale += ["--locale-provider=icu", "--icu-locale=en-US"]
        # trust: only this machine can reach the server (127.0.0.1, a socket in a private directory).
        self._run("initdb", "-D", str(data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8", "--no-sync",
                  *locale)
        settings = " ".join(f"-c {name}={value}" for name, value in FAST_SETTINGS.items())
        port, tries = _free_port(), 3
        # Another process may take the free port before the server binds it: then try another.
        while not self._run("pg_ctl", "-D", str(data), "-l", str(self.directory / "server.log"), "-w",
                            "-t", str(TIMEOUT_S), "-o", f"-c listen_addresses=127.0.0.1 -p {port} "
                            f"-k {self.directory} {settings}", "start", check=tries == 1):
            port, tries = _free_port(), tries - 1
        return URL.create("postgresql+psycopg", username=SUPERUSER, host="127.0.0.1", port=port, database="postgres")

    def stop(self) -> None:
        """Stop the server at once (its data is thrown away) and delete its directory; safe to call twice."""
        if self.directory is None:
            return
        data = self.directory / "data"
        if (data / "postmaster.pid").exists():
            if not self._run("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop", check=False):
                _kill_postmaster(data / "postmaster.pid")
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None

    def _run(self, program: str, *args: str, check: bool = True) -> bool:
        command = [str(self.binaries / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SYSTEM_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S,
                                cwd=self.directory, stdin=subprocess.DEVNULL)
        if result.returncode != 0 and check:
            log = self.directory / "server.log" if self.directory else None
            tail = f"\nserver.log ends:\n{log.read_text(errors='replace')[-2000:]}" if log and log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} exited {result.returncode}:\n{result.stdout}{result.stderr}{tail}")
        return result.returncode == 0


def _unavailable(why: str) -> None:
    if os.environ.get(ENV_REQUIRE) == "1":
        pytest.fail(f"PostgreSQL tests cannot run: {why}. {ENV_REQUIRE}=1 forbids skipping them; {HOW}.",
                    pytrace=False)
    pytest.skip(f"no PostgreSQL: {why}; {HOW}")


def _psycopg_url(given: str) -> URL:
    url = make_url(given)
    if url.get_backend_name() != "postgresql":
        raise pytest.UsageError(f"{ENV_URL} must be a postgresql:// URL, got {url.render_as_string()!r}")
    return url.set(drivername="postgresql+psycopg")


def _check_reachable(url: URL) -> None:
    import psycopg

    try:
        psycopg.connect(_conninfo(url), connect_timeout=10).close()
    except psycopg.Error as exc:
        pytest.fail(f"{ENV_URL}={url.render_as_string()!r} cannot be reached: {exc}", pytrace=False)


def _execute(admin: URL, sql: str) -> None:
    import psycopg

    with psycopg.connect(_conninfo(admin), autocommit=True, connect_timeout=10) as connection:
        connection.execute(sql)


def _conninfo(url: URL) -> str:
    """libpq's form of a SQLAlchemy URL: postgresql://user:password@host:port/database."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def _version(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _kill_postmaster(pid_file: Path) -> None:
    """pg_ctl could not stop it: end the server this module started by the pid it wrote."""
    try:
        os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
    except (OSError, ValueError, IndexError):
        pass  # gone already, or the file was cut short: nothing left to stop
