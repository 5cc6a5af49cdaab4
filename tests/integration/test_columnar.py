"""app.columnar against the real PostgreSQL: rows in, rows out, exactly as Core writes them."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from sqlalchemy import Boolean, Column, Integer, MetaData, String, Table, Uuid, insert, select, text

from app import columnar
from app.db import db
from app.models.base import JSONValue, UTCDateTime


@pytest.fixture
def mode() -> str:
    return "production"  # PostgreSQL only: SQLite has no arrays


@pytest.fixture
def scratch(app):
    metadata = MetaData()
    table = Table(
        "columnar_scratch", metadata,
        Column("id", Integer, primary_key=True),
        Column("key", String(16), unique=True),
        Column("ref", Uuid, nullable=True),
        Column("doc", JSONValue, nullable=True),
        Column("flag", Boolean, default=False),
        Column("at", UTCDateTime, nullable=True),
        Column("epoch", Integer, default=0),
    )
    with app.app_context():
        metadata.drop_all(db.engine)
        metadata.create_all(db.engine)
        yield table
        metadata.drop_all(db.engine)


def rows_of(table) -> list[dict]:
    with db.engine.connect() as connection:
        return [dict(row._mapping) for row in connection.execute(
            select(table, text("jsonb_typeof(doc) AS doc_type")).order_by(table.c.id))]


def test_insert_writes_what_core_writes(scratch):
    when = datetime(2026, 12, 5, 9, 30, tzinfo=UTC)
    ref = uuid.uuid4()
    rows = [{"id": 1, "key": "a", "ref": ref, "doc": {"n": [1, "two"]}, "at": when},
            {"id": 2, "key": "b", "ref": None, "doc": None, "at": None}]
    with db.engine.begin() as connection:
        columnar.insert(connection, scratch, rows)
    got = rows_of(scratch)
    with db.engine.begin() as connection:
        connection.execute(scratch.delete())
        connection.execute(insert(scratch), rows)
    assert got == rows_of(scratch)
    assert got[0] == {"id": 1, "key": "a", "ref": ref, "doc": {"n": [1, "two"]},
                           "flag": False, "at": when, "epoch": 0, "doc_type": "object"}
    assert got[1]["doc_type"] == "null"  # None is JSON null, as Core writes it
    assert got[1]["flag"] is False and got[1]["epoch"] == 0  # scalar defaults filled in


def test_insert_on_conflict_returns_only_new_rows(scratch):
    with db.engine.begin() as connection:
        columnar.insert(connection, scratch, [{"id": 1, "key": "a"}])
        ids = columnar.insert(
            connection, scratch, [{"id": 2, "key": "a"}, {"id": 3, "key": "c"},
                                  {"id": 4, "key": "c"}],
            on_conflict_do_nothing=("key",), returning="id").scalars().all()
    assert ids == [3]  # "a" was there; the second "c" repeats the first, inside the batch
    assert [row["id"] for row in rows_of(scratch)] == [1, 3]


def test_update_writes_only_rows_whose_match_holds(scratch):
    with db.engine.begin() as connection:
        columnar.insert(connection, scratch, [{"id": n, "key": str(n), "epoch": 1}
                                              for n in (1, 2, 3)])
        written = columnar.update(connection, scratch, [
            {"id": 1, "epoch": 1, "doc": {"ok": True}, "flag": True},
            {"id": 2, "epoch": 0, "doc": {"ok": False}, "flag": True},  # stale epoch
            {"id": 9, "epoch": 1, "doc": None, "flag": True},  # no such row
        ], match=("id", "epoch"), returning="id").scalars().all()
    assert written == [1]
    got = {row["id"]: (row["doc"], row["flag"]) for row in rows_of(scratch)}
    assert got == {1: ({"ok": True}, True), 2: (None, False), 3: (None, False)}


def test_names_must_be_columns_and_computed_defaults_given(scratch):
    with db.engine.begin() as connection, pytest.raises(ValueError, match="no column 'nope'"):
        columnar.insert(connection, scratch, [{"id": 1, "nope": 2}])
    with db.engine.begin() as connection, pytest.raises(ValueError, match="no column"):
        columnar.update(connection, scratch, [{"id": 1, "key": "x"}], match=("id",),
                        returning="id; DROP TABLE users")
    computed = Table("columnar_computed", MetaData(),
                     Column("id", Integer, primary_key=True),
                     Column("made", Integer, default=lambda: 7))
    with db.engine.begin() as connection, pytest.raises(ValueError, match="computed default"):
        columnar.insert(connection, computed, [{"id": 1}])
