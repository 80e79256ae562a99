"""Shared test fixtures. Tests never read `../shared`: real-format excerpts live in tests/fixtures/."""
from __future__ import annotations

from pathlib import Path

import pytest

import database

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def fixtures_dir() -> Path:
    """tests/fixtures: small excerpts of every real input format (see its README.md)."""
    return FIXTURES


@pytest.fixture
def db_path(tmp_path) -> Path:
    """Path of a fresh SQLite database file (not yet created)."""
    return tmp_path / "test.sqlite3"


@pytest.fixture
def db(db_path):
    """A connection to a fresh database with the schema, closed after the test."""
    conn = database.connect(db_path)
    yield conn
    conn.close()


@pytest.fixture(autouse=True)
def close_database_connections(monkeypatch):
    """Close every connection a test opened with database.connect (after its other fixtures end)."""
    opened = []
    connect = database.connect

    def tracked(*args, **kwargs):
        conn = connect(*args, **kwargs)
        opened.append(conn)
        return conn

    monkeypatch.setattr(database, "connect", tracked)
    yield
    for conn in opened:
        conn.close()
