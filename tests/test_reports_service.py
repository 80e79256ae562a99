"""The reports service (reports_service.py): report rows, fleet figures, stores, hours, data summary, timelines.

Reports are written here by hand (a job row and its CSV), so every expectation is computed by hand too;
the timeline tests use the real engine on a generated data set.
"""
from __future__ import annotations

import csv
import os
import random
import uuid
from contextlib import closing

import pytest

import database
import report_generator
import reports_service as service
from pages_support import load_generated, settings_for

HEADER = report_generator.STANDARD_COLUMNS
EXTENDED = report_generator.EXTENDED_COLUMNS


@pytest.fixture
def settings(tmp_path):
    settings = settings_for(tmp_path)
    settings.reports_dir.mkdir(parents=True, exist_ok=True)
    database.connect(settings.database).close()
    service.clear_cache()
    return settings


def write_report(settings, rows, *, header=HEADER, params=None, status="Complete", meta=None) -> str:
    """A job row and its CSV, as jobs.py leaves them; returns the report id."""
    report_id = str(uuid.uuid4())
    with closing(database.connect(settings.database)) as conn:
        database.create_report_job(conn, report_id, params or {"reach_minutes": 120, "columns": "standard"})
        if status == "Complete":
            path = settings.reports_dir / f"{report_id}.csv"
            with open(path, "w", newline="") as out:
                writer = csv.writer(out)
                writer.writerow(header)
                writer.writerows(rows)
            database.mark_report_complete(conn, report_id, file=path.name, rows=len(rows),
                                          as_of="2023-01-25T18:00:00Z", seconds=0.5,
                                          meta=meta or {"stores": len(rows), "warnings": []})
        elif status == "Failed":
            database.mark_report_failed(conn, report_id, "no polls")
    return report_id


ROWS = [
    # store_id, up hour, up day, up week, down hour, down day, down week
    ["b-2", 60, 20, 100, 0, 4, 8],
    ["a-1", 0, 10, 90, 60, 14, 18],
    ["c-3", 30, 24, 120, 30, 0, 8],
    ["a-10", 60, 23.5, 160, 0, 0.5, 0],
]


def test_rows_default_to_worst_first_with_store_id_breaking_ties(settings):
    report_id = write_report(settings, ROWS)
    page = service.report_rows(settings, report_id)
    assert page["total"] == 4
    assert page["columns"] == HEADER
    assert (page["sort"], page["order"], page["limit"], page["offset"]) == ("downtime_last_week", "desc", 50, 0)
    # 18, then the tie 8/8 by store id ascending, then 0
    assert [row["store_id"] for row in page["rows"]] == ["a-1", "b-2", "c-3", "a-10"]
    assert page["rows"][0] == {"store_id": "a-1", "uptime_last_hour": 0.0, "uptime_last_day": 10.0,
                               "uptime_last_week": 90.0, "downtime_last_hour": 60.0, "downtime_last_day": 14.0,
                               "downtime_last_week": 18.0}


def test_rows_sort_numerically_and_by_store_id_as_text(settings):
    report_id = write_report(settings, ROWS)

    def ids(**kwargs):
        return [row["store_id"] for row in service.report_rows(settings, report_id, **kwargs)["rows"]]

    assert ids(sort="uptime_last_week", order="asc") == ["a-1", "b-2", "c-3", "a-10"]  # 90 < 100 < 120 < 160
    assert ids(sort="uptime_last_day", order="desc") == ["c-3", "a-10", "b-2", "a-1"]  # 24 > 23.5 > 20 > 10
    assert ids(sort="store_id") == ["a-1", "a-10", "b-2", "c-3"]                       # text order, asc by default
    assert ids(sort="store_id", order="desc") == ["c-3", "b-2", "a-10", "a-1"]


def test_rows_filter_by_store_id_substring_and_page(settings):
    report_id = write_report(settings, ROWS)
    page = service.report_rows(settings, report_id, q=" A-1 ", sort="store_id")
    assert page["q"] == "A-1" and page["total"] == 2
    assert [row["store_id"] for row in page["rows"]] == ["a-1", "a-10"]
    page = service.report_rows(settings, report_id, sort="store_id", limit=2, offset=1)
    assert page["total"] == 4 and [row["store_id"] for row in page["rows"]] == ["a-10", "b-2"]
    assert service.report_rows(settings, report_id, offset=10)["rows"] == []
    assert service.report_rows(settings, report_id, q="zzz")["total"] == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"sort": "nope"}, "sort must be one of"),
    ({"order": "up"}, "order must be asc or desc"),
    ({"limit": 0}, "limit must be from 1 to 1000"),
    ({"limit": "ten"}, "limit must be a whole number"),
    ({"offset": -1}, "offset must be from 0"),
])
def test_rows_refuse_bad_parameters(settings, kwargs, message):
    report_id = write_report(settings, ROWS)
    with pytest.raises(service.BadRequest, match=message):
        service.report_rows(settings, report_id, **kwargs)


def test_an_unknown_column_of_a_standard_report_is_a_conflict(settings):
    """A valid column that only extended reports have: the report cannot answer it (409), as opposed to
    a name that is no column at all (400)."""
    report_id = write_report(settings, ROWS)
    for column in ("unknown_last_hour", "unknown_last_day", "unknown_last_week"):
        with pytest.raises(service.Conflict, match=f"standard columns, without {column}") as caught:
            service.report_rows(settings, report_id, sort=column)
        assert caught.value.status == 409


def test_rows_of_a_missing_unfinished_or_failed_report_are_not_found(settings):
    for report_id in (str(uuid.uuid4()), write_report(settings, [], status="Queued"),
                      write_report(settings, [], status="Failed")):
        with pytest.raises(service.NotFound):
            service.report_rows(settings, report_id)
    with pytest.raises(service.BadRequest, match="UUID"):
        service.report_rows(settings, "../../etc/passwd")
    report_id = write_report(settings, ROWS)
    (settings.reports_dir / f"{report_id}.csv").unlink()
    with pytest.raises(service.NotFound, match="missing"):
        service.report_rows(settings, report_id)


def test_a_report_is_parsed_once_until_its_file_changes(settings, monkeypatch):
    report_id = write_report(settings, ROWS)
    parses = []
    parse = service._parse_report_file
    monkeypatch.setattr(service, "_parse_report_file", lambda path: parses.append(path) or parse(path))
    for offset in range(3):
        service.report_rows(settings, report_id, limit=1, offset=offset)
    service.fleet_figures(settings, report_id)
    assert len(parses) == 1
    path = settings.reports_dir / f"{report_id}.csv"
    path.write_text(",".join(HEADER) + "\nz-9,1,2,3,4,5,6\n")
    os.utime(path, ns=(1, 1))  # a new modification time, however fast the test runs
    page = service.report_rows(settings, report_id)
    assert len(parses) == 2 and page["total"] == 1 and page["rows"][0]["store_id"] == "z-9"


def test_fleet_figures_sum_the_stores(settings):
    report_id = write_report(settings, ROWS, meta={"stores": 4, "stores_without_timezone": 1, "warnings": [
        {"code": "stores_without_polls_this_week", "count": 1, "message": "1 store has no poll"}]})
    figures = service.fleet_figures(settings, report_id)
    assert figures["stores"] == 4
    assert figures["stores_down_last_hour"] == 2          # a-1 (60) and c-3 (30)
    assert figures["stores_with_downtime_last_day"] == 3  # a-1, b-2, a-10
    assert figures["stores_without_known_time_last_week"] == 0
    hour, day, week = (figures["windows"][w] for w in ("hour", "day", "week"))
    assert hour["uptime"] == 150 and hour["downtime"] == 90 and hour["share_up"] == round(150 / 240, 6)
    assert hour["unit"] == "minutes" and day["unit"] == week["unit"] == "hours"
    assert day["share_up"] == round(77.5 / 96, 6)
    assert week["share_up"] == round(470 / 504, 6) and week["unknown"] is None
    report = figures["report"]
    assert report["warnings"][0]["code"] == "stores_without_polls_this_week"
    assert report["meta"] == {"stores": 4, "stores_without_timezone": 1}
    assert report["as_of"] == "2023-01-25T18:00:00Z" and report["reach_minutes"] == 120
    assert report["download_url"] == f"/reports/{report_id}.csv"


def test_fleet_figures_of_an_extended_report_count_unknown_time(settings):
    rows = [["s1", 0, 0, 0, 0, 0, 0, 60, 24, 168], ["s2", 60, 12, 84, 0, 0, 0, 0, 12, 84]]
    report_id = write_report(settings, rows, header=EXTENDED,
                             params={"columns": "extended", "reach_minutes": None})
    figures = service.fleet_figures(settings, report_id)
    week = figures["windows"]["week"]
    assert week["unknown"] == 252 and week["share_up"] == 1.0 and week["share_unknown"] == 0.75
    assert figures["stores_without_known_time_last_week"] == 1
    assert figures["report"]["reach_minutes"] is None and figures["report"]["columns"] == "extended"
    page = service.report_rows(settings, report_id, sort="unknown_last_week")
    assert [row["store_id"] for row in page["rows"]] == ["s1", "s2"]


def test_an_empty_report_has_no_share(settings):
    report_id = write_report(settings, [])
    assert service.report_rows(settings, report_id)["total"] == 0
    figures = service.fleet_figures(settings, report_id)
    assert figures["stores"] == 0 and figures["windows"]["day"]["share_up"] is None


def test_report_job_and_recent_reports(settings):
    first = write_report(settings, ROWS)
    queued = write_report(settings, [], status="Queued", params={"store_ids": ["a", "b"], "as_of": "2023-01-01T00:00:00Z"})
    job = service.report_job(settings, queued.upper())
    assert job["status"] == "Queued" and job["store_ids"] == 2 and job["requested_as_of"] == "2023-01-01T00:00:00Z"
    assert job["download_url"] is None
    recent = service.recent_reports(settings, limit=10)
    assert recent["total"] == 2 and [j["report_id"] for j in recent["reports"]] == [queued, first]
    assert service.latest_complete_report(settings)["report_id"] == first
    with pytest.raises(service.NotFound):
        service.report_job(settings, str(uuid.uuid4()))


@pytest.fixture
def generated(tmp_path, settings):
    load_generated(settings.database, tmp_path / "generated", stores=30, seed=4)
    return settings


def test_data_summary_counts_what_the_database_holds(generated):
    summary = service.data_summary(generated)
    with closing(database.connect(generated.database)) as conn:
        polls = conn.execute("SELECT COUNT(*) FROM store_status").fetchone()[0]
        first, last = conn.execute("SELECT MIN(timestamp_us), MAX(timestamp_us) FROM store_status").fetchone()
        no_hours = conn.execute("SELECT COUNT(*) FROM stores WHERE store_id NOT IN "
                                "(SELECT store_id FROM business_hours)").fetchone()[0]
        no_zone = conn.execute("SELECT COUNT(*) FROM stores WHERE store_id NOT IN (SELECT store_id FROM timezones "
                               "WHERE TRIM(COALESCE(timezone_str, '')) != '')").fetchone()[0]
        special = conn.execute("SELECT COUNT(*) FROM special_hours").fetchone()[0]
    assert summary["stores"] == 30 and summary["polls"] == polls
    assert summary["first_poll"] == service._iso_from_us(first) and summary["last_poll"] == service._iso_from_us(last)
    assert summary["stores_without_hours"] == no_hours
    assert summary["stores_without_timezone"] == no_zone
    assert summary["special_hours_rows"] == special
    assert [load["table"] for load in summary["loads"][:4]] == ["special_hours", "timezones", "business_hours",
                                                                  "store_status"]
    assert summary["last_load"]["table"] == "special_hours" and summary["last_load"]["finished_at"]


def test_data_summary_of_an_empty_database(settings):
    summary = service.data_summary(settings)
    assert summary["stores"] == summary["polls"] == 0
    assert summary["first_poll"] is None and summary["last_load"] is None and summary["loads"] == []


def test_find_stores_by_prefix_first_then_substring(generated):
    with closing(database.connect(generated.database)) as conn:
        ids = sorted(row[0] for row in conn.execute("SELECT store_id FROM stores"))
    target = ids[7]
    found = service.find_stores(generated, target[:6])
    assert found["stores"][0]["store_id"].startswith(target[:6])
    assert target in [s["store_id"] for s in found["stores"]]
    found = service.find_stores(generated, target)
    assert found["total"] == 1 and found["stores"][0]["store_id"] == target
    assert set(found["stores"][0]) == {"store_id", "has_hours", "timezone", "timezone_known"}
    middle = target[5:9]
    found = service.find_stores(generated, middle, limit=200)
    assert found["total"] == sum(middle in i for i in ids) == len(found["stores"])
    prefixed = [s["store_id"].startswith(middle) for s in found["stores"]]
    assert prefixed == sorted(prefixed, reverse=True)  # those starting with it come first
    assert service.find_stores(generated, "%")["total"] == 0  # LIKE's wildcards are plain characters
    assert len(service.find_stores(generated, "", limit=5)["stores"]) == 5
    with pytest.raises(service.BadRequest):
        service.find_stores(generated, "1", limit=0)


def test_store_hours_lists_weekly_and_special_rows(settings):
    with closing(database.connect(settings.database)) as conn, database.transaction(conn):
        conn.executemany("INSERT INTO business_hours VALUES (?, ?, ?, ?)", [
            ("s1", 4, "22:00:00", "02:00:00"), ("s1", 0, "09:00:00", "17:00:00"), ("s1", 0, "18:00:00", "23:59:59"),
            ("s1", 6, "10:00:00", "10:00:00")])
        conn.execute("INSERT INTO timezones VALUES ('s1', ' America/New_York ')")
        conn.executemany("INSERT INTO special_hours VALUES (?, ?, ?, ?)", [
            ("s1", "2023-12-25", None, None), ("s1", "2023-12-24", "10:00:00", "14:00:00")])
        conn.execute("INSERT INTO timezones VALUES ('s2', 'Mars/Olympus')")
    hours = service.store_hours(settings, "s1")
    assert hours["timezone"] == "America/New_York" and hours["timezone_source"] == "store"
    assert hours["polled"] is False and hours["open_all_week"] is False
    assert [(h["day"], h["start"], h["end"], h["kind"]) for h in hours["weekly"]] == [
        ("Monday", "09:00", "17:00", ""), ("Monday", "18:00", "24:00", ""), ("Friday", "22:00", "02:00", "overnight"),
        ("Sunday", "10:00", "10:00", "24 hours")]
    assert [(s["date"], s["closed"], s["start"], s["end"]) for s in hours["special"]] == [
        ("2023-12-24", False, "10:00", "14:00"), ("2023-12-25", True, None, None)]
    other = service.store_hours(settings, "s2")
    assert other["open_all_week"] and other["timezone_used"] == "America/Chicago"
    assert other["timezone_source"] == "default (unknown)"
    with pytest.raises(service.NotFound):
        service.store_hours(settings, "nobody")


def test_parameters_are_checked(settings):
    assert service.parse_instant("2023-01-25 18:13:22.5 UTC") == "2023-01-25T18:13:22.500000Z"
    assert service.parse_instant("2023-01-25T20:13:22+02:00") == "2023-01-25T18:13:22Z"
    assert service.parse_instant("2023-01-25T18:13:22") == "2023-01-25T18:13:22Z"
    assert service.parse_instant("") is None
    assert service.parse_instant("2023-01-25T18:13UTC") == "2023-01-25T18:13:00Z"
    # The years 1970 to 2200 as written (the API's as_of rule), whatever year that is in UTC
    assert service.parse_instant("2200-12-31T23:00-05:00") == "2201-01-01T04:00:00Z"
    assert service.parse_instant("1970-01-01T00:30+01:00") == "1969-12-31T23:30:00Z"
    for bad in ("1969-12-31T23:30:00Z", "2201-01-01"):
        with pytest.raises(service.BadRequest, match="between the years 1970 and 2200"):
            service.parse_instant(bad)
    with pytest.raises(service.BadRequest, match="ISO 8601"):
        service.parse_instant("yesterday")
    assert service.check_reach("unbounded") is None and service.check_reach("90") == 90
    for bad in (0, 10081, "x", True, 1.5):
        with pytest.raises(service.BadRequest):
            service.check_reach(bad)


def test_store_timeline_is_the_engines_and_matches_the_report_rows(generated, tmp_path):
    """The timeline's totals equal the store's row of a report made with the same as_of and reach."""
    rows_path = tmp_path / "report.csv"
    outcome = report_generator.generate_report(generated.database, rows_path, extended=True,
                                               reach_minutes=120)
    with open(rows_path, newline="") as handle:
        rows = {row["store_id"]: row for row in csv.DictReader(handle)}
    as_of = outcome.as_of.isoformat()
    for store_id in random.Random(1).sample(sorted(rows), 6):
        timeline = service.store_timeline(generated, store_id, as_of=as_of)
        assert timeline["store_id"] == store_id and timeline["reach_minutes"] == 120
        for column in EXTENDED[1:]:
            assert timeline["totals"][column] == float(rows[store_id][column]), (store_id, column)
    unbounded = service.store_timeline(generated, store_id, reach_minutes=None, days=1)
    assert unbounded["reach_minutes"] is None
    with pytest.raises(service.NotFound):
        service.store_timeline(generated, "no-such-store")
    with pytest.raises(service.BadRequest, match="days"):
        service.store_timeline(generated, store_id, days=8)


def test_store_timeline_without_polls_is_not_found(settings):
    with pytest.raises(service.NotFound):
        service.store_timeline(settings, "s1")
