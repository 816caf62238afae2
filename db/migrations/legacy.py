"""The revisions Arena's schema went through before it tracked them: recognise and complete each one."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, NamedTuple

import sqlalchemy as sa
from alembic import op
from alembic.operations import ops
from sqlalchemy.engine import Inspector


class NewColumn(NamedTuple):
    """A nullable column added to a table of an earlier step."""

    table: str
    column: sa.Column


class NewIndex(NamedTuple):
    """An index added to a table of an earlier step."""

    name: str
    table: str
    columns: tuple[str, ...]


class Relaxed(NamedTuple):
    """A column that lost its NOT NULL."""

    table: str
    column: str
    type: sa.types.TypeEngine


@dataclass(frozen=True)
class LegacyStep:
    """What one revision from before Alembic changed.

    Until Arena tracked revisions (through 0005), each start added the tables, nullable columns
    and indexes it found missing, one by one, so an old database may hold part of a step, or a
    later step without an earlier one (a database created before 0002 kept its NOT NULL through
    every later version). Applying a step changes only what is missing; later revisions are plain.
    """

    tables: tuple[sa.Table, ...] = ()
    columns: tuple[NewColumn, ...] = ()
    indexes: tuple[NewIndex, ...] = ()
    relaxed: tuple[Relaxed, ...] = ()


def missing(inspector: Inspector, step: LegacyStep) -> list[str]:
    """What of the step a database lacks, in words ("column runs.reason"); empty when it has it all."""
    gaps: list[str] = []
    for table in step.tables:
        if not inspector.has_table(table.name):
            gaps.append(f"table {table.name}")
            continue
        gaps += [f"column {table.name}.{column.name}" for column in _absent_columns(inspector, table.name, table.c)]
        gaps += [f"index {index.name}" for index in table.indexes if not _has_index(inspector, table.name, index.name)]
    for new in step.columns:
        if _absent_columns(inspector, new.table, [new.column]):
            gaps.append(f"column {new.table}.{new.column.name}")
    for index in step.indexes:
        if not _has_index(inspector, index.table, index.name):
            gaps.append(f"index {index.name}")
    for relaxed in step.relaxed:
        if not _is_nullable(inspector, relaxed):
            gaps.append(f"NOT NULL on {relaxed.table}.{relaxed.column}")
    return gaps


def apply(step: LegacyStep) -> None:
    """Add what of the step the database lacks (an upgrade() body)."""
    inspector = sa.inspect(op.get_bind())
    for table in step.tables:
        if not inspector.has_table(table.name):
            # As autogenerate does it: the table with its keys (op.create_table would drop a copied column's FK).
            op.invoke(ops.CreateTableOp.from_table(table))
            for index in table.indexes:
                op.invoke(ops.CreateIndexOp.from_index(index))
            continue
        for column in _absent_columns(inspector, table.name, table.columns):
            if not column.nullable:
                raise RuntimeError(
                    f"Table {table.name} lacks the NOT NULL column {column.name!r}: "
                    "no Arena version wrote this table, so it cannot be upgraded in place"
                )
            op.add_column(table.name, column)  # Alembic adds a copy
        for index in table.indexes:
            if not _has_index(inspector, table.name, index.name):
                op.invoke(ops.CreateIndexOp.from_index(index))
    for new in step.columns:
        if _absent_columns(inspector, new.table, [new.column]):
            op.add_column(new.table, new.column)
    for index in step.indexes:
        if not _has_index(inspector, index.table, index.name):
            op.create_index(index.name, index.table, list(index.columns))
    for relaxed in step.relaxed:
        if not _is_nullable(inspector, relaxed):
            # SQLite cannot drop a NOT NULL in place: batch mode copies the table (rows, indexes, keys).
            with op.batch_alter_table(relaxed.table) as batch:
                batch.alter_column(relaxed.column, existing_type=relaxed.type, nullable=True)


def revert(step: LegacyStep) -> None:
    """Undo a complete step (a downgrade() body)."""
    for relaxed in step.relaxed:
        with op.batch_alter_table(relaxed.table) as batch:
            batch.alter_column(relaxed.column, existing_type=relaxed.type, nullable=False)
    for index in step.indexes:
        op.drop_index(index.name, table_name=index.table)
    for table_name in dict.fromkeys(new.table for new in step.columns):
        with op.batch_alter_table(table_name) as batch:
            for new in step.columns:
                if new.table == table_name:
                    batch.drop_column(new.column.name)
    for table in reversed(step.tables):
        for index in table.indexes:
            op.drop_index(index.name, table_name=table.name)
        op.drop_table(table.name)


def _absent_columns(inspector: Inspector, table: str, columns: Iterable[sa.Column]) -> list[sa.Column]:
    present = {column["name"] for column in inspector.get_columns(table)}
    return [column for column in columns if column.name not in present]


def _has_index(inspector: Inspector, table: str, name: str) -> bool:
    return any(index["name"] == name for index in inspector.get_indexes(table))


def _is_nullable(inspector: Inspector, relaxed: Relaxed) -> bool:
    columns = inspector.get_columns(relaxed.table)
    return any(column["name"] == relaxed.column and column["nullable"] for column in columns)
