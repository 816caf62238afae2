"""`python -m db.migrate [--db URL]` upgrades now, any error shown whole; `revision MESSAGE` adds a revision.

Apart from db/migrate/__init__.py because it opens the database as every process does (db.session),
and db.session imports the upgrade: one module holding both would import itself in a circle.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path
from typing import Optional, Sequence

from alembic import command

from db.migrate import alembic_config, head_revision
from db.session import make_engine


def main(argv: Optional[Sequence[str]] = None) -> None:
    """`python -m db.migrate [--db URL]` upgrades now, any error shown whole; `revision MESSAGE` adds a revision."""
    parser = argparse.ArgumentParser(prog="python -m db.migrate", description=main.__doc__)
    parser.add_argument("action", nargs="?", choices=("upgrade", "revision"), default="upgrade")
    parser.add_argument("message", nargs="?", help="revision: what the new revision changes")
    parser.add_argument("--db", help="upgrade: the database URL (default: ARENA_DB_URL, then $ARENA_HOME/arena.db)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.action == "upgrade":
        engine = make_engine(args.db)
        print(f"{engine.url.render_as_string(hide_password=True)} is at revision {head_revision()}")
        return
    if not args.message:
        parser.error("revision needs a MESSAGE")
    with tempfile.TemporaryDirectory() as scratch:
        # Autogenerate compares db/models.py with a database the revisions so far built, nobody's real one.
        engine = make_engine(f"sqlite:///{Path(scratch) / 'head.db'}")
        config = alembic_config()
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.revision(config, args.message, autogenerate=True, rev_id=f"{int(head_revision()) + 1:04d}")
        engine.dispose()
    print("Read the new revision before committing it: autogenerate misses renames and some type changes.")


if __name__ == "__main__":
    main()
