"""Ingestion: real formats, reject reasons, duplicates, idempotence, atomicity, CLI, first-start loading."""
from __future__ import annotations

import csv
import io
import sqlite3
import sys
import types
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import database
import ingestion
from storage import sqlite as sqlite_storage
from database import LoadError, TableSummary


# --- helpers -----------------------------------------------------------------------------------------

def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def rows(conn: sqlite3.Connection, table: str) -> int:
    return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def polls(conn: sqlite3.Connection) -> dict[tuple[str, int], int]:
    """{(store_id, timestamp_us): active} of everything stored."""
    return {(r[0], r[1]): r[2] for r in conn.execute(
        "SELECT s.store_id, p.timestamp_us, p.active FROM store_status p JOIN stores s USING (store_key)")}


def us(*args) -> int:
    """UTC epoch microseconds of datetime(*args)."""
    moment = datetime(*args, tzinfo=timezone.utc)
    return (moment - datetime(1970, 1, 1, tzinfo=timezone.utc)) // pd.Timedelta(microseconds=1).to_pytimedelta()


def csv_rows(path: Path) -> list[dict]:
    """The file read by the standard library, as an independent reference."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        return list(csv.DictReader(handle))


STATUS_HEADER = "store_id,status,timestamp_utc\n"
HOURS_HEADER = "store_id,day,start_time_local,end_time_local\n"


# --- the real formats --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["store_status_2023.csv", "store_status_2024.csv",
                                  "store_status_neelpatel_tail.csv", "store_status_2023_bom_crlf.csv"])
def test_real_status_fixture_loads_completely(db, fixtures_dir, name):
    path = fixtures_dir / name
    expected = csv_rows(path)
    summary = database.load_files(db, status=path)[0]
    assert (summary.table, summary.read, summary.loaded, summary.rejected) == (
        "store_status", len(expected), len(expected), {})
    stored = polls(db)
    assert len(stored) == len(expected)
    for row in expected:
        stamp = pd.Timestamp(row["timestamp_utc"].removesuffix(" UTC"), tz="UTC")
        key = (row["store_id"], int(stamp.value // 1000))
        assert stored[key] == (1 if row["status"] == "active" else 0)


def test_real_status_values_exactly(db, fixtures_dir):
    database.load_files(db, status=fixtures_dir / "store_status_2023.csv")
    stored = polls(db)
    # first row: 8419537941919820732,active,2023-01-22 12:09:39.388884 UTC
    assert stored[("8419537941919820732", us(2023, 1, 22, 12, 9, 39, 388884))] == 1
    # last row (an inactive poll, the file's final line)
    assert stored[("3846497499881872792", us(2023, 1, 21, 8, 4, 26, 177456))] == 0
    # ids are text: the 17-digit one stays as written
    assert ("54515546588432327", us(2023, 1, 24, 9, 6, 42, 605777)) in stored


def test_bom_crlf_variant_equals_plain(tmp_path, fixtures_dir):
    plain = database.connect(tmp_path / "a.sqlite3")
    bom = database.connect(tmp_path / "b.sqlite3")
    database.load_files(plain, status=fixtures_dir / "store_status_2023.csv")
    database.load_files(bom, status=fixtures_dir / "store_status_2023_bom_crlf.csv")
    assert polls(plain) == polls(bom)


@pytest.mark.parametrize("name", ["menu_hours_2023_day.csv", "menu_hours_2024_dayOfWeek.csv",
                                  "business_hours_day_of_week.csv"])
def test_real_hours_fixture_loads(db, fixtures_dir, name):
    path = fixtures_dir / name
    expected = csv_rows(path)
    day_column = next(c for c in expected[0] if c.lower().startswith("day"))
    distinct = {(r["store_id"], int(r[day_column]), r["start_time_local"], r["end_time_local"]) for r in expected}
    summary = database.load_files(db, hours=path)[0]
    assert (summary.read, summary.rejected) == (len(expected), {})
    stored = db.execute(
        "SELECT store_id, day_of_week, start_time_local, end_time_local FROM business_hours").fetchall()
    assert summary.loaded == len(stored)
    if name != "business_hours_day_of_week.csv":     # the real ones are already normalised text
        assert {tuple(r) for r in stored} == distinct and len(stored) == len(expected)


def test_hours_variants_normalised(db, fixtures_dir):
    summary = database.load_files(db, hours=fixtures_dir / "business_hours_day_of_week.csv")[0]
    assert (summary.read, summary.loaded, summary.duplicates) == (8, 7, 1)
    stored = {tuple(r) for r in db.execute("SELECT * FROM business_hours")}
    assert ("-4506838894953744859", 0, "18:00:00", "23:59:59") in stored
    assert ("-4506838894953744859", 6, "00:00:00", "23:59:59.999999") in stored
    assert ("-4506838894953744859", 4, "22:00:00", "02:00:00") in stored   # overnight: stored as given
    assert ("0071", 2, "11:00:00", "23:59:59") in stored                     # HH:MM -> HH:MM:SS, id as text
    assert ("9e1c0f63-1b3a-4c55-9f59-0c6b7e0e2f11", 5, "07:00:00.5", "07:00:00.5") in stored


def test_2023_day_column_with_235959(db, fixtures_dir):
    database.load_files(db, hours=fixtures_dir / "menu_hours_2023_day.csv")
    ends = [r[0] for r in db.execute(
        "SELECT end_time_local FROM business_hours WHERE store_id = '1743799994211835904'")]
    assert ends == ["23:59:59"] * 7


@pytest.mark.parametrize("header", ["day", "dayOfWeek", "day_of_week", " DayOfWeek "])
def test_day_column_aliases(db, tmp_path, header):
    path = write(tmp_path / "h.csv", f"store_id,{header},start_time_local,end_time_local\n1,3,09:00:00,17:00:00\n")
    frame = database.read_table_csv(path, "business_hours")
    assert list(frame.columns) == ["store_id", "day_of_week", "start_time_local", "end_time_local"]
    database.ingest_business_hours(db, frame)
    assert db.execute("SELECT * FROM business_hours").fetchall()[0][:] == ("1", 3, "09:00:00", "17:00:00")


@pytest.mark.parametrize("name,count", [("timezones_2023.csv", 30), ("timezones_2024.csv", 30)])
def test_real_timezone_fixtures(db, fixtures_dir, name, count):
    expected = {r["store_id"]: r["timezone_str"] for r in csv_rows(fixtures_dir / name)}
    summary = database.load_files(db, timezones=fixtures_dir / name)[0]
    assert (summary.read, summary.loaded, summary.rejected) == (count, count, {})
    assert dict(db.execute("SELECT store_id, timezone_str FROM timezones").fetchall()) == expected


def test_all_three_tables_in_one_call(db, fixtures_dir):
    summaries = database.load_files(db, status=fixtures_dir / "store_status_2024.csv",
                                    hours=fixtures_dir / "menu_hours_2024_dayOfWeek.csv",
                                    timezones=fixtures_dir / "timezones_2024.csv")
    assert [s.table for s in summaries] == ["store_status", "business_hours", "timezones"]
    assert [rows(db, t) for t in ("store_status", "business_hours", "timezones")] == [30, 30, 30]
    assert all(s.source.endswith(".csv") for s in summaries)


# --- reading -------------------------------------------------------------------------------------------

def test_read_keeps_ids_as_text(tmp_path):
    path = write(tmp_path / "s.csv", STATUS_HEADER + "-4506838894953744859,active,2023-01-22 12:09:39 UTC\n"
                 "007,active,2023-01-22 12:09:39 UTC\n9223372036854775808,active,2023-01-22 12:09:39 UTC")
    frame = database.read_table_csv(path, "store_status")
    assert frame["store_id"].tolist() == ["-4506838894953744859", "007", "9223372036854775808"]
    assert all(isinstance(v, str) for v in frame["timestamp_utc"])


def test_read_file_like_binary_and_text(db):
    body = STATUS_HEADER + "a,active,2023-01-22 12:00:00 UTC\nb,inactive,2023-01-22 12:00:00 UTC"
    for source in (io.BytesIO(("\ufeff" + body).encode()), io.StringIO(body)):
        frame = database.read_table_csv(source, "store_status")
        assert frame["store_id"].tolist() == ["a", "b"]
    summary = database.ingest_store_status(db, frame)
    assert (summary.source, summary.loaded) == ("<request>", 2)


def test_read_extra_columns_quoting_and_column_order(tmp_path):
    path = write(tmp_path / "s.csv", 'timestamp_utc,extra,status,store_id\n'
                 '"2023-01-22 12:00:00 UTC","x,y",active,"42"\n')
    frame = database.read_table_csv(path, "store_status")
    assert sorted(frame.columns) == ["status", "store_id", "timestamp_utc"]
    assert frame.iloc[0].to_dict() == {"timestamp_utc": "2023-01-22 12:00:00 UTC", "status": "active",
                                       "store_id": "42"}


def test_missing_column_is_a_clear_error(tmp_path):
    path = write(tmp_path / "s.csv", "store_id,timestamp_utc\n1,2023-01-22 12:00:00 UTC\n")
    with pytest.raises(LoadError) as raised:
        database.read_table_csv(path, "store_status")
    message = str(raised.value)
    assert "missing column status" in message and str(path) in message and "\n" not in message


@pytest.mark.parametrize("content,fragment", [
    (None, "file not found"),
    (b"", "empty file"),
    (b"\xff\xfe\x00s\x00t", "UTF-8"),
    (STATUS_HEADER.encode() + b"1,active,\xff\xfe2023\n", "unreadable CSV"),
])
def test_unreadable_sources(tmp_path, content, fragment):
    path = tmp_path / "s.csv"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LoadError, match=fragment):
        database.read_table_csv(path, "store_status")


def test_header_only_file_loads_nothing(db, tmp_path):
    summary = database.load_files(db, status=write(tmp_path / "s.csv", STATUS_HEADER))[0]
    assert (summary.read, summary.loaded, summary.rejected) == (0, 0, {})


# --- timestamps ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("2023-01-22 12:09:39.388884 UTC", us(2023, 1, 22, 12, 9, 39, 388884)),
    ("2023-01-22 12:09:39.38 UTC", us(2023, 1, 22, 12, 9, 39, 380000)),
    ("2023-01-22 12:09:39.3 UTC", us(2023, 1, 22, 12, 9, 39, 300000)),
    ("2023-01-22 12:09:39 UTC", us(2023, 1, 22, 12, 9, 39)),
    ("2023-01-22 12:09:39", us(2023, 1, 22, 12, 9, 39)),
    ("2023-01-22T12:09:39Z", us(2023, 1, 22, 12, 9, 39)),
    ("2023-01-22T12:09:39.5Z", us(2023, 1, 22, 12, 9, 39, 500000)),
    ("2023-01-22T12:09:39+00:00", us(2023, 1, 22, 12, 9, 39)),
    ("2023-01-22T14:09:39.000001+02:00", us(2023, 1, 22, 12, 9, 39, 1)),
    ("2023-01-22T07:09:39-0500", us(2023, 1, 22, 12, 9, 39)),
    ("  2023-01-22 12:09:39 UTC  ", us(2023, 1, 22, 12, 9, 39)),
    ("1969-12-31 23:59:59.999999 UTC", -1),
])
def test_timestamp_formats(db, text, expected):
    frame = pd.DataFrame({"store_id": ["s"], "status": ["inactive"], "timestamp_utc": [text]})
    summary = database.ingest_store_status(db, frame)
    assert summary.rejected == {}
    assert polls(db) == {("s", expected): 0}


def test_mixed_timestamp_formats_in_one_file_same_instant(db, tmp_path):
    path = write(tmp_path / "s.csv", STATUS_HEADER + "s,active,2023-01-22 12:00:00 UTC\n"
                 "s,active,2023-01-22T12:00:00Z\ns,active,2023-01-22T13:00:00+01:00\n"
                 "s,active,2023-01-22 12:00:00.000000 UTC\n")
    summary = database.load_files(db, status=path)[0]
    assert (summary.read, summary.loaded, summary.duplicates) == (4, 1, 3)
    assert polls(db) == {("s", us(2023, 1, 22, 12)): 1}


# --- rejects -------------------------------------------------------------------------------------------

def test_every_status_reject_reason(db, tmp_path):
    path = write(tmp_path / "s.csv", STATUS_HEADER + "\n".join([
        "ok1,active,2023-01-22 12:00:00 UTC",              # line 2
        "  ,active,2023-01-22 12:00:00 UTC",               # 3 empty store_id
        "ok2,,2023-01-22 12:00:00 UTC",                    # 4 missing value
        "ok3,actve,2023-01-22 12:00:00 UTC",               # 5 unknown status
        "ok4,active,yesterday",                            # 6 unparsable
        "ok5,active,2023-02-30 12:00:00 UTC",              # 7 impossible
        "ok6,active,2023-01-22 25:00:00 UTC",              # 8 impossible
        "ok7,active",                                      # 9 wrong number of fields
        "ok8, Inactive ,2023-01-22 12:00:00 UTC",          # 10 fine: trimmed, case-insensitive
        "ok9,active,2023-01-22",                           # 11 unparsable: a date is not an instant
        "ok10,active,2023-01-22 12:00:00.1234567 UTC",     # 12 unparsable: more than 6 fraction digits
        "ok11,active,",                                    # 13 missing value
    ]))
    summary = database.load_files(db, status=path)[0]
    assert summary.read == 12 and summary.loaded == 2
    assert summary.rejected == {"empty store_id": 1, "missing value": 2, "unknown status": 1,
                                "unparsable timestamp": 3, "impossible timestamp": 2,
                                "wrong number of fields": 1}
    assert summary.examples["empty store_id"] == "line 3:   ,active,2023-01-22 12:00:00 UTC"
    assert summary.examples["unknown status"] == "line 5: ok3,actve,2023-01-22 12:00:00 UTC"
    assert summary.examples["impossible timestamp"] == "line 7: ok5,active,2023-02-30 12:00:00 UTC"
    assert summary.examples["wrong number of fields"] == "line 9: ok7,active"
    assert summary.examples["unparsable timestamp"] == "line 6: ok4,active,yesterday"
    assert summary.examples["missing value"] == "line 4: ok2,,2023-01-22 12:00:00 UTC"
    assert set(polls(db)) == {("ok1", us(2023, 1, 22, 12)), ("ok8", us(2023, 1, 22, 12))}
    assert polls(db)[("ok8", us(2023, 1, 22, 12))] == 0


def test_line_numbers_after_a_skipped_row(db, tmp_path):
    path = write(tmp_path / "s.csv", STATUS_HEADER + "a,active\nb,active,x,y\nc,active,2023-01-22 12:00:00 UTC\n"
                 "d,bad,2023-01-22 12:00:00 UTC\n")
    summary = database.load_files(db, status=path)[0]
    assert summary.rejected == {"wrong number of fields": 2, "unknown status": 1}
    assert summary.examples["unknown status"].startswith("line 5: d,bad")


def test_every_hours_reject_reason(db, tmp_path):
    path = write(tmp_path / "h.csv", HOURS_HEADER + "\n".join([
        "a,0,09:00:00,17:00:00",        # 2 ok
        ",0,09:00:00,17:00:00",         # 3 empty store_id
        "b,,09:00:00,17:00:00",         # 4 missing value
        "c,7,09:00:00,17:00:00",        # 5 day outside
        "d,-1,09:00:00,17:00:00",       # 6 day outside
        "e,Mon,09:00:00,17:00:00",      # 7 day outside (not a number)
        "f,1,24:00:00,17:00:00",        # 8 time outside
        "g,1,09:00:00,23:60:00",        # 9 time outside
        "h,1,09:00:00,23:59:60",        # 10 time outside
        "i,1,9am,17:00:00",             # 11 time outside (unreadable)
        "j,1,00:00:00,23:59:59",        # 12 ok
        "k,2,09:00:00",                 # 13 wrong number of fields
    ]))
    summary = database.load_files(db, hours=path)[0]
    assert (summary.read, summary.loaded) == (12, 2)
    assert summary.rejected == {"empty store_id": 1, "missing value": 1, "day outside 0..6": 3,
                                "time outside 00:00:00..23:59:59": 4, "wrong number of fields": 1}
    assert summary.examples["day outside 0..6"] == "line 5: c,7,09:00:00,17:00:00"
    assert summary.examples["time outside 00:00:00..23:59:59"] == "line 8: f,1,24:00:00,17:00:00"
    assert {r[0] for r in db.execute("SELECT store_id FROM business_hours")} == {"a", "j"}


def test_timezone_rows(db, tmp_path):
    path = write(tmp_path / "t.csv", "store_id,timezone_str\na,America/New_York\nb,\nc,Mars/Olympus\n"
                 " ,America/Denver\nd,  America/Denver  \na,America/Chicago\n")
    summary = database.load_files(db, timezones=path)[0]
    assert (summary.read, summary.loaded, summary.duplicates) == (6, 4, 1)
    assert summary.rejected == {"empty store_id": 1}
    assert dict(db.execute("SELECT store_id, timezone_str FROM timezones").fetchall()) == {
        "a": "America/Chicago", "b": None, "c": "Mars/Olympus", "d": "America/Denver"}


# --- duplicates, idempotence, overlaps -----------------------------------------------------------------

def test_duplicate_instant_inactive_wins_within_a_file(db, tmp_path):
    path = write(tmp_path / "s.csv", STATUS_HEADER + "s,active,2023-01-22 12:00:00 UTC\n"
                 "s,inactive,2023-01-22 12:00:00 UTC\ns,active,2023-01-22 12:00:00 UTC\n"
                 "t,active,2023-01-22 12:00:00 UTC\nt,active,2023-01-22 12:00:00 UTC\n")
    summary = database.load_files(db, status=path)[0]
    # s: the inactive row is new, the first active one conflicting, the second a duplicate of it
    assert (summary.read, summary.new, summary.conflicting, summary.duplicates) == (5, 2, 1, 2)
    assert summary.loaded == 3 and summary.categories_total == 5
    assert polls(db) == {("s", us(2023, 1, 22, 12)): 0, ("t", us(2023, 1, 22, 12)): 1}


@pytest.mark.parametrize("first,second,expected", [
    ("active", "inactive", 0), ("inactive", "active", 0), ("active", "active", 1), ("inactive", "inactive", 0)])
def test_duplicate_instant_against_stored(db, first, second, expected):
    for status in (first, second):
        frame = pd.DataFrame({"store_id": ["s"], "status": [status], "timestamp_utc": ["2023-01-22 12:00:00 UTC"]})
        database.ingest_store_status(db, frame)
    assert polls(db) == {("s", us(2023, 1, 22, 12)): expected}


def test_same_file_twice_is_idempotent(db, fixtures_dir):
    path = fixtures_dir / "store_status_2024.csv"
    first = database.load_files(db, status=path, hours=fixtures_dir / "menu_hours_2024_dayOfWeek.csv",
                                timezones=fixtures_dir / "timezones_2024.csv")
    snapshot = [db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in
                ("store_status", "stores", "business_hours", "timezones")]
    second = database.load_files(db, status=path, hours=fixtures_dir / "menu_hours_2024_dayOfWeek.csv",
                                 timezones=fixtures_dir / "timezones_2024.csv")
    assert [s.loaded for s in first] == [s.loaded for s in second]
    assert [(s.new, s.already_stored) for s in first] == [(30, 0), (30, 0), (30, 0)]
    assert [(s.new, s.already_stored, s.changed, s.removed) for s in second] == [(0, 30, 0, 0)] * 3
    assert [db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in
            ("store_status", "stores", "business_hours", "timezones")] == snapshot
    assert rows(db, "store_status") == 30


def test_overlapping_loads_keep_one_copy(db, tmp_path, fixtures_dir):
    lines = (fixtures_dir / "store_status_2023.csv").read_text().splitlines()
    header, data = lines[0], lines[1:]
    a = write(tmp_path / "a.csv", "\n".join([header] + data[:20]) + "\n")
    b = write(tmp_path / "b.csv", "\n".join([header] + data[10:]) + "\n")
    database.load_files(db, status=a)
    assert rows(db, "store_status") == 20
    summary = database.load_files(db, status=b)[0]
    assert (summary.read, summary.new, summary.already_stored) == (len(data) - 10, 10, 10)
    assert rows(db, "store_status") == len(data) == 30
    assert rows(db, "stores") == len({line.split(",")[0] for line in data})


def test_editions_do_not_mix_store_keys(db, fixtures_dir):
    database.load_files(db, status=fixtures_dir / "store_status_2023.csv")
    database.load_files(db, status=fixtures_dir / "store_status_2024.csv")
    database.load_files(db, status=fixtures_dir / "store_status_neelpatel_tail.csv")
    expected = set()
    for name in ("store_status_2023.csv", "store_status_2024.csv", "store_status_neelpatel_tail.csv"):
        expected |= {(r["store_id"], r["timestamp_utc"]) for r in csv_rows(fixtures_dir / name)}
    assert rows(db, "store_status") == len(expected)
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []


def test_hours_replace_the_stores_in_the_file(db, tmp_path):
    database.load_files(db, hours=write(tmp_path / "a.csv", HOURS_HEADER + "a,0,09:00:00,17:00:00\n"
                                        "a,1,09:00:00,17:00:00\nb,0,10:00:00,11:00:00\nc,2,10:00:00,11:00:00\n"))
    database.load_files(db, hours=write(tmp_path / "b.csv", HOURS_HEADER + "a,5,08:00:00,09:00:00\n"
                                        "a,5,08:00:00,09:00:00\nc,9,10:00:00,11:00:00\n"))
    stored = sorted(tuple(r) for r in db.execute("SELECT * FROM business_hours"))
    # a: replaced (duplicate kept once); b: untouched; c: its only new row was rejected, so kept as it was
    assert stored == [("a", 5, "08:00:00", "09:00:00"), ("b", 0, "10:00:00", "11:00:00"),
                      ("c", 2, "10:00:00", "11:00:00")]


def test_timezones_replace_the_stores_in_the_file(db, tmp_path):
    database.load_files(db, timezones=write(tmp_path / "a.csv", "store_id,timezone_str\na,America/Denver\n"
                                            "b,America/Boise\n"))
    database.load_files(db, timezones=write(tmp_path / "b.csv", "store_id,timezone_str\na,Asia/Beirut\n"))
    assert dict(db.execute("SELECT * FROM timezones").fetchall()) == {"a": "Asia/Beirut", "b": "America/Boise"}


# --- atomicity -----------------------------------------------------------------------------------------

def test_missing_column_in_one_table_writes_nothing(db, tmp_path, fixtures_dir):
    bad = write(tmp_path / "tz.csv", "store_id,zone\na,America/Denver\n")
    with pytest.raises(LoadError, match="missing column timezone_str"):
        database.load_files(db, status=fixtures_dir / "store_status_2023.csv",
                            hours=fixtures_dir / "menu_hours_2023_day.csv", timezones=bad)
    assert [rows(db, t) for t in ("store_status", "stores", "business_hours", "timezones")] == [0, 0, 0, 0]


def test_missing_file_writes_nothing(db, tmp_path, fixtures_dir):
    with pytest.raises(LoadError, match="file not found"):
        database.load_files(db, status=fixtures_dir / "store_status_2023.csv", hours=tmp_path / "nope.csv")
    assert rows(db, "store_status") == rows(db, "stores") == 0


def test_failure_while_writing_rolls_back_every_table(db, fixtures_dir, monkeypatch):
    database.load_files(db, timezones=fixtures_dir / "timezones_2024.csv")

    def broken(conn, frame, source="<request>"):
        conn.execute("DELETE FROM timezones")
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    monkeypatch.setitem(sqlite_storage.INGEST, "timezones", broken)
    with pytest.raises(sqlite3.OperationalError):
        database.load_files(db, status=fixtures_dir / "store_status_2023.csv",
                            hours=fixtures_dir / "menu_hours_2023_day.csv",
                            timezones=fixtures_dir / "timezones_2023.csv")
    assert [rows(db, t) for t in ("store_status", "stores", "business_hours", "timezones")] == [0, 0, 0, 30]
    assert not db.in_transaction
    assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1    # load settings restored


def test_a_concurrent_reader_sees_none_or_all(db_path, fixtures_dir, monkeypatch):
    writer = database.connect(db_path)
    reader = database.connect(db_path)
    seen = []
    original = sqlite_storage._insert_polls

    def spy(conn, *args):
        result = original(conn, *args)
        seen.append(rows(reader, "store_status"))    # mid-transaction, from another connection
        return result

    monkeypatch.setattr(sqlite_storage, "_insert_polls", spy)
    database.load_files(writer, status=fixtures_dir / "store_status_2023.csv")
    assert seen == [0] and rows(reader, "store_status") == 30
    writer.close()
    reader.close()


def test_ingest_inside_callers_transaction_does_not_commit(db):
    frame = pd.DataFrame({"store_id": ["s"], "status": ["active"], "timestamp_utc": ["2023-01-22 12:00:00 UTC"]})
    db.execute("BEGIN")
    database.ingest_store_status(db, frame)
    assert db.in_transaction
    db.execute("ROLLBACK")
    assert rows(db, "store_status") == 0


# --- frames from the API -------------------------------------------------------------------------------

def test_ingest_frame_built_from_json(db):
    records = [{"store_id": "u-1", "status": "active", "timestamp_utc": "2023-01-22T12:00:00Z"},
               {"store_id": None, "status": "active", "timestamp_utc": "2023-01-22T12:00:00Z"},
               {"store_id": "u-2", "status": None, "timestamp_utc": "2023-01-22T12:00:00Z"},
               {"store_id": 12345678901234567, "status": "inactive", "timestamp_utc": "2023-01-22 13:00:00"}]
    summary = database.ingest_store_status(db, pd.DataFrame(records))
    assert summary.rejected == {"empty store_id": 1, "missing value": 1}
    assert summary.examples["empty store_id"].startswith("row 2: ")
    assert polls(db) == {("u-1", us(2023, 1, 22, 12)): 1, ("12345678901234567", us(2023, 1, 22, 13)): 0}


def test_missing_column_in_a_frame(db):
    with pytest.raises(LoadError, match="missing column status"):
        database.ingest_store_status(db, pd.DataFrame({"store_id": ["a"], "timestamp_utc": ["x"]}))


def test_summary_dict_and_text(db, tmp_path):
    path = write(tmp_path / "s.csv", STATUS_HEADER + "a,active,2023-01-22 12:00:00 UTC\nb,maybe,2023-01-22 12:00:00 UTC\n")
    summary = database.load_files(db, status=path)[0]
    data = summary.to_dict()
    assert data == {
        "table": "store_status", "source": str(path), "read": 2, "new": 1, "already_stored": 0, "changed": 0,
        "conflicting": 0, "duplicates": 0, "rejected": {"unknown status": 1},
        "examples": {"unknown status": "line 3: b,maybe,2023-01-22 12:00:00 UTC"}, "removed": 0, "loaded": 1,
        "seconds": data["seconds"]}
    text = summary.format()
    assert ("read 2: new 1, already stored 0, changed to inactive 0, conflicting 0, duplicates 0, rejected 1"
            in text and "rejected 1 x unknown status, e.g. line 3: b,maybe" in text)
    assert isinstance(summary, TableSummary)


# --- command line --------------------------------------------------------------------------------------

def test_cli_load(db_path, fixtures_dir, capsys):
    code = database.main(["load", "--db", str(db_path), "--status", str(fixtures_dir / "store_status_2024.csv"),
                          "--hours", str(fixtures_dir / "menu_hours_2024_dayOfWeek.csv"),
                          "--timezones", str(fixtures_dir / "timezones_2024.csv")])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    assert "store_status (" in out and "read 30: new 30, already stored 0" in out
    assert "business_hours (" in out and "timezones (" in out
    conn = database.connect(db_path)
    assert rows(conn, "store_status") == 30
    conn.close()


@pytest.mark.parametrize("problem", ["missing file", "missing column"])
def test_cli_errors_exit_2_and_write_nothing(db_path, tmp_path, fixtures_dir, capsys, problem):
    if problem == "missing file":
        hours = tmp_path / "absent.csv"
    else:
        hours = write(tmp_path / "h.csv", "store_id,start_time_local,end_time_local\n1,09:00:00,10:00:00\n")
    code = database.main(["load", "--db", str(db_path), "--status", str(fixtures_dir / "store_status_2023.csv"),
                          "--hours", str(hours)])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ") and str(hours) in err
    conn = database.connect(db_path)
    assert rows(conn, "store_status") == 0
    conn.close()


def test_cli_defaults_from_data_dir(tmp_path, fixtures_dir, capsys, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "store_status.csv").write_bytes((fixtures_dir / "store_status_2023.csv").read_bytes())
    (data / "menu_hours.csv").write_bytes((fixtures_dir / "menu_hours_2023_day.csv").read_bytes())
    monkeypatch.setenv("SM_DATA_DIR", str(data))
    monkeypatch.setenv("SM_DATABASE", str(tmp_path / "env.sqlite3"))
    assert database.main(["load"]) == 0
    out = capsys.readouterr().out
    assert "menu_hours.csv" in out and "timezones: no timezones.csv" in out
    conn = database.connect(tmp_path / "env.sqlite3")
    assert (rows(conn, "store_status"), rows(conn, "business_hours")) == (30, 30)
    conn.close()


def test_cli_defaults_without_files(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SM_DATA_DIR", str(tmp_path / "empty"))
    assert database.main(["load", "--db", str(tmp_path / "x.sqlite3")]) == 2
    assert "store_status.csv: file not found" in capsys.readouterr().err


def test_cli_init(tmp_path, capsys):
    path = tmp_path / "sub" / "new.sqlite3"
    assert database.main(["init", "--db", str(path)]) == 0
    conn = sqlite3.connect(path)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    conn.close()
    assert {"stores", "store_status", "business_hours", "timezones", "reports"} <= tables


# --- first start ---------------------------------------------------------------------------------------

def test_ensure_loaded_from_data_dir(db, tmp_path, fixtures_dir):
    data = tmp_path / "data"
    data.mkdir()
    for source, target in (("store_status_2024.csv", "store_status.csv"),
                           ("menu_hours_2024_dayOfWeek.csv", "business_hours.csv"),
                           ("timezones_2024.csv", "timezones.csv")):
        (data / target).write_bytes((fixtures_dir / source).read_bytes())
    message = database.ensure_loaded(db, data)
    assert "CSV files from" in message and "store_status 30 new rows" in message
    assert [rows(db, t) for t in ("store_status", "business_hours", "timezones")] == [30, 30, 30]
    # second start: the database has polls, nothing is loaded again
    assert "nothing loaded" in database.ensure_loaded(db, data)
    assert rows(db, "store_status") == 30


def test_ensure_loaded_generates_a_demo_set_without_data(db, tmp_path, fixtures_dir, monkeypatch):
    calls = []

    def generate_dataset(out_dir, *, stores, seed):
        calls.append((Path(out_dir), stores, seed))
        Path(out_dir).mkdir(parents=True)
        paths = {}
        for table, name in (("store_status", "store_status_2023.csv"), ("business_hours", "menu_hours_2023_day.csv"),
                            ("timezones", "timezones_2023.csv")):
            paths[table] = Path(out_dir) / f"{table}.csv"
            paths[table].write_bytes((fixtures_dir / name).read_bytes())
        return paths

    monkeypatch.setitem(sys.modules, "sample_data", types.SimpleNamespace(generate_dataset=generate_dataset))
    message = database.ensure_loaded(db, tmp_path / "data")
    assert calls == [(tmp_path / "data" / "generated", database.DEMO_STORES, 0)]
    assert "generated demo set" in message
    assert rows(db, "store_status") == 30


def test_ensure_loaded_with_the_real_generator(db, tmp_path, monkeypatch):
    monkeypatch.setattr(database, "DEMO_STORES", 15)
    message = database.ensure_loaded(db, tmp_path / "data")
    assert "generated demo set (15 stores" in message
    assert rows(db, "store_status") > 0 and rows(db, "business_hours") > 0


# --- the week blocks of polls the report reads --------------------------------------------------------

def blocks_as_rows(db):
    """Every poll held in poll_blocks, as (store_key, timestamp_us, active), sorted."""
    rows = []
    for key, block, blob in db.execute("SELECT store_key, block, polls FROM poll_blocks"):
        for value in np.frombuffer(blob, dtype="<i8").tolist():
            assert value >> 1 >= block * sqlite_storage.BLOCK_US and value >> 1 < (block + 1) * sqlite_storage.BLOCK_US
            rows.append((key, value >> 1, value & 1))
    return sorted(rows)


def status_rows(db):
    return sorted(tuple(row) for row in db.execute("SELECT store_key, timestamp_us, active FROM store_status"))


def test_poll_blocks_hold_exactly_the_stored_polls_through_overlapping_loads(db, tmp_path):
    first = tmp_path / "a.csv"
    first.write_text("store_id,status,timestamp_utc\n"
                     "s1,active,2023-01-01 10:00:00 UTC\ns1,active,2023-01-09 10:00:00 UTC\n"
                     "s2,inactive,2023-01-02 10:00:00.25 UTC\ns1,active,1969-12-31 23:00:00 UTC\n")
    second = tmp_path / "b.csv"  # overlaps: the same instant inactive (wins), a new store, a new week
    second.write_text("store_id,status,timestamp_utc\n"
                      "s1,inactive,2023-01-01 10:00:00 UTC\ns3,active,2023-01-01 11:00:00 UTC\n"
                      "s2,active,2023-02-20 00:00:00 UTC\ns2,inactive,2023-01-02 10:00:00.25 UTC\n")
    database.load_files(db, status=first)
    assert blocks_as_rows(db) == status_rows(db) and len(status_rows(db)) == 4
    database.load_files(db, status=second)
    database.load_files(db, status=second)
    assert blocks_as_rows(db) == status_rows(db) and len(status_rows(db)) == 6
    assert (db.execute("SELECT active FROM store_status s JOIN stores USING (store_key) "
                       "WHERE store_id = 's1' AND timestamp_us = 1672567200000000").fetchone()[0]) == 0


def test_poll_blocks_are_derived_for_a_database_written_without_them(db_path, fixtures_dir):
    conn = database.connect(db_path)
    database.load_files(conn, status=fixtures_dir / "store_status_2023.csv")
    expected = status_rows(conn)
    conn.execute("DELETE FROM poll_blocks")
    conn.close()
    conn = database.connect(db_path)  # an older database: polls but no blocks
    assert blocks_as_rows(conn) == expected
    conn.close()


# --- a status file loaded in chunks -------------------------------------------------------------------

def chunked_file(tmp_path: Path) -> Path:
    """30 real polls with rejects, wrong-field rows and duplicates spread over several 7-row chunks."""
    lines = (Path(__file__).resolve().parent / "fixtures" / "store_status_2023.csv").read_text().splitlines()[1:]
    data = list(lines)
    data.insert(3, "x,active")                                       # wrong number of fields, early
    data.insert(9, "y,maybe,2023-01-22 12:00:00 UTC")                # unknown status, chunk 2
    data.insert(16, "s,active,2023-01-22 12:00:00 UTC")              # cross-chunk duplicate: active first...
    data.insert(25, "s,inactive,2023-01-22T12:00:00Z")               # ...inactive in a later chunk wins
    data.insert(27, lines[0])                                        # an exact copy of the first poll
    data.insert(30, "z,active,a,b")                                  # wrong number of fields, later
    data.insert(33, "w,active,2023-02-30 00:00:00 UTC")              # impossible timestamp, late chunk
    data.append("t,inactive,2023-01-23 00:00:00 UTC")
    data.append("t,active,2023-01-23 00:00:00 UTC")                   # duplicate within the last chunk
    return write(tmp_path / "chunked.csv", STATUS_HEADER + "\n".join(data) + "\n")


def load_state(conn):
    return (sorted(tuple(r) for r in conn.execute("SELECT s.store_id, p.timestamp_us, p.active FROM store_status p "
                                                  "JOIN stores s USING (store_key)")),
            blocks_as_rows(conn), status_rows(conn))


def test_status_in_small_chunks_equals_one_chunk(tmp_path, monkeypatch):
    path = chunked_file(tmp_path)
    whole = database.connect(tmp_path / "whole.sqlite3")
    expected = database.load_files(whole, status=path)[0].to_dict()
    monkeypatch.setattr(ingestion, "STATUS_CHUNK_ROWS", 7)
    chunks = []
    original = sqlite_storage._StatusLoad.add
    monkeypatch.setattr(sqlite_storage._StatusLoad, "add", lambda self, frame, last: (chunks.append(len(frame)),
                                                                                 original(self, frame, last)))
    chunked = database.connect(tmp_path / "chunked.sqlite3")
    summary = database.load_files(chunked, status=path)[0].to_dict()
    assert len(chunks) >= 5 and max(chunks) == 7
    for data in (expected, summary):
        data.pop("seconds")
    assert summary == expected
    # 30 distinct polls, s and t at one instant both active and inactive (inactive new, active
    # conflicting), an exact copy of the first poll (a duplicate), 4 rejected
    assert {k: summary[k] for k in ("read", "new", "already_stored", "changed", "conflicting", "duplicates",
                                    "loaded")} == {"read": 39, "new": 32, "already_stored": 0, "changed": 0,
                                                   "conflicting": 2, "duplicates": 1, "loaded": 34}
    assert summary["rejected"] == {"wrong number of fields": 2, "unknown status": 1, "impossible timestamp": 1}
    assert summary["examples"] == {"wrong number of fields": "line 5: x,active",
                                   "unknown status": "line 11: y,maybe,2023-01-22 12:00:00 UTC",
                                   "impossible timestamp": "line 35: w,active,2023-02-30 00:00:00 UTC"}
    assert load_state(chunked) == load_state(whole)
    stored, blocks, rows_ = load_state(chunked)
    assert blocks == rows_
    assert ("s", us(2023, 1, 22, 12), 0) in stored and ("t", us(2023, 1, 23), 0) in stored
    # Loading it again in chunks stores nothing new, exactly as loading it again whole says.
    again = database.load_files(chunked, status=path)[0].to_dict()
    again_whole = database.load_files(whole, status=path)[0].to_dict()
    for data in (again, again_whole):
        data.pop("seconds")
    assert again == again_whole
    assert {k: again[k] for k in ("new", "already_stored", "changed", "conflicting", "duplicates")} == {
        "new": 0, "already_stored": 32, "changed": 0, "conflicting": 2, "duplicates": 1}
    assert again["rejected"] == expected["rejected"]
    assert load_state(chunked) == load_state(whole)
    whole.close()
    chunked.close()


def test_cross_chunk_duplicate_inactive_wins_either_order(db, tmp_path, monkeypatch):
    monkeypatch.setattr(ingestion, "STATUS_CHUNK_ROWS", 2)
    path = write(tmp_path / "s.csv", STATUS_HEADER + "a,inactive,2023-01-22 12:00:00 UTC\n"
                 "b,active,2023-01-22 12:00:00 UTC\nb,inactive,2023-01-22 13:00:00 UTC\n"
                 "a,active,2023-01-22 12:00:00 UTC\nb,inactive,2023-01-22 12:00:00 UTC\n"
                 "b,active,2023-01-22 13:00:00 UTC\n")
    summary = database.load_files(db, status=path)[0]
    # each instant: its inactive row is new, its active row (earlier or later) conflicting
    assert (summary.read, summary.new, summary.conflicting, summary.duplicates) == (6, 3, 3, 0)
    assert polls(db) == {("a", us(2023, 1, 22, 12)): 0, ("b", us(2023, 1, 22, 12)): 0,
                         ("b", us(2023, 1, 22, 13)): 0}
    assert blocks_as_rows(db) == status_rows(db)


@pytest.mark.parametrize("bad", [b"q,active,\xff\xfe2023-01-22 12:00:00 UTC\n", None])
def test_error_in_a_later_chunk_leaves_the_database_untouched(db, tmp_path, fixtures_dir, monkeypatch, bad):
    database.load_files(db, status=fixtures_dir / "store_status_2024.csv",
                        timezones=fixtures_dir / "timezones_2024.csv")
    before = [db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
              for t in ("store_status", "stores", "poll_blocks", "business_hours", "timezones")]
    monkeypatch.setattr(ingestion, "STATUS_CHUNK_ROWS", 7)
    monkeypatch.setattr(ingestion, "STATUS_BLOCK_BYTES", 256)    # the bad bytes are read after some chunks
    body = (fixtures_dir / "store_status_2023.csv").read_bytes()
    path = tmp_path / "s.csv"
    if bad is not None:
        path.write_bytes(body + bad)
        expected = "unreadable CSV"
    else:
        path.write_bytes(body)
        calls = []
        original = sqlite_storage._StatusLoad.add

        def failing(self, frame, last):      # e.g. the disk fills up while writing the third chunk
            calls.append(1)
            if len(calls) == 3:
                raise LoadError("simulated failure in a later chunk")
            original(self, frame, last)

        monkeypatch.setattr(sqlite_storage._StatusLoad, "add", failing)
        expected = "simulated failure"
    with pytest.raises(LoadError, match=expected):
        database.load_files(db, status=path, hours=fixtures_dir / "menu_hours_2023_day.csv",
                            timezones=fixtures_dir / "timezones_2023.csv")
    assert not db.in_transaction
    assert [db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
            for t in ("store_status", "stores", "poll_blocks", "business_hours", "timezones")] == before


def test_missing_column_fails_before_streaming(db, tmp_path, fixtures_dir, monkeypatch):
    monkeypatch.setattr(ingestion, "STATUS_CHUNK_ROWS", 7)
    bad = write(tmp_path / "tz.csv", "store_id,zone\na,America/Denver\n")
    with pytest.raises(LoadError, match="missing column timezone_str"):
        database.load_files(db, status=fixtures_dir / "store_status_2023.csv", timezones=bad)
    assert rows(db, "store_status") == rows(db, "stores") == 0


def test_wrong_field_rows_after_the_last_poll(db, tmp_path, monkeypatch):
    monkeypatch.setattr(ingestion, "STATUS_CHUNK_ROWS", 2)
    path = write(tmp_path / "s.csv", STATUS_HEADER + "a,active,2023-01-22 12:00:00 UTC\n"
                 "b,active,2023-01-22 12:00:00 UTC\nc,active\nd,bad,2023-01-22 12:00:00 UTC\ne\n")
    summary = database.load_files(db, status=path)[0]
    assert (summary.read, summary.loaded) == (5, 2)
    assert summary.rejected == {"wrong number of fields": 2, "unknown status": 1}
    assert summary.examples == {"wrong number of fields": "line 4: c,active",
                                "unknown status": "line 5: d,bad,2023-01-22 12:00:00 UTC"}
    only_bad = write(tmp_path / "t.csv", STATUS_HEADER + "x\ny,z\n")
    summary = database.load_files(db, status=only_bad)[0]
    assert (summary.read, summary.loaded, summary.rejected) == (2, 0, {"wrong number of fields": 2})


# --- honest load summaries -----------------------------------------------------------------------------

STATUS_CATEGORIES = ("new", "already_stored", "changed", "conflicting", "duplicates")


def counts(summary) -> dict:
    """The categories of a summary (object or dict), rejected as a total; asserts they add up to read."""
    data = summary if isinstance(summary, dict) else summary.to_dict()
    got = {name: data[name] for name in STATUS_CATEGORIES}
    got["rejected"] = sum(data["rejected"].values())
    assert sum(got.values()) == data["read"], data
    return got


def status_file(path: Path, rows_: list[tuple[str, str, str]]) -> Path:
    return write(path, STATUS_HEADER + "".join(f"{s},{status},{t}\n" for s, status, t in rows_))


T1, T2, T3 = "2023-01-22 12:00:00 UTC", "2023-01-22 13:00:00 UTC", "2023-01-22 14:00:00 UTC"


def test_reload_says_new_0_for_every_table(db, fixtures_dir):
    files = dict(status=fixtures_dir / "store_status_2024.csv", hours=fixtures_dir / "menu_hours_2024_dayOfWeek.csv",
                 timezones=fixtures_dir / "timezones_2024.csv")
    first = database.load_files(db, **files)
    second = database.load_files(db, **files)
    assert [(s.table, s.new, s.already_stored) for s in first] == [
        ("store_status", 30, 0), ("business_hours", 30, 0), ("timezones", 30, 0)]
    assert [(s.table, s.new, s.already_stored, s.changed, s.removed) for s in second] == [
        ("store_status", 0, 30, 0, 0), ("business_hours", 0, 30, 0, 0), ("timezones", 0, 30, 0, 0)]
    assert "read 30: new 0, already stored 30, changed to inactive 0" in second[0].format()
    assert all(s.categories_total == s.read for s in first + second)


def test_overlapping_status_file_counts_only_its_new_polls(db, tmp_path):
    database.load_files(db, status=status_file(tmp_path / "a.csv", [("a", "active", T1), ("a", "active", T2)]))
    summary = database.load_files(db, status=status_file(tmp_path / "b.csv", [
        ("a", "active", T2), ("a", "active", T3), ("b", "inactive", T1)]))[0]
    assert counts(summary) == {"new": 2, "already_stored": 1, "changed": 0, "conflicting": 0, "duplicates": 0,
                               "rejected": 0}


@pytest.mark.parametrize("stored,incoming,category,result", [
    ("active", "inactive", "changed", 0),          # inactive wins over the stored poll
    ("inactive", "active", "conflicting", 0),      # the stored inactive poll stays
    ("active", "active", "already_stored", 1),
    ("inactive", "inactive", "already_stored", 0),
])
def test_status_against_a_stored_poll(db, tmp_path, stored, incoming, category, result):
    database.load_files(db, status=status_file(tmp_path / "a.csv", [("s", stored, T1)]))
    summary = database.load_files(db, status=status_file(tmp_path / "b.csv", [("s", incoming, T1)]))[0]
    expected = dict.fromkeys(STATUS_CATEGORIES, 0) | {"rejected": 0, category: 1}
    assert counts(summary) == expected
    assert polls(db) == {("s", us(2023, 1, 22, 12)): result}
    assert blocks_as_rows(db) == status_rows(db)
    if category == "conflicting":
        assert "conflicting: active where the same instant is inactive" in summary.format()


def test_conflicting_within_one_file_and_against_stored(db, tmp_path):
    database.load_files(db, status=status_file(tmp_path / "a.csv", [("s", "active", T1), ("s", "inactive", T2)]))
    summary = database.load_files(db, status=status_file(tmp_path / "b.csv", [
        ("s", "active", T1), ("s", "inactive", T1),      # stored active: the inactive row changes it,
        ("s", "active", T2),                             # stored inactive: conflicting
        ("t", "active", T3), ("t", "inactive", T3), ("t", "inactive", T3)]))[0]
    assert counts(summary) == {"new": 1, "already_stored": 0, "changed": 1, "conflicting": 3, "duplicates": 1,
                               "rejected": 0}
    assert summary.loaded == 5


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 1000])
def test_repeats_across_chunks_are_exact(db, tmp_path, monkeypatch, chunk_rows):
    """A repeat in a later chunk is a duplicate, not 'already stored', also when the database already
    held polls of the same store at nearby instants (the case the old span heuristic could not tell)."""
    database.load_files(db, status=status_file(tmp_path / "old.csv", [("s", "active", T1), ("s", "active", T3)]))
    monkeypatch.setattr(ingestion, "STATUS_CHUNK_ROWS", chunk_rows)
    path = status_file(tmp_path / "new.csv", [
        ("s", "active", T2), ("s", "active", T1), ("u", "active", T1),        # new, already stored, new
        ("s", "active", T2), ("s", "active", T1), ("u", "active", T1),        # three duplicates
        ("s", "inactive", T2), ("u", "inactive", T1), ("s", "inactive", T3)])  # T2, u's T1 conflict; T3 changes
    summary = database.load_files(db, status=path)[0]
    assert counts(summary) == {"new": 2, "already_stored": 1, "changed": 1, "conflicting": 2, "duplicates": 3,
                               "rejected": 0}
    again = database.load_files(db, status=path)[0]
    # now stored: s T1 active, s T2, s T3 and u T1 inactive
    assert counts(again) == {"new": 0, "already_stored": 4, "changed": 0, "conflicting": 2, "duplicates": 3,
                             "rejected": 0}
    assert blocks_as_rows(db) == status_rows(db)


def reference_load(stored: dict, rows_: list[tuple[str, str, str]]) -> tuple[dict, dict]:
    """Independent model of a status load: (category counts, stored {(store, time): status} after it)."""
    counted = dict.fromkeys(STATUS_CATEGORIES, 0)
    distinct, statuses = set(), {}
    for store, status, moment in rows_:
        if (store, status, moment) in distinct:
            counted["duplicates"] += 1
            continue
        distinct.add((store, status, moment))
        statuses.setdefault((store, moment), set()).add(status)
    after = dict(stored)
    for key, seen in statuses.items():
        before = stored.get(key)
        if "inactive" in seen:
            counted[{None: "new", "active": "changed", "inactive": "already_stored"}[before]] += 1
        if "active" in seen:
            if "inactive" in seen or before == "inactive":
                counted["conflicting"] += 1
            else:
                counted[{None: "new", "active": "already_stored"}[before]] += 1
        after[key] = "inactive" if "inactive" in seen or before == "inactive" else "active"
    return counted, after


@pytest.mark.parametrize("filter_hits", ["real", "always"])
def test_random_loads_match_the_reference_model(tmp_path, monkeypatch, filter_hits):
    """Random files over few stores and instants (many repeats and conflicts), loaded one after another
    whole, in random small chunks or as frames: counts and stored polls equal an independent model.
    'always': the Bloom filter claims every group, so every look-up path is taken."""
    import random

    if filter_hits == "always":
        monkeypatch.setattr(sqlite_storage._SeenFilter, "contains", lambda self, keys, micros: np.ones(len(keys), bool))
    for seed in range(40):
        rng = random.Random(seed)
        stores = [f"s{i}" for i in range(rng.randint(1, 4))]
        moments = [f"2023-01-{day:02d} 12:00:00 UTC" for day in range(1, rng.randint(2, 12))]
        conn = database.connect(tmp_path / f"r{seed}.sqlite3")
        stored: dict = {}
        for round_ in range(3):
            rows_ = [(rng.choice(stores), rng.choice(["active", "inactive"]), rng.choice(moments))
                     for _ in range(rng.randint(0, 30))]
            monkeypatch.setattr(ingestion, "STATUS_CHUNK_ROWS", rng.randint(1, 12))
            if rng.random() < 0.3:
                summary = database.ingest_store_status(conn, pd.DataFrame(rows_, columns=list(TABLE_ORDER)))
            else:
                summary = database.load_files(conn, status=status_file(tmp_path / f"{seed}-{round_}.csv", rows_))[0]
            expected, stored = reference_load(stored, rows_)
            assert {name: getattr(summary, name) for name in STATUS_CATEGORIES} == expected, (seed, round_)
            assert summary.categories_total == summary.read == len(rows_)
            assert polls(conn) == {(store, us(*map(int, moment[:10].split("-")), 12)): int(status == "active")
                                   for (store, moment), status in stored.items()}
            assert blocks_as_rows(conn) == status_rows(conn)
        conn.close()


TABLE_ORDER = ("store_id", "status", "timestamp_utc")


def test_seen_filter_has_no_false_negatives():
    rng = np.random.default_rng(1)
    keys, micros = rng.integers(0, 50, 20_000), rng.integers(-10**15, 10**15, 20_000)
    seen = sqlite_storage._SeenFilter(expected_bytes=1_000_000)
    seen.add(keys[:10_000], micros[:10_000])
    assert seen.contains(keys[:10_000], micros[:10_000]).all()
    assert seen.contains(keys[10_000:], micros[10_000:]).mean() < 0.05


def test_hours_and_timezone_summaries(db, tmp_path):
    database.load_files(db, hours=write(tmp_path / "a.csv", HOURS_HEADER + "a,0,09:00:00,17:00:00\n"
                                        "a,1,09:00:00,17:00:00\nb,0,10:00:00,11:00:00\n"),
                        timezones=write(tmp_path / "a_tz.csv", "store_id,timezone_str\na,America/Denver\n"
                                        "b,\n"))
    hours, zones = database.load_files(
        db, hours=write(tmp_path / "b.csv", HOURS_HEADER + "a,0,9:00,17:00\na,2,09:00:00,12:00:00\n"
                        "a,2,09:00:00,12:00:00\nc,3,10:00:00,11:00:00\nd,9,10:00:00,11:00:00\n"),
        timezones=write(tmp_path / "b_tz.csv", "store_id,timezone_str\na,America/Denver\nb,Asia/Beirut\n"
                        "c,America/Boise\nc,America/Chicago\n"))
    # a's Monday row is already stored (after normalising 9:00), its Wednesday new, its Tuesday removed;
    # c is a new store; the repeated Wednesday row is a duplicate; d's day is rejected.
    assert (hours.new, hours.already_stored, hours.duplicates, hours.rejected_total, hours.removed) == (2, 1, 1, 1, 1)
    assert hours.categories_total == hours.read == 5
    assert "removed 1 stored rows the file replaced" in hours.format()
    # a unchanged, b's empty zone replaced, c new (its first row superseded by its last)
    assert (zones.new, zones.already_stored, zones.changed, zones.duplicates) == (1, 1, 1, 1)
    assert zones.categories_total == zones.read == 4


# --- special hours -------------------------------------------------------------------------------------

SPECIAL_HEADER = "store_id,date,start_time_local,end_time_local\n"


def special(conn) -> list[tuple]:
    return sorted(tuple(row) for row in conn.execute("SELECT * FROM special_hours"))


def test_special_hours_every_reject_reason(db, tmp_path):
    path = write(tmp_path / "sp.csv", SPECIAL_HEADER + "a,2023-12-25,,\n"        # closed
                 "a,2023-12-24,9:00,14:00:00.5\n"                                 # normalised like weekly hours
                 " ,2023-12-25,09:00:00,10:00:00\n"                               # empty store_id
                 "b,2023-02-30,09:00:00,10:00:00\n"                               # bad date (impossible)
                 "c,25/12/2023,09:00:00,10:00:00\n"                               # bad date (not YYYY-MM-DD)
                 "d,,09:00:00,10:00:00\n"                                         # bad date (empty)
                 "e,2023-12-25,09:00:00,\n"                                       # one time empty
                 "f,2023-12-25,,10:00:00\n"                                       # one time empty
                 "g,2023-12-25,24:00:00,10:00:00\n"                               # bad time
                 "h,2023-12-25,09:00\n"                                           # wrong number of fields
                 "a,2023-12-25,,\n")                                              # duplicate
    summary = database.load_files(db, special_hours=path)[0]
    assert summary.table == "special_hours"
    assert summary.rejected == {"wrong number of fields": 1, "empty store_id": 1, "bad date": 3,
                                "one time empty": 2, "time outside 00:00:00..23:59:59": 1}
    assert summary.examples["bad date"] == "line 5: b,2023-02-30,09:00:00,10:00:00"
    assert summary.examples["one time empty"] == "line 8: e,2023-12-25,09:00:00,"
    assert summary.examples["time outside 00:00:00..23:59:59"] == "line 10: g,2023-12-25,24:00:00,10:00:00"
    assert summary.examples["empty store_id"] == "line 4:  ,2023-12-25,09:00:00,10:00:00"
    assert (summary.read, summary.new, summary.duplicates, summary.categories_total) == (11, 2, 1, 11)
    assert special(db) == [("a", "2023-12-24", "09:00:00", "14:00:00.5"), ("a", "2023-12-25", None, None)]


def test_special_hours_replace_each_store_date_and_keep_other_dates(db, tmp_path):
    database.load_files(db, special_hours=write(tmp_path / "a.csv", SPECIAL_HEADER + "a,2023-12-24,09:00:00,12:00:00\n"
                                                "a,2023-12-24,14:00:00,18:00:00\na,2023-12-25,,\n"
                                                "b,2023-12-25,10:00:00,11:00:00\n"))
    summary = database.load_files(db, special_hours=write(tmp_path / "b.csv", SPECIAL_HEADER +
                                                          "a,2023-12-24,09:00:00,12:00:00\n"   # already stored
                                                          "a,2023-12-31,22:00:00,02:00:00\n"   # a new date
                                                          "b,2023-12-25,,\n"                    # now closed
                                                          "c,2023-12-25,,25:00\n"))[0]          # rejected: kept out
    # a's 2023-12-24 afternoon row and b's 2023-12-25 hours are replaced; a's 2023-12-25 is untouched
    assert (summary.new, summary.already_stored, summary.removed, summary.rejected_total) == (2, 1, 2, 1)
    assert special(db) == [("a", "2023-12-24", "09:00:00", "12:00:00"), ("a", "2023-12-25", None, None),
                           ("a", "2023-12-31", "22:00:00", "02:00:00"), ("b", "2023-12-25", None, None)]
    again = database.load_files(db, special_hours=tmp_path / "b.csv")[0]
    assert (again.new, again.already_stored, again.removed) == (0, 3, 0)


def test_special_hours_from_a_frame_with_missing_values(db):
    frame = pd.DataFrame([{"store_id": "a", "date": "2024-02-29", "start_time_local": None, "end_time_local": None},
                          {"store_id": 123, "date": "2023-02-29", "start_time_local": "09:00", "end_time_local": "10:00"}])
    summary = database.ingest_special_hours(db, frame)
    assert summary.rejected == {"bad date": 1} and summary.examples["bad date"].startswith("row 2: 123,")
    assert special(db) == [("a", "2024-02-29", None, None)]


def test_special_hours_in_the_report_inputs(db_path, tmp_path, fixtures_dir):
    conn = database.connect(db_path)
    database.load_files(conn, status=fixtures_dir / "store_status_2024.csv")
    store = conn.execute("SELECT store_id FROM stores ORDER BY store_key LIMIT 1").fetchone()[0]
    database.load_files(conn, special_hours=write(tmp_path / "sp.csv", SPECIAL_HEADER +
                                                  f"{store},2023-12-25,,\n{store},2023-12-24,10:00:00,12:00:00\n"
                                                  "elsewhere,2023-12-25,,\n"))
    conn.close()
    everything = database.read_report_inputs(db_path, lookback_us=7 * 86_400_000_000)
    assert list(everything.special_hours.columns) == ["store_id", "date", "start_time_local", "end_time_local"]
    assert sorted(map(tuple, everything.special_hours.itertuples(index=False))) == sorted([
        ("elsewhere", "2023-12-25", None, None), (store, "2023-12-24", "10:00:00", "12:00:00"),
        (store, "2023-12-25", None, None)])
    chosen = database.read_report_inputs(db_path, lookback_us=7 * 86_400_000_000, store_ids=[store])
    assert sorted(chosen.special_hours["date"]) == ["2023-12-24", "2023-12-25"]
    database.connect(tmp_path / "empty.sqlite3").close()
    empty = database.read_report_inputs(tmp_path / "empty.sqlite3", lookback_us=1)
    assert empty.now is None and list(empty.special_hours.columns) == list(everything.special_hours.columns)


def test_cli_special_hours_option(db_path, tmp_path, capsys):
    path = write(tmp_path / "sp.csv", SPECIAL_HEADER + "a,2023-12-25,,\nb,2023-13-01,,\n")
    assert database.main(["load", "--db", str(db_path), "--special-hours", str(path)]) == 0
    out = capsys.readouterr().out
    assert "special_hours (" in out and "read 2: new 1, already stored 0, duplicates 0, rejected 1" in out
    assert "rejected 1 x bad date, e.g. line 3: b,2023-13-01,," in out
    conn = database.connect(db_path)
    assert special(conn) == [("a", "2023-12-25", None, None)]
    conn.close()


def data_dir_with(tmp_path: Path, fixtures_dir: Path, special_rows: str | None) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "store_status.csv").write_bytes((fixtures_dir / "store_status_2023.csv").read_bytes())
    (data / "menu_hours.csv").write_bytes((fixtures_dir / "menu_hours_2023_day.csv").read_bytes())
    if special_rows is not None:
        write(data / "special_hours.csv", SPECIAL_HEADER + special_rows)
    return data


def test_data_dir_special_hours_are_picked_up(db, tmp_path, fixtures_dir, capsys, monkeypatch):
    data = data_dir_with(tmp_path, fixtures_dir, "a,2023-12-25,,\n")
    assert database.default_files(data)["special_hours"] == data / "special_hours.csv"
    message = database.ensure_loaded(db, data)
    assert "special_hours 1 new rows" in message and special(db) == [("a", "2023-12-25", None, None)]
    monkeypatch.setenv("SM_DATA_DIR", str(data))
    monkeypatch.setenv("SM_DATABASE", str(tmp_path / "env.sqlite3"))
    assert database.main(["load"]) == 0
    assert "special_hours (" in capsys.readouterr().out


def test_no_arguments_loads_the_data_dir_like_load(tmp_path, fixtures_dir, capsys, monkeypatch):
    data = data_dir_with(tmp_path, fixtures_dir, None)
    monkeypatch.setenv("SM_DATA_DIR", str(data))
    outputs = []
    for name, argv in (("bare", []), ("load", ["load"])):
        monkeypatch.setenv("SM_DATABASE", str(tmp_path / f"{name}.sqlite3"))
        assert database.main(argv) == 0
        outputs.append(capsys.readouterr().out.split("loaded into")[0])
        conn = database.connect(tmp_path / f"{name}.sqlite3")
        assert (rows(conn, "store_status"), rows(conn, "business_hours")) == (30, 30)
        conn.close()
    assert "special_hours: no special_hours.csv (optional)" in outputs[0]
    # the same lines but for the time each took
    strip = lambda text: [line.rsplit(" [", 1)[0] for line in text.splitlines()]
    assert strip(outputs[0]) == strip(outputs[1])
    monkeypatch.setattr(sys, "argv", ["database.py"])      # `python database.py`, through main()'s own argv
    monkeypatch.setenv("SM_DATABASE", str(tmp_path / "argv.sqlite3"))
    assert database.main() == 0
    assert "store_status (" in capsys.readouterr().out


# --- progress bar ---------------------------------------------------------------------------------------

class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_is_quiet_when_not_a_terminal(db, fixtures_dir, capfd, monkeypatch):
    monkeypatch.setattr(ingestion, "PROGRESS_DELAY_S", 0)
    monkeypatch.setattr(sys, "stderr", io.StringIO())          # not a terminal
    database.load_files(db, status=fixtures_dir / "store_status_2023.csv")
    assert sys.stderr.getvalue() == ""
    assert capfd.readouterr().err == ""


def test_progress_bar_on_a_terminal(db, fixtures_dir, monkeypatch):
    monkeypatch.setattr(ingestion, "PROGRESS_DELAY_S", 0)
    monkeypatch.setattr(ingestion, "PROGRESS_REFRESH_S", 0)
    monkeypatch.setattr(ingestion, "STATUS_CHUNK_ROWS", 10)
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    database.load_files(db, status=fixtures_dir / "store_status_2023.csv")
    shown = terminal.getvalue()
    assert "store_status:" in shown and "30 rows" in shown and "B/s" in shown and "100%" in shown
    terminal.truncate(0)
    database.load_files(db, status=fixtures_dir / "store_status_2023.csv", progress=False)
    assert terminal.getvalue() == ""


# --- unsafe store ids (issue 9: phantom stores, formula injection, unbounded length) -------------------

UNSAFE_IDS = ['=HYPERLINK("http://x")', "+1", "-2+3", "@SUM(A1)", "a\rb", "nul\x00id", "tab\tid", "x" * 256,
              "-", "-12a"]
SAFE_IDS = ["8419537941919820732", "-4506838894953744859", "x" * 255, "a=b", "a-b", "Ünïcødé", "0071"]


def test_unsafe_store_ids_are_rejected_in_every_table(db):
    ids = UNSAFE_IDS + SAFE_IDS
    status = pd.DataFrame({"store_id": ids, "status": "active", "timestamp_utc": "2023-01-22 12:00:00 UTC"})
    summary = database.ingest_store_status(db, status)
    assert summary.rejected == {"unsafe store_id": len(UNSAFE_IDS)} and summary.new == len(SAFE_IDS)
    assert {store for store, _ in polls(db)} == set(SAFE_IDS)
    assert "\\r" in summary.examples["unsafe store_id"] or "HYPERLINK" in summary.examples["unsafe store_id"]
    hours = pd.DataFrame({"store_id": ids, "day_of_week": "0", "start_time_local": "09:00:00",
                          "end_time_local": "17:00:00"})
    assert database.ingest_business_hours(db, hours).rejected == {"unsafe store_id": len(UNSAFE_IDS)}
    zones = pd.DataFrame({"store_id": ids, "timezone_str": "America/New_York"})
    assert database.ingest_timezones(db, zones).rejected == {"unsafe store_id": len(UNSAFE_IDS)}
    special = pd.DataFrame({"store_id": ids, "date": "2023-12-25", "start_time_local": "",
                            "end_time_local": ""})
    assert database.ingest_special_hours(db, special).rejected == {"unsafe store_id": len(UNSAFE_IDS)}


def test_unsafe_store_ids_in_a_streamed_csv_and_examples_stay_short(db, tmp_path):
    path = write(tmp_path / "s.csv", STATUS_HEADER + "\n".join([
        "ok,active,2023-01-22 12:00:00 UTC",
        "=1+2,active,2023-01-22 12:00:00 UTC",
        "y" * 1_000_000 + ",active,2023-01-22 12:00:00 UTC",
    ]) + "\n")
    summary = database.load_files(db, status=path)[0]
    assert summary.rejected == {"unsafe store_id": 2} and summary.new == 1
    assert summary.examples["unsafe store_id"] == "line 3: =1+2,active,2023-01-22 12:00:00 UTC"
    long_example = ingestion._example_value("y" * 1_000_000)
    assert len(long_example) < 120 and "1,000,000 characters" in long_example


def test_special_date_of_year_zero_is_a_bad_date(db):
    special = pd.DataFrame({"store_id": ["a", "b"], "date": ["0000-02-29", "2024-02-29"],
                            "start_time_local": ["", ""], "end_time_local": ["", ""]})
    summary = database.ingest_special_hours(db, special)
    assert summary.rejected == {"bad date": 1} and summary.new == 1
