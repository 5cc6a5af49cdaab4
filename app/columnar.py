"""Many rows in one statement of fixed text on PostgreSQL: each column travels as one array,
and ``unnest()`` turns the arrays back into rows.

The hot paths write batches (a web process's intake of webhook deliveries, a worker's batch
of finished runs). SQLAlchemy's two ways of sending many rows both cost the calling process
more CPU than the statement costs PostgreSQL: an executemany is a statement per row (in
psycopg's pipeline), and a multi-row VALUES has text that grows with the batch, so psycopg
parses and converts it anew each time. Under W2 at c=50 (bench/webhook_bench.py) they were a
quarter of a worker's time and a fifth of the web's. Here the text depends on the columns
only: it is built once, psycopg converts it once, and PostgreSQL gets one message whatever the
batch size. The arrays go in binary (psycopg builds a text array in Python, escaping every
element: 4× the CPU for a batch of runs' final states). JSON goes as text and is cast to
jsonb in the statement.

PostgreSQL only: SQLite has no arrays, and its callers keep the Core statements.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from functools import cache
from typing import Any

from sqlalchemy import JSON, Table
from sqlalchemy.dialects import postgresql

_PG = postgresql.dialect()


def insert(connection, table: Table, rows: Sequence[dict[str, Any]], *,
           on_conflict_do_nothing: tuple[str, ...] = (), returning: str | None = None):
    """``INSERT INTO table (...) SELECT ... FROM unnest(...)``: ``rows`` all name the same
    columns; a column they leave out gets its scalar default (or NULL). Returns the result
    (with ``returning``, one row per inserted row)."""
    names = tuple(rows[0])
    missing = defaults(table, names)  # a JSON default of None is SQL NULL, as in Core
    sql = _insert_sql(table, names + tuple(missing), on_conflict_do_nothing, returning)
    params = arrays(table, names, rows)
    for name, default in missing.items():
        params[name] = [default] * len(rows)
    return connection.exec_driver_sql(sql, params)


def update(connection, table: Table, rows: Sequence[dict[str, Any]], *,
           match: tuple[str, ...], returning: str | None = None):
    """``UPDATE table SET <the other columns of rows> FROM unnest(...) WHERE <match>``: one
    statement for rows that all name the same columns, ``match`` among them (a row whose
    ``match`` finds nothing changes nothing). Returns the result (with ``returning``, one row
    per updated row)."""
    names = tuple(rows[0])
    return connection.exec_driver_sql(_update_sql(table, names, match, returning),
                                      arrays(table, names, rows))


def arrays(table: Table, names: Iterable[str], rows: Sequence[dict[str, Any]], *,
           prefix: str = "") -> dict[str, list]:
    """The parameters of ``source(table, names, prefix=prefix)`` for ``rows``."""
    columns = {}
    for name in names:
        if _is_json(table.c[name]):
            columns[prefix + name] = [json.dumps(row[name]) for row in rows]
        else:
            columns[prefix + name] = [row[name] for row in rows]
    return columns


def source(table: Table, names: tuple[str, ...], *, prefix: str = "", alias: str = "v") -> str:
    """``unnest(%(<prefix>a)b::uuid[], ...) AS <alias>("a", ...)``: rows of ``table``'s
    columns ``names`` (JSON ones as text: cast them with ``value``), for statements of their
    own; ``prefix`` keeps the parameters of two sources apart."""
    _columns(table, names)
    arrays = ", ".join(f"%({prefix}{name})b::{_array_type(table.c[name])}" for name in names)
    return f"unnest({arrays}) AS {alias}({', '.join(_quote(name) for name in names)})"


def value(table: Table, name: str, alias: str = "v") -> str:
    """A column of a ``source``, as the table's type (JSON text cast to jsonb)."""
    quoted = f"{alias}.{_quote(name)}"
    return f"{quoted}::jsonb" if _is_json(table.c[name]) else quoted


def defaults(table: Table, given: Iterable[str]) -> dict[str, Any]:
    """The scalar defaults of ``table``'s columns not in ``given`` (JSON ones as text);
    raises ValueError for a column left out whose default is computed."""
    return {name: json.dumps(default) if default is not None and _is_json(table.c[name])
            else default for name, default in _defaults_of(table, frozenset(given)).items()}


def _is_json(column) -> bool:
    return isinstance(column.type, JSON)


@cache
def _defaults_of(table: Table, given: frozenset[str]) -> dict[str, Any]:
    defaults = {}
    for column in table.columns:
        if column.name in given or column.default is None:
            continue
        if not column.default.is_scalar:
            raise ValueError(f"{table.name}.{column.name} has a computed default: give it")
        defaults[column.name] = column.default.arg
    return defaults


def _array_type(column) -> str:
    return "text[]" if _is_json(column) else f"{column.type.compile(dialect=_PG)}[]"


def _columns(table: Table, *groups: Iterable[str]) -> None:
    """Every name is one of the table's columns: the only names put in the text."""
    for group in groups:
        for name in group:
            if name not in table.c:
                raise ValueError(f"{table.name} has no column {name!r}")


def _quote(name: str) -> str:
    return f'"{name}"'


@cache
def _insert_sql(table: Table, names: tuple[str, ...], conflict: tuple[str, ...],
                returning: str | None) -> str:
    _columns(table, names, conflict, [returning] if returning else [])
    columns = ", ".join(_quote(n) for n in names)
    values = ", ".join(value(table, n) for n in names)
    rows = source(table, names)
    sql = f"INSERT INTO {_quote(table.name)} ({columns}) SELECT {values} FROM {rows}"  # noqa: S608
    if conflict:
        sql += f" ON CONFLICT ({', '.join(_quote(n) for n in conflict)}) DO NOTHING"
    if returning:
        sql += f" RETURNING {_quote(returning)}"
    return sql


@cache
def _update_sql(table: Table, names: tuple[str, ...], match: tuple[str, ...],
                returning: str | None) -> str:
    _columns(table, names, match, [returning] if returning else [])
    target = _quote(table.name)
    assignments = ", ".join(f"{_quote(n)} = {value(table, n)}" for n in names if n not in match)
    condition = " AND ".join(f"{target}.{_quote(n)} = v.{_quote(n)}" for n in match)
    rows = source(table, names)
    sql = f"UPDATE {target} SET {assignments} FROM {rows} WHERE {condition}"  # noqa: S608
    if returning:
        sql += f" RETURNING {target}.{_quote(returning)}"
    return sql
