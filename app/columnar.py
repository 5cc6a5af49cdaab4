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
    defaults = _scalar_defaults(table, names)
    sql = _insert_sql(table, names + tuple(defaults), on_conflict_do_nothing, returning)
    params = _arrays(table, names, rows)
    for name, value in defaults.items():  # a JSON default of None is SQL NULL, as in Core
        value = json.dumps(value) if value is not None and _is_json(table.c[name]) else value
        params[name] = [value] * len(rows)
    return connection.exec_driver_sql(sql, params)


def update(connection, table: Table, rows: Sequence[dict[str, Any]], *,
           match: tuple[str, ...], returning: str | None = None):
    """``UPDATE table SET <the other columns of rows> FROM unnest(...) WHERE <match>``: one
    statement for rows that all name the same columns, ``match`` among them (a row whose
    ``match`` finds nothing changes nothing). Returns the result (with ``returning``, one row
    per updated row)."""
    names = tuple(rows[0])
    return connection.exec_driver_sql(_update_sql(table, names, match, returning),
                                      _arrays(table, names, rows))


def _arrays(table: Table, names: Iterable[str], rows: Sequence[dict[str, Any]]
            ) -> dict[str, list]:
    arrays = {}
    for name in names:
        if _is_json(table.c[name]):
            arrays[name] = [json.dumps(row[name]) for row in rows]
        else:
            arrays[name] = [row[name] for row in rows]
    return arrays


def _is_json(column) -> bool:
    return isinstance(column.type, JSON)


def _scalar_defaults(table: Table, given: tuple[str, ...]) -> dict[str, Any]:
    return _defaults_of(table, frozenset(given))


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


def _unnest(table: Table, names: tuple[str, ...]) -> str:
    """``unnest(%(a)b::uuid[], %(b)b::text[], ...) AS v("a", "b", ...)``."""
    arrays = ", ".join(f"%({name})b::{_array_type(table.c[name])}" for name in names)
    return f"unnest({arrays}) AS v({', '.join(_quote(name) for name in names)})"


def _array_type(column) -> str:
    return "text[]" if _is_json(column) else f"{column.type.compile(dialect=_PG)}[]"


def _value(table: Table, name: str) -> str:
    return f"v.{_quote(name)}::jsonb" if _is_json(table.c[name]) else f"v.{_quote(name)}"


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
    values = ", ".join(_value(table, n) for n in names)
    source = _unnest(table, names)
    sql = f"INSERT INTO {_quote(table.name)} ({columns}) SELECT {values} FROM {source}"  # noqa: S608
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
    assignments = ", ".join(f"{_quote(n)} = {_value(table, n)}" for n in names if n not in match)
    condition = " AND ".join(f"{target}.{_quote(n)} = v.{_quote(n)}" for n in match)
    source = _unnest(table, names)
    sql = f"UPDATE {target} SET {assignments} FROM {source} WHERE {condition}"  # noqa: S608
    if returning:
        sql += f" RETURNING {target}.{_quote(returning)}"
    return sql
