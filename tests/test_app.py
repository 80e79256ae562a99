"""The HTTP API (app.py, api.py, api_models.py): report jobs end to end, bad input, ingestion, limits,
access, health, metrics, the OpenAPI document and /docs.

Every app made here records each answer of the API (route, method, status); when the test ends, the
fixture checks that the app's own OpenAPI document lists that status for that operation, and that no
worker thread is left. Tests named after issue 9's findings reproduce them (`finding_N`).
"""
from __future__ import annotations

import io
from contextlib import closing
import json
import re
import shutil
import sqlite3
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import database
import api
from app import create_app, shutdown
from config import Settings

import report_generator
import sample_data

STANDARD_HEADER = ("store_id,uptime_last_hour,uptime_last_day,uptime_last_week,"
                   "downtime_last_hour,downtime_last_day,downtime_last_week")


def worker_threads():
    return [t for t in threading.enumerate() if t.name.startswith("report-worker-") and t.is_alive()]


def openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


@pytest.fixture
def settings(tmp_path):
    return Settings(database=tmp_path / "db.sqlite3", reports_dir=tmp_path / "reports",
                    data_dir=tmp_path / "data", workers=2, queue_limit=16)


@pytest.fixture
def make_app(settings):
    """`make_app(**kwargs)` -> app on the temporary database; closed (and checked) after the test."""
    made = []

    def make(app_settings=None, **kwargs):
        app = create_app(app_settings or settings, **kwargs)
        seen = []

        @app.after_request
        def record(response):
            if request_rule() is not None and request_endpoint().startswith("api."):
                seen.append((openapi_path(request_rule()), request_method(), response.status_code))
            return response

        made.append((app, seen))
        return app

    yield make
    for app, _ in made:
        shutdown(app, timeout=10)
    assert worker_threads() == [], "worker threads left behind"
    for app, seen in made:
        document = app.api_doc
        for path, method, status in seen:
            responses = document["paths"][path][method.lower()]["responses"]
            assert str(status) in responses, f"{method} {path} answered {status}, not in openapi.json"


def request_rule():
    from flask import request

    return request.url_rule.rule if request.url_rule is not None else None


def request_method():
    from flask import request

    return request.method


def request_endpoint():
    from flask import request

    return request.endpoint or ""


class FakeEngine:
    """generate_report stand-in: deterministic output, optionally blocks until released."""

    def __init__(self, block: threading.Event | None = None, error: Exception | None = None):
        self.block, self.error = block, error
        self.started = threading.Semaphore(0)
        self.calls = []

    def __call__(self, database, out_path, *, as_of=None, store_ids=None, extended=False,
                 reach_minutes=120, default_timezone="America/Chicago", progress=None):
        self.calls.append(dict(as_of=as_of, store_ids=store_ids, extended=extended, reach_minutes=reach_minutes))
        self.started.release()
        if progress:
            progress(0.25)
        if self.block is not None:
            assert self.block.wait(10), "test never released the fake engine"
        if self.error is not None:
            raise self.error
        out_path.write_text(STANDARD_HEADER + "\ns1,60.0,24.0,168.0,0.0,0.0,0.0\n")
        return SimpleNamespace(rows=1, as_of=pd.Timestamp("2023-01-25 18:13:22", tz="UTC"), seconds=0.5,
                               timings={"load": 0.2, "compute": 0.2, "write": 0.1},
                               meta={"stores": 1, "stores_with_unknown_timezone": 0})


def poll(client, report_id, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/get_report", query_string={"report_id": report_id})
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        if body["status"] != "Running":
            return body
        assert set(body) == {"status", "progress"} and 0.0 <= body["progress"] <= 1.0
        time.sleep(0.02)
    raise AssertionError(f"report {report_id} still running after {timeout} s")


def trigger(client, body=None):
    response = client.post("/trigger_report", json=body) if body is not None else client.post("/trigger_report")
    assert response.status_code == 202, response.get_json()
    report_id = response.get_json()["report_id"]
    assert uuid.UUID(report_id).version == 4
    return report_id


def assert_json_error(response, status):
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"] and "<html" not in response.get_data(as_text=True).lower()
    return body["error"]


# --- job lifecycle through the API (fake engine) -----------------------------------------------------

def test_trigger_poll_download_with_fake_engine(make_app, settings):
    engine = FakeEngine()
    client = make_app(generate=engine).test_client()
    response = client.post("/trigger_report")
    assert response.status_code == 202
    report_id = response.get_json()["report_id"]
    assert response.headers["Location"] == f"/get_report?report_id={report_id}"
    body = poll(client, report_id)
    assert body == {"status": "Complete", "file": f"{report_id}.csv", "download_url": f"/reports/{report_id}.csv",
                    "rows": 1, "as_of": "2023-01-25T18:13:22Z", "reach_minutes": 120, "warnings": [], "seconds": 0.5,
                    "timings": {"load": 0.2, "compute": 0.2, "write": 0.1},
                    "meta": {"stores": 1, "stores_with_unknown_timezone": 0}}
    download = client.get(body["download_url"])
    assert download.status_code == 200 and download.mimetype == "text/csv"
    assert download.headers["Content-Disposition"].startswith("attachment")
    assert f"{report_id}.csv" in download.headers["Content-Disposition"]
    assert download.get_data(as_text=True) == (settings.reports_dir / f"{report_id}.csv").read_text()
    # Accept: text/csv on /get_report gives the CSV itself once complete
    as_csv = client.get("/get_report", query_string={"report_id": report_id}, headers={"Accept": "text/csv"})
    assert as_csv.status_code == 200 and as_csv.mimetype == "text/csv"
    assert as_csv.data == download.data
    as_csv.close()
    download.close()
    # ... while a browser-ish Accept still gets JSON
    as_json = client.get("/get_report", query_string={"report_id": report_id},
                         headers={"Accept": "text/html,application/json;q=0.9,*/*;q=0.8"})
    assert as_json.get_json()["status"] == "Complete"
    assert engine.calls == [dict(as_of=None, store_ids=None, extended=False, reach_minutes=120)]


def test_trigger_parameters_reach_the_engine(make_app):
    engine = FakeEngine()
    client = make_app(generate=engine).test_client()
    cases = [
        ({"as_of": "2023-01-25T18:00:00Z"}, pd.Timestamp("2023-01-25 18:00", tz="UTC"), None, False),
        ({"as_of": "2023-01-25T18:00:00+00:00"}, pd.Timestamp("2023-01-25 18:00", tz="UTC"), None, False),
        ({"as_of": "2023-01-25 18:00:00.5"}, pd.Timestamp("2023-01-25 18:00:00.5", tz="UTC"), None, False),
        ({"as_of": "2023-01-25 12:00:00-06:00"}, pd.Timestamp("2023-01-25 18:00", tz="UTC"), None, False),
        ({"as_of": "2023-01-22 12:09:39.388884 UTC"}, pd.Timestamp("2023-01-22 12:09:39.388884", tz="UTC"),
         None, False),
        ({"store_ids": ["b", "a", "b"], "columns": "extended"}, None, ["b", "a"], True),
        ({"columns": "standard", "as_of": None, "store_ids": None}, None, None, False),
        ({"as_of": "2024-02-29"}, pd.Timestamp("2024-02-29", tz="UTC"), None, False),
        ({"as_of": "2200-12-31T23:59:59.999999 UTC"}, pd.Timestamp("2200-12-31 23:59:59.999999", tz="UTC"),
         None, False),
        ({"as_of": "1970-01-01T00:30+01"}, pd.Timestamp("1969-12-31 23:30", tz="UTC"), None, False),
        ({"store_ids": [" a ", "a"], "columns": None}, None, ["a"], False),
    ]
    for body, as_of, store_ids, extended in cases:
        assert poll(client, trigger(client, body))["status"] == "Complete"
        assert engine.calls[-1] == dict(as_of=as_of, store_ids=store_ids, extended=extended,
                                        reach_minutes=120), body
    # reach_minutes: absent = the service setting (120), null = unbounded, else the minutes given.
    for body, reach in [({"reach_minutes": None}, None), ({"reach_minutes": 45}, 45),
                        ({"reach_minutes": 10080}, 10080), ({}, 120), ({"reach_minutes": 60.0}, 60),
                        ({"reach_minutes": 1}, 1)]:
        body = poll(client, trigger(client, body))
        assert body["status"] == "Complete" and engine.calls[-1]["reach_minutes"] == reach


def test_reach_setting_is_the_default_of_triggers(make_app, settings):
    engine = FakeEngine()
    client = make_app(replace(settings, poll_reach_minutes=None), generate=engine).test_client()
    poll(client, trigger(client, {}))
    assert engine.calls[-1]["reach_minutes"] is None


@pytest.mark.parametrize("reach", [0, -1, 10081, 1.5, "60", True, [60]])
def test_bad_reach_minutes_is_400(make_app, reach):
    client = make_app(generate=FakeEngine()).test_client()
    response = client.post("/trigger_report", json={"reach_minutes": reach})
    assert response.status_code == 400 and "reach_minutes" in response.get_json()["error"]


def test_empty_bodies_are_the_default_report(make_app):
    engine = FakeEngine()
    client = make_app(generate=engine).test_client()
    for data, content_type in [(b"", None), (b"", "application/json"), (b"", "text/plain"),
                               (b"{}", "application/json"), (b"{}", "application/merge-patch+json")]:
        response = client.post("/trigger_report", data=data, content_type=content_type)
        assert response.status_code == 202, (data, response.get_json())
        poll(client, response.get_json()["report_id"])
    assert engine.calls == [dict(as_of=None, store_ids=None, extended=False, reach_minutes=120)] * 5


@pytest.mark.parametrize("data", [b"null", b"\t", b"  \n", b"0", b"[]", b'"{}"'])
def test_finding_8_null_whitespace_and_non_object_trigger_bodies_are_400(make_app, settings, data):
    """Issue 9, finding 8: JSON null or a lone tab as a trigger body was accepted (202)."""
    client = make_app(start_workers=False).test_client()
    assert_json_error(client.post("/trigger_report", data=data, content_type="application/json"), 400)
    with closing(database.connect(settings.database)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 0


def test_a_trigger_body_that_is_not_json_is_415(make_app):
    client = make_app(start_workers=False).test_client()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        message = assert_json_error(client.post("/trigger_report", data=b'{"columns": "extended"}',
                                                content_type=content_type), 415)
        assert "application/json" in message


def test_finding_5_trigger_bodies_are_capped_at_1_mib(make_app, settings):
    """Issue 9, finding 5: 3,000 ids of 10,000 characters (30 MB) were accepted and stored in the job row."""
    client = make_app(start_workers=False).test_client()
    huge = json.dumps({"store_ids": ["7" * 10_000] * 3_000}).encode()
    assert "1048576" in assert_json_error(client.post("/trigger_report", data=huge, content_type="application/json"),
                                          413)
    under_the_cap = json.dumps({"store_ids": ["7" * 10_000] * 50}).encode()   # 500 KB, but ids over 255
    assert "store_ids[0]" in assert_json_error(
        client.post("/trigger_report", data=under_the_cap, content_type="application/json"), 400)
    fits = json.dumps({"store_ids": ["7" * 255] * 4000}).encode()            # 1 MB of valid ids
    assert len(fits) < api.MAX_TRIGGER_BYTES and client.post(
        "/trigger_report", data=fits, content_type="application/json").status_code == 202
    with closing(database.connect(settings.database)) as conn:
        [params] = [json.loads(row[0]) for row in conn.execute("SELECT params FROM reports")]
    assert params["store_ids"] == ["7" * 255]   # repeats count once


def test_running_and_failed_states(make_app):
    release = threading.Event()
    engine = FakeEngine(block=release, error=RuntimeError("disk on fire at /secret/path"))
    client = make_app(generate=engine).test_client()
    report_id = trigger(client)
    assert engine.started.acquire(timeout=5)
    running = client.get("/get_report", query_string={"report_id": report_id})
    assert running.get_json()["status"] == "Running"
    # asking for CSV before it exists still gets the status, not an error
    early = client.get("/get_report", query_string={"report_id": report_id}, headers={"Accept": "text/csv"})
    assert early.status_code == 200 and early.get_json()["status"] == "Running"
    assert_json_error(client.get(f"/reports/{report_id}.csv"), 404)
    release.set()
    failed = poll(client, report_id)
    assert set(failed) == {"status", "error"} and failed["status"] == "Failed"
    assert "secret" not in failed["error"] and report_id in failed["error"]
    assert_json_error(client.get(f"/reports/{report_id}.csv"), 404)


def test_report_error_is_shown_to_the_user(make_app):
    error = report_generator.ReportError("there are no polls to report on; load store_status first")
    client = make_app(generate=FakeEngine(error=error)).test_client()
    assert poll(client, trigger(client)) == {"status": "Failed", "error": str(error)}

def test_queue_full_answers_429_with_retry_after(make_app, settings):
    release = threading.Event()
    engine = FakeEngine(block=release)
    client = make_app(replace(settings, workers=1, queue_limit=2), generate=engine).test_client()
    first = trigger(client)
    assert engine.started.acquire(timeout=5)          # the worker holds the first job
    waiting = [trigger(client), trigger(client)]       # fills the queue
    response = client.post("/trigger_report")
    assert "full" in assert_json_error(response, 429)
    assert int(response.headers["Retry-After"]) > 0
    health = client.get("/health").get_json()
    assert health["queue"] == {"depth": 2, "limit": 2}
    release.set()
    for report_id in [first, *waiting]:
        assert poll(client, report_id)["status"] == "Complete"
    trigger(client)  # room again


def test_ten_concurrent_triggers_fake_engine(make_app, settings):
    app = make_app(generate=FakeEngine())
    ids = run_concurrent_triggers(app, 10)
    for report_id in ids:
        assert (settings.reports_dir / f"{report_id}.csv").is_file()


def run_concurrent_triggers(app, count, body=None):
    ids, errors = [], []
    barrier = threading.Barrier(count)

    def one():
        try:
            client = app.test_client()
            barrier.wait(5)
            ids.append(trigger(client, body))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert not errors, errors
    assert len(ids) == count and len(set(ids)) == count
    client = app.test_client()
    files = set()
    for report_id in ids:
        body = poll(client, report_id, timeout=60)
        assert body["status"] == "Complete", body
        files.add(body["download_url"])
        with client.get(body["download_url"]) as response:
            assert response.status_code == 200
    assert len(files) == count
    return ids


# --- restart recovery --------------------------------------------------------------------------------

def test_restart_recovery(make_app, settings):
    conn = database.connect(settings.database)
    rerun, given_up = str(uuid.uuid4()), str(uuid.uuid4())
    for report_id, attempts in [(rerun, 1), (given_up, 2)]:
        database.create_report_job(conn, report_id, {"as_of": None, "store_ids": None, "columns": "standard"})
        conn.execute("UPDATE reports SET status = 'Running', attempts = ?, progress = 0.4 WHERE report_id = ?",
                     (attempts, report_id))
    conn.close()
    client = make_app(generate=FakeEngine()).test_client()
    assert poll(client, rerun)["status"] == "Complete"
    failed = poll(client, given_up)
    assert failed["status"] == "Failed" and "interrupted twice" in failed["error"]


def test_jobs_queued_without_workers_run_after_restart(make_app, settings):
    idle = make_app(start_workers=False)
    client = idle.test_client()
    report_id = trigger(client)
    assert client.get("/get_report", query_string={"report_id": report_id}).get_json() == \
        {"status": "Running", "progress": 0.0}
    assert_json_error_or_health(client.get("/health"), 503)
    shutdown(idle)
    client = make_app(generate=FakeEngine()).test_client()
    assert poll(client, report_id)["status"] == "Complete"


def assert_json_error_or_health(response, status):
    assert response.status_code == status
    assert response.get_json()["status"] == "unhealthy"


# --- bad input ---------------------------------------------------------------------------------------

BAD_TRIGGER_BODIES = [
    (b"{not json", "application/json", "not valid JSON"),
    (b"\xff\xfe", "application/json", "not valid JSON"),
    (b"\xc3\x28", "application/json", "not valid JSON"),
    (b"[1, 2]", "application/json", "JSON object"),
    (b'{"reach_minutes": NaN}', "application/json", "reach_minutes"),
    (b"[" * 100_000, "application/json", "nested too deeply"),
    (b'"standard"', "application/json", "JSON object"),
    (b'{"colums": "standard"}', "application/json", "unknown key"),
    (b'{"as_of": "yesterday"}', "application/json", "as_of"),
    (b'{"as_of": 1674670402}', "application/json", "as_of"),
    (b'{"as_of": ""}', "application/json", "as_of"),
    (b'{"as_of": "2023-02-30T00:00:00Z"}', "application/json", "as_of"),
    (b'{"as_of": "2023-01-25T25:00:00Z"}', "application/json", "as_of"),
    (b'{"as_of": "0001-01-01T00:00:00+14:00"}', "application/json", "as_of"),
    (b'{"as_of": "9999-01-01T00:00:00Z"}', "application/json", "as_of"),
    (b'{"as_of": "1969-12-31T23:59:59Z"}', "application/json", "as_of"),
    (b'{"as_of": "2201-01-01"}', "application/json", "as_of"),
    (b'{"as_of": "2100-02-29"}', "application/json", "as_of"),
    (b'{"as_of": " 2023-01-25T18:00:00Z"}', "application/json", "as_of"),
    (b'{"as_of": "2023-01-25T18:00:00.1234567Z"}', "application/json", "as_of"),
    (b'{"store_ids": "8419537941919820732"}', "application/json", "store_ids"),
    (b'{"store_ids": {"a": 1}}', "application/json", "store_ids"),
    (b'{"store_ids": [8419537941919820732]}', "application/json", "store_ids[0]"),
    (b'{"store_ids": ["a", null]}', "application/json", "store_ids[1]"),
    (b'{"store_ids": [""]}', "application/json", "store_ids[0]"),
    (b'{"store_ids": []}', "application/json", "store_ids"),
    (b'{"store_ids": ["' + b"x" * 256 + b'"]}', "application/json", "store_ids[0]"),
    (b'{"columns": "all"}', "application/json", "columns"),
    (b'{"columns": ["extended"]}', "application/json", "columns"),
]


@pytest.mark.parametrize("data,content_type,mentions", BAD_TRIGGER_BODIES)
def test_bad_trigger_bodies(make_app, settings, data, content_type, mentions):
    client = make_app(start_workers=False).test_client()
    message = assert_json_error(client.post("/trigger_report", data=data, content_type=content_type), 400)
    assert mentions in message
    conn = database.connect(settings.database)
    assert conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 0  # nothing was queued
    conn.close()


@pytest.mark.parametrize("query,status", [
    ("", 400),
    ("report_id=", 400),
    ("report_id=%20", 400),
    ("report_id=abc", 400),
    ("report_id=../../database.py", 400),
    ("report_id=123e4567e89b12d3a456426614174000", 400),
    ("report_id=123e4567-e89b-12d3-a456-42661417400", 400),
    (f"report_id={uuid.uuid4()}", 404),
    (f"report_id={str(uuid.uuid4()).upper()}", 404),
])
def test_bad_report_ids(make_app, query, status):
    client = make_app(start_workers=False).test_client()
    assert_json_error(client.get(f"/get_report?{query}"), status)


def test_download_route_only_serves_completed_jobs(make_app, settings):
    app = make_app(generate=FakeEngine())
    client = app.test_client()
    report_id = trigger(client)
    poll(client, report_id)
    stranger = str(uuid.uuid4())  # a CSV in the reports directory that no job owns
    (settings.reports_dir / f"{stranger}.csv").write_text("secret\n")
    (settings.reports_dir / "notes.csv").write_text("secret\n")
    # a job row whose file name points outside the reports directory is refused too
    conn = database.connect(settings.database)
    evil = str(uuid.uuid4())
    database.create_report_job(conn, evil, {})
    database.mark_report_complete(conn, evil, file="../db.sqlite3", rows=0, as_of="2023-01-01T00:00:00Z",
                                  seconds=0)
    conn.close()
    for url in [
        "/reports/..%2Fdatabase.py", "/reports/..%2F..%2Fapp.py", "/reports/%2e%2e%2fconfig.py",
        "/reports/../app.py", "/reports/..\\app.py", "/reports/notes.csv", f"/reports/{stranger}.csv",
        f"/reports/{evil}.csv", f"/reports/{report_id}.txt",
        f"/reports/{report_id}.csv/../../app.py", "/reports/",
    ]:
        response = client.get(url)
        assert_json_error(response, 404)
        assert b"secret" not in response.data
    assert "DELETE" in client.get(f"/reports/{report_id}").headers["Allow"]   # the job itself: DELETE only
    for url in (f"/reports/{report_id}.csv", f"/reports/{report_id.upper()}.csv"):
        with client.get(url) as response:
            assert response.status_code == 200


def test_http_errors_are_json(make_app, settings):
    app = make_app(start_workers=False)
    client = app.test_client()
    assert_json_error(client.get("/nope"), 404)
    response = client.get("/trigger_report")
    assert_json_error(response, 405)
    assert "POST" in response.headers["Allow"]
    assert_json_error(client.delete("/get_report"), 405)
    assert_json_error(client.patch("/reports"), 405)


def test_bodies_over_the_limit_are_413_and_nothing_is_written(make_app, settings, monkeypatch):
    monkeypatch.setattr(api, "MAX_UPLOAD_BYTES", 1000)
    client = make_app(start_workers=False).test_client()
    body = "store_id,status,timestamp_utc\n" + "s1,active,2023-01-22 12:00:00 UTC\n" * 40   # 1,390 bytes
    assert "1000" in assert_json_error(client.post("/store_status", data=body, content_type="text/csv"), 413)
    assert "1000" in assert_json_error(client.post("/special_hours", data=b"x" * 1001, content_type="text/csv"), 413)
    items = [{"store_id": "s1", "status": "active", "timestamp_utc": "2023-01-22 12:00:00 UTC"}] * 20
    assert_json_error(client.post("/store_status", json=items), 413)
    assert_json_error(client.post("/trigger_report", data=b" " * (api.MAX_TRIGGER_BYTES + 1),
                                  content_type="application/json"), 413)
    assert poll_count(settings) == 0
    exactly = body[:body.index("\n", 900) + 1]
    assert len(exactly) <= 1000
    assert client.post("/store_status", data=exactly, content_type="text/csv").status_code == 200


def test_finding_1_a_chunked_body_over_the_limit_is_413_and_nothing_is_written(make_app, settings, monkeypatch):
    """Issue 9, finding 1: a chunked upload (no Content-Length) over the limit loaded its first 32 MiB.
    Here in-process: a WSGI request whose body has no length, ended by the server (as gunicorn and werkzeug
    do for Transfer-Encoding: chunked). tests/test_api_live.py sends a real chunked request to gunicorn."""
    from werkzeug.test import EnvironBuilder, run_wsgi_app

    monkeypatch.setattr(api, "MAX_UPLOAD_BYTES", 64 * 1024)
    app = make_app(start_workers=False)
    rows = "".join(f"s{i},active,2023-01-22 12:00:00 UTC\n" for i in range(3000)).encode()   # 105 KB

    def chunked(body: bytes):
        environ = EnvironBuilder(path="/store_status", method="POST", data=body,
                                 headers={"Content-Type": "text/csv", "Transfer-Encoding": "chunked"}).get_environ()
        del environ["CONTENT_LENGTH"]
        environ["wsgi.input_terminated"] = True
        app_iter, status, headers = run_wsgi_app(app, environ, buffered=True)
        return int(status.split()[0]), json.loads(b"".join(app_iter))

    status, answer = chunked(b"store_id,status,timestamp_utc\n" + rows)
    assert status == 413 and str(64 * 1024) in answer["error"]
    assert poll_count(settings) == 0
    status, answer = chunked(b"store_id,status,timestamp_utc\n" + rows[:60_000].rsplit(b"\n", 1)[0] + b"\n")
    assert status == 200 and answer["new"] == poll_count(settings) > 1000


def test_unexpected_errors_are_500_json_without_details(make_app, monkeypatch, caplog):
    client = make_app(start_workers=False).test_client()

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail from the database layer")

    monkeypatch.setattr(database, "get_report_job", broken)
    response = client.get("/get_report", query_string={"report_id": str(uuid.uuid4())})
    message = assert_json_error(response, 500)
    assert "secret" not in message
    assert any("secret detail" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


# --- ingestion ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("data,content_type,status", [
    (b"", "text/csv", 400),
    (b"   ", "application/json", 400),
    (b"{not json", "application/json", 400),
    (b'{"store_id": "a"}', "application/json", 400),
    (b'[1, 2]', "application/json", 400),
    (b'[{"store_id": "a", "status": "active", "timestamp": "2023-01-01 00:00:00 UTC"}]', "application/json", 400),
    (b'[{"store_id": {"x": 1}, "status": "active", "timestamp_utc": "2023-01-01"}]', "application/json", 400),
    (b'[{"store_id": "a", "status": true, "timestamp_utc": "2023-01-01"}]', "application/json", 400),
    (b"<polls/>", "application/xml", 415),
    (b"store_id,status,timestamp_utc\na,active,2023-01-01\n", "application/csv", 415),
    (b"store_id,status,timestamp_utc\na,active,2023-01-01\n", None, 415),
    (b"[" * 100_000, "application/json", 400),
    (b'[{"store_id": "\\ud800", "status": "active", "timestamp_utc": "2023-01-01"}]', "application/json", 400),
    (b'[{"store_id": 17, "status": "active", "timestamp_utc": "2023-01-01"}]', "application/json", 400),
    (b'[{"store_id": "a", "status": "active"}]', "application/json", 400),
    (b'null', "application/json", 400),
    (b"store_id,status,timestamp_utc\rx\n", "text/csv", 400),
])
def test_bad_store_status_bodies(make_app, settings, data, content_type, status):
    client = make_app(start_workers=False).test_client()
    assert_json_error(client.post("/store_status", data=data, content_type=content_type), status)
    assert poll_count(settings) == 0


def test_finding_8_text_plain_polls_are_415_and_null_timestamps_400(make_app, settings):
    """Issue 9, finding 8: a text/plain body was loaded as CSV (the README says 415), and JSON polls with
    `timestamp_utc: null` were answered 200 against the schema."""
    client = make_app(start_workers=False).test_client()
    csv_body = b"store_id,status,timestamp_utc\ns1,active,2023-01-22 12:00:00 UTC\n"
    assert "text/plain" in assert_json_error(client.post("/store_status", data=csv_body, content_type="text/plain"),
                                             415)
    message = assert_json_error(client.post("/store_status", json=[
        {"store_id": "s1", "status": "active", "timestamp_utc": "2023-01-22 12:00:00 UTC"},
        {"store_id": "s1", "status": "active", "timestamp_utc": None}]), 400)
    assert "item 1" in message and "timestamp_utc" in message
    assert poll_count(settings) == 0   # the whole request is refused, not just the item


def stored_store_ids(settings) -> list[str]:
    with closing(database.connect(settings.database)) as conn:
        return sorted(row[0] for row in conn.execute("SELECT store_id FROM stores"))


def test_finding_2_json_values_stay_whole(make_app, settings):
    """Issue 9, finding 2: a carriage return inside a JSON store_id stored a poll under a phantom store `B`
    (JSON polls went through CSV text). Now they go to the loader as a DataFrame: a value stays one value,
    and an id with a control character is rejected as unsafe, in JSON as in CSV."""
    client = make_app(start_workers=False).test_client()
    stamp = "2023-01-22 12:00:00 UTC"
    answer = client.post("/store_status", json=[
        {"store_id": "crtestA\rB", "status": "active", "timestamp_utc": stamp},
        {"store_id": "line\nbreak", "status": "active", "timestamp_utc": stamp},
        {"store_id": 'a,"b"', "status": "inactive", "timestamp_utc": stamp},
        {"store_id": "tab\tin", "status": "active", "timestamp_utc": stamp},
    ]).get_json()
    assert (answer["read"], answer["new"], answer["rejected"]) == (4, 1, {"unsafe store_id": 3})
    assert stored_store_ids(settings) == ['a,"b"']
    special = client.post("/special_hours", json=[{"store_id": "x\ry", "date": "2023-12-25"},
                                                  {"store_id": "s,1", "date": "2023-12-25"}]).get_json()
    assert (special["new"], special["rejected"]) == (1, {"unsafe store_id": 1})
    assert special_rows(settings) == [("s,1", "2023-12-25", None, None)]


def test_findings_3_and_4_unsafe_store_ids_are_rejected_from_json_as_from_csv(make_app, settings):
    """Issue 9, findings 3 and 4: ids of any length, formula starts and NUL were stored. The loader
    rejects them (`unsafe store_id`); through the API, JSON and CSV alike."""
    client = make_app(start_workers=False).test_client()
    stamp = "2023-01-22 12:00:00 UTC"
    unsafe = ["x" * 256, "=HYPERLINK(\"http://x\")", "+1", "@SUM(A1)", "nul\x00id", "x" * 1_000_000]
    answer = client.post("/store_status", json=[{"store_id": sid, "status": "active", "timestamp_utc": stamp}
                                                for sid in unsafe + ["x" * 255, "-17"]]).get_json()
    assert (answer["new"], answer["rejected"]) == (2, {"unsafe store_id": len(unsafe)})
    assert len(answer["examples"]["unsafe store_id"]) < 200   # a 1 MB id does not make a 1 MB answer
    csv_body = "store_id,status,timestamp_utc\n" + "".join(f"{sid},active,{stamp}\n" for sid in unsafe[:4])
    answer = client.post("/store_status", data=csv_body, content_type="text/csv").get_json()
    assert answer["rejected"] == {"unsafe store_id": 4}
    assert stored_store_ids(settings) == ["-17", "x" * 255]


def test_store_status_missing_column_is_400(make_app):
    client = make_app(start_workers=False).test_client()
    message = assert_json_error(client.post("/store_status", data=b"store_id,status\na,active\n",
                                            content_type="text/csv"), 400)
    assert "timestamp_utc" in message


def poll_count(settings):
    conn = database.connect(settings.database)
    try:
        return conn.execute("SELECT COUNT(*) FROM store_status").fetchone()[0]
    finally:
        conn.close()


def test_store_status_csv_and_json(make_app, settings):
    client = make_app(start_workers=False).test_client()
    body = ("store_id,status,timestamp_utc\n"
            "s1,active,2023-01-22 12:09:39.388884 UTC\n"
            "s1,inactive,2023-01-22 13:09:39 UTC\n"
            "s2,maybe,2023-01-22 13:09:39 UTC\n"
            "s3,active,2023-02-30 13:09:39 UTC\n")
    response = client.post("/store_status", data=body, content_type="text/csv; charset=utf-8")
    assert response.status_code == 200, response.get_json()
    summary = response.get_json()
    assert summary_counts(summary) == (4, 2, 2)
    items = [{"store_id": "s2", "status": "active", "timestamp_utc": "2023-01-22T14:00:00Z"},
             {"store_id": "s2", "status": "inactive", "timestamp_utc": "2023-01-22T15:00:00+00:00"},
             {"store_id": "", "status": "active", "timestamp_utc": "2023-01-22T15:00:00Z"}]
    response = client.post("/store_status", json=items)
    assert response.status_code == 200, response.get_json()
    assert summary_counts(response.get_json()) == (3, 2, 1)
    assert poll_count(settings) == 4


def test_store_status_answer_says_what_was_stored(make_app, settings):
    client = make_app(start_workers=False).test_client()
    body = ("store_id,status,timestamp_utc\n"
            "s1,active,2023-01-22 12:00:00 UTC\ns1,active,2023-01-22 13:00:00 UTC\n"
            "s1,active,2023-01-22 12:00:00 UTC\n")
    first = client.post("/store_status", data=body, content_type="text/csv").get_json()
    assert {k: first[k] for k in ("read", "new", "already_stored", "changed", "conflicting", "duplicates",
                                  "rejected", "removed", "loaded")} == {
        "read": 3, "new": 2, "already_stored": 0, "changed": 0, "conflicting": 0, "duplicates": 1,
        "rejected": {}, "removed": 0, "loaded": 2}
    # the same polls again, one of them now inactive: nothing new, one stored poll changed
    items = [{"store_id": "s1", "status": "active", "timestamp_utc": "2023-01-22T12:00:00Z"},
             {"store_id": "s1", "status": "inactive", "timestamp_utc": "2023-01-22T13:00:00Z"}]
    again = client.post("/store_status", json=items).get_json()
    assert (again["read"], again["new"], again["already_stored"], again["changed"]) == (2, 0, 1, 1)
    assert poll_count(settings) == 2


def special_rows(settings) -> list[tuple]:
    conn = database.connect(settings.database)
    try:
        return sorted(tuple(row) for row in conn.execute("SELECT * FROM special_hours"))
    finally:
        conn.close()


def test_special_hours_csv_and_json(make_app, settings):
    client = make_app(start_workers=False).test_client()
    body = ("store_id,date,start_time_local,end_time_local\n"
            "s1,2023-12-25,,\n"
            "s1,2023-12-24,9:00,14:00\n"
            "s2,2023-02-30,09:00:00,10:00:00\n"
            "s3,2023-12-25,09:00:00,\n"
            "s4,2023-12-25,25:00:00,10:00:00\n"
            ",2023-12-25,09:00:00,10:00:00\n")
    response = client.post("/special_hours", data=body, content_type="text/csv; charset=utf-8")
    assert response.status_code == 200, response.get_json()
    summary = response.get_json()
    assert (summary["table"], summary["read"], summary["new"], summary["loaded"]) == ("special_hours", 6, 2, 2)
    assert summary["rejected"] == {"empty store_id": 1, "bad date": 1, "one time empty": 1,
                                   "time outside 00:00:00..23:59:59": 1}
    assert summary["examples"]["bad date"] == "line 4: s2,2023-02-30,09:00:00,10:00:00"
    assert special_rows(settings) == [("s1", "2023-12-24", "09:00:00", "14:00:00"), ("s1", "2023-12-25", None, None)]
    # JSON: null or absent times mean closed; s1's 2023-12-25 is replaced, its 2023-12-24 kept
    items = [{"store_id": "s1", "date": "2023-12-25", "start_time_local": "12:00", "end_time_local": "14:00"},
             {"store_id": "s2", "date": "2023-12-31", "start_time_local": None, "end_time_local": None},
             {"store_id": "s3", "date": "2024-01-01"}]
    summary = client.post("/special_hours", json=items).get_json()
    assert (summary["read"], summary["new"], summary["already_stored"], summary["removed"]) == (3, 3, 0, 1)
    assert special_rows(settings) == [
        ("s1", "2023-12-24", "09:00:00", "14:00:00"), ("s1", "2023-12-25", "12:00:00", "14:00:00"),
        ("s2", "2023-12-31", None, None), ("s3", "2024-01-01", None, None)]
    again = client.post("/special_hours", json=items).get_json()
    assert (again["new"], again["already_stored"], again["removed"]) == (0, 3, 0)


@pytest.mark.parametrize("data,content_type,status", [
    (b"", "text/csv", 400),
    (b"{not json", "application/json", 400),
    (b'{"store_id": "a"}', "application/json", 400),
    (b'[1]', "application/json", 400),
    (b'[{"store_id": "a", "day": "2023-12-25"}]', "application/json", 400),
    (b'[{"store_id": "a", "date": ["2023-12-25"]}]', "application/json", 400),
    (b"store_id,start_time_local,end_time_local\na,,\n", "text/csv", 400),
    (b"<closed/>", "application/xml", 415),
    (b"store_id,date,start_time_local,end_time_local\na,2023-12-25,,\n", "text/plain", 415),
    (b'[{"store_id": "a", "date": "2023-12-25", "start_time_local": 9}]', "application/json", 400),
    (b'[{"store_id": "a", "date": null}]', "application/json", 400),
])
def test_bad_special_hours_bodies(make_app, data, content_type, status):
    client = make_app(start_workers=False).test_client()
    message = assert_json_error(client.post("/special_hours", data=data, content_type=content_type), status)
    if b"start_time_local" in data and content_type == "text/csv":
        assert "missing column date" in message


def summary_counts(summary: dict) -> tuple[int, int, int]:
    """(read, loaded, rejected) from a load summary, whatever shape its rejected part has."""
    rejected = summary.get("rejected")
    if isinstance(rejected, dict):
        rejected = sum(v if isinstance(v, int) else v.get("count", 0) for v in rejected.values())
    return summary["read"], summary["loaded"], rejected


# --- health, metrics, the request log -----------------------------------------------------------------

def test_health(make_app):
    client = make_app(generate=FakeEngine()).test_client()
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "ok", "reports": "ok",
                                   "workers": {"alive": 2, "configured": 2}, "queue": {"depth": 0, "limit": 16}}


def test_health_is_503_when_the_database_cannot_be_written(make_app, settings, monkeypatch):
    client = make_app(generate=FakeEngine()).test_client()
    connect = database.connect

    def read_only(path):   # the real database file, opened the way a read-only file system would let it
        conn = connect(path)
        conn.close()
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn

    monkeypatch.setattr(database, "connect", read_only)
    response = client.get("/health")
    body = response.get_json()
    assert response.status_code == 503 and body["status"] == "unhealthy"
    assert body["database"].startswith("cannot be written") and "readonly" in body["database"]
    assert body["reason"].startswith("the database cannot be written")
    assert body["reports"] == "ok" and body["workers"] == {"alive": 2, "configured": 2}


def test_finding_7_health_is_503_when_the_reports_folder_cannot_be_written(make_app, settings):
    """Issue 9, finding 7: with a full or read-only reports folder, /health still answered 200 "ok".
    (Tests run as root, which may write anywhere; a folder replaced by a file cannot be written by anyone.)"""
    client = make_app(generate=FakeEngine()).test_client()
    shutil.rmtree(settings.reports_dir)
    settings.reports_dir.write_text("not a folder\n")
    response = client.get("/health")
    body = response.get_json()
    assert response.status_code == 503
    assert body["reports"].startswith("cannot be written") and body["database"] == "ok"
    assert body["reason"].startswith("the reports folder cannot be written")
    settings.reports_dir.unlink()
    settings.reports_dir.mkdir()
    assert client.get("/health").status_code == 200


def test_health_answers_while_another_connection_writes(make_app, settings):
    """A write held elsewhere (a long load) is not a reason to call the database unwritable."""
    client = make_app(generate=FakeEngine()).test_client()
    with closing(sqlite3.connect(settings.database, isolation_level=None)) as writer:
        writer.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        response = client.get("/health")
        writer.execute("ROLLBACK")
    assert response.status_code == 200 and response.get_json()["database"] == "ok"
    assert time.monotonic() - started < 5


def test_one_log_line_per_request_without_the_token(make_app, settings, caplog):
    client = make_app(replace(settings, api_token="s3cret-token"), generate=FakeEngine()).test_client()
    with caplog.at_level("INFO", logger="store_monitoring.access"):
        client.post("/trigger_report", headers={"Authorization": "Bearer s3cret-token"})
        client.get("/get_report?report_id=nope", headers={"Authorization": "Bearer s3cret-token"})
        client.get("/health")
        client.get("/metrics")
    lines = [r.getMessage() for r in caplog.records if r.name == "store_monitoring.access"]
    assert len(lines) == 4
    assert re.fullmatch(r"POST /trigger_report 202 \d+\.\d{3} s 127\.0\.0\.1", lines[0]), lines[0]
    assert re.fullmatch(r"GET /get_report 400 \d+\.\d{3} s 127\.0\.0\.1", lines[1]), lines[1]  # no query
    assert lines[2].startswith("GET /health 200 ") and lines[3].startswith("GET /metrics 401 ")
    assert not any("s3cret" in r.getMessage() for r in caplog.records)


def test_metrics_in_prometheus_text_format(make_app, settings):
    from prometheus_client.parser import text_string_to_metric_families

    release = threading.Event()
    engine = FakeEngine(block=release)
    client = make_app(replace(settings, workers=1), generate=engine).test_client()
    first = trigger(client)
    assert engine.started.acquire(timeout=5)
    trigger(client)
    client.post("/store_status", data="store_id,status,timestamp_utc\ns1,active,2023-01-22 12:00:00 UTC\n"
                                      "s1,maybe,2023-01-22 13:00:00 UTC\n", content_type="text/csv")
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    families = {family.name: family for family in text_string_to_metric_families(response.get_data(as_text=True))}
    jobs = {sample.labels["status"]: sample.value for sample in families["store_monitoring_report_jobs"].samples}
    assert (jobs["Running"], jobs["Queued"], jobs["Complete"]) == (1, 1, 0)
    assert families["store_monitoring_queue_depth"].samples[0].value == 1
    rows = {(s.labels["table"], s.labels["outcome"]): s.value
            for s in families["store_monitoring_rows_ingested"].samples if s.name.endswith("_total")}
    assert rows[("store_status", "new")] == 1 and rows[("store_status", "rejected")] == 1
    release.set()
    poll(client, first)


# --- access: the API token --------------------------------------------------------------------------

TOKEN = "correct-horse-battery-staple"


def test_with_a_token_every_endpoint_but_health_needs_it(make_app, settings):
    app = make_app(replace(settings, api_token=TOKEN), generate=FakeEngine())
    client = app.test_client()
    report_id = str(uuid.uuid4())
    calls = [("post", "/trigger_report"), ("get", f"/get_report?report_id={report_id}"), ("get", "/reports"),
             ("get", f"/reports/{report_id}.csv"), ("delete", f"/reports/{report_id}"),
             ("post", "/store_status"), ("post", "/special_hours"), ("get", "/metrics"),
             ("get", "/openapi.json"), ("get", "/docs/openapi.json"), ("get", "/docs/swagger"),
             ("get", "/docs/swagger/js/swagger-ui-bundle.js"), ("get", "/nope")]
    for method, url in calls:
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"Basic {TOKEN}"},
                        {"Authorization": "Bearer"}, {"Authorization": TOKEN}):
            response = getattr(client, method)(url, headers=headers)
            assert_json_error(response, 401)
            assert response.headers["WWW-Authenticate"].startswith('Bearer realm="store-monitoring"'), (url, headers)
    assert client.get("/health").status_code == 200
    good = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/reports", headers=good).status_code == 200
    assert client.get("/metrics", headers={"authorization": f"bearer {TOKEN}"}).status_code == 200
    report_id = client.post("/trigger_report", headers=good).get_json()["report_id"]
    assert client.get(f"/get_report?report_id={report_id}", headers=good).status_code == 200
    assert client.get("/openapi.json", headers=good).status_code == 200


def test_with_a_token_the_docs_take_the_pages_login(make_app, settings):
    """A browser cannot send a bearer header to /docs: it logs in once on the pages (a cookie), which the
    documentation also takes. The API itself does not."""
    import dashboard

    client = make_app(replace(settings, api_token=TOKEN), start_workers=False).test_client()
    response = client.get("/docs")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login?next=/docs")
    client.set_cookie(dashboard.TOKEN_COOKIE, "wrong")
    assert client.get("/docs/swagger").status_code == 401
    client.set_cookie(dashboard.TOKEN_COOKIE, TOKEN)
    assert client.get("/docs", follow_redirects=True).status_code == 200
    for url in ("/docs/swagger/css/swagger-ui.css", "/openapi.json", "/docs/openapi.json"):
        assert client.get(url).status_code == 200, url
    assert_json_error(client.get("/reports"), 401)
    assert_json_error(client.post("/trigger_report"), 401)


def test_the_document_declares_the_bearer_scheme_only_when_a_token_is_set(make_app, settings):
    open_doc = make_app(start_workers=False).test_client().get("/openapi.json").get_json()
    assert "securitySchemes" not in open_doc["components"] and "security" not in open_doc
    assert all("401" not in op["responses"] for item in open_doc["paths"].values() for op in item.values())
    app = make_app(replace(settings, api_token=TOKEN), start_workers=False)
    document = app.test_client().get("/openapi.json", headers={"Authorization": f"Bearer {TOKEN}"}).get_json()
    assert document["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert document["security"] == [{"bearer": []}]
    for path, item in document["paths"].items():
        for operation in item.values():
            if path == "/health":
                assert operation["security"] == [] and "401" not in operation["responses"]
            else:
                assert "401" in operation["responses"] and "security" not in operation


# --- report jobs: list and delete -------------------------------------------------------------------

def test_list_reports_newest_first_paged_with_the_total(make_app):
    client = make_app(start_workers=False).test_client()
    ids = [trigger(client, body) for body in
           [{}, {"columns": "extended"}, {"store_ids": ["a", "b", "a"]}, {"reach_minutes": None},
            {"as_of": "2023-01-25T12:00:00+02:00"}]]
    first = client.get("/reports?limit=2").get_json()
    assert (first["total"], first["limit"], first["offset"]) == (5, 2, 0)
    assert [r["report_id"] for r in first["reports"]] == ids[::-1][:2]
    everything = client.get("/reports", query_string={"limit": 10, "offset": 0}).get_json()["reports"]
    assert [r["report_id"] for r in everything] == ids[::-1]
    assert [r["report_id"] for r in client.get("/reports?limit=2&offset=4").get_json()["reports"]] == ids[:1]
    assert client.get("/reports?offset=5").get_json() == {"reports": [], "total": 5, "limit": 50, "offset": 5}
    newest = everything[0]
    assert newest["status"] == "Queued" and newest["download_url"] is None and newest["attempts"] == 0
    assert newest["parameters"] == {"as_of": "2023-01-25T10:00:00Z", "stores_requested": None,
                                    "columns": "standard", "reach_minutes": 120}
    assert everything[2]["parameters"]["stores_requested"] == 2
    assert everything[1]["parameters"]["reach_minutes"] is None
    for query in ("limit=0", "limit=1001", "offset=-1", "limit=x", "offset=1e3"):
        assert_json_error(client.get(f"/reports?{query}"), 400)


def test_delete_a_report_and_its_file(make_app, settings):
    client = make_app(generate=FakeEngine()).test_client()
    report_id = trigger(client)
    body = poll(client, report_id)
    listed = client.get("/reports").get_json()["reports"][0]
    assert listed["status"] == "Complete" and listed["download_url"] == body["download_url"] and listed["rows"] == 1
    path = settings.reports_dir / f"{report_id}.csv"
    assert path.is_file()
    response = client.delete(f"/reports/{report_id.upper()}")
    assert response.status_code == 204 and response.data == b""
    assert not path.exists()
    assert_json_error(client.get("/get_report", query_string={"report_id": report_id}), 404)
    assert_json_error(client.get(f"/reports/{report_id}.csv"), 404)
    assert_json_error(client.delete(f"/reports/{report_id}"), 404)
    assert_json_error(client.delete("/reports/not-a-uuid"), 404)
    assert client.get("/reports").get_json()["total"] == 0


# --- uploads: spooled, one at a time ----------------------------------------------------------------

def test_large_uploads_are_spooled_to_a_file_and_removed(make_app, settings, monkeypatch):
    monkeypatch.setattr(api, "SPOOL_BYTES", 1024)
    client = make_app(start_workers=False).test_client()
    seen = []
    load_files = database.load_files

    def spy(conn, **kwargs):
        seen.append(kwargs)
        return load_files(conn, **kwargs)

    monkeypatch.setattr(database, "load_files", spy)
    body = "store_id,status,timestamp_utc\n" + "".join(f"s{i},active,2023-01-22 12:00:00 UTC\n" for i in range(100))
    answer = client.post("/store_status", data=body, content_type="text/csv").get_json()
    assert (answer["new"], answer["source"]) == (100, "<request>")
    [call] = seen
    assert isinstance(call["status"], Path) and call["status"].parent == api.uploads_dir(settings)
    assert call["name"] == "<request>"
    assert list(api.uploads_dir(settings).iterdir()) == []   # gone once answered
    with closing(database.connect(settings.database)) as conn:
        assert json.loads(conn.execute("SELECT summary FROM loads").fetchone()[0])["source"] == "<request>"


def test_uploads_take_turns_and_a_long_wait_is_429(make_app, settings, monkeypatch):
    monkeypatch.setattr(api, "UPLOAD_WAIT_SECONDS", 0.3)
    app = make_app(start_workers=False)
    client = app.test_client()
    slots = app.extensions[api.UPLOADS_EXTENSION]
    body = "store_id,status,timestamp_utc\ns1,active,2023-01-22 12:00:00 UTC\n"
    assert slots.acquire(timeout=1)   # another upload is being loaded
    try:
        response = client.post("/store_status", data=body, content_type="text/csv")
        assert "retry" in assert_json_error(response, 429) and response.headers["Retry-After"] == "5"
        assert poll_count(settings) == 0
        waiting = []
        thread = threading.Thread(target=lambda: waiting.append(
            app.test_client().post("/store_status", data=body, content_type="text/csv").status_code))
        thread.start()
        time.sleep(0.1)
    finally:
        slots.release()                # ... which ends: the waiting upload goes ahead
    thread.join(10)
    assert waiting == [200] and poll_count(settings) == 1


# --- the OpenAPI document and /docs -----------------------------------------------------------------

def test_openapi_document_matches_the_api_routes(make_app):
    app = make_app(start_workers=False)
    document = app.test_client().get("/openapi.json").get_json()
    assert document == app.test_client().get("/docs/openapi.json").get_json()
    assert document["openapi"] == "3.1.0"
    routes = {}
    for rule in app.url_map.iter_rules():
        if rule.endpoint.startswith("api."):
            methods = {m.lower() for m in rule.methods} - {"head", "options"}
            routes.setdefault(openapi_path(rule.rule), set()).update(methods)
    documented = {path: set(item) for path, item in document["paths"].items()}
    assert routes == documented
    assert set(routes) == {"/trigger_report", "/get_report", "/reports", "/reports/{report_id}.csv",
                           "/reports/{report_id}", "/store_status", "/special_hours", "/health", "/metrics",
                           "/reports/{report_id}/rows", "/stores/{store_id}/timeline", "/stores", "/data/summary"}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert "500" in operation["responses"], (path, method)
            for status, answer in operation["responses"].items():
                if status.startswith("4"):   # every error answer is {"error": ...}
                    assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
            for name in re.findall(r"{([^}]+)}", path):
                assert any(p["name"] == name and p["in"] == "path" for p in operation.get("parameters", []))
    assert document["components"]["schemas"]["Error"]["required"] == ["error"]
    text = json.dumps(document)
    for ref in re.findall(r'"\$ref": "#/components/schemas/([^"]+)"', text):
        assert ref in document["components"]["schemas"]
    assert "null" not in {json.dumps(v) for v in document["components"].values()}
    # what the README promises is in the document
    trigger_op = document["paths"]["/trigger_report"]["post"]
    assert trigger_op["requestBody"]["required"] is False and set(trigger_op["responses"]) >= {"202", "400", "413",
                                                                                               "415", "429"}
    assert "Location" in trigger_op["responses"]["202"]["headers"]
    assert "Retry-After" in trigger_op["responses"]["429"]["headers"]
    assert "text/csv" in document["paths"]["/get_report"]["get"]["responses"]["200"]["content"]
    for upload in ("/store_status", "/special_hours"):
        operation = document["paths"][upload]["post"]
        assert set(operation["requestBody"]["content"]) == {"text/csv", "application/json"}
        assert set(operation["responses"]) >= {"200", "400", "413", "415", "429"}


def test_the_document_is_the_rule_for_as_of(make_app):
    """The as_of pattern in the document admits exactly what the server accepts (issue 9, finding 8:
    a year outside 1970-2200 got a 400 the document did not mention)."""
    app = make_app(start_workers=False)
    document = app.test_client().get("/openapi.json").get_json()
    [schema, _] = document["components"]["schemas"]["TriggerRequest"]["properties"]["as_of"]["anyOf"]
    pattern = re.compile(schema["pattern"])
    client = app.test_client()
    for as_of in ["1970-01-01", "2200-12-31T23:59:59.999999Z", "2024-02-29 12:00", "2000-02-29", "1969-12-31",
                  "2201-01-01", "2100-02-29", "2023-04-31", "2023-01-01T12:00:60", "2023-01-01T12:00+24:00",
                  "0001-01-01T00:00:00+14:00", "2023-01-25T18:13:22.388884 UTC", "2023-01-25t18:13:22",
                  "2023-13-01", "2023-01-25T18:13:22+05:30"]:
        status = client.post("/trigger_report", json={"as_of": as_of}).status_code
        assert status == (202 if pattern.match(as_of) else 400), as_of


def test_docs_serve_swagger_ui_from_local_files(make_app):
    from html.parser import HTMLParser
    from urllib.parse import urljoin, urlparse

    class Links(HTMLParser):
        def __init__(self):
            super().__init__()
            self.links = []

        def handle_starttag(self, tag, attrs):
            self.links += [value for name, value in attrs if name in ("src", "href") and value]

    client = make_app(start_workers=False).test_client()
    response = client.get("/docs", follow_redirects=True)
    assert response.status_code == 200 and response.mimetype == "text/html"
    page_url = "http://localhost" + response.request.path
    html = response.get_data(as_text=True)
    assert "SwaggerUIBundle" in html and '"validatorUrl": null' in html.replace("\\", "")
    parser = Links()
    parser.feed(html)
    assert len(parser.links) >= 4   # icon, stylesheet, two scripts
    for link in parser.links:
        url = urlparse(urljoin(page_url, link))
        assert url.scheme == "http" and url.netloc == "localhost", link   # nothing from another host
        with client.get(url.path) as asset:
            assert asset.status_code == 200 and len(asset.data) > 100, link
    # the document Swagger UI loads (doc_url "openapi.json", relative to /docs/swagger)
    assert client.get(urljoin(response.request.path, "openapi.json")).get_json()["info"]["title"] == "store-monitoring"


# --- the real engine ---------------------------------------------------------------------------------

@pytest.fixture
def loaded(settings, tmp_path):
    """A small realistic data set from sample_data, loaded into the temporary database."""
    paths = sample_data.generate_dataset(tmp_path / "data", stores=40, seed=7)
    conn = database.connect(settings.database)
    database.load_files(conn, status=paths["store_status"], hours=paths["business_hours"],
                        timezones=paths["timezones"])
    conn.close()
    return paths


def engine_csv(settings, *, as_of=None, store_ids=None, extended=False) -> pd.DataFrame:
    """The engine's result for everything in the database now, as the downloaded CSV reads back.

    The inputs are read here with plain SQL (all polls, not the report path's week-sized selection),
    so the comparison also checks the report path's reading and writing."""
    conn = database.connect(settings.database)
    try:
        polls = pd.read_sql_query(
            "SELECT s.store_id, p.timestamp_us, p.active FROM store_status p JOIN stores s USING (store_key)", conn)
        hours = pd.read_sql_query(
            "SELECT store_id, day_of_week, start_time_local, end_time_local FROM business_hours", conn)
        zones = pd.read_sql_query("SELECT store_id, timezone_str FROM timezones", conn)
    finally:
        conn.close()
    polls = pd.DataFrame({
        "store_id": polls["store_id"].astype(str),
        "timestamp_utc": pd.to_datetime(polls["timestamp_us"], unit="us", utc=True),
        "status": polls["active"].map({1: "active", 0: "inactive"}),
    })
    frame = report_generator.compute_report(polls, hours, zones, now=as_of, store_ids=store_ids,
                                            extended=extended, default_timezone=settings.default_timezone)
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    buffer.seek(0)
    return pd.read_csv(buffer, dtype={"store_id": str})


def downloaded(client, body) -> pd.DataFrame:
    with client.get(body["download_url"]) as response:
        assert response.status_code == 200 and response.mimetype == "text/csv"
        return pd.read_csv(io.BytesIO(response.data), dtype={"store_id": str})


def test_full_flow_matches_engine(make_app, settings, loaded):
    client = make_app().test_client()
    body = poll(client, trigger(client))
    assert body["status"] == "Complete", body
    got = downloaded(client, body)
    assert ",".join(got.columns) == STANDARD_HEADER
    expected = engine_csv(settings)
    pd.testing.assert_frame_equal(got, expected)
    assert body["rows"] == len(got) > 0
    assert set(body["timings"]) == {"load", "compute", "write"}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", body["as_of"])
    with closing(database.connect(settings.database)) as conn:
        no_zone = conn.execute("SELECT COUNT(*) FROM stores WHERE store_id NOT IN "
                               "(SELECT store_id FROM timezones WHERE timezone_str <> '')").fetchone()[0]
    assert body["meta"] == {"stores": body["rows"], "stores_without_timezone": no_zone,
                            "stores_with_unknown_timezone": 0, "stores_without_polls_this_week": 0,
                            "default_timezone": "America/Chicago"}
    assert body["warnings"] == [] and body["reach_minutes"] == 120 and body["file"] == f"{body['download_url'][9:]}"


def test_full_flow_with_as_of_store_ids_and_extended(make_app, settings, loaded):
    client = make_app().test_client()
    everything = poll(client, trigger(client))
    latest = pd.Timestamp(everything["as_of"])
    as_of = latest - pd.Timedelta(days=2, minutes=17)
    some = sorted(downloaded(client, everything)["store_id"])[::5]
    body = {"as_of": as_of.isoformat().replace("+00:00", "Z"), "store_ids": some + ["no-such-store"],
            "columns": "extended"}
    result = poll(client, trigger(client, body))
    assert result["status"] == "Complete", result
    assert pd.Timestamp(result["as_of"]) == as_of
    got = downloaded(client, result)
    expected = engine_csv(settings, as_of=as_of, store_ids=some + ["no-such-store"], extended=True)
    pd.testing.assert_frame_equal(got, expected)
    assert set(got["store_id"]) <= set(some) and len(got.columns) > 7
    [missing] = [w for w in result["warnings"] if w["code"] == "store_ids_without_polls"]
    assert missing["count"] == len(set(some) - set(got["store_id"])) + 1 and "no-such-store" in missing["examples"]
    # the same report again in CSV form through Accept
    with client.get("/get_report", query_string={"report_id": result["download_url"][9:-4]},
                    headers={"Accept": "text/csv"}) as as_csv, client.get(result["download_url"]) as download:
        assert as_csv.data == download.data


def test_as_of_before_every_poll_is_an_empty_report_with_a_warning(make_app, loaded):
    client = make_app().test_client()
    result = poll(client, trigger(client, {"as_of": "2001-01-01T00:00:00Z"}))
    assert result["status"] == "Complete" and result["rows"] == 0
    [warning] = result["warnings"]
    assert warning["code"] == "as_of_before_first_poll" and warning["first_poll"].startswith("2023-")


def test_stale_stores_are_counted_and_warned_about(make_app, loaded):
    client = make_app().test_client()
    latest = pd.Timestamp(poll(client, trigger(client))["as_of"])
    result = poll(client, trigger(client, {"as_of": (latest + pd.Timedelta(days=30)).isoformat()}))
    assert result["meta"]["stores_without_polls_this_week"] == result["rows"] > 0
    [warning] = result["warnings"]
    assert warning["code"] == "stores_without_polls_this_week" and warning["count"] == result["rows"]
    rows = downloaded(client, result)
    assert (rows.drop(columns="store_id") == 0).all().all()  # with reach, a month-old poll speaks for nothing


def test_ten_concurrent_triggers_real_engine(make_app, loaded):
    run_concurrent_triggers(make_app(), 10)


def test_empty_database_report_fails_with_a_readable_error(make_app):
    client = make_app().test_client()
    body = poll(client, trigger(client))
    assert body["status"] == "Failed"
    assert "internal error" not in body["error"]


def test_restart_recovery_with_real_engine(make_app, settings, loaded):
    conn = database.connect(settings.database)
    report_id = str(uuid.uuid4())
    database.create_report_job(conn, report_id, {"as_of": None, "store_ids": None, "columns": "standard"})
    database.mark_report_running(conn, report_id)  # ... and then the process died
    conn.close()
    client = make_app().test_client()
    body = poll(client, report_id)
    assert body["status"] == "Complete"
    pd.testing.assert_frame_equal(downloaded(client, body), engine_csv(settings))


def test_ingestion_while_reports_run(make_app, settings, loaded):
    """Polls appended in batches while reports run: every request succeeds, no poll is lost, and each
    report equals the engine's result on the data after some whole number of batches."""
    client = make_app().test_client()
    before = poll_count(settings)
    latest = pd.Timestamp(poll(client, trigger(client))["as_of"])
    # new polls for new stores, all before the latest poll so `now` stays put and only these rows change
    batches = []
    for b in range(4):
        rows = [{"store_id": f"zz-new-{b}-{s}", "status": "active" if (s + k) % 3 else "inactive",
                 "timestamp_utc": (latest - pd.Timedelta(minutes=47 + 61 * k)).isoformat()}
                for s in range(25) for k in range(30)]
        batches.append(rows)
    snapshots = [engine_csv(settings)]

    report_ids, ingest_answers = [], []

    def ingest():
        own = client.application.test_client()
        for rows in batches:
            ingest_answers.append(own.post("/store_status", json=rows))
            time.sleep(0.01)

    writer = threading.Thread(target=ingest)
    writer.start()
    while writer.is_alive() and len(report_ids) < 12:
        report_ids.append(trigger(client))
        time.sleep(0.02)
    writer.join(30)
    assert [r.status_code for r in ingest_answers] == [200] * len(batches)
    assert [r.get_json()["loaded"] for r in ingest_answers] == [len(rows) for rows in batches]
    assert poll_count(settings) == before + sum(map(len, batches))

    # snapshots after each whole batch, computed from data that contains exactly those batches
    new_store_prefixes = [f"zz-new-{b}-" for b in range(len(batches))]
    final = engine_csv(settings)
    for n in range(1, len(batches) + 1):
        hidden = tuple(new_store_prefixes[n:])
        snapshots.append(final[~final["store_id"].str.startswith(hidden)].reset_index(drop=True)
                         if hidden else final)
    for report_id in report_ids:
        body = poll(client, report_id, timeout=60)
        assert body["status"] == "Complete", body
        got = downloaded(client, body)
        matches = [n for n, snap in enumerate(snapshots) if got.equals(snap)]
        assert matches, f"report {report_id} saw part of an ingestion request"
    after = poll(client, trigger(client))
    pd.testing.assert_frame_equal(downloaded(client, after), final)


def test_first_start_loads_data_dir(make_app, settings, caplog):
    sample_data.generate_dataset(settings.data_dir, stores=5, seed=3)
    with caplog.at_level("INFO", logger="store_monitoring.app"):
        make_app(start_workers=False, load_data=True)
    assert poll_count(settings) > 0
    assert any("loaded" in r.getMessage() for r in caplog.records)
    before = poll_count(settings)
    make_app(start_workers=False, load_data=True)  # not empty any more: nothing is loaded twice
    assert poll_count(settings) == before


def test_flask_cli_load_command_uses_the_loader(settings, fixtures_dir):
    app = create_app(settings, start_workers=False)  # what `flask --app app:cli_app` makes, on test paths
    result = app.test_cli_runner().invoke(args=["load", "--status", str(fixtures_dir / "store_status_2023.csv")])
    assert result.exit_code == 0, result.output
    assert "store_status" in result.output and "read 30: new 30" in result.output
    assert poll_count(settings) == 30
    missing = app.test_cli_runner().invoke(args=["load", "--status", str(fixtures_dir / "nope.csv")])
    assert missing.exit_code == 2
    shutdown(app)


def test_an_upload_the_server_cannot_spool_is_507_and_loads_nothing(make_app, settings):
    """A body over the in-memory part goes to a file beside the reports folder; when that cannot be
    written (here: the folder's place is taken by a file) the client hears so, not a 500."""
    import api

    client = make_app(start_workers=False).test_client()
    api.uploads_dir(settings).parent.mkdir(parents=True, exist_ok=True)
    api.uploads_dir(settings).write_text("not a folder\n")
    rows = "".join(f"s{n},active,2023-01-22 12:00:00 UTC\n" for n in range(60_000))  # ~2 MiB
    response = client.post("/store_status", data="store_id,status,timestamp_utc\n" + rows,
                           content_type="text/csv")
    assert response.status_code == 507 and "no room" in response.get_json()["error"]
    with closing(database.connect(settings.database)) as conn:
        assert conn.execute("SELECT COUNT(*) FROM store_status").fetchone()[0] == 0


@pytest.mark.parametrize("store_ids", [["   "], ["a", "\t"]])
def test_a_blank_store_id_in_a_trigger_is_400(make_app, store_ids):
    client = make_app(start_workers=False).test_client()
    response = client.post("/trigger_report", json={"store_ids": store_ids})
    assert response.status_code == 400 and "store id" in response.get_json()["error"]
