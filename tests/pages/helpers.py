"""Polling helpers for tests that watch a real runner process change a run."""
from __future__ import annotations

from db import queries
from db.session import make_sessionmaker
from ui.page_errors import DATABASE_FAILED, PAGE_FAILED


_sessionmakers: dict = {}


def run_status(url: str, run_id: int) -> tuple[str, str]:
    """(status, error) of a run, read fresh from the database."""
    if url not in _sessionmakers:
        _sessionmakers[url] = make_sessionmaker(url)
    with _sessionmakers[url].begin() as s:
        run = queries.get_run(s, run_id)
        return run.status, run.error or ""


def failures(at) -> list[str]:
    """What failed on a page (or a block of it): Streamlit's exception boxes, and Arena's own failure messages.

    Pages show their failures in words (ui/page_errors.py) instead of raising, so "no exception" alone
    would no longer say that a page worked.
    """
    arena = (f"**{PAGE_FAILED}", f"**{DATABASE_FAILED}")
    shown = [element.value for element in at.error if element.value.startswith(arena)]
    return [element.value for element in at.exception] + shown
