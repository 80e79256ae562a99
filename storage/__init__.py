"""Storage backends: one interface, two implementations.

- `storage.sqlite`: the embedded default, one SQLite file (SM_DATABASE = a path, or sqlite:///path).
- `storage.postgresql`: PostgreSQL through psycopg 3 (SM_DATABASE = postgresql://...), for several hosts.

Each backend module provides the operations in OPERATIONS with the same signatures and the same meaning;
`tests/test_storage_contract.py` runs one suite against both. Connections are the backend's own
(sqlite3.Connection, psycopg.Connection): pass one back only to the backend that made it. Callers use the
facade in database.py, which picks the backend from the location or the connection. What the backends
share (validation, summaries, reading CSVs) is in ingestion.py; what they return is defined here; the
Python they share around their own SQL (job flows, assembling the report's frames, the pages' results) is
in storage/common.py.

Transactions: `transaction(conn, immediate=True)` is one transaction on `conn`. With `immediate` it takes
the job table's write lock at once (SQLite: BEGIN IMMEDIATE, the database's write lock; PostgreSQL: a
transaction-level advisory lock of the job table), so a check-then-act on the job table inside it (count
the Queued jobs, then insert; read a job, then end it) is one step against every other connection; loads
take their own lock on PostgreSQL, so a long load does not hold up the job table there. `transaction()`
does not nest on either backend: called inside a transaction of the same connection it raises a backend
error (sqlite3.OperationalError; psycopg.errors.ActiveSqlTransaction), "cannot start a transaction within
a transaction", and the outer transaction goes on. Every other operation that writes joins the caller's
transaction when there is one (it is then part of it, committed or rolled back with it), and otherwise
runs in a transaction of its own.

Leases (`lease_until`, Unix seconds) are on one clock per database: SQLite's on its host's; PostgreSQL's on
the database server's, whichever host claims or renews.
"""
from __future__ import annotations

import importlib
import sqlite3
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType

import pandas as pd

# The operations every backend module defines. `location` is what SM_DATABASE holds; `conn` one of the
# backend's connections from connect(location).
OPERATIONS = (
    # connections: connect(location) -> conn (schema ensured); transaction(conn, immediate=True) (see above)
    "connect", "transaction",
    # report jobs (the queue every process shares)
    "create_report_job", "get_report_job", "mark_report_running", "claim_report_job", "renew_report_leases",
    "count_queued_report_jobs", "set_report_progress", "mark_report_complete", "mark_report_failed",
    "report_attempts", "inspect_report_jobs", "waiting_report_jobs", "list_report_jobs", "delete_report_job",
    "finished_report_jobs_before", "live_report_attempts",
    # cluster mode: shard results until the merge, and finished reports kept in the database, for every
    # web process whatever host computed them
    "store_report_part", "report_parts", "delete_report_parts", "store_report_file", "report_file",
    # loads: one transaction each, exact summaries (ingestion.TableSummary)
    "load_files", "ingest_store_status", "ingest_business_hours", "ingest_timezones", "ingest_special_hours",
    "has_polls", "recent_loads", "metrics_facts",
    # the report's reads, each in its own read-only snapshot
    "plan_report_shards", "read_report_inputs", "first_poll_us",
    # the service: start-up, health, the pages' reads; jobs handed to a cluster worker
    "start_up_lock", "check_writable", "latest_complete_report_id", "find_stores", "store_records", "data_facts",
    "start_report_attempt",
)

POSTGRESQL_SCHEMES = ("postgresql://", "postgres://")
SQLITE_SCHEME = "sqlite:///"

POLL_COLUMNS = ["store_id", "timestamp_utc", "status"]
HOURS_COLUMNS = ["store_id", "day_of_week", "start_time_local", "end_time_local"]
ZONE_COLUMNS = ["store_id", "timezone_str"]
SPECIAL_COLUMNS = ["store_id", "date", "start_time_local", "end_time_local"]


def empty_frame(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in columns})


@dataclass
class ReportInputs:
    polls: pd.DataFrame           # store_id (categorical), timestamp_utc (datetime64[us, UTC]), status (categorical)
    business_hours: pd.DataFrame  # store_id, day_of_week, start_time_local, end_time_local
    timezones: pd.DataFrame       # store_id, timezone_str
    now: pd.Timestamp | None      # as_of, or the latest poll; None when there are no polls
    # store_id, date ('YYYY-MM-DD'), start_time_local, end_time_local (both None: closed that date)
    special_hours: pd.DataFrame = field(default_factory=lambda: empty_frame(SPECIAL_COLUMNS))


MIN_SPLIT_STORES = 1000   # cut_shards' min_shards splits no further than this many stores a shard


def cut_shards(keys, polls, *, shard_stores: int, shard_polls: int | None, min_shards: int = 1
               ) -> list[tuple[int, int]]:
    """store_key ranges [low, high] (inclusive) over `keys` (ascending) with at most `shard_stores` stores
    and, where `shard_polls` is given, at most that many polls (`polls`: each store's polls in the report's
    week) each; a store with more polls than that gets a shard of its own. With `min_shards` (the
    processes that will compute them), the stores are also split into at least that many shards where
    each still gets MIN_SPLIT_STORES stores, so that every process gets one (a smaller report is cheaper
    in one piece than handed to other processes). The last range is open-ended
    upwards, so a store added after the plan still falls into a shard. Every backend plans with this.

    A shard's memory follows the polls it holds, not its stores (bench/sizing.py: about 110 MB for the
    process plus ~90 bytes a poll), so bounding the polls bounds a worker's memory however often stores
    are polled."""
    if shard_stores < 1 or (shard_polls is not None and shard_polls < 1) or min_shards < 1:
        raise ValueError("shard_stores, shard_polls and min_shards must be at least 1")
    if len(keys) >= min_shards * MIN_SPLIT_STORES:
        shard_stores = min(shard_stores, -(-len(keys) // min_shards))
    lows, stores, held = [], 0, 0
    for key, count in zip(keys, polls):
        if not lows or stores == shard_stores or (shard_polls is not None and stores and held + count > shard_polls):
            lows.append(int(key))
            stores, held = 0, 0
        stores += 1
        held += int(count)
    highs = [low - 1 for low in lows[1:]] + [2**63 - 1]
    return list(zip(lows, highs))


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def is_postgresql(location) -> bool:
    return isinstance(location, str) and location.startswith(POSTGRESQL_SCHEMES)


def sqlite_path(location) -> Path:
    """The file of a SQLite location: a path, or sqlite:///path."""
    text = str(location)
    return Path(text[len(SQLITE_SCHEME):] if text.startswith(SQLITE_SCHEME) else text)


def unavailable_errors() -> tuple[type[BaseException], ...]:
    """The part of `errors()` that means the database cannot be used now (down, unreachable, locked for too
    long, out of disk) rather than a mistake in a statement: each driver's OperationalError."""
    return tuple(driver.OperationalError for driver in _drivers())


def backend(target) -> ModuleType:
    """The backend module for a location (path or URL) or for one of its connections."""
    if isinstance(target, sqlite3.Connection):
        return importlib.import_module("storage.sqlite")
    if isinstance(target, (str, Path)):
        return importlib.import_module("storage.postgresql" if is_postgresql(target) else "storage.sqlite")
    if type(target).__module__.startswith("psycopg"):
        return importlib.import_module("storage.postgresql")
    raise TypeError(f"not a database location or connection: {target!r}")


def errors() -> tuple[type[BaseException], ...]:
    """The exceptions a backend raises for database trouble (unreachable, locked, full disk, bad SQL)."""
    return tuple(driver.Error for driver in _drivers())


def _drivers() -> list[ModuleType]:
    """The database drivers that can be in use: sqlite3, and psycopg where it is installed (without it
    only SQLite can be in use). Both follow the DB-API's exception classes."""
    try:
        import psycopg
    except ImportError:
        return [sqlite3]
    return [sqlite3, psycopg]
