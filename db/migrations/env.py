"""Alembic's environment: run the revisions on the connection db.migrate hands over, in its transaction."""
from __future__ import annotations

from alembic import context

from db.models import Base

config = context.config

if context.is_offline_mode():
    # Revisions 0001-0005 look at the database to add only what it lacks, so they need one.
    raise RuntimeError("Arena's migrations run online only: use db.migrate (python -m db.migrate), not --sql")
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Arena's migrations take their connection from db.migrate (python -m db.migrate); "
                       "there is no alembic.ini and no URL here")
context.configure(
    connection=connection,
    # The models are the head schema: autogenerate (python -m db.migrate revision) compares against them.
    target_metadata=Base.metadata,
    # New revisions come out in batch mode: SQLite changes most of a column only by copying its
    # table, which batch mode does there, and it emits plain ALTER TABLE on PostgreSQL.
    render_as_batch=True,
    # db.migrate's record of the revisions applied, to name the one that fails.
    on_version_apply=config.attributes.get("on_version_apply", ()),
)
# db.migrate began the transaction (and took the migration lock): Alembic joins it, and one
# rollback undoes every revision of a failed upgrade.
with context.begin_transaction():
    context.run_migrations()
