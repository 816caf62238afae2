"""JSON columns hold JSON: NaN and Infinity that older versions wrote into SQLite become null.

Python's json writes a diverged run's non-finite numbers as NaN/Infinity, which no JSON parser but
Python's accepts: SQLite's JSON functions fail on the whole query ("malformed JSON"), so one such
run broke the Runs table for every run. Since 0006's time every write goes through
db.session.json_text (non-finite -> null); this rewrites what was stored before. PostgreSQL never
accepted such a document, so there is nothing to mend there.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""
from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSON_COLUMNS = {"runs": ("spec", "environment", "summary", "tags"), "tensor_stats": ("histogram",)}


def upgrade() -> None:
    from db.session import json_text

    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for table, columns in JSON_COLUMNS.items():
        for column in columns:
            broken = bind.execute(sa.text(
                f"SELECT id, {column} FROM {table} WHERE {column} IS NOT NULL AND NOT json_valid({column})")).all()
            for row_id, text in broken:
                try:
                    value = json.loads(text)  # Python's parser reads NaN and Infinity
                except ValueError:
                    continue  # not Arena's JSON at all: left as it is
                bind.execute(sa.text(f"UPDATE {table} SET {column} = :text WHERE id = :id"),
                             {"text": json_text(value), "id": row_id})


def downgrade() -> None:
    pass  # null in place of NaN is what every version reads the same way
