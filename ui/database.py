"""The dashboard's database: one sessionmaker per process and URL, a bad URL named on the page."""
from __future__ import annotations

from typing import Optional, Sequence

import streamlit as st
from sqlalchemy.orm import Session, sessionmaker

from analysis.formatting import escape_markdown
from db import queries
from db.models import ACTIVE_STATUSES
from db.session import make_sessionmaker
from db.urls import DatabaseURLError
from engine.launch import default_url_for


def db_url() -> str:
    """The runner-ready URL of the database ARENA_DB_URL / ARENA_HOME point at right now."""
    return default_url_for(None)


@st.cache_resource(show_spinner=False)
def _sessionmaker_for(url: str) -> sessionmaker[Session]:
    return make_sessionmaker(url)


def sessions() -> sessionmaker[Session]:
    """One sessionmaker (and engine) per process and database URL; a bad URL stops the page with what to fix."""
    try:
        url = db_url()  # validated on the way (engine.launch.default_url_for)
    except DatabaseURLError as exc:
        st.error(f"**The database cannot be used.** {escape_markdown(str(exc))}. Set `ARENA_DB_URL` to a "
                 "SQLite file (`sqlite:////path/to/arena.db`) or a PostgreSQL server "
                 "(`postgresql+psycopg://user@host/arena`), or unset it for the embedded default, and restart.",
                 icon=":material/database:")
        st.stop()
    return _sessionmaker_for(url)


def any_active(sessions_: sessionmaker[Session], run_ids: Optional[Sequence[int]] = None) -> bool:
    """True while any (of the given) runs is queued or running."""
    with sessions_.begin() as s:
        runs = queries.list_runs(s, statuses=ACTIVE_STATUSES)
    return any(run_ids is None or run.id in run_ids for run in runs)
