"""One contract, every backend: each test runs on SQLite and on PostgreSQL (`storage_location`, see
conftest.py) and, where the contract is "the same as SQLite", compares with a SQLite database given the
same calls (`reference`). PostgreSQL runs on a throw-away server; without its binaries those cases skip."""
from __future__ import annotations

import inspect
import re
import sqlite3
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

import database
import ingestion
import sample_data
import storage
from database import LoadError
from report_generator import WEEK_US, generate_report

STATUS_HEADER = "store_id,status,timestamp_utc\n"
HOURS_HEADER = "store_id,day,start_time_local,end_time_local\n"
SPECIAL_HEADER = "store_id,date,start_time_local,end_time_local\n"
ZONES_HEADER = "store_id,timezone_str\n"
T1, T2, T3 = "2023-01-22 12:00:00 UTC", "2023-01-22 13:00:00 UTC", "2023-01-22 14:00:00 UTC"
# Store ids a text format could trip on (COPY escapes, CSV quoting, sort order of bytes vs. a locale's).
UNUSUAL_IDS = ["back\\slash", "comma, and \"quotes\"", "Ünïcödé ✓", "-42", "x" * 255, "tab\\t", "'apostrophe",
               "Zed", "zed", "Ä"]
DATA_TABLES = ("stores", "store_status", "business_hours", "timezones", "special_hours", "loads")


# --- helpers -----------------------------------------------------------------------------------------

def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def query(conn, sql: str) -> list[tuple]:
    """Rows as tuples from either backend's connection (plain SQL both understand, no parameters)."""
    if isinstance(conn, sqlite3.Connection):
        return [tuple(row) for row in conn.execute(sql)]
    from psycopg.rows import tuple_row

    with conn.cursor(row_factory=tuple_row) as cursor:
        return cursor.execute(sql).fetchall()


def execute(conn, sql: str) -> None:
    """A statement without parameters or rows, on either backend's connection."""
    if isinstance(conn, sqlite3.Connection):
        conn.execute(sql)
    else:
        conn.cursor().execute(sql)


def polls(conn) -> dict[tuple[str, int], int]:
    """{(store_id, timestamp_us): active} of everything stored."""
    return {(r[0], r[1]): r[2] for r in query(
        conn, "SELECT s.store_id, p.timestamp_us, p.active FROM store_status p JOIN stores s USING (store_key)")}


def contents(conn) -> dict[str, list[tuple]]:
    """Every data table's rows (loads: table names), sorted: what "nothing written" compares."""
    return {
        "stores": sorted(query(conn, "SELECT store_key, store_id FROM stores")),
        "store_status": sorted(query(conn, "SELECT store_key, timestamp_us, active FROM store_status")),
        "business_hours": sorted(query(conn, "SELECT store_id, day_of_week, start_time_local, end_time_local "
                                             "FROM business_hours")),
        "timezones": sorted(query(conn, "SELECT store_id, timezone_str FROM timezones"), key=repr),
        "special_hours": sorted(query(conn, "SELECT store_id, date, start_time_local, end_time_local "
                                            "FROM special_hours"), key=repr),
        "loads": sorted(query(conn, "SELECT table_name FROM loads")),
    }


def summaries(result) -> list[dict]:
    """TableSummary dicts without their timings."""
    out = []
    for summary in result if isinstance(result, list) else [result]:
        data = summary.to_dict()
        data.pop("seconds")
        out.append(data)
    return out


@pytest.fixture
def conn(storage_location):
    connection = database.connect(storage_location)
    yield connection
    connection.close()


@pytest.fixture
def reference(tmp_path):
    """A SQLite connection given the same calls: what the contract says the backend must match."""
    connection = database.connect(tmp_path / "reference.sqlite3")
    yield connection
    connection.close()


def both(conn, reference, operation, *args, **kwargs):
    """Run `operation` on the backend under test and on the SQLite reference; both results."""
    return operation(conn, *args, **kwargs), operation(reference, *args, **kwargs)


# --- the interface -------------------------------------------------------------------------------------

def test_every_backend_defines_every_operation_with_sqlites_signature(storage_location):
    module = storage.backend(storage_location)
    reference_module = storage.backend("reference.sqlite3")
    missing = [name for name in storage.OPERATIONS if not callable(getattr(module, name, None))]
    assert missing == []
    for name in storage.OPERATIONS:
        ours = inspect.signature(getattr(module, name)).parameters
        theirs = inspect.signature(getattr(reference_module, name)).parameters
        assert [(p.name, p.kind, p.default) for p in ours.values()] == \
               [(p.name, p.kind, p.default) for p in theirs.values()], name


def test_connect_is_idempotent_and_errors_are_known(storage_location):
    first, second = database.connect(storage_location), database.connect(storage_location)
    assert storage.backend(first) is storage.backend(storage_location)
    row = first.execute("SELECT COUNT(*) AS n, 'x' AS label FROM stores").fetchone()
    assert (row[0], row["n"], row[1], row["label"], dict(row)) == (0, 0, "x", "x", {"n": 0, "label": "x"})
    with pytest.raises(database.errors()):
        query(first, "SELECT no_such_column FROM stores")
    first.close()
    second.close()


def test_concurrent_first_connects_create_the_schema_once(storage_location):
    start, errors, opened = threading.Barrier(6), [], []

    def connect() -> None:
        try:
            start.wait()
            opened.append(database.connect(storage_location))
        except BaseException as exc:   # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=connect) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == [] and len(opened) == 6
    assert database.has_polls(opened[0]) is False
    for conn in opened:
        conn.close()


# --- loads: summaries, rejects, atomicity -------------------------------------------------------------

FIXTURE_LOADS = [
    dict(status="store_status_2023.csv", hours="menu_hours_2023_day.csv", timezones="timezones_2023.csv"),
    dict(status="store_status_2024.csv", hours="menu_hours_2024_dayOfWeek.csv", timezones="timezones_2024.csv"),
    dict(status="store_status_neelpatel_tail.csv", hours="business_hours_day_of_week.csv"),
    dict(status="store_status_2023_bom_crlf.csv"),
]


def test_fixture_csvs_give_sqlites_summaries_and_rows_and_reloading_is_new_0(conn, reference, fixtures_dir,
                                                                             monkeypatch):
    # PostgreSQL vacuums after a load of many polls: make these small loads count as many.
    monkeypatch.setattr(storage.backend(conn), "VACUUM_AFTER_POLLS", 1, raising=False)
    for files in FIXTURE_LOADS:
        paths = {key: fixtures_dir / name for key, name in files.items()}
        ours, theirs = both(conn, reference, database.load_files, **paths)
        assert summaries(ours) == summaries(theirs)
    assert contents(conn) == contents(reference)
    assert polls(conn) == polls(reference)
    for files in FIXTURE_LOADS:
        again, _ = both(conn, reference, database.load_files,
                        **{key: fixtures_dir / name for key, name in files.items()})
        assert [s.new for s in again] == [0] * len(again)
        assert all(s.already_stored == s.loaded for s in again if s.table != "store_status")
    assert contents(conn) == contents(reference)
    ours, theirs = database.recent_loads(conn, 100), database.recent_loads(reference, 100)
    for row in ours + theirs:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", row.pop("finished_at"))
        row.pop("seconds")
    assert ours == theirs and len(ours) == 18
    assert [row["table"] for row in database.recent_loads(conn, 2)] == ["store_status", "business_hours"]


def test_every_reject_reason_of_every_table(conn, reference, tmp_path):
    status = write(tmp_path / "s.csv", STATUS_HEADER + "\n".join([
        "ok1,active,2023-01-22 12:00:00 UTC", "  ,active,2023-01-22 12:00:00 UTC", "ok2,,2023-01-22 12:00:00 UTC",
        "ok3,actve,2023-01-22 12:00:00 UTC", "ok4,active,yesterday", "ok5,active,2023-02-30 12:00:00 UTC",
        "ok6,active,2023-01-22 25:00:00 UTC", "ok7,active", "ok8, Inactive ,2023-01-22 12:00:00 UTC",
        "=cmd,active,2023-01-22 12:00:00 UTC", "-12,active,2023-01-22 12:00:00 UTC", "ok11,active,"]))
    hours = write(tmp_path / "h.csv", HOURS_HEADER + "\n".join([
        "a,0,09:00:00,17:00:00", ",0,09:00:00,17:00:00", "b,,09:00:00,17:00:00", "c,7,09:00:00,17:00:00",
        "f,1,24:00:00,17:00:00", "i,1,9am,17:00:00", "j,1,00:00,23:59:59.5", "k,2,09:00:00", "+x,1,09:00,10:00"]))
    zones = write(tmp_path / "z.csv", ZONES_HEADER + "a,America/Denver\n,Asia/Kolkata\n@x,UTC\nb,\nb,Europe/Paris\n")
    special = write(tmp_path / "sp.csv", SPECIAL_HEADER + "\n".join([
        "a,2023-01-22,,", "a,2023-02-30,10:00,11:00", "a,2023-01-23,10:00,", "a,2023-01-24,25:00,26:00",
        "a,0000-01-01,,", ",2023-01-22,,", "a,2023-01-25,10:00,14:00", "a,2023-01-25,10:00,14:00"]))
    ours, theirs = both(conn, reference, database.load_files, status=status, hours=hours, timezones=zones,
                        special_hours=special)
    assert summaries(ours) == summaries(theirs)
    assert all(s.rejected for s in ours)
    assert ours[0].rejected == {"wrong number of fields": 1, "empty store_id": 1, "unsafe store_id": 1,
                                "missing value": 2, "unknown status": 1, "unparsable timestamp": 1,
                                "impossible timestamp": 2}
    assert contents(conn) == contents(reference)


def test_a_load_that_fails_midway_writes_nothing(conn, reference, fixtures_dir, monkeypatch):
    database.load_files(conn, status=fixtures_dir / "store_status_2024.csv",
                        timezones=fixtures_dir / "timezones_2024.csv")
    before = contents(conn)
    module = storage.backend(conn)

    def broken(connection, frame, source="<request>"):
        execute(connection, "DELETE FROM timezones")   # a write, then a failure
        raise RuntimeError("simulated failure while writing")

    monkeypatch.setitem(module.INGEST, "timezones", broken)
    with pytest.raises(RuntimeError, match="simulated"):
        database.load_files(conn, status=fixtures_dir / "store_status_2023.csv",
                            hours=fixtures_dir / "menu_hours_2023_day.csv",
                            timezones=fixtures_dir / "timezones_2023.csv")
    assert contents(conn) == before
    # A part of the status file that cannot be read, in a later chunk: found only after earlier chunks
    # were written, and still nothing stays.
    monkeypatch.setattr(ingestion, "STATUS_CHUNK_ROWS", 3)
    path = fixtures_dir.parent / "_unused"
    data = (fixtures_dir / "store_status_2023.csv").read_bytes() + b"q,active,\xff\xfe2023-01-22 12:00:00 UTC\n"
    with pytest.raises(LoadError, match="unreadable|UTF-8"):
        database.load_files(conn, status=_BytesFile(data, str(path)), hours=fixtures_dir / "menu_hours_2023_day.csv")
    assert contents(conn) == before
    # A load inside the caller's transaction is part of it.
    with pytest.raises(KeyError):
        with database.transaction(conn):
            database.load_files(conn, status=fixtures_dir / "store_status_2023.csv")
            raise KeyError("caller gives up")
    assert contents(conn) == before
    database.load_files(conn, status=fixtures_dir / "store_status_2023.csv")   # the connection still works
    assert len(contents(conn)["store_status"]) == len(before["store_status"]) + 30


class _BytesFile:
    """A binary file-like with a name (what an upload looks like to load_files)."""

    def __init__(self, data: bytes, name: str):
        self.data, self.name = data, name

    def read(self) -> bytes:
        return self.data


def status_file(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    return write(path, STATUS_HEADER + "".join(f"{s},{a},{t}\n" for s, a, t in rows))


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 1000])
def test_counts_are_exact_across_chunks(conn, reference, tmp_path, monkeypatch, chunk_rows):
    first = status_file(tmp_path / "old.csv", [("s", "active", T1), ("s", "active", T3)])
    both(conn, reference, database.load_files, status=first)
    monkeypatch.setattr(ingestion, "STATUS_CHUNK_ROWS", chunk_rows)
    path = status_file(tmp_path / "new.csv", [
        ("s", "active", T2), ("s", "active", T1), ("u", "active", T1),        # new, already stored, new
        ("s", "active", T2), ("s", "active", T1), ("u", "active", T1),        # three duplicates
        ("s", "inactive", T2), ("u", "inactive", T1), ("s", "inactive", T3)])  # T2, u's T1 conflict; T3 changes
    summary = database.load_files(conn, status=path)[0]
    assert {k: getattr(summary, k) for k in ("new", "already_stored", "changed", "conflicting", "duplicates")} == {
        "new": 2, "already_stored": 1, "changed": 1, "conflicting": 2, "duplicates": 3}
    again = database.load_files(conn, status=path)[0]
    assert {k: getattr(again, k) for k in ("new", "already_stored", "changed", "conflicting", "duplicates")} == {
        "new": 0, "already_stored": 4, "changed": 0, "conflicting": 2, "duplicates": 3}
    for _ in range(2):
        database.load_files(reference, status=path)
    assert polls(conn) == polls(reference)


def test_random_loads_in_random_chunks_match_sqlite(conn, reference, tmp_path, monkeypatch):
    """Random files over few stores and instants (many repeats and conflicts), loaded one after another
    whole, in small chunks or as frames: the same summaries and polls as SQLite."""
    import random

    rng = random.Random(5)
    for round_ in range(24):
        stores = [f"s{i}" for i in range(rng.randint(1, 4))]
        moments = [f"2023-01-{day:02d} 12:00:00 UTC" for day in range(1, rng.randint(2, 12))]
        rows = [(rng.choice(stores), rng.choice(["active", "inactive"]), rng.choice(moments))
                for _ in range(rng.randint(0, 30))]
        monkeypatch.setattr(ingestion, "STATUS_CHUNK_ROWS", rng.randint(1, 12))
        if rng.random() < 0.3:
            frame = pd.DataFrame(rows, columns=["store_id", "status", "timestamp_utc"])
            ours, theirs = both(conn, reference, database.ingest_store_status, frame)
        else:
            ours, theirs = both(conn, reference, database.load_files,
                                status=status_file(tmp_path / f"{round_}.csv", rows))
        assert summaries(ours) == summaries(theirs), round_
        assert polls(conn) == polls(reference), round_


def test_inactive_wins_in_the_file_across_chunks_and_against_stored(conn, tmp_path, monkeypatch):
    monkeypatch.setattr(ingestion, "STATUS_CHUNK_ROWS", 2)
    path = status_file(tmp_path / "s.csv", [("a", "inactive", T1), ("b", "active", T1), ("b", "inactive", T2),
                                            ("a", "active", T1), ("b", "inactive", T1), ("b", "active", T2)])
    summary = database.load_files(conn, status=path)[0]
    assert (summary.read, summary.new, summary.conflicting, summary.duplicates) == (6, 3, 3, 0)
    assert set(polls(conn).values()) == {0}
    later = status_file(tmp_path / "later.csv", [("c", "active", T3), ("a", "active", T1)])
    database.load_files(conn, status=later)
    summary = database.load_files(conn, status=status_file(tmp_path / "t.csv", [("c", "inactive", T3)]))[0]
    assert (summary.changed, summary.new) == (1, 0)
    assert polls(conn) == {("a", 1674388800000000): 0, ("b", 1674388800000000): 0, ("b", 1674392400000000): 0,
                           ("c", 1674396000000000): 0}


def test_unusual_store_ids_round_trip(conn, reference, tmp_path):
    ids = UNUSUAL_IDS
    lines = "".join(f'"{i.replace(chr(34), chr(34) * 2)}",active,{T1}\n' for i in ids)
    hours = "".join(f'"{i.replace(chr(34), chr(34) * 2)}",1,09:00,17:00\n' for i in ids)
    both(conn, reference, database.load_files, status=write(tmp_path / "s.csv", STATUS_HEADER + lines),
         hours=write(tmp_path / "h.csv", HOURS_HEADER + hours))
    assert sorted(store for store, _ in polls(conn)) == sorted(ids)
    assert contents(conn) == contents(reference)


def test_hours_special_hours_and_timezones_replace(conn, reference, tmp_path):
    steps = [
        dict(hours=HOURS_HEADER + "a,0,09:00:00,17:00:00\na,1,09:00:00,17:00:00\nb,0,10:00:00,11:00:00\n",
             timezones=ZONES_HEADER + "a,America/Denver\nb,\n",
             special_hours=SPECIAL_HEADER + "a,2023-01-22,,\na,2023-01-23,10:00,14:00\nb,2023-01-22,09:00,10:00\n"),
        dict(hours=HOURS_HEADER + "a,0,09:00:00,17:00:00\na,2,08:00,12:00\na,2,08:00,12:00\n",
             timezones=ZONES_HEADER + "a,America/Chicago\nb,\nc,UTC\nc,Asia/Kolkata\n",
             special_hours=SPECIAL_HEADER + "a,2023-01-23,10:00,15:00\na,2023-01-23,16:00,17:00\nb,2023-01-22,,\n"),
    ]
    for number, step in enumerate(steps):
        files = {key: write(tmp_path / f"{key}{number}.csv", text) for key, text in step.items()}
        ours, theirs = both(conn, reference, database.load_files, **files)
        assert summaries(ours) == summaries(theirs)
    hours, zones, special = ours
    assert (hours.new, hours.already_stored, hours.duplicates, hours.removed) == (1, 1, 1, 1)
    assert (zones.new, zones.already_stored, zones.changed, zones.duplicates) == (1, 1, 1, 1)
    assert (special.new, special.already_stored, special.removed) == (3, 0, 2)
    assert contents(conn) == contents(reference)
    assert contents(conn)["business_hours"] == [("a", 0, "09:00:00", "17:00:00"), ("a", 2, "08:00:00", "12:00:00"),
                                               ("b", 0, "10:00:00", "11:00:00")]
    frame = pd.DataFrame({"store_id": ["a", "z"], "date": ["2023-01-22", "2023-01-30"],
                          "start_time_local": [None, "10:00"], "end_time_local": [None, "11:00"]})
    ours, theirs = both(conn, reference, database.ingest_special_hours, frame)
    assert summaries(ours) == summaries(theirs) and (ours.already_stored, ours.new) == (1, 1)
    assert contents(conn) == contents(reference)


def test_metrics_facts_and_has_polls(conn, reference, fixtures_dir):
    assert database.has_polls(conn) is False
    both(conn, reference, database.load_files, status=fixtures_dir / "store_status_2023.csv",
         timezones=fixtures_dir / "timezones_2023.csv")
    assert database.has_polls(conn) is True
    for target in (conn, reference):
        database.create_report_job(target, "r1", {})
        database.claim_report_job(target, "me", 60, max_attempts=2, exhausted_error="x")
        database.mark_report_complete(target, "r1", file="r1.csv", rows=1, as_of="t", seconds=0.3)
    buckets = (0.1, 0.25, 0.5, 1.0)
    ours, theirs = both(conn, reference, database.metrics_facts, buckets)
    assert ours == theirs
    assert ours["rows_ingested"][("store_status", "new")] == 30
    assert ours["report_seconds"] == {"buckets": [(0.1, 0), (0.25, 0), (0.5, 1), (1.0, 1)], "count": 1, "sum": 0.3}


# --- report jobs ------------------------------------------------------------------------------------

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


def normalised(value):
    """A job transcript with what differs between runs (instants, lease times) replaced by its type."""
    if isinstance(value, dict):
        return {key: ("<lease>" if key == "lease_until" and isinstance(value[key], float) else normalised(item))
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(normalised(item) for item in value)
    if isinstance(value, str) and ISO.fullmatch(value):
        return "<instant>"
    return value


def job_scenario(location) -> list:
    """Every job operation once, in a fixed story; what each returned and the job table after it."""
    conn = database.connect(location)
    log = []

    def note(label, value):
        log.append((label, normalised(value)))

    database.create_report_job(conn, "a", {"as_of": None, "store_ids": ["x", "y"], "columns": "all"})
    database.create_report_job(conn, "b", {})
    database.create_report_job(conn, "c", {"extended": True})
    note("queued", database.count_queued_report_jobs(conn))
    note("waiting", database.waiting_report_jobs(conn))
    note("claim a", database.claim_report_job(conn, "host:1:t", 60, max_attempts=2, exhausted_error="gave up"))
    note("renew", database.renew_report_leases(conn, "host:1:t", ["a", "b"], 120))
    note("renew other", database.renew_report_leases(conn, "other", ["a"], 120))
    note("renew none", database.renew_report_leases(conn, "host:1:t", [], 120))
    database.set_report_progress(conn, "a", 0.25, owner="host:1:t")
    database.set_report_progress(conn, "a", 0.75, owner="intruder")
    note("a", database.get_report_job(conn, "a"))
    note("live", sorted(database.live_report_attempts(conn)))
    database.store_report_part(conn, "a", 1, 2, b"\x00part one\xff")
    database.store_report_part(conn, "a", 0, 2, b"part zero")
    database.store_report_part(conn, "a", 1, 2, b"part one again")
    note("parts", database.report_parts(conn, "a"))
    note("progress", database.get_report_job(conn, "a")["progress"])
    database.delete_report_parts(conn, "a")
    note("no parts", database.report_parts(conn, "a"))
    note("complete by another", database.mark_report_complete(conn, "a", file="a.csv", rows=3, as_of="t",
                                                                seconds=1.5, owner="intruder"))
    note("complete", database.mark_report_complete(conn, "a", file="a.csv", rows=3, as_of="2023-01-25T18:13:22Z",
                                                   seconds=1.5, timings={"load": 0.5}, meta={"stores": 3},
                                                   owner="host:1:t"))
    database.store_report_file(conn, "a", b"store_id\r\nx\r\n")
    database.store_report_file(conn, "a", b"store_id\r\ny\r\n")
    note("file", database.report_file(conn, "a"))
    note("no file", database.report_file(conn, "zz"))
    # b: claimed under a lease that has run out (its process died), taken over, then out of attempts.
    note("claim b", database.claim_report_job(conn, "dead:1", -1, max_attempts=2, exhausted_error="gave up"))
    note("waiting after", [job["report_id"] for job in database.waiting_report_jobs(conn)])
    note("take over b", database.claim_report_job(conn, "dead:2", -1, max_attempts=2, exhausted_error="gave up"))
    note("claim c, fail b", database.claim_report_job(conn, "host:2", 60, max_attempts=2, exhausted_error="gave up"))
    note("fail c by another", database.mark_report_failed(conn, "c", "nope", owner="intruder"))
    note("fail c", database.mark_report_failed(conn, "c", "engine error", owner="host:2"))
    note("nothing", database.claim_report_job(conn, "host:3", 60, max_attempts=2, exhausted_error="gave up"))
    database.create_report_job(conn, "d", {})
    database.mark_report_running(conn, "d")
    note("d", database.get_report_job(conn, "d"))
    note("attempts", database.report_attempts(conn))
    note("attempts b", database.report_attempts(conn, "b"))
    note("list", database.list_report_jobs(conn, limit=2, offset=1))
    note("finished", sorted(database.finished_report_jobs_before(conn, "9999-01-01T00:00:00.000Z")))
    note("finished none", database.finished_report_jobs_before(conn, "2000-01-01T00:00:00.000Z"))
    note("inspect", database.inspect_report_jobs(location))
    note("delete", database.delete_report_job(conn, "a"))
    note("deleted", (database.get_report_job(conn, "a"), database.report_file(conn, "a"),
                     database.report_attempts(conn, "a"), database.delete_report_job(conn, "a")))
    note("list after", database.list_report_jobs(conn, limit=10))
    conn.close()
    return log


def test_job_lifecycle_is_sqlites(storage_location, tmp_path):
    ours, theirs = job_scenario(storage_location), job_scenario(tmp_path / "reference.sqlite3")
    for (label, value), (_, expected) in zip(ours, theirs):
        assert value == expected, label
    assert len(ours) == len(theirs)
    story = dict(ours)
    assert story["claim a"]["owner"] == "host:1:t" and story["claim a"]["attempts"] == 1
    assert story["renew"] == 1 and story["renew other"] == 0
    assert story["a"]["progress"] == 0.25
    assert story["parts"] == [b"part zero", b"part one again"] and story["progress"] == 0.9
    assert story["complete by another"] is False and story["complete"] is True
    assert story["file"] == b"store_id\r\ny\r\n"
    assert story["take over b"]["attempts"] == 2
    assert story["claim c, fail b"]["report_id"] == "c"
    assert [a["outcome"] for a in story["attempts b"]] == ["lease expired", "lease expired"]
    assert story["nothing"] is None
    jobs, attempts = story["inspect"]
    assert jobs["b"]["status"] == "Failed" and jobs["b"]["error"] == "gave up"
    assert isinstance(jobs["a"]["params"], str)                  # as stored: JSON text
    assert story["deleted"] == (None, None, [], None)


def test_two_concurrent_claimers_never_get_the_same_job(storage_location):
    setup = database.connect(storage_location)
    count = 40
    for number in range(count):
        database.create_report_job(setup, f"job{number:02d}", {})
    claimed: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def claimer(name: str) -> None:
        conn = database.connect(storage_location)
        mine = claimed.setdefault(name, [])
        try:
            start.wait()
            while (job := database.claim_report_job(conn, name, 60, max_attempts=3, exhausted_error="x")) is not None:
                mine.append(job["report_id"])
        except BaseException as exc:   # noqa: BLE001  (reported below)
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=claimer, args=(f"worker{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    everything = [job for jobs in claimed.values() for job in jobs]
    assert sorted(everything) == [f"job{number:02d}" for number in range(count)]
    attempts = database.report_attempts(setup)
    assert len(attempts) == count and {a["attempt"] for a in attempts} == {1}
    assert {a["report_id"]: a["owner"] for a in attempts} == {job: name for name, jobs in claimed.items()
                                                            for job in jobs}
    setup.close()


# --- the report's reads ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Generated data: 60 stores, 16 days (so part of it lies before the report's week), special hours."""
    folder = tmp_path_factory.mktemp("contract-data")
    return sample_data.generate_dataset(folder, stores=60, days=16, seed=11, special_share=0.5)


@pytest.fixture
def loaded(storage_location, tmp_path, dataset):
    """(location under test, SQLite reference location), both given the same loads."""
    reference_location = str(tmp_path / "reference.sqlite3")
    extra = pd.DataFrame({"store_id": ["zz-old", "zz-old-closed"], "status": ["inactive", "active"],
                          "timestamp_utc": ["2022-12-20 00:00:00 UTC", "2022-12-20 00:00:00 UTC"]})
    end = sample_data.DEFAULT_END["int64"]
    unusual = pd.DataFrame({"store_id": UNUSUAL_IDS, "status": "active",
                            "timestamp_utc": [str(end - pd.Timedelta(hours=n)) for n in range(len(UNUSUAL_IDS))]})
    unusual_hours = pd.DataFrame({"store_id": UNUSUAL_IDS * 2, "day_of_week": [1] * 10 + [2] * 10,
                                  "start_time_local": "09:00", "end_time_local": "17:00"})
    for location in (storage_location, reference_location):
        conn = database.connect(location)
        database.load_tables(conn, dataset)
        database.ingest_store_status(conn, extra)
        database.ingest_store_status(conn, unusual)
        database.ingest_business_hours(conn, unusual_hours)
        conn.close()
    return storage_location, reference_location


def assert_inputs_equal(ours: storage.ReportInputs, theirs: storage.ReportInputs) -> None:
    assert ours.now == theirs.now
    for name in ("polls", "business_hours", "timezones", "special_hours"):
        pd.testing.assert_frame_equal(getattr(ours, name), getattr(theirs, name), obj=name)


def test_read_report_inputs_equal_sqlites(loaded):
    location, reference_location = loaded
    conn = database.connect(location)
    ids = [row[0] for row in query(conn, "SELECT store_id FROM stores ORDER BY store_key")]
    conn.close()
    now, _ = database.plan_report_shards(reference_location, shard_stores=10, lookback_us=WEEK_US)
    cases = [dict(), dict(as_of_us=now - 3 * 86_400_000_000), dict(as_of_us=now + 10**9),
             dict(store_ids=ids[5:12][::-1] + ["zz-old", "not-a-store"]), dict(key_range=(4, 20)),
             dict(store_ids=ids[:30], key_range=(10, 40), as_of_us=now - 86_400_000_000),
             dict(key_range=(10**6, 2**63 - 1)), dict(as_of_us=0), dict(store_ids=UNUSUAL_IDS + ids[:3]),
             dict(key_range=(len(ids) - 12, len(ids)))]
    for case in cases:
        ours = database.read_report_inputs(location, lookback_us=WEEK_US, **case)
        theirs = database.read_report_inputs(reference_location, lookback_us=WEEK_US, **case)
        assert_inputs_equal(ours, theirs)
    everything = database.read_report_inputs(location, lookback_us=WEEK_US)
    assert str(everything.polls["timestamp_utc"].dtype) == "datetime64[us, UTC]"
    assert list(everything.polls["store_id"].cat.categories[:3]) == ids[:3]
    assert len(everything.polls) > 1000 and everything.business_hours["store_id"].dtype == object
    assert database.first_poll_us(location) == database.first_poll_us(reference_location)


def test_empty_database_reads(storage_location):
    database.connect(storage_location).close()
    inputs = database.read_report_inputs(storage_location, lookback_us=WEEK_US)
    assert inputs.now is None and all(len(frame) == 0 for frame in (inputs.polls, inputs.business_hours,
                                                                     inputs.timezones, inputs.special_hours))
    assert database.plan_report_shards(storage_location, shard_stores=5, lookback_us=WEEK_US) == (None, [])
    assert database.first_poll_us(storage_location) is None


def test_plan_report_shards_equal_sqlites(loaded):
    location, reference_location = loaded
    for options in (dict(shard_stores=7), dict(shard_stores=1000), dict(shard_stores=1),
                    dict(shard_stores=10, store_ids=["zz-old", "not-a-store"]),
                    dict(shard_stores=1000, shard_polls=500), dict(shard_stores=5, shard_polls=300, as_of_us=10**15),
                    dict(shard_stores=1000, shard_polls=1)):
        ours = database.plan_report_shards(location, lookback_us=WEEK_US, **options)
        theirs = database.plan_report_shards(reference_location, lookback_us=WEEK_US, **options)
        assert ours == theirs, options
    with pytest.raises(ValueError):
        database.plan_report_shards(location, shard_stores=0, lookback_us=WEEK_US)


@pytest.mark.parametrize("reach", [120, None])
@pytest.mark.parametrize("shard_stores", [None, 7])
def test_generate_report_is_byte_identical_to_sqlites(loaded, tmp_path, reach, shard_stores):
    location, reference_location = loaded
    outcomes = []
    for name, source in (("ours", location), ("sqlite", reference_location)):
        outcomes.append(generate_report(source, tmp_path / f"{name}.csv", reach_minutes=reach, extended=True,
                                        shard_stores=shard_stores, processes=0))
    assert (tmp_path / "ours.csv").read_bytes() == (tmp_path / "sqlite.csv").read_bytes()
    assert outcomes[0].rows == outcomes[1].rows > 50
    assert outcomes[0].as_of == outcomes[1].as_of and outcomes[0].meta == outcomes[1].meta


# --- the service: start-up lock, health, the pages' reads, jobs handed to a cluster worker ----------------

def test_start_up_lock_makes_a_second_holder_wait_until_the_first_leaves(storage_location):
    database.connect(storage_location).close()
    events: list[str] = []
    note = threading.Lock()
    first_in, release_first, second_trying, second_in = (threading.Event() for _ in range(4))
    errors: list[BaseException] = []

    def record(event: str) -> None:
        with note:
            events.append(event)

    def first() -> None:
        try:
            with database.start_up_lock(storage_location):
                record("first in")
                first_in.set()
                assert release_first.wait(30), "the test never released the first holder"
                record("first out")
        except BaseException as exc:   # noqa: BLE001  (reported below)
            errors.append(exc)
            first_in.set()

    def second() -> None:
        try:
            second_trying.set()
            with database.start_up_lock(storage_location):
                record("second in")
                second_in.set()
        except BaseException as exc:   # noqa: BLE001  (reported below)
            errors.append(exc)
            second_in.set()

    holder = threading.Thread(target=first)
    holder.start()
    assert first_in.wait(30)
    waiter = threading.Thread(target=second)
    waiter.start()
    assert second_trying.wait(30)
    # The one timed wait: the second thread is blocked in start_up_lock, so it does not get in while the
    # first holds the lock (no event can say "is waiting"; 0.3 s is ample for a lock that is free).
    assert not second_in.wait(0.3)
    assert events == ["first in"]
    release_first.set()
    assert second_in.wait(30)
    holder.join(30)
    waiter.join(30)
    assert errors == []
    assert events == ["first in", "first out", "second in"]
    # Released after an exception too: taking it again does not block.
    with pytest.raises(KeyError):
        with database.start_up_lock(storage_location):
            raise KeyError("start-up failed")
    with database.start_up_lock(storage_location):
        pass


def test_check_writable_passes_on_a_writable_database(conn):
    database.check_writable(conn)
    database.check_writable(conn)            # changes nothing, leaves no transaction open
    assert contents(conn) == {table: [] for table in DATA_TABLES}
    assert query(conn, "SELECT COUNT(*) FROM reports") == [(0,)]
    database.create_report_job(conn, "after", {})   # the connection still writes
    assert database.get_report_job(conn, "after")["status"] == "Queued"


def test_check_writable_raises_on_a_read_only_database(storage_location, request):
    database.connect(storage_location).close()
    if storage.is_postgresql(storage_location):
        import psycopg

        name = storage_location.rsplit("/", 1)[1]
        request.getfixturevalue("postgresql_server").execute(
            f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
        conn = database.connect(storage_location)   # the setting applies to new sessions
        try:
            with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                database.check_writable(conn)
            assert query(conn, "SELECT COUNT(*) FROM stores") == [(0,)]   # it still reads
        finally:
            conn.close()
        return
    path = storage.sqlite_path(storage_location)
    # A connection SQLite opened read-only: what a file without write permission gives a non-root user.
    read_only = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            database.check_writable(read_only)
        assert not read_only.in_transaction
    finally:
        read_only.close()
    # The file itself made read-only (chmod). Root writes it anyway, so that half cannot run as root.
    import os

    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not stop root from writing the SQLite file (the mode=ro "
                    "half above ran)")
    path.chmod(0o444)
    try:
        conn = database.connect(storage_location)
        try:
            with pytest.raises(sqlite3.OperationalError):
                database.check_writable(conn)
        finally:
            conn.close()
    finally:
        path.chmod(0o644)


def test_latest_complete_report_id(conn):
    assert database.latest_complete_report_id(conn) is None
    for report_id in ("a", "b", "c"):   # created in this order (ties of created_at: insertion order)
        database.create_report_job(conn, report_id, {})
    assert database.latest_complete_report_id(conn) is None

    def run(report_id: str, complete: bool) -> None:
        database.mark_report_running(conn, report_id)
        if complete:
            database.mark_report_complete(conn, report_id, file=f"{report_id}.csv", rows=1, as_of="t", seconds=0.1)
        else:
            database.mark_report_failed(conn, report_id, "broken")

    run("b", True)
    assert database.latest_complete_report_id(conn) == "b"
    run("a", True)                   # completed later, but created earlier
    assert database.latest_complete_report_id(conn) == "b"
    run("c", False)                  # newest, but failed
    assert database.latest_complete_report_id(conn) == "b"
    database.create_report_job(conn, "d", {})
    assert database.latest_complete_report_id(conn) == "b"   # queued
    run("d", True)
    assert database.latest_complete_report_id(conn) == "d"
    database.delete_report_job(conn, "d")
    assert database.latest_complete_report_id(conn) == "b"


FIND_POLLED = ["Alpha-1", "alpha_2", "xalpha", "ALP", "beta%", "beta_x", "betaXx", "back\\slash", "Ünïcödé"]


def _find_data(conn, tmp_path) -> None:
    database.load_files(
        conn,
        status=status_file(tmp_path / "s.csv", [(f'"{s}"', "active", T1) for s in FIND_POLLED]),
        hours=write(tmp_path / "h.csv", HOURS_HEADER + "Alpha-1,0,09:00,17:00\nbeta_x,3,10:00,11:00\n"
                                                       "alpha-hours-only,1,09:00,17:00\n"),
        timezones=write(tmp_path / "z.csv", ZONES_HEADER + "alpha_2,America/Denver\nxalpha,\nALP,Not/AZone\n"
                                                           "alpha-zone-only,UTC\n"))


def test_find_stores(conn, tmp_path):
    assert database.find_stores(conn, "", 10) == (0, [])
    _find_data(conn, tmp_path)
    # (store, has hours, timezone): only polled stores; a NULL zone and no zone row are both None.
    assert database.find_stores(conn, "alpha", 10) == (3, [
        ("Alpha-1", True, None), ("alpha_2", False, "America/Denver"), ("xalpha", False, None)])
    assert database.find_stores(conn, "ALPHA", 2) == (3, [("Alpha-1", True, None),
                                                          ("alpha_2", False, "America/Denver")])
    # Prefix matches first (byte order: upper case before lower case), then the rest by id.
    found = database.find_stores(conn, "a", 20)
    assert found[0] == 8
    assert [row[0] for row in found[1]] == ["ALP", "Alpha-1", "alpha_2", "back\\slash", "beta%", "betaXx",
                                            "beta_x", "xalpha"]
    assert found[1][0] == ("ALP", False, "Not/AZone")
    # % and _ are themselves, not wildcards; so is the backslash.
    assert database.find_stores(conn, "%", 10) == (1, [("beta%", False, None)])
    assert database.find_stores(conn, "_", 10) == (2, [("alpha_2", False, "America/Denver"),
                                                       ("beta_x", True, None)])
    assert database.find_stores(conn, "beta_", 10) == (1, [("beta_x", True, None)])
    assert database.find_stores(conn, "a%", 10) == (1, [("beta%", False, None)])
    assert database.find_stores(conn, "\\", 10) == (1, [("back\\slash", False, None)])
    assert database.find_stores(conn, "only", 10) == (0, [])          # hours or zone only: not polled
    # Case folding is only promised for ASCII: SQLite's LIKE folds nothing else, and PostgreSQL's ILIKE
    # folds other letters only on a server with a locale (the test server has none: it matches nothing).
    assert database.find_stores(conn, "ünïcödé", 10)[1] in ([], [("Ünïcödé", False, None)])
    assert database.find_stores(conn, "Ünïcödé", 10) == (1, [("Ünïcödé", False, None)])
    # Everything, by id, with the count of all of them beyond the limit.
    total, rows = database.find_stores(conn, "", 3)
    assert total == len(FIND_POLLED) and [row[0] for row in rows] == ["ALP", "Alpha-1", "alpha_2"]
    assert database.find_stores(conn, "zzz", 5) == (0, [])


def test_store_records(conn, tmp_path):
    nothing = {"polled": False, "weekly": [], "has_zone_row": False, "timezone": None, "special": []}
    assert database.store_records(conn, "a") == nothing
    database.load_files(
        conn,
        status=status_file(tmp_path / "s.csv", [("a", "active", T1), ("p", "inactive", T2)]),
        hours=write(tmp_path / "h.csv", HOURS_HEADER + "a,3,18:00,23:00\na,1,09:00,12:00\na,3,08:00,12:00\n"
                                                       "a,0,09:00:00.5,17:00\nz,2,01:00,02:00\n"),
        timezones=write(tmp_path / "z.csv", ZONES_HEADER + "a,Europe/Paris\nn,\n"),
        special_hours=write(tmp_path / "sp.csv", SPECIAL_HEADER + "a,2023-02-01,10:00,11:00\na,2023-01-22,,\n"
                                                                  "a,2023-02-01,08:00,09:00\n"
                                                                  "a,2023-01-30,12:00,13:00\n"
                                                                  "a,2023-01-30,,\nq,2023-01-22,,\n"))
    assert database.store_records(conn, "a") == {
        "polled": True,
        "weekly": [(0, "09:00:00.5", "17:00:00"), (1, "09:00:00", "12:00:00"), (3, "08:00:00", "12:00:00"),
                   (3, "18:00:00", "23:00:00")],
        "has_zone_row": True, "timezone": "Europe/Paris",
        "special": [("2023-01-22", None, None), ("2023-01-30", None, None), ("2023-01-30", "12:00:00", "13:00:00"),
                    ("2023-02-01", "08:00:00", "09:00:00"), ("2023-02-01", "10:00:00", "11:00:00")]}
    assert database.store_records(conn, "p") == {**nothing, "polled": True}
    assert database.store_records(conn, "n") == {**nothing, "has_zone_row": True}     # a NULL zone
    assert database.store_records(conn, "z") == {**nothing, "weekly": [(2, "01:00:00", "02:00:00")]}
    assert database.store_records(conn, "q") == {**nothing, "special": [("2023-01-22", None, None)]}
    assert database.store_records(conn, "A") == nothing                              # ids are exact


def _without_timings(facts: dict) -> dict:
    facts = {**facts, "zones": sorted(facts["zones"])}
    facts["loads"] = [{k: v for k, v in load.items() if k not in ("finished_at", "seconds")} for load in facts["loads"]]
    return facts


def test_data_facts_by_hand(conn, tmp_path):
    empty = database.data_facts(conn, 5)
    assert empty == {"stores": 0, "polls": 0, "first_us": None, "last_us": None, "stores_without_hours": 0,
                     "zones": [], "special_hours_rows": 0, "stores_with_special_hours": 0,
                     "stores_not_polled": 0, "loads": []}
    database.load_files(
        conn,
        status=status_file(tmp_path / "s.csv", [("a", "active", "2023-01-22 12:00:00 UTC"),
                                                ("a", "inactive", "2023-01-22 13:00:00 UTC"),
                                                ("b", "active", "2023-01-20 08:00:00 UTC"),
                                                ("c", "active", "2023-01-25 18:00:00 UTC"),
                                                ("d", "active", "2023-01-22 12:00:00 UTC"),
                                                ("d", "active", "2023-01-22 12:00:00 UTC")]),   # a duplicate
        hours=write(tmp_path / "h.csv", HOURS_HEADER + "a,0,09:00,17:00\na,1,09:00,17:00\nh-only,1,09:00,17:00\n"),
        timezones=write(tmp_path / "z.csv", ZONES_HEADER + "a,America/New_York\nb,\nd,Not/AZone\nz-only,Asia/Tokyo\n"
                                                           "h-only,UTC\n"),
        special_hours=write(tmp_path / "sp.csv", SPECIAL_HEADER + "a,2023-01-22,,\na,2023-01-23,10:00,11:00\n"
                                                                  "q,2023-01-22,,\n"))
    facts = database.data_facts(conn, 2)
    assert [load["table"] for load in facts["loads"]] == ["special_hours", "timezones"]
    assert [load["new"] for load in facts["loads"]] == [3, 5]
    assert _without_timings(facts) == {
        "stores": 4, "polls": 5,
        "first_us": 1674201600000000,    # 2023-01-20 08:00 UTC
        "last_us": 1674669600000000,     # 2023-01-25 18:00 UTC
        "stores_without_hours": 3,       # b, c, d
        "zones": [("", 2), ("America/New_York", 1), ("Not/AZone", 1)],   # b's NULL zone, c without a row
        "special_hours_rows": 3, "stores_with_special_hours": 2,
        "stores_not_polled": 2,          # h-only, z-only (special hours alone do not count)
        "loads": _without_timings(facts)["loads"]}
    assert len(database.data_facts(conn, 10)["loads"]) == 4
    assert query(conn, "SELECT COUNT(*) FROM store_status") == [(facts["polls"],)]


def test_data_facts_equal_sqlites(loaded):
    location, reference_location = loaded
    ours_conn, theirs_conn = database.connect(location), database.connect(reference_location)
    try:
        ours, theirs = database.data_facts(ours_conn, 100), database.data_facts(theirs_conn, 100)
        assert _without_timings(ours) == _without_timings(theirs)
        assert ours["polls"] == query(ours_conn, "SELECT COUNT(*) FROM store_status")[0][0] > 1000
        assert ours["stores"] == 60 + 2 + len(UNUSUAL_IDS)
        assert len(ours["loads"]) == 7 and ours["special_hours_rows"] > 0
        assert isinstance(ours["first_us"], int) and ours["first_us"] < ours["last_us"]
    finally:
        ours_conn.close()
        theirs_conn.close()


def test_start_report_attempt(conn):
    start = dict(max_attempts=2, exhausted_error="gave up after 2 attempts", owner_prefix="cluster:")
    database.create_report_job(conn, "j", {"columns": "standard"})
    job = database.start_report_attempt(conn, "j", "cluster:w1", lease_until=1000.5, **start)
    assert (job["status"], job["owner"], job["attempts"], job["lease_until"]) == ("Running", "cluster:w1", 1, 1000.5)
    assert ISO.fullmatch(job["started_at"]) and job["params"] == {"columns": "standard"}
    [first] = database.report_attempts(conn, "j")
    assert (first["attempt"], first["owner"], first["ended_at"], first["outcome"]) == (1, "cluster:w1", None, None)

    # Delivered again (the first worker died before acknowledging): attempt 2; the open one is closed.
    job = database.start_report_attempt(conn, "j", "cluster:w2", lease_until=2000.0, **start)
    assert (job["status"], job["owner"], job["attempts"], job["lease_until"]) == ("Running", "cluster:w2", 2, 2000.0)
    first, second = database.report_attempts(conn, "j")
    assert (first["attempt"], first["outcome"]) == (1, "worker lost") and ISO.fullmatch(first["ended_at"])
    assert (second["attempt"], second["owner"], second["ended_at"], second["outcome"]) == (2, "cluster:w2", None, None)

    # Once more at max_attempts: Failed with the given error, the open attempt closed as Failed.
    job = database.start_report_attempt(conn, "j", "cluster:w3", lease_until=3000.0, **start)
    assert (job["status"], job["error"], job["attempts"]) == ("Failed", "gave up after 2 attempts", 2)
    assert job["lease_until"] is None and ISO.fullmatch(job["finished_at"])
    assert [(a["attempt"], a["owner"], a["outcome"]) for a in database.report_attempts(conn, "j")] == [
        (1, "cluster:w1", "worker lost"), (2, "cluster:w2", "Failed")]
    # An ended job: nothing to start, nothing changed.
    assert database.start_report_attempt(conn, "j", "cluster:w4", lease_until=4000.0, **start) is None
    assert database.get_report_job(conn, "j")["status"] == "Failed"
    assert len(database.report_attempts(conn, "j")) == 2

    # Running under an owner without the prefix (an embedded worker claimed it): not ours to start.
    database.create_report_job(conn, "k", {})
    claimed = database.claim_report_job(conn, "host:1:t", 60, max_attempts=2, exhausted_error="x")
    assert claimed["report_id"] == "k"
    assert database.start_report_attempt(conn, "k", "cluster:w1", lease_until=1.0, **start) is None
    after = database.get_report_job(conn, "k")
    assert (after["status"], after["owner"], after["attempts"]) == ("Running", "host:1:t", 1)
    assert [(a["owner"], a["outcome"]) for a in database.report_attempts(conn, "k")] == [("host:1:t", None)]
    # Running without an owner at all: not ours either.
    database.create_report_job(conn, "m", {})
    database.mark_report_running(conn, "m")
    assert database.start_report_attempt(conn, "m", "cluster:w1", lease_until=1.0, **start) is None

    # A completed job, and an unknown id: None.
    database.create_report_job(conn, "c", {})
    assert database.start_report_attempt(conn, "c", "cluster:w1", lease_until=1.0, **start)["attempts"] == 1
    assert database.mark_report_complete(conn, "c", file="c.csv", rows=1, as_of="t", seconds=0.1, owner="cluster:w1")
    assert database.start_report_attempt(conn, "c", "cluster:w2", lease_until=1.0, **start) is None
    assert database.get_report_job(conn, "c")["status"] == "Complete"
    assert [(a["attempt"], a["outcome"]) for a in database.report_attempts(conn, "c")] == [(1, "Complete")]
    assert database.start_report_attempt(conn, "nope", "cluster:w1", lease_until=1.0, **start) is None
    assert database.get_report_job(conn, "nope") is None and database.report_attempts(conn, "nope") == []


# --- the job table under concurrency, status guards, clocks, nesting, connection time-outs, snapshots --------

def _is_postgresql(conn) -> bool:
    return not isinstance(conn, sqlite3.Connection)


@pytest.fixture
def before_statements(monkeypatch):
    """before_statements(conn, hook): call hook(sql) before each statement `conn` runs from then on (SQLite:
    its trace callback, called before the statement takes its read lock; PostgreSQL: every cursor's execute
    on that connection)."""
    cleanups = []

    def install(conn, hook) -> None:
        if isinstance(conn, sqlite3.Connection):
            conn.set_trace_callback(hook)
            cleanups.append(lambda: conn.set_trace_callback(None))
            return
        import psycopg

        original = psycopg.Cursor.execute

        def execute(self, statement, params=None, **kwargs):
            if self.connection is conn:
                hook(statement if isinstance(statement, str) else statement.as_string(conn))
            return original(self, statement, params, **kwargs)

        monkeypatch.setattr(psycopg.Cursor, "execute", execute)

    yield install
    for cleanup in cleanups:
        cleanup()


def test_count_then_insert_in_a_transaction_is_one_step_for_every_connection(storage_location):
    """jobs.ReportJobs.submit's pattern: the queue limit holds however many submit at once (PostgreSQL:
    transaction() takes the job-table lock, as SQLite's BEGIN IMMEDIATE takes the write lock)."""
    database.connect(storage_location).close()
    limit, submitters = 5, 20
    accepted: list[int] = []
    errors: list[BaseException] = []
    start = threading.Barrier(submitters)

    def submit(number: int) -> None:
        conn = database.connect(storage_location)
        try:
            start.wait()
            with database.transaction(conn):
                if database.count_queued_report_jobs(conn) < limit:
                    time.sleep(0.05)          # widen the window between the check and the act
                    database.create_report_job(conn, f"job{number:02d}", {})
                    accepted.append(number)
        except BaseException as exc:   # noqa: BLE001  (reported below)
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=submit, args=(number,)) for number in range(submitters)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    check = database.connect(storage_location)
    assert len(accepted) == limit == database.count_queued_report_jobs(check)
    check.close()


def test_a_long_load_does_not_block_job_claims(storage_location, monkeypatch):
    """PostgreSQL: loads hold their own lock (LOAD_LOCK), not the job table's, so a claim, a submit's
    count-then-insert and a completion go on while a load is in its transaction."""
    if not storage.is_postgresql(storage_location):
        pytest.skip("SQLite has one writer at a time: a load holds the write lock (by design)")
    module = storage.backend(storage_location)
    in_load, release = threading.Event(), threading.Event()
    original = module._record_load

    def slow_record(*args, **kwargs):
        in_load.set()
        assert release.wait(60)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, "_record_load", slow_record)
    loader_conn, conn = database.connect(storage_location), database.connect(storage_location)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            database.ingest_timezones(loader_conn, pd.DataFrame({"store_id": ["s"], "timezone_str": ["UTC"]}))
        except BaseException as exc:   # noqa: BLE001  (reported below)
            errors.append(exc)

    loader = threading.Thread(target=load)
    loader.start()
    try:
        assert in_load.wait(30)
        done = threading.Event()

        def jobs() -> None:
            try:
                with database.transaction(conn):
                    assert database.count_queued_report_jobs(conn) == 0
                    database.create_report_job(conn, "j", {})
                job = database.claim_report_job(conn, "w", 60, max_attempts=2, exhausted_error="x")
                assert job["report_id"] == "j"
                assert database.mark_report_complete(conn, "j", file="j.csv", rows=0, as_of="t", seconds=0.1,
                                                     owner="w")
                assert database.delete_report_job(conn, "j")["status"] == "Complete"
                done.set()
            except BaseException as exc:   # noqa: BLE001  (reported below)
                errors.append(exc)

        worker = threading.Thread(target=jobs)
        worker.start()
        worker.join(10)
        assert done.is_set() and errors == [], "the job operations waited for the load"
    finally:
        release.set()
        loader.join(30)
    assert errors == []
    assert database.store_records(conn, "s")["timezone"] == "UTC"


def test_owner_less_complete_and_fail_change_only_a_job_that_has_not_ended(conn):
    """Two merges of one job complete it once (one report_durations row); a late failure does not turn a
    Complete job Failed, nor a Failed one Complete."""
    record = dict(file="a.csv", rows=1, as_of="2023-01-25T18:00:00Z", seconds=0.5)
    database.create_report_job(conn, "a", {})
    assert database.claim_report_job(conn, "w", 60, max_attempts=2, exhausted_error="x")["report_id"] == "a"
    assert database.mark_report_complete(conn, "a", **record) is True
    assert database.mark_report_complete(conn, "a", **{**record, "rows": 99}) is False   # a second merge
    assert database.mark_report_failed(conn, "a", "late failure") is False
    job = database.get_report_job(conn, "a")
    assert (job["status"], job["rows"], job["error"]) == ("Complete", 1, None)
    assert query(conn, "SELECT COUNT(*) FROM report_durations") == [(1,)]
    assert [(a["attempt"], a["outcome"]) for a in database.report_attempts(conn, "a")] == [(1, "Complete")]

    database.create_report_job(conn, "b", {})
    assert database.mark_report_failed(conn, "b", "broker down") is True          # Queued: fails
    assert database.mark_report_failed(conn, "b", "again") is False
    assert database.mark_report_complete(conn, "b", **record) is False
    job = database.get_report_job(conn, "b")
    assert (job["status"], job["error"]) == ("Failed", "broker down")
    assert query(conn, "SELECT COUNT(*) FROM report_durations") == [(1,)]

    database.create_report_job(conn, "c", {})
    assert database.mark_report_complete(conn, "c", **record) is True             # Queued: completes
    assert database.mark_report_complete(conn, "nope", **record) is False
    assert database.mark_report_failed(conn, "nope", "x") is False


def test_a_shard_part_is_kept_only_while_its_job_runs(conn):
    """A shard delivered again after the merge, after a delete, or before its job started stores nothing."""
    database.create_report_job(conn, "q", {})
    database.store_report_part(conn, "q", 0, 2, b"early")                   # Queued: not started
    assert database.report_parts(conn, "q") == []
    database.store_report_part(conn, "nope", 0, 2, b"unknown")              # no such job
    assert database.report_parts(conn, "nope") == []

    database.create_report_job(conn, "r", {})
    database.start_report_attempt(conn, "q", "celery:w", lease_until=1e12, max_attempts=2, exhausted_error="x",
                                  owner_prefix="celery:")
    database.start_report_attempt(conn, "r", "celery:w", lease_until=1e12, max_attempts=2, exhausted_error="x",
                                  owner_prefix="celery:")
    database.store_report_part(conn, "r", 0, 2, b"zero")
    assert database.report_parts(conn, "r") == [b"zero"]
    assert database.get_report_job(conn, "r")["progress"] == pytest.approx(0.45)
    database.delete_report_parts(conn, "r")                                  # the merge
    assert database.mark_report_complete(conn, "r", file="r.csv", rows=0, as_of="t", seconds=0.1)
    database.store_report_part(conn, "r", 1, 2, b"redelivered")
    assert database.report_parts(conn, "r") == []
    assert database.get_report_job(conn, "r")["progress"] == 1

    database.delete_report_job(conn, "q")                                    # deleted while running
    database.store_report_part(conn, "q", 1, 2, b"orphan")
    assert database.report_parts(conn, "q") == []
    assert query(conn, "SELECT COUNT(*) FROM report_parts") == [(0,)]


def test_a_claim_never_runs_a_job_past_its_attempts(conn, storage_location, before_statements):
    """A job taken over from dead processes max_attempts times is failed, never run again, even when the
    claim's "exhausted" step passes over it (PostgreSQL: another session held its row for a moment, and
    let go just before the claim chose its job)."""
    database.create_report_job(conn, "x", {})
    for owner in ("dead:1", "dead:2"):                                   # two runs whose leases ran out
        assert database.claim_report_job(conn, owner, -1, max_attempts=2, exhausted_error="x")["report_id"] == "x"
    assert database.get_report_job(conn, "x")["attempts"] == 2
    holder = None
    if _is_postgresql(conn):
        import psycopg

        holder = psycopg.connect(storage_location, autocommit=True)
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM reports WHERE report_id = 'x' FOR UPDATE")

        def let_go(sql: str) -> None:
            if "SET status = 'Running'" in sql and not holder.closed:
                holder.execute("ROLLBACK")
                holder.close()

        before_statements(conn, let_go)
    try:
        claimed = database.claim_report_job(conn, "live", 60, max_attempts=2, exhausted_error="gave up")
    finally:
        if holder is not None:
            holder.close()
    assert claimed is None
    assert database.get_report_job(conn, "x")["attempts"] == 2
    assert database.claim_report_job(conn, "live", 60, max_attempts=2, exhausted_error="gave up") is None
    job = database.get_report_job(conn, "x")
    assert (job["status"], job["error"], job["attempts"]) == ("Failed", "gave up", 2)


def test_leases_are_on_the_database_servers_clock(conn, monkeypatch):
    """PostgreSQL serves several hosts whose clocks differ: leases are set and compared on the server's
    clock, so a process whose clock is an hour off neither takes a live job nor lets its own expire.
    SQLite serves one host: its leases are on that host's clock (the process's)."""
    real = time.time
    database.create_report_job(conn, "j", {})
    monkeypatch.setattr(time, "time", lambda: real() - 3600)            # this process's clock: an hour slow
    job = database.claim_report_job(conn, "slow", 60, max_attempts=2, exhausted_error="x")
    clock = real() if _is_postgresql(conn) else real() - 3600
    assert job["lease_until"] == pytest.approx(clock + 60, abs=10)
    assert database.live_report_attempts(conn) == {("j", 1)}
    assert database.renew_report_leases(conn, "slow", ["j"], 120) == 1
    assert database.get_report_job(conn, "j")["lease_until"] == pytest.approx(clock + 120, abs=10)
    monkeypatch.setattr(time, "time", lambda: real() + 3600)            # another host's clock: an hour fast
    if _is_postgresql(conn):
        assert database.waiting_report_jobs(conn) == []
        assert database.claim_report_job(conn, "fast", 60, max_attempts=2, exhausted_error="x") is None
        assert database.live_report_attempts(conn) == {("j", 1)}
    else:
        assert database.live_report_attempts(conn) == set()
        assert database.claim_report_job(conn, "fast", 60, max_attempts=2, exhausted_error="x")["attempts"] == 2


def test_job_operations_join_the_callers_transaction(conn):
    """Inside a caller's transaction the job operations are part of it (rolled back with it), on both."""
    for report_id in ("a", "b"):
        database.create_report_job(conn, report_id, {})
    with pytest.raises(KeyError):
        with database.transaction(conn):
            assert database.claim_report_job(conn, "w", 60, max_attempts=2, exhausted_error="x")["report_id"] == "a"
            assert database.delete_report_job(conn, "b")["report_id"] == "b"
            database.check_writable(conn)
            database.store_report_part(conn, "a", 0, 1, b"part")
            assert database.mark_report_complete(conn, "a", file="a.csv", rows=0, as_of="t", seconds=0.1, owner="w")
            raise KeyError("the caller gives up")
    assert [database.get_report_job(conn, r)["status"] for r in ("a", "b")] == ["Queued", "Queued"]
    assert database.report_attempts(conn) == [] and database.report_parts(conn, "a") == []
    assert query(conn, "SELECT COUNT(*) FROM report_durations") == [(0,)]
    with database.transaction(conn):
        database.check_writable(conn)
        assert database.claim_report_job(conn, "w", 60, max_attempts=2, exhausted_error="x")["report_id"] == "a"
        assert database.delete_report_job(conn, "b")["report_id"] == "b"
    assert database.get_report_job(conn, "a")["status"] == "Running" and database.get_report_job(conn, "b") is None
    database.check_writable(conn)                                       # and again outside


def test_transaction_does_not_nest(conn):
    """transaction() inside a transaction of the same connection raises (a backend error), on both; the
    outer transaction goes on."""
    with database.transaction(conn):
        database.create_report_job(conn, "outer", {})
        with pytest.raises(database.errors(), match="within a transaction"):
            with database.transaction(conn):
                database.create_report_job(conn, "inner", {})
        database.create_report_job(conn, "after", {})
    assert [job["report_id"] for job in database.list_report_jobs(conn, limit=10)[0]] == ["after", "outer"]


def test_postgresql_connections_give_up_after_a_timeout(storage_location, monkeypatch):
    """An unreachable PostgreSQL host fails a connection after connect_timeout (5 s unless the URL says
    otherwise), not after the operating system's TCP time-out, for every connection the backend opens."""
    if not storage.is_postgresql(storage_location):
        pytest.skip("SQLite opens a local file")
    import psycopg

    timeouts = []
    original = psycopg.connect

    def spy(*args, **kwargs):
        connection = original(*args, **kwargs)
        timeouts.append(connection.info.get_parameters().get("connect_timeout"))
        return connection

    monkeypatch.setattr(psycopg, "connect", spy)
    database.connect(storage_location).close()
    database.inspect_report_jobs(storage_location)
    database.first_poll_us(storage_location)
    with database.start_up_lock(storage_location):
        pass
    assert timeouts == ["5"] * 4
    timeouts.clear()
    own = storage_location + ("&" if "?" in storage_location else "?") + "connect_timeout=2"
    database.connect(own).close()
    database.read_report_inputs(own, lookback_us=WEEK_US)
    assert timeouts == ["2", "2"]


def test_page_reads_see_one_snapshot(conn, storage_location, before_statements):
    """find_stores, store_records and metrics_facts read in one snapshot: a write committed between their
    statements is seen by all of them or by none."""
    writer = database.connect(storage_location)
    writes = iter([
        ["INSERT INTO stores (store_key, store_id) VALUES (1000, 'zzz-new')"],
        ["INSERT INTO stores (store_key, store_id) VALUES (1001, 'zzz-two')",
         "INSERT INTO business_hours (store_id, day_of_week, start_time_local, end_time_local) "
         "VALUES ('zzz-two', 1, '09:00:00', '17:00:00')",
         "INSERT INTO timezones (store_id, timezone_str) VALUES ('zzz-two', 'UTC')"],
        ["INSERT INTO reports (report_id, status, created_at) VALUES ('w', 'Complete', 't')",
         "INSERT INTO report_durations (finished_at, seconds) VALUES ('t', 1.0)"],
    ])
    state = {"selects": 0, "pending": None}

    def hook(sql: str) -> None:
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            return
        state["selects"] += 1
        if state["selects"] == 2 and state["pending"]:          # between the first and second read
            statements, state["pending"] = state["pending"], None
            with database.transaction(writer):
                for statement in statements:
                    execute(writer, statement)

    def arm() -> None:
        state["selects"], state["pending"] = 0, next(writes)

    before_statements(conn, hook)
    arm()
    assert database.find_stores(conn, "zzz", 10) == (0, [])
    assert database.find_stores(conn, "zzz", 10) == (1, [("zzz-new", False, None)])
    arm()
    assert database.store_records(conn, "zzz-two") == {"polled": False, "weekly": [], "has_zone_row": False,
                                                       "timezone": None, "special": []}
    assert database.store_records(conn, "zzz-two")["weekly"] == [(1, "09:00:00", "17:00:00")]
    arm()
    facts = database.metrics_facts(conn, [2.0])
    assert (facts["jobs_by_status"], facts["report_seconds"]["count"]) == ({}, 0)
    facts = database.metrics_facts(conn, [2.0])
    assert (facts["jobs_by_status"], facts["report_seconds"]["count"]) == ({"Complete": 1}, 1)
    writer.close()
