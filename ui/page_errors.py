"""What a page shows when it fails: what went wrong and what to do, in words; the traceback goes to the server log.

Streamlit's own error box shows the exception with file paths, and .streamlit/config.toml turns it
down to a generic line (client.showErrorDetails = "none") for whatever gets past this.
"""
from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import streamlit as st
from sqlalchemy.exc import DBAPIError

from analysis.formatting import escape_markdown
from db.errors import database_error
from db.session import resolve_db_url

PAGE_FAILED = "This page could not be shown"
DATABASE_FAILED = "The database could not be read or written"

log = logging.getLogger("arena.pages")
F = TypeVar("F", bound=Callable)


@contextmanager
def shown() -> Iterator[None]:
    """Run a page (or a fragment of one); an exception becomes a message on the page and a traceback in the log.

    Streamlit's stop and rerun are BaseExceptions and pass through.
    """
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - a page shows every failure in words, never a traceback
        log.exception("arena: a page failed")
        st.error(failure_text(exc), icon=":material/error:")


def guarded(function: F) -> F:
    """The function with its failures shown by shown(): for fragments, which rerun without the page around them."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with shown():
            return function(*args, **kwargs)
    return wrapper  # type: ignore[return-value]


def failure_text(exc: BaseException) -> str:
    """The message a page shows for exc: the database's trouble in words, or where to find the details."""
    if isinstance(exc, DBAPIError):
        url = resolve_db_url()
        sqlite = url.startswith("sqlite")
        advice = ("If it keeps happening, make sure nothing but Arena writes, copies or restores the file while "
                  "runs write (a backup or sync tool, a network file system), and check it with "
                  "`sqlite3 FILE 'PRAGMA integrity_check'`." if sqlite else
                  "If it keeps happening, check that the server runs and this machine reaches it.")
        # Set by SQLAlchemy when the error marked the connection broken (db.session): the pool is new.
        renewed = "Arena has dropped its connections and opens new ones. " if exc.connection_invalidated else ""
        return (f"**{DATABASE_FAILED}.** {escape_markdown(database_error(exc, url))}. {renewed}Reload the page (R) "
                f"to try again. {advice} Details are in the dashboard's log.")
    return (f"**{PAGE_FAILED}: an unexpected {type(exc).__name__}.** Reload the page (R) to try again. The full "
            "error is in the dashboard's log (the terminal running `make run`); if it happens again, please report "
            "it with that log.")

