"""Shared test fixtures. Tests never read `../shared`: real-format excerpts live in tests/fixtures/."""
from __future__ import annotations

from pathlib import Path

import pytest

import database
import local_servers

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


# --- a throw-away PostgreSQL server for the tests that run on both backends (`storage_location`) -----------

@pytest.fixture(scope="session")
def postgresql_server():
    """A PostgreSQL server started for this test session (initdb into a temporary folder, pg_ctl start on
    a free loopback port), stopped and deleted at the end. initdb refuses to run as root: as root, the
    server runs as the `postgres` system user. Skips when the server binaries are not installed."""
    try:
        server = local_servers.PostgreSQLServer()
    except local_servers.ServerUnavailable as exc:
        pytest.skip(str(exc))
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture
def postgresql_url(postgresql_server):
    """The URL of a fresh, empty database on the session's PostgreSQL server, dropped after the test."""
    url = postgresql_server.create_database()
    yield url
    postgresql_server.drop_database(url)


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_location(request, tmp_path) -> str:
    """A fresh database of each backend, as SM_DATABASE would name it: a SQLite file in tmp_path, or a new
    database on the session's throw-away PostgreSQL server (skipped where PostgreSQL is not installed)."""
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    return request.getfixturevalue("postgresql_url")


# --- a throw-away Redis server, for the tests of cluster mode ---------------------------------------------

@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """redis-server on a free loopback port for this test session (nothing kept on disk), stopped at the
    end. Skips when redis-server is not installed."""
    try:
        server = local_servers.RedisServer(tmp_path_factory.mktemp("redis"))
    except local_servers.ServerUnavailable as exc:
        pytest.skip(str(exc))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """The URL of a Redis database (number 15) of the session's server, emptied before and after a test."""
    import redis

    url = f"{redis_server.url}/15"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()
