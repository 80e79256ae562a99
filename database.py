"""The storage layer's front door, and `python database.py`, which loads the CSV files.

Callers use the functions here; each one hands the work to the backend of the database it is given, a
location (SM_DATABASE: a SQLite path, or a postgresql:// URL) or a connection from `connect` (see
storage/__init__.py for the interface, storage/sqlite.py and storage/postgresql.py for the two backends).
Validation, CSV reading and load summaries are the same for every backend (ingestion.py).

    python database.py                       # load the data directory's CSVs (store_status.csv, ...)
    python database.py load --status F ...   # load chosen files, all in one transaction
    python database.py init                  # create the schema
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

import storage
from ingestion import (DEMO_STORES, LOAD_KEYWORDS, TABLE_COLUMNS, LoadError, TableSummary,  # noqa: F401
                       default_files, read_table_csv)
from storage import ReportInputs, backend  # noqa: F401  (ReportInputs: what read_report_inputs returns)


# --- connections and transactions ---------------------------------------------------------------------

def connect(location):
    """A new connection to the database at `location`, its schema created or migrated if need be."""
    return backend(location).connect(location)


def transaction(conn, immediate: bool = True):
    """A context manager: one transaction on `conn`, in which a check of the job table and the write that
    follows are one step for every process (SQLite: BEGIN IMMEDIATE, the write lock at once; PostgreSQL:
    the job table's advisory lock). It does not nest on either backend."""
    return backend(conn).transaction(conn, immediate)


def errors() -> tuple[type[BaseException], ...]:
    """The exceptions any backend raises for database trouble."""
    return storage.errors()


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """Those of `errors()` that mean the database cannot be used now (the service answers 503)."""
    return storage.unavailable_errors()


# --- report jobs --------------------------------------------------------------------------------------

def create_report_job(conn, report_id: str, params: dict) -> None:
    backend(conn).create_report_job(conn, report_id, params)


def get_report_job(conn, report_id: str) -> dict | None:
    return backend(conn).get_report_job(conn, report_id)


def mark_report_running(conn, report_id: str) -> None:
    backend(conn).mark_report_running(conn, report_id)


def claim_report_job(conn, owner: str, lease_seconds: float, *, max_attempts: int, exhausted_error: str) -> dict | None:
    return backend(conn).claim_report_job(conn, owner, lease_seconds, max_attempts=max_attempts,
                                          exhausted_error=exhausted_error)


def renew_report_leases(conn, owner: str, report_ids, lease_seconds: float) -> int:
    return backend(conn).renew_report_leases(conn, owner, report_ids, lease_seconds)


def count_queued_report_jobs(conn) -> int:
    return backend(conn).count_queued_report_jobs(conn)


def set_report_progress(conn, report_id: str, progress: float, owner: str | None = None) -> None:
    backend(conn).set_report_progress(conn, report_id, progress, owner)


def mark_report_complete(conn, report_id: str, **record) -> bool:
    return backend(conn).mark_report_complete(conn, report_id, **record)


def mark_report_failed(conn, report_id: str, error: str, owner: str | None = None) -> bool:
    return backend(conn).mark_report_failed(conn, report_id, error, owner)


def report_attempts(conn, report_id: str | None = None) -> list[dict]:
    return backend(conn).report_attempts(conn, report_id)


def inspect_report_jobs(location) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    return backend(location).inspect_report_jobs(location)


def waiting_report_jobs(conn) -> list[dict]:
    return backend(conn).waiting_report_jobs(conn)


def list_report_jobs(conn, *, limit: int, offset: int = 0) -> tuple[list[dict], int]:
    return backend(conn).list_report_jobs(conn, limit=limit, offset=offset)


def delete_report_job(conn, report_id: str) -> dict | None:
    return backend(conn).delete_report_job(conn, report_id)


def finished_report_jobs_before(conn, finished_before: str) -> list[str]:
    return backend(conn).finished_report_jobs_before(conn, finished_before)


def live_report_attempts(conn) -> set[tuple[str, int]]:
    return backend(conn).live_report_attempts(conn)


def store_report_part(conn, report_id: str, shard: int, shards: int, body: bytes) -> None:
    """Keep one shard's result (idempotent) and move the job's progress to the share of shards stored."""
    backend(conn).store_report_part(conn, report_id, shard, shards, body)


def report_parts(conn, report_id: str) -> list[bytes]:
    return backend(conn).report_parts(conn, report_id)


def delete_report_parts(conn, report_id: str) -> None:
    backend(conn).delete_report_parts(conn, report_id)


def store_report_file(conn, report_id: str, body: bytes) -> None:
    backend(conn).store_report_file(conn, report_id, body)


def report_file(conn, report_id: str) -> bytes | None:
    return backend(conn).report_file(conn, report_id)


# --- loads ------------------------------------------------------------------------------------------------

def load_files(conn, status=None, hours=None, timezones=None, special_hours=None, *,
               progress: bool | None = None, name: str | None = None) -> list[TableSummary]:
    """Load the given CSVs (paths or file-likes; None = skip that table) in ONE transaction; a summary per
    table. Raises LoadError (nothing written) for a missing or unreadable file or a missing column."""
    return backend(conn).load_files(conn, status, hours, timezones, special_hours, progress=progress, name=name)


def load_tables(conn, files: dict, **options) -> list[TableSummary]:
    """`load_files` with the files named by table (None or absent = skip), as `default_files` and
    `sample_data.generate_dataset` give them."""
    return load_files(conn, **{LOAD_KEYWORDS[table]: path for table, path in files.items()}, **options)


def ingest_store_status(conn, frame: pd.DataFrame, source: str = "<request>") -> TableSummary:
    return backend(conn).ingest_store_status(conn, frame, source)


def ingest_business_hours(conn, frame: pd.DataFrame, source: str = "<request>") -> TableSummary:
    return backend(conn).ingest_business_hours(conn, frame, source)


def ingest_timezones(conn, frame: pd.DataFrame, source: str = "<request>") -> TableSummary:
    return backend(conn).ingest_timezones(conn, frame, source)


def ingest_special_hours(conn, frame: pd.DataFrame, source: str = "<request>") -> TableSummary:
    return backend(conn).ingest_special_hours(conn, frame, source)


def has_polls(conn) -> bool:
    return backend(conn).has_polls(conn)


def recent_loads(conn, limit: int = 10) -> list[dict]:
    return backend(conn).recent_loads(conn, limit)


def metrics_facts(conn, report_seconds_buckets) -> dict:
    return backend(conn).metrics_facts(conn, report_seconds_buckets)


def ensure_loaded(conn, data_dir: str | Path) -> str:
    """First start: if the database has no polls, load `data_dir`'s CSVs, else a generated demo set.

    Returns a one-line description of what happened, for the caller's log. A LoadError from data_dir's
    files propagates (nothing is written).
    """
    if has_polls(conn):
        return "database already has polls; nothing loaded"
    data_dir = Path(data_dir)
    files = default_files(data_dir)
    if files["store_status"] is not None:
        origin = f"CSV files from {data_dir}"
    else:
        import sample_data  # lazily: only a first start without data needs the generator

        paths = sample_data.generate_dataset(data_dir / "generated", stores=DEMO_STORES, seed=0)
        files = {table: Path(paths[table]) if paths.get(table) else None for table in TABLE_COLUMNS}
        origin = f"a generated demo set ({DEMO_STORES} stores, no store_status.csv in {data_dir})"
    summaries = load_tables(conn, files)
    parts = [f"{s.table} {s.new:,} new rows" + (f" ({s.rejected_total:,} rejected)" if s.rejected else "")
             for s in summaries]
    return f"empty database: loaded {origin}: " + ", ".join(parts)


# --- the report's reads (each opens its own read-only snapshot) -------------------------------------------

def plan_report_shards(location, *, shard_stores: int, shard_polls: int | None = None, min_shards: int = 1,
                       lookback_us: int, as_of_us: int | None = None,
                       store_ids: list[str] | None = None) -> tuple[int | None, list[tuple[int, int]]]:
    """The report's now (as_of, or the latest poll; None without polls) and store_key ranges [low, high]
    of at most `shard_stores` chosen stores and about `shard_polls` polls in the window each, in key order
    (storage.cut_shards)."""
    return backend(location).plan_report_shards(location, shard_stores=shard_stores, shard_polls=shard_polls,
                                                min_shards=min_shards, lookback_us=lookback_us, as_of_us=as_of_us,
                                                store_ids=store_ids)


def read_report_inputs(location, *, lookback_us: int, as_of_us: int | None = None,
                       store_ids: list[str] | None = None,
                       key_range: tuple[int, int] | None = None) -> ReportInputs:
    """The polls, hours, timezones and special hours a report at `as_of_us` (default: the latest poll)
    depends on, in one snapshot: polls in [now - lookback, now] plus each store's latest poll before."""
    return backend(location).read_report_inputs(location, lookback_us=lookback_us, as_of_us=as_of_us,
                                                store_ids=store_ids, key_range=key_range)


def first_poll_us(location) -> int | None:
    """The earliest poll of any store (UTC microseconds), None without polls."""
    return backend(location).first_poll_us(location)


# --- the service: start-up, health, the pages' reads ---------------------------------------------------

def start_up_lock(location):
    """A context manager held while a starting service prepares the database: processes starting together
    on one database (SQLite: on one host; PostgreSQL: on any hosts) take turns."""
    return backend(location).start_up_lock(location)


def check_writable(conn) -> None:
    """Raise unless `conn` can write (the health check)."""
    backend(conn).check_writable(conn)


def latest_complete_report_id(conn) -> str | None:
    return backend(conn).latest_complete_report_id(conn)


def find_stores(conn, text: str, limit: int) -> tuple[int, list[tuple]]:
    """Polled stores whose id contains `text` (case-insensitive), those starting with it first, then by id:
    (matches in all, [(store_id, has business hours, timezone_str or None)])."""
    return backend(conn).find_stores(conn, text, limit)


def store_records(conn, store_id: str) -> dict:
    """What the tables hold for one store (polled, weekly rows, timezone, special rows)."""
    return backend(conn).store_records(conn, store_id)


def data_facts(conn, loads: int) -> dict:
    """What the database holds, in one snapshot (counts, first and last poll, zones, the latest loads)."""
    return backend(conn).data_facts(conn, loads)


def start_report_attempt(conn, report_id: str, owner: str, *, lease_until: float, max_attempts: int,
                         exhausted_error: str, owner_prefix: str) -> dict | None:
    """Start a job handed to a worker (cluster mode); see storage/sqlite.py."""
    return backend(conn).start_report_attempt(conn, report_id, owner, lease_until=lease_until,
                                              max_attempts=max_attempts, exhausted_error=exhausted_error,
                                              owner_prefix=owner_prefix)


# --- command line -------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """`python database.py load [--db PATH] [--status P] [--hours P] [--timezones P] [--special-hours P]`,
    `... init`; without arguments, `load` (the files of the data directory)."""
    from config import Settings, describe_database

    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        argv = ["load"]   # `python database.py`, as the original project's README tells users to run
    parser = argparse.ArgumentParser(prog="database.py", description="store-monitoring storage; without "
                                     "arguments, loads the CSV files of the data directory (= load)")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="create the database schema")
    load = commands.add_parser(
        "load", help="load CSV files (all in one transaction); without table options, the files of the "
                     "data directory: store_status.csv, business_hours.csv or menu_hours.csv, timezones.csv, "
                     "special_hours.csv (optional)")
    for sub in (init, load):
        sub.add_argument("--db", help="SQLite file or postgresql:// URL (default: SM_DATABASE or the project's)")
    load.add_argument("--status", type=Path, help="store_status CSV (store_id,status,timestamp_utc)")
    load.add_argument("--hours", type=Path, help="business hours CSV (store_id,day|dayOfWeek|day_of_week,"
                                                 "start_time_local,end_time_local)")
    load.add_argument("--timezones", type=Path, help="timezones CSV (store_id,timezone_str)")
    load.add_argument("--special-hours", type=Path, help="special hours CSV (store_id,date,start_time_local,"
                                                         "end_time_local; both times empty = closed)")
    load.add_argument("--data-dir", type=Path, help="directory of the default files (default: SM_DATA_DIR)")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    location = args.db or settings.database
    where = describe_database(location)
    if args.command == "init":
        try:
            connect(location).close()
        except storage.errors() as exc:
            print(f"error: {where}: {exc}", file=sys.stderr)
            return 2
        print(f"schema ready in {where}")
        return 0

    paths = {"store_status": args.status, "business_hours": args.hours, "timezones": args.timezones,
             "special_hours": args.special_hours}
    if not any(paths.values()):
        data_dir = args.data_dir or settings.data_dir
        paths = default_files(data_dir)
        if paths["store_status"] is None:
            print(f"error: {Path(data_dir) / 'store_status.csv'}: file not found "
                  f"(put the CSVs there or give --status/--hours/--timezones/--special-hours)", file=sys.stderr)
            return 2
        for table, label in (("business_hours", "business_hours.csv or menu_hours.csv"),
                             ("timezones", "timezones.csv"), ("special_hours", "special_hours.csv (optional)")):
            if paths[table] is None:
                print(f"{table}: no {label} in {data_dir}; skipped")
    started = time.perf_counter()
    try:
        conn = connect(location)
    except storage.errors() as exc:
        print(f"error: {where}: cannot open the database: {exc}; nothing was loaded", file=sys.stderr)
        return 2
    try:
        summaries = load_tables(conn, paths)
    except LoadError as exc:
        print(f"error: {exc}; nothing was loaded", file=sys.stderr)
        return 2
    except storage.errors() as exc:
        print(f"error: {where}: {exc}; nothing was loaded", file=sys.stderr)
        return 1
    finally:
        conn.close()
    for summary in summaries:
        print(summary.format())
    print(f"loaded into {where} in {time.perf_counter() - started:.1f} s (one transaction)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
