"""The HTTP API on each storage backend: the real app (`app.create_app`, real report workers, the real
engine) on a SQLite file and on a PostgreSQL database (`storage_location`, see conftest.py), driven
through Flask's test client. One flow per test; each runs on both backends. PostgreSQL runs on the
session's throw-away server; without its binaries those cases skip.

Where a result can be computed without the API, it is: the report's CSV is compared byte for byte with
`report_generator.generate_report` run directly on a SQLite database loaded with the same files.
"""
from __future__ import annotations

import re
import tempfile
import time
import uuid
from pathlib import Path

import pytest

import database
import sample_data
from app import create_app, shutdown
from config import Settings
from jobs import iso_utc
from report_generator import generate_report

STATUS_HEADER = "store_id,status,timestamp_utc\n"
HOURS_HEADER = "store_id,day_of_week,start_time_local,end_time_local\n"
ZONES_HEADER = "store_id,timezone_str\n"
SPECIAL_HEADER = "store_id,date,start_time_local,end_time_local\n"
REPORT_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, Path]:
    """Generated data: 25 stores over 8 days, with special hours (the same files for every test)."""
    return sample_data.generate_dataset(tmp_path_factory.mktemp("api-backends"), stores=25, days=8, seed=3,
                                        special_share=0.5)


def load(location, **files) -> None:
    """database.load_files on `location` (hours and timezones have no upload endpoint: `make load`)."""
    conn = database.connect(location)
    try:
        database.load_files(conn, **files)
    finally:
        conn.close()


def load_dataset(location, dataset: dict[str, Path]) -> None:
    load(location, status=dataset["store_status"], hours=dataset["business_hours"], timezones=dataset["timezones"],
         special_hours=dataset["special_hours"])


@pytest.fixture
def service(storage_location, tmp_path):
    """`service(before=...)` -> (settings, test client) of the real app on this backend's fresh database;
    `before(location)` runs first (data loaded before the app starts). The app's workers are stopped after
    the test."""
    made = []

    def make(before=None):
        settings = Settings.from_env(environ={}, dotenv=False, database=storage_location,
                                     reports_dir=tmp_path / "reports", data_dir=tmp_path / "data", workers=1,
                                     report_processes=0, job_lease_seconds=30)
        if before is not None:
            before(storage_location)
        app = create_app(settings, load_data=False)
        made.append(app)
        return settings, app.test_client()

    yield make
    for app in made:
        shutdown(app, timeout=10)


def json_error(response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return body["error"]


def trigger(client, body=None) -> str:
    response = client.post("/trigger_report", json=body if body is not None else {})
    assert response.status_code == 202, response.get_json()
    report_id = response.get_json()["report_id"]
    assert uuid.UUID(report_id) and response.headers["Location"] == f"/get_report?report_id={report_id}"
    return report_id


def wait_for(client, report_id: str) -> dict:
    deadline = time.monotonic() + REPORT_TIMEOUT
    while time.monotonic() < deadline:
        response = client.get("/get_report", query_string={"report_id": report_id})
        assert response.status_code == 200, response.get_json()
        body = response.get_json()
        if body["status"] != "Running":
            return body
        time.sleep(0.05)
    raise AssertionError(f"report {report_id} still running after {REPORT_TIMEOUT} s")


def summary_of(response) -> dict:
    assert response.status_code == 200, response.get_json()
    summary = response.get_json()
    summary.pop("seconds")
    return summary


# --- uploads ------------------------------------------------------------------------------------------

def test_uploads_answer_exact_summaries(service):
    settings, client = service()
    body = (STATUS_HEADER + "s1,active,2023-01-22 12:00:00 UTC\n"
                            "s1,inactive,2023-01-22 13:00:00 UTC\n"
                            "s2,active,2023-01-22 12:00:00 UTC\n"
                            "s2,maybe,2023-01-22 13:00:00 UTC\n"
                            "s1,active,2023-01-22 12:00:00 UTC\n")
    first = summary_of(client.post("/store_status", data=body, content_type="text/csv"))
    assert first == {"table": "store_status", "source": "<request>", "read": 5, "new": 3, "already_stored": 0,
                     "changed": 0, "conflicting": 0, "duplicates": 1, "rejected": {"unknown status": 1},
                     "examples": {"unknown status": "line 5: s2,maybe,2023-01-22 13:00:00 UTC"}, "removed": 0,
                     "loaded": 3}
    again = summary_of(client.post("/store_status", data=body, content_type="text/csv"))
    assert (again["new"], again["already_stored"], again["duplicates"], again["rejected"]) == (
        0, 3, 1, {"unknown status": 1})
    # JSON: s2's 12:00 poll made inactive (inactive wins), one new poll
    items = [{"store_id": "s2", "status": "inactive", "timestamp_utc": "2023-01-22T12:00:00Z"},
             {"store_id": "s3", "status": "active", "timestamp_utc": "2023-01-22T14:00:00+00:00"}]
    answer = summary_of(client.post("/store_status", json=items))
    assert (answer["read"], answer["new"], answer["changed"], answer["rejected"]) == (2, 1, 1, {})

    special = (SPECIAL_HEADER + "s1,2023-12-25,,\n"
                                "s1,2023-12-24,9:00,14:00\n"
                                "s2,2023-02-30,09:00,10:00\n")
    loaded = summary_of(client.post("/special_hours", data=special, content_type="text/csv"))
    assert (loaded["table"], loaded["read"], loaded["new"], loaded["removed"]) == ("special_hours", 3, 2, 0)
    assert loaded["rejected"] == {"bad date": 1}
    assert loaded["examples"] == {"bad date": "line 4: s2,2023-02-30,09:00,10:00"}
    # s1's 2023-12-25 replaced (closed -> open), 2023-12-24 kept
    replaced = summary_of(client.post("/special_hours", json=[
        {"store_id": "s1", "date": "2023-12-25", "start_time_local": "12:00", "end_time_local": "14:00"}]))
    assert (replaced["new"], replaced["already_stored"], replaced["removed"]) == (1, 0, 1)

    conn = database.connect(settings.database)
    try:
        assert database.store_records(conn, "s1")["special"] == [("2023-12-24", "09:00:00", "14:00:00"),
                                                                 ("2023-12-25", "12:00:00", "14:00:00")]
        assert database.data_facts(conn, 1)["polls"] == 4
    finally:
        conn.close()
    # bad bodies: JSON errors, nothing loaded
    assert "empty" in json_error(client.post("/store_status", data=b"", content_type="text/csv"), 400)
    json_error(client.post("/store_status", data=body, content_type="application/xml"), 415)
    assert "date" in json_error(client.post("/special_hours", data="store_id,start_time_local,end_time_local\n"
                                                                   "a,,\n", content_type="text/csv"), 400)


# --- report jobs ---------------------------------------------------------------------------------------

def test_a_report_is_byte_identical_to_the_engine_on_sqlite(service, dataset, tmp_path):
    settings, client = service(before=lambda location: load_dataset(location, dataset))
    report_id = trigger(client)
    body = wait_for(client, report_id)
    assert body["status"] == "Complete", body

    reference = tmp_path / "reference.sqlite3"
    load_dataset(reference, dataset)
    expected = generate_report(reference, tmp_path / "expected.csv", reach_minutes=settings.poll_reach_minutes,
                               default_timezone=settings.default_timezone, extended=False, processes=0)
    expected_bytes = (tmp_path / "expected.csv").read_bytes()

    with client.get(body["download_url"]) as download:
        assert download.status_code == 200 and download.mimetype == "text/csv"
        assert download.data == expected_bytes
    with client.get("/get_report", query_string={"report_id": report_id}, headers={"Accept": "text/csv"}) as csv:
        assert csv.status_code == 200 and csv.data == expected_bytes
    assert body["rows"] == expected.rows == 25
    assert body["as_of"] == iso_utc(expected.as_of)
    assert body["meta"]["stores"] == 25 and body["reach_minutes"] == 120


def test_reports_are_listed_and_deleted(service, dataset):
    settings, client = service(before=lambda location: load_dataset(location, dataset))
    standard = trigger(client)
    extended = trigger(client, {"columns": "extended", "reach_minutes": None})
    for report_id in (standard, extended):
        assert wait_for(client, report_id)["status"] == "Complete"
    listed = client.get("/reports").get_json()
    assert (listed["total"], listed["limit"], listed["offset"]) == (2, 50, 0)
    assert [r["report_id"] for r in listed["reports"]] == [extended, standard]           # newest first
    assert [r["status"] for r in listed["reports"]] == ["Complete", "Complete"]
    assert listed["reports"][0]["parameters"]["columns"] == "extended"
    assert listed["reports"][0]["parameters"]["reach_minutes"] is None
    assert listed["reports"][1]["download_url"] == f"/reports/{standard}.csv"
    assert client.get("/reports?limit=1&offset=1").get_json()["reports"][0]["report_id"] == standard
    header = client.get(f"/reports/{extended}.csv").data.split(b"\r\n")[0].split(b"\n")[0]
    assert header.endswith(b"unknown_last_week")

    response = client.delete(f"/reports/{standard}")
    assert response.status_code == 204 and response.data == b""
    assert not (Path(settings.reports_dir) / f"{standard}.csv").exists()
    assert client.get("/reports").get_json()["total"] == 1
    json_error(client.get("/get_report", query_string={"report_id": standard}), 404)
    json_error(client.get(f"/reports/{standard}.csv"), 404)
    json_error(client.delete(f"/reports/{standard}"), 404)
    assert client.get(f"/reports/{extended}.csv").status_code == 200


def test_bad_report_ids_are_json_errors(service):
    _, client = service()
    assert "report_id" in json_error(client.get("/get_report", query_string={"report_id": "not-a-uuid"}), 400)
    json_error(client.get("/get_report"), 400)
    json_error(client.get("/get_report", query_string={"report_id": str(uuid.uuid4())}), 404)
    json_error(client.post("/trigger_report", json={"columns": "everything"}), 400)
    json_error(client.get("/reports?limit=0"), 400)


def test_a_report_on_an_empty_database_fails_readably(service):
    _, client = service()
    body = wait_for(client, trigger(client))
    assert body["status"] == "Failed" and body["error"]


# --- stores and data ---------------------------------------------------------------------------------------

def small_data(location) -> None:
    """Five polled stores (three with 'shop' in their id, in either case, one only inside it), weekly and
    special hours for Shop-A1, a store with hours only, a known, an unknown and an empty time zone."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        (folder / "s.csv").write_text(STATUS_HEADER + "".join(
            f"{store},{status},{moment}\n" for store, status, moment in [
                ("Shop-A1", "active", "2023-01-22 12:00:00 UTC"), ("Shop-A1", "inactive", "2023-01-22 13:00:00 UTC"),
                ("Shop-A1", "active", "2023-01-22 14:00:00 UTC"), ("Shop-A1", "inactive", "2023-01-23 16:00:00 UTC"),
                ("myshop_2", "active", "2023-01-20 08:00:00 UTC"),
                ("shop%3", "active", "2023-01-22 14:00:00 UTC"), ("other", "active", "2023-01-25 18:00:00 UTC"),
                ("zeta", "inactive", "2023-01-22 12:00:00 UTC")]))
        (folder / "h.csv").write_text(HOURS_HEADER + "Shop-A1,6,09:00,17:00\nShop-A1,0,00:00,23:59:59\n"
                                                     "hours-only,1,09:00,17:00\n")
        (folder / "z.csv").write_text(ZONES_HEADER + "Shop-A1,America/New_York\nmyshop_2,Mars/Olympus\nzeta,\n")
        (folder / "sp.csv").write_text(SPECIAL_HEADER + "Shop-A1,2023-01-22,,\nShop-A1,2023-01-23,10:00,14:00\n")
        load(location, status=folder / "s.csv", hours=folder / "h.csv", timezones=folder / "z.csv",
             special_hours=folder / "sp.csv")


def test_store_search_page_and_timeline(service):
    _, client = service(before=small_data)
    found = client.get("/stores", query_string={"q": "SHOP"}).get_json()
    assert found == {"q": "SHOP", "total": 3, "stores": [
        {"store_id": "Shop-A1", "has_hours": True, "timezone": "America/New_York", "timezone_known": True},
        {"store_id": "shop%3", "has_hours": False, "timezone": None, "timezone_known": False},
        {"store_id": "myshop_2", "has_hours": False, "timezone": "Mars/Olympus", "timezone_known": False}]}
    assert [s["store_id"] for s in client.get("/stores?q=%25").get_json()["stores"]] == ["shop%3"]
    assert [s["store_id"] for s in client.get("/stores?q=_").get_json()["stores"]] == ["myshop_2"]
    everything = client.get("/stores?limit=2").get_json()
    assert everything["total"] == 5 and [s["store_id"] for s in everything["stores"]] == ["Shop-A1", "myshop_2"]
    assert client.get("/stores?q=hours-only").get_json()["total"] == 0
    json_error(client.get("/stores?limit=0"), 400)

    page = client.get("/stores/Shop-A1")
    assert page.status_code == 200 and page.mimetype == "text/html"
    text = page.get_data(as_text=True)
    assert "Shop-A1" in text and "America/New_York" in text and "2023-01-23" in text

    # Shop-A1's business time in the week before the last poll of all (2023-01-25 18:00 UTC): Sunday
    # 2023-01-22 is a closed special date, Monday 2023-01-23 has special hours 10:00-14:00 New York time
    # instead of its weekly 00:00-24:00 (15:00-19:00 UTC), and no other day has weekly hours: 4 hours. The
    # polls of 2023-01-22 fall on the closed date, outside every business interval: no evidence. The
    # inactive poll at 16:00 UTC speaks for 15:00-18:00 with a 120-minute reach (3 hours down, 1 unknown),
    # and for all 4 hours when the reach is unbounded.
    timeline = client.get("/stores/Shop-A1/timeline", query_string={"reach_minutes": 120})
    assert timeline.status_code == 200, timeline.get_json()
    line = timeline.get_json()
    assert (line["store_id"], line["timezone"], line["timezone_source"]) == ("Shop-A1", "America/New_York", "store")
    assert (line["now"], line["from"], line["reach_minutes"]) == ("2023-01-25T18:00:00Z", "2023-01-18T18:00:00Z", 120)
    assert [(p["at"], p["status"]) for p in line["polls"]] == [
        ("2023-01-22T12:00:00Z", "active"), ("2023-01-22T13:00:00Z", "inactive"), ("2023-01-22T14:00:00Z", "active"),
        ("2023-01-23T16:00:00Z", "inactive")]
    assert [p["evidence"] for p in line["polls"]] == [False, False, False, True]
    assert [(d["date"], d["closed"]) for d in line["special_dates"]] == [("2023-01-22", True), ("2023-01-23", False)]
    assert [(i["begin"], i["end"]) for i in line["business_intervals"]] == [("2023-01-23T15:00:00Z",
                                                                             "2023-01-23T19:00:00Z")]
    week = {k: v for k, v in line["totals"].items() if k.endswith("_week")}
    assert week == {"uptime_last_week": 0.0, "downtime_last_week": 3.0, "unknown_last_week": 1.0}
    unbounded = client.get("/stores/Shop-A1/timeline?reach_minutes=unbounded").get_json()
    assert unbounded["reach_minutes"] is None
    week = {k: v for k, v in unbounded["totals"].items() if k.endswith("_week")}
    assert week == {"uptime_last_week": 0.0, "downtime_last_week": 4.0, "unknown_last_week": 0.0}
    json_error(client.get("/stores/nobody/timeline"), 404)
    json_error(client.get("/stores/Shop-A1/timeline?days=9"), 400)


def test_data_summary_by_hand(service):
    settings, client = service(before=small_data)
    summary = client.get("/data/summary").get_json()
    loads = summary.pop("loads")
    last = summary.pop("last_load")
    assert summary == {
        "stores": 5, "polls": 8,
        "first_poll": "2023-01-20T08:00:00Z", "last_poll": "2023-01-25T18:00:00Z",
        "stores_without_hours": 4,           # all but Shop-A1
        "stores_without_timezone": 3,        # shop%3, other (no row), zeta (empty zone)
        "stores_with_unknown_timezone": 1,   # myshop_2
        "special_hours_rows": 2, "stores_with_special_hours": 1,
        "stores_not_polled": 1,              # hours-only
        "default_timezone": settings.default_timezone}
    assert [entry["table"] for entry in loads] == ["special_hours", "timezones", "business_hours", "store_status"]
    assert last == loads[0] and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", last["finished_at"])
    assert [entry["new"] for entry in loads] == [2, 3, 3, 8]


def test_health_and_metrics(service, dataset):
    _, client = service(before=lambda location: load_dataset(location, dataset))
    health = client.get("/health")
    assert health.status_code == 200
    assert health.get_json() == {"status": "ok", "database": "ok", "reports": "ok",
                                 "workers": {"alive": 1, "configured": 1}, "queue": {"depth": 0, "limit": 16}}
    client.post("/store_status", data=STATUS_HEADER + "m1,active,2023-01-22 12:00:00 UTC\nm1,nope,x\n",
                content_type="text/csv")
    assert wait_for(client, trigger(client))["status"] == "Complete"
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.mimetype == "text/plain"
    text = metrics.get_data(as_text=True)
    assert 'store_monitoring_report_jobs{status="Complete"} 1.0' in text
    assert 'store_monitoring_report_jobs{status="Queued"} 0.0' in text
    assert "store_monitoring_report_seconds_count 1.0" in text
    polls = len(dataset["store_status"].read_text().splitlines()) - 1   # the generated file repeats no poll
    assert f'store_monitoring_rows_ingested_total{{outcome="new",table="store_status"}} {polls + 1}.0' in text
    assert 'store_monitoring_rows_ingested_total{outcome="rejected",table="store_status"} 1.0' in text
    assert 'store_monitoring_rows_ingested_total{outcome="new",table="special_hours"}' in text
    assert client.get("/health").get_json()["status"] == "ok"


def test_a_database_that_goes_away_gives_503_not_500(tmp_path):
    """PostgreSQL stopped under a running service: the API answers 503 with Retry-After (JSON), the pages
    a 503 page, /health 503 with the reason; no 500, no stack trace."""
    import local_servers

    try:
        server = local_servers.PostgreSQLServer()
    except local_servers.ServerUnavailable as exc:
        pytest.skip(str(exc))
    server.start()
    app = None
    try:
        settings = Settings.from_env(environ={}, dotenv=False, database=server.url(), reports_dir=tmp_path / "r",
                                     data_dir=tmp_path / "d", workers=1, report_processes=0)
        app = create_app(settings, load_data=False)
        client = app.test_client()
        assert client.get("/health").status_code == 200
        server._run("pg_ctl", "-D", str(server.data), "-m", "fast", "-w", "stop")
        answer = client.get(f"/get_report?report_id={uuid.uuid4()}")
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "10"
        assert "database is not available" in answer.get_json()["error"]
        assert client.post("/trigger_report", json={}).status_code == 503
        page = client.get("/")
        assert page.status_code == 503 and b"Traceback" not in page.data
        health = client.get("/health")
        assert health.status_code == 503 and "cannot be written" in health.get_json()["database"]
    finally:
        if app is not None:
            shutdown(app)
        server.port = None   # stopped already: stop() only removes its folder
        server.stop()
