"""A page that fails says what happened and what to do, in words; the traceback goes to the server's log."""
from __future__ import annotations

import logging
from pathlib import Path

from db import queries, run_table
from db.session import make_sessionmaker
from engine.spec import RunSpec
from ui.page_errors import DATABASE_FAILED, PAGE_FAILED
from ui.router import COMPARE_PAGE, RUNS_PAGE
from tests.conftest import REPO_ROOT
from tests.pages.conftest import APP_PATH
from tests.reliability import corrupt_schema

SPEC = RunSpec(framework="torch", model="mlp", dataset="digits")


def texts(at) -> str:
    """Every message and markdown text the page drew."""
    return "\n".join(element.value for kind in ("error", "warning", "info", "markdown", "caption")
                     for element in getattr(at, kind))


def test_a_damaged_database_is_named_in_words_and_the_page_recovers_when_it_is_repaired(arena_db, open_page,
                                                                                          monkeypatch):
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    with make_sessionmaker(arena_db).begin() as s:
        run_id = queries.create_run(s, SPEC.to_dict()).id
    at = open_page(RUNS_PAGE)  # the dashboard's pool holds a connection from here on
    assert at.dataframe

    corrupt_schema(Path(arena_db.split("///", 1)[1]), corrupt=True)
    at.run()
    assert not at.exception and not at.dataframe
    (message,) = [e.value for e in at.error]
    assert DATABASE_FAILED in message and "the database file is damaged" in message
    assert "dropped its connections" in message and "Reload the page" in message and "PRAGMA integrity_check" in message

    corrupt_schema(Path(arena_db.split("///", 1)[1]), corrupt=False)
    at.run()  # a reload: fresh connections, the table again
    assert not at.exception and not at.error
    assert at.dataframe[0].value["id"].tolist() == [run_id]


def test_an_unexpected_failure_shows_what_to_do_and_logs_the_traceback(arena_db, open_page, monkeypatch, caplog):
    monkeypatch.setenv("ARENA_SCHEDULER", "off")
    with make_sessionmaker(arena_db).begin() as s:
        queries.create_run(s, SPEC.to_dict())
    at = open_page(RUNS_PAGE)

    def broken(*_args, **_kwargs):
        raise RuntimeError("internal detail at /srv/arena/secret.py line 3")

    monkeypatch.setattr(run_table, "runs_overview", broken)
    with caplog.at_level(logging.ERROR, logger="arena.pages"):
        at.run()

    assert not at.exception
    (message,) = [e.value for e in at.error]
    assert f"{PAGE_FAILED}: an unexpected RuntimeError" in message and "Reload the page" in message
    assert "secret" not in texts(at) and "Traceback" not in texts(at)  # nothing of the inside reaches the browser
    logged = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records)
    assert "internal detail at /srv/arena/secret.py" in logged and "Traceback" in logged


def test_an_unreachable_database_server_is_named_on_every_page_without_a_traceback(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ARENA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ARENA_DB_URL", "postgresql+psycopg://arena:secret@127.0.0.1:1/arena")  # nothing listens
    at = AppTest.from_file(str(APP_PATH), default_timeout=30).run()
    for page in (None, RUNS_PAGE, COMPARE_PAGE):
        if page is not None:
            at.switch_page(page).run()
        assert not at.exception
        (message,) = [e.value.replace("\\", "") for e in at.error]  # as shown: without markdown's escapes
        assert DATABASE_FAILED in message and "arena:***@127.0.0.1:1/arena" in message and "connection refused" in message.lower()
        assert "secret" not in message and "server runs" in message


def test_every_fragment_shows_its_failures_itself():
    """A fragment reruns alone, outside the page's guard, and Streamlit would draw its exception: each has its own."""
    calls = [line.strip() for folder in ("pages", "ui") for path in sorted((REPO_ROOT / folder).glob("*.py"))
             for line in path.read_text().splitlines() if "st.fragment(" in line]
    assert len(calls) >= 4 and all("st.fragment(guarded(" in call for call in calls), calls
