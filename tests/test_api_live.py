"""The HTTP API through the real server (`make run`'s gunicorn): what only a real connection shows.

- Issue 9, finding 1: a chunked upload (Transfer-Encoding: chunked, no Content-Length) over the limit
  answered 200 with its first 32 MiB loaded. Now: 413 and nothing written, however the body is sent,
  and the client reads the answer (the server reads and drops the rest of the body; no reset).
- Binding an address other than loopback without SM_API_TOKEN refuses to start, with one line, before
  anything is bound or loaded (gunicorn and the development server alike).

Marked `multiprocess` where a server is started (about 10 s).
"""
from __future__ import annotations

import http.client
import json
import sqlite3
import subprocess
import sys
from contextlib import closing

import pytest

import api
from test_processes import PROJECT, SERVE, copy_of, loaded_database, servers  # noqa: F401 (a fixture)

CHUNK = b"s-%06d,active,2023-01-22 12:00:00 UTC\n"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return loaded_database(tmp_path_factory, 40)


def polls(db_path) -> int:
    with closing(sqlite3.connect(db_path)) as conn:
        return conn.execute("SELECT COUNT(*) FROM store_status").fetchone()[0]


def chunks(total_bytes: int, header: bool = True):
    """A CSV body of about `total_bytes`, sent in pieces of ~64 KiB (each an HTTP chunk)."""
    sent, row = 0, 0
    if header:
        yield b"store_id,status,timestamp_utc\n"
    while sent < total_bytes:
        piece = b"".join(CHUNK % (row + i) for i in range(1500))
        row += 1500
        sent += len(piece)
        yield piece


def post(port: int, body, headers: dict, **kwargs) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request("POST", "/store_status", body=body, headers=headers, **kwargs)
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read())
    finally:
        conn.close()


@pytest.mark.multiprocess
def test_finding_1_uploads_over_the_limit_are_413_however_sent(servers, template, tmp_path):
    db_path = copy_of(template, tmp_path)
    before = polls(db_path)
    server = servers("server", db_path, SM_WEB_WORKERS=1).wait_ready()
    limit = api.MAX_UPLOAD_BYTES
    # chunked, no Content-Length: 40 MiB of valid rows
    status, answer = post(server.port, chunks(40 * 2**20), {"Content-Type": "text/csv"}, encode_chunked=True)
    assert status == 413 and str(limit) in answer["error"]
    assert polls(db_path) == before
    # a declared length over the limit: refused before the body is read
    body = b"".join(chunks(limit + 100))
    assert len(body) > limit
    status, answer = post(server.port, body, {"Content-Type": "text/csv"})
    assert status == 413 and polls(db_path) == before
    # the same chunked path under the limit loads every row
    status, answer = post(server.port, chunks(3 * 2**20), {"Content-Type": "text/csv"}, encode_chunked=True)
    assert status == 200 and answer["rejected"] == {} and answer["new"] > 70_000
    loaded = before + answer["new"]
    assert polls(db_path) == loaded
    # a chunked JSON list over the limit, and a chunked trigger over its 1 MiB
    item = b'{"store_id": "j", "status": "active", "timestamp_utc": "2023-01-22 12:00:00"},'
    status, answer = post(server.port, iter([b"["] + [item * 1000] * 600), {"Content-Type": "application/json"},
                          encode_chunked=True)
    assert status == 413 and str(limit) in answer["error"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        conn.request("POST", "/trigger_report", body=iter([b" " * 2**16] * 17),
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413 and str(api.MAX_TRIGGER_BYTES) in json.loads(response.read())["error"]
    finally:
        conn.close()
    assert polls(db_path) == loaded
    with closing(sqlite3.connect(db_path)) as db:
        assert db.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 0
    log = server.log()
    assert "POST /store_status 413" in log and "Traceback" not in log


@pytest.mark.parametrize("command", [SERVE, [sys.executable, "app.py", "--dev"]], ids=["gunicorn", "dev"])
def test_a_public_address_without_a_token_refuses_to_start(tmp_path, command):
    env = {"SM_HOST": "0.0.0.0", "SM_PORT": "1", "SM_DATABASE": str(tmp_path / "db.sqlite3"),
           "SM_REPORTS_DIR": str(tmp_path / "reports"), "SM_DATA_DIR": str(tmp_path / "data"),
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("configuration error: SM_HOST=0.0.0.0"), done.stderr
    assert "SM_API_TOKEN" in lines[0]
    assert not (tmp_path / "db.sqlite3").exists() and not (tmp_path / "reports").exists()
