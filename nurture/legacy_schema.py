"""A database's tables as create_all leaves them, compared across SQLite and PostgreSQL.

Before schema migrations, every process created the tables itself (create_all) and kept no
revision. Such a database can be taken in at the baseline revision only when it holds exactly the
baseline's tables (nurture/migrating.py): the same columns and nullability, indexes, unique
constraints and foreign keys. Types are left out: each backend reads them back its own way.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Connection


@dataclass
class TableShape:
    """What create_all and the baseline must agree on, read back the same way on either backend.
    Each index, unique constraint and foreign key is kept as the words a difference is told in."""

    columns: dict[str, bool] = field(default_factory=dict)  # name -> nullable
    indexes: set[str] = field(default_factory=set)
    uniques: set[str] = field(default_factory=set)
    foreign_keys: set[str] = field(default_factory=set)


def _listed(columns: Iterable[str]) -> str:
    return f"({', '.join(columns)})"


def _shape(inspector: sa.Inspector, table: str) -> TableShape:
    return TableShape(
        columns={c["name"]: bool(c["nullable"]) for c in inspector.get_columns(table)},
        indexes={
            f"{i['name']} {_listed(i['column_names'])}{' unique' if i['unique'] else ''}"
            for i in inspector.get_indexes(table)
            if not i.get("duplicates_constraint")  # PostgreSQL lists a unique constraint's index too
        },
        uniques={_listed(u["column_names"]) for u in inspector.get_unique_constraints(table)},
        foreign_keys={
            f"{_listed(f['constrained_columns'])} -> {f['referred_table']} {_listed(f['referred_columns'])}"
            for f in inspector.get_foreign_keys(table)
        },
    )


def table_shapes(conn: Connection, exclude: Collection[str] = ()) -> dict[str, TableShape]:
    inspector = sa.inspect(conn)
    return {table: _shape(inspector, table) for table in inspector.get_table_names() if table not in exclude}


def differences_from(wanted: dict[str, TableShape], conn: Connection) -> list[str]:
    """How the tables on ``conn`` differ from ``wanted``, one line each; empty when they match.
    Tables not in ``wanted`` are not looked at (another application's, in a shared schema)."""
    inspector = sa.inspect(conn)
    present = set(inspector.get_table_names())
    differences: list[str] = []
    for table, expected in sorted(wanted.items()):
        if table not in present:
            differences.append(f"table {table} is missing")
            continue
        found = _shape(inspector, table)
        for what, missing, extra in (
            ("column", expected.columns.keys() - found.columns.keys(), found.columns.keys() - expected.columns.keys()),
            ("index", expected.indexes - found.indexes, found.indexes - expected.indexes),
            ("unique constraint on", expected.uniques - found.uniques, found.uniques - expected.uniques),
            ("foreign key", expected.foreign_keys - found.foreign_keys, found.foreign_keys - expected.foreign_keys),
        ):
            differences += [f"{table}: {what} {item} is missing" for item in sorted(missing)]
            differences += [f"{table}: {what} {item} is not in the baseline" for item in sorted(extra)]
        for column in sorted(expected.columns.keys() & found.columns.keys()):
            if expected.columns[column] != found.columns[column]:
                wanted = "nullable" if expected.columns[column] else "NOT NULL"
                differences.append(f"{table}: column {column} should be {wanted}")
    return differences

