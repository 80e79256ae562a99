"""The database path (read only what a report needs, write the CSV) equals the engine over all history,
on every storage backend (SQLite, and PostgreSQL where its server binaries are installed: conftest.py)."""
import sqlite3
from contextlib import closing

import pandas as pd
import pytest

import database
import sample_data
from report_generator import ReportError, compute_report, generate_report


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def loaded(request, tmp_path_factory):
    """Three weeks of generated data (so much of it lies before the report's week), loaded into a database
    of each backend (a PostgreSQL one on the session's throw-away server, dropped after the module)."""
    folder = tmp_path_factory.mktemp("history")
    files = sample_data.generate_dataset(folder / "csv", stores=80, days=21, seed=7, special_share=0.5)
    if request.param == "sqlite":
        path = folder / "db.sqlite3"
    else:
        server = request.getfixturevalue("postgresql_server")
        path = server.create_database()
        request.addfinalizer(lambda: server.drop_database(path))
    conn = database.connect(path)
    database.load_tables(conn, files)
    # Special dates long before the week as well: with unbounded reach they decide whether an old poll
    # still speaks for it.
    database.ingest_special_hours(conn, pd.DataFrame(
        {"store_id": ["zz-old", "zz-old-closed"], "date": ["2022-12-10", "2023-01-01"],
         "start_time_local": ["", ""], "end_time_local": ["", ""]}))
    # A 24/7 store polled once, a month before the rest: only the "last poll before the week" carries it.
    database.ingest_store_status(conn, pd.DataFrame(
        {"store_id": ["zz-old", "zz-old-closed"], "status": ["inactive", "active"],
         "timestamp_utc": ["2022-12-20 00:00:00 UTC", "2022-12-20 00:00:00 UTC"]}))
    conn.close()
    return path


def read_table(location, sql: str, columns: list[str]) -> pd.DataFrame:
    """A query's rows straight from the database (either backend), as a frame of `columns`."""
    if isinstance(location, str) and location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location) as conn:
            rows = conn.execute(sql).fetchall()
    else:
        with closing(sqlite3.connect(location)) as conn:
            rows = conn.execute(sql).fetchall()
    return pd.DataFrame(rows, columns=columns)


def full_history(path):
    """Every stored row, straight from the tables, in the engine's input shape."""
    polls = read_table(path, """SELECT s.store_id, p.timestamp_us, p.active FROM store_status p
                                JOIN stores s USING (store_key)""", ["store_id", "timestamp_us", "active"])
    hours = read_table(path, "SELECT store_id, day_of_week, start_time_local, end_time_local FROM business_hours",
                       ["store_id", "day_of_week", "start_time_local", "end_time_local"])
    zones = read_table(path, "SELECT store_id, timezone_str FROM timezones", ["store_id", "timezone_str"])
    special = read_table(path, "SELECT store_id, date, start_time_local, end_time_local FROM special_hours",
                         ["store_id", "date", "start_time_local", "end_time_local"])
    polls = pd.DataFrame({
        "store_id": polls["store_id"],
        "timestamp_utc": pd.to_datetime(polls["timestamp_us"], unit="us", utc=True),
        "status": polls["active"].map({1: "active", 0: "inactive"}),
    })
    return polls, hours, zones, special


def read_csv(path):
    return pd.read_csv(path, dtype={"store_id": str})


@pytest.mark.parametrize("as_of", [None, "2023-01-20 09:30:00", "2023-01-12T00:00:00Z"])
@pytest.mark.parametrize("extended, reach", [(False, 120), (True, 120), (True, None), (True, 45)])
def test_database_path_equals_engine_over_full_history(loaded, tmp_path, as_of, extended, reach):
    polls, hours, zones, special = full_history(loaded)
    outcome = generate_report(loaded, tmp_path / "r.csv", as_of=as_of, extended=extended, reach_minutes=reach)
    expected = compute_report(polls, hours, zones, as_of, special_hours=special, reach_minutes=reach,
                              extended=extended)
    pd.testing.assert_frame_equal(read_csv(tmp_path / "r.csv"), expected.reset_index(drop=True),
                                  check_dtype=False)
    assert outcome.rows == len(expected)
    assert outcome.as_of == expected.attrs["now"]
    assert set(outcome.timings) == {"load", "compute", "write"}
    if as_of is None:
        assert "zz-old" in set(expected["store_id"])
        if reach is None and extended:  # the old poll speaks for the week unless a closure came after it
            old = expected.set_index("store_id")
            assert old.loc["zz-old", "downtime_last_week"] > 0 and old.loc["zz-old-closed", "unknown_last_week"] > 0


def test_store_ids_restrict_the_database_read(loaded, tmp_path):
    polls, hours, zones, special = full_history(loaded)
    chosen = sorted(set(polls["store_id"]))[3:9] + ["zz-old", "not-a-store"]
    generate_report(loaded, tmp_path / "r.csv", store_ids=chosen)
    expected = compute_report(polls, hours, zones, polls["timestamp_utc"].max(), special_hours=special,
                              store_ids=chosen)
    got = read_csv(tmp_path / "r.csv")
    assert list(got["store_id"]) == sorted(chosen[:-1])
    pd.testing.assert_frame_equal(got, expected.reset_index(drop=True), check_dtype=False)


def test_report_file_is_replaced_atomically_and_no_temporary_files_remain(loaded, tmp_path):
    target = tmp_path / "out" / "r.csv"
    generate_report(loaded, target)
    first = target.read_bytes()
    generate_report(loaded, target)
    assert target.read_bytes() == first
    assert [p.name for p in target.parent.iterdir()] == ["r.csv"]


def test_empty_database_is_a_clear_error(storage_location, tmp_path):
    database.connect(storage_location).close()
    with pytest.raises(ReportError, match="no polls"):
        generate_report(storage_location, tmp_path / "r.csv")
    assert not (tmp_path / "r.csv").exists()
