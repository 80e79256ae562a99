"""The PostgreSQL storage backend (SM_DATABASE = postgresql://...), through psycopg 3: schema, connections,
report-job records, writing loads and the report's reads, with the same operations and the same meaning as
storage/sqlite.py (the reference; storage/__init__.py lists the operations). Validation is shared with the
other backend (ingestion.py).

How it differs from SQLite inside, not in what callers see:
- Connections are autocommit; `transaction()` is an explicit `conn.transaction()`. Rows come back as dicts.
- Loads are serialised by a transaction-level advisory lock (SQLite's BEGIN IMMEDIATE does the same), so
  a load's counts are against exactly what was stored before it, and store keys are assigned as SQLite
  assigns its INTEGER PRIMARY KEY: max + 1, in the order the load meets the stores. The same loads give
  the same keys on both backends, hence the same shard plans.
- Polls are written with COPY: each chunk's groups (one per store and instant) go into a TEMP table, and
  the categories of the summary are computed in SQL at the end against the status stored before the load.
- Writes to the job table that check, then act (a claim, ending a job, deleting one, storing a shard's
  result, and a caller's `transaction(conn)`) take a transaction-level advisory lock of the job table
  (JOBS_LOCK), as SQLite's BEGIN IMMEDIATE takes the write lock: one at a time across processes and hosts.
  Loads take their own lock (LOAD_LOCK), so a long load does not hold up the job table.
- Leases are on the database server's clock (`extract(epoch from clock_timestamp())`, Unix seconds), not
  the clock of whichever host claims or renews: hosts' clocks differ.
- Every connection gives up after CONNECT_TIMEOUT seconds (unless the URL or PGCONNECT_TIMEOUT says
  otherwise), not after the operating system's TCP time-out, when the server cannot be reached.
- There is no `poll_blocks` copy of the polls: PostgreSQL reads a store's week of polls from the primary
  key index (which carries `active`, so index-only) and packs it into one bytea per store server-side.
- Row order of the small tables follows a `seq` identity column (SQLite's rowid), so the report's reads
  return the same frames in the same order as SQLite's.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import pandas as pd
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row, tuple_row

import ingestion
from ingestion import TableSummary
from storage import HOURS_COLUMNS, SPECIAL_COLUMNS, ZONE_COLUMNS, ReportInputs, common, cut_shards, utc_now_iso

TABLES = ("stores", "store_status", "poll_counts", "business_hours", "timezones", "special_hours", "reports",
          "report_durations", "loads", "report_files", "report_parts", "report_attempts")

SCHEMA = """
CREATE TABLE IF NOT EXISTS stores (
    store_key BIGINT PRIMARY KEY,                -- assigned by loads: max + 1, as SQLite's INTEGER PRIMARY KEY
    store_id  TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS store_status (
    store_key    BIGINT NOT NULL,                -- stores.store_key (no foreign key: loads write keys they
    timestamp_us BIGINT NOT NULL,                -- took from `stores` in the same transaction)
    active       SMALLINT NOT NULL CHECK (active IN (0, 1)),
    PRIMARY KEY (store_key, timestamp_us) INCLUDE (active)   -- a store's week: one index-only range scan
);
CREATE TABLE IF NOT EXISTS poll_counts (      -- polls per store and 7-day block (SQLite's poll_blocks lengths),
    store_key BIGINT NOT NULL,                   -- kept by loads: what shard planning estimates from
    block     BIGINT NOT NULL,                   -- floor(timestamp_us / BLOCK_US)
    polls     BIGINT NOT NULL,
    PRIMARY KEY (store_key, block)
);
CREATE TABLE IF NOT EXISTS business_hours (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY,   -- insertion order (SQLite's rowid)
    store_id         TEXT NOT NULL,
    day_of_week      SMALLINT NOT NULL CHECK (day_of_week BETWEEN 0 AND 6),
    start_time_local TEXT NOT NULL,
    end_time_local   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS business_hours_by_store ON business_hours (store_id);
CREATE TABLE IF NOT EXISTS timezones (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY,
    store_id     TEXT PRIMARY KEY,
    timezone_str TEXT
);
CREATE TABLE IF NOT EXISTS special_hours (
    seq              BIGINT GENERATED ALWAYS AS IDENTITY,
    store_id         TEXT NOT NULL,
    date             TEXT NOT NULL,              -- local calendar date 'YYYY-MM-DD'
    start_time_local TEXT,                       -- both NULL: closed that date
    end_time_local   TEXT,
    CHECK ((start_time_local IS NULL) = (end_time_local IS NULL))
);
CREATE INDEX IF NOT EXISTS special_hours_by_store ON special_hours (store_id, date);
CREATE TABLE IF NOT EXISTS reports (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY,   -- creation order among equal created_at (SQLite's rowid)
    report_id   TEXT PRIMARY KEY,
    status      TEXT NOT NULL CHECK (status IN ('Queued', 'Running', 'Complete', 'Failed')),
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    params      TEXT NOT NULL DEFAULT '{}',      -- JSON text, exactly as SQLite keeps it
    as_of       TEXT,
    rows        BIGINT,
    seconds     DOUBLE PRECISION,
    timings     TEXT,
    meta        TEXT,
    progress    DOUBLE PRECISION NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    file        TEXT,
    owner       TEXT,
    lease_until DOUBLE PRECISION                 -- Unix seconds
);
CREATE INDEX IF NOT EXISTS reports_by_status ON reports (status);
CREATE TABLE IF NOT EXISTS report_durations (
    finished_at TEXT NOT NULL,
    seconds     DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS loads (
    load_id     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    finished_at TEXT NOT NULL,
    table_name  TEXT NOT NULL,
    summary     TEXT NOT NULL                    -- JSON text: TableSummary.to_dict(), key order kept
);
CREATE TABLE IF NOT EXISTS report_files (
    report_id TEXT PRIMARY KEY,
    body      BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS report_parts (
    report_id TEXT NOT NULL,
    shard     INTEGER NOT NULL,
    body      BYTEA NOT NULL,
    PRIMARY KEY (report_id, shard)
);
CREATE TABLE IF NOT EXISTS report_attempts (
    report_id  TEXT NOT NULL,
    attempt    INTEGER NOT NULL,
    owner      TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at   TEXT,
    outcome    TEXT,
    PRIMARY KEY (report_id, attempt)
);
"""

# The columns of a job, in SQLite's order (what its SELECT * returns); `seq` is internal.
REPORT_COLUMNS = ("report_id", "status", "created_at", "started_at", "finished_at", "params", "as_of", "rows",
                  "seconds", "timings", "meta", "progress", "attempts", "error", "file", "owner", "lease_until")
_JOB = ", ".join(REPORT_COLUMNS)

# Advisory lock keys (pg_advisory_xact_lock): creating the schema, writing a load, checking then changing
# the job table (see `transaction` and `_jobs`).
SCHEMA_LOCK = 0x736D5F736368656D    # 'sm_schem'
LOAD_LOCK = 0x736D5F6C6F616473      # 'sm_loads'
JOBS_LOCK = 0x736D5F6A6F6273        # 'sm_jobs'
CONNECT_TIMEOUT = 5                 # seconds a connection may take before it fails (an unreachable host)
LOAD_WORK_MEM = "256MB"             # a load's aggregation and sort of ~2M groups stay in memory
TEMP_BUFFERS = "256MB"              # per connection, allocated only as TEMP tables grow
BLOCK_US = 7 * 86_400_000_000      # poll_counts' blocks: a week, as SQLite's poll_blocks
VACUUM_AFTER_POLLS = 100_000       # a load writing this many polls vacuums store_status afterwards (see _tidy)
COPY_ROWS = 1 << 20                 # rows per binary COPY message batch (bounds the buffer)


# --- connections and transactions ---------------------------------------------------------------------

class Row(dict):
    """A result row: a dict of column name -> value that also takes a column position (row[0]), as the
    sqlite3.Row of the SQLite backend's connections does, so callers' `row[0]` and `row["name"]` work on both."""

    __slots__ = ()

    def __getitem__(self, key):
        if isinstance(key, int):
            return list(self.values())[key]
        return dict.__getitem__(self, key)


def row_factory(cursor: psycopg.Cursor):
    """psycopg row factory making `Row`s."""
    if cursor.description is None:
        return psycopg.rows.no_result
    names = [column.name for column in cursor.description]
    return lambda values: Row(zip(names, values))


def _connect(location: str, **options) -> psycopg.Connection:
    """psycopg.connect with a connection time-out: CONNECT_TIMEOUT seconds unless the URL (or
    PGCONNECT_TIMEOUT) sets one. Every connection of this backend is opened here."""
    if "connect_timeout" not in conninfo_to_dict(str(location)) and not os.environ.get("PGCONNECT_TIMEOUT"):
        options["connect_timeout"] = CONNECT_TIMEOUT
    return psycopg.connect(str(location), **options)


def connect(location: str) -> psycopg.Connection:
    """A new autocommit connection (rows as dicts, see `Row`), the schema created if missing.

    Several processes may connect to a new database at once: the schema is created under an advisory
    lock, in one transaction, so exactly one of them creates it and the others find it complete.
    """
    conn = _connect(location, autocommit=True, row_factory=row_factory)
    try:
        conn.execute(f"SET temp_buffers = '{TEMP_BUFFERS}'")   # before any TEMP table of this session
        cursor = conn.cursor(row_factory=tuple_row)
        if not _schema_complete(cursor):
            with conn.transaction():
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
                cursor.execute(SCHEMA)
    except BaseException:
        conn.close()
        raise
    return conn


def _schema_complete(cursor: psycopg.Cursor) -> bool:
    return cursor.execute("SELECT bool_and(to_regclass(t) IS NOT NULL) FROM unnest(%s::text[]) t",
                          (list(TABLES),)).fetchone()[0]


@contextmanager
def transaction(conn: psycopg.Connection, immediate: bool = True) -> Iterator[psycopg.Connection]:
    """BEGIN ... COMMIT, or ROLLBACK on any exception (then re-raised). With `immediate` (the default) the
    transaction first takes the job table's lock (JOBS_LOCK, held until it ends), as SQLite's BEGIN
    IMMEDIATE takes the write lock: a caller's check-then-act on the job table (count the Queued jobs, then
    insert one; read a job, then end it) is one step against every other process and host. Loads do not
    take that lock, so a load in progress does not hold such a block up (nor it the load).

    Like SQLite's, it does not nest: inside a transaction of the same connection it raises
    psycopg.errors.ActiveSqlTransaction ("cannot start a transaction within a transaction") and leaves
    that transaction as it was. The backend's own operations join a caller's transaction instead."""
    if not _idle(conn):
        raise psycopg.errors.ActiveSqlTransaction("cannot start a transaction within a transaction")
    with conn.transaction():
        if immediate:
            _lock_jobs(conn)
        yield conn


def _lock_jobs(conn: psycopg.Connection) -> None:
    """Take the job table's lock for the rest of the current transaction (again: a no-op)."""
    conn.execute("SELECT pg_advisory_xact_lock(%s)", (JOBS_LOCK,))


@contextmanager
def _jobs(conn: psycopg.Connection) -> Iterator[None]:
    """One transaction holding the job table's lock, or the caller's transaction, which then takes it too:
    what a check-then-act on the job table runs in (as SQLite's `_write`, BEGIN IMMEDIATE)."""
    with _write(conn):
        _lock_jobs(conn)
        yield


@contextmanager
def _write(conn: psycopg.Connection) -> Iterator[None]:
    """One transaction, unless the caller already holds one (then its transaction is the unit)."""
    if not _idle(conn):
        yield
    else:
        with conn.transaction():
            yield


def _idle(conn: psycopg.Connection) -> bool:
    """No transaction open on the connection (it is autocommit: a caller's `transaction()` opens one)."""
    return conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


@contextmanager
def _one_snapshot(conn: psycopg.Connection) -> Iterator[None]:
    """A read-only REPEATABLE READ transaction (one snapshot for several queries), unless the caller holds
    a transaction already (then its own)."""
    if not _idle(conn):
        yield
        return
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        yield


def _tuples(conn: psycopg.Connection) -> psycopg.Cursor:
    return conn.cursor(row_factory=tuple_row)


@contextmanager
def _snapshot(location: str) -> Iterator[psycopg.Cursor]:
    """A cursor in one read-only REPEATABLE READ transaction on a connection of its own (one snapshot for
    every statement), rolled back and closed afterwards. Neither creates nor migrates anything."""
    conn = _connect(location, autocommit=False)
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        cursor = conn.cursor()
        cursor.execute("SET LOCAL jit = off")   # JIT compiling costs more than these short queries take
        yield cursor
    finally:
        try:
            conn.rollback()
        finally:
            conn.close()


# --- report jobs ------------------------------------------------------------------------------------

def create_report_job(conn: psycopg.Connection, report_id: str, params: dict) -> None:
    conn.execute("INSERT INTO reports (report_id, status, created_at, params) VALUES (%s, 'Queued', %s, %s)",
                 (report_id, utc_now_iso(), json.dumps(params, sort_keys=True)))


def get_report_job(conn: psycopg.Connection, report_id: str) -> dict | None:
    row = _dicts(conn).execute(f"SELECT {_JOB} FROM reports WHERE report_id = %s", (report_id,)).fetchone()
    return None if row is None else common.job_from_row(row)


def _dicts(conn: psycopg.Connection) -> psycopg.Cursor:
    return conn.cursor(row_factory=dict_row)


def mark_report_running(conn: psycopg.Connection, report_id: str) -> None:
    """Running without an owner or a lease (tests; a job left like this is taken over like a dead one)."""
    conn.execute("UPDATE reports SET status = 'Running', started_at = %s, progress = 0, attempts = attempts + 1 "
                 "WHERE report_id = %s", (utc_now_iso(), report_id))


# As in SQLite: a job waits while Queued, or Running under a lease that ran out (or without one). Leases
# are Unix seconds of the database server's clock (_SERVER_NOW): the hosts' clocks differ.
_SERVER_NOW = "extract(epoch from clock_timestamp())::float8"
_WAITING = "(status = 'Queued' OR (status = 'Running' AND (lease_until IS NULL OR lease_until < {now})))"
_OWNED = "owner = %(owner)s AND status = 'Running'"
_OPEN = "status IN ('Queued', 'Running')"   # not ended yet
# A job a claim may run: a Running one taken over only below its maximum of attempts.
_CLAIMABLE = "(status = 'Queued' OR attempts < %(max)s)"
# The statements of the job flows shared with the other backend (storage/common.py).
_SQL = common.JobStatements(
    end_attempt="UPDATE report_attempts SET ended_at = %(stamp)s, outcome = %(outcome)s "
                "WHERE report_id = %(id)s AND ended_at IS NULL",
    add_attempt="INSERT INTO report_attempts (report_id, attempt, owner, started_at) "
                "VALUES (%(id)s, %(attempt)s, %(owner)s, %(stamp)s)",
    add_duration="INSERT INTO report_durations (finished_at, seconds) VALUES (%(stamp)s, %(seconds)s)",
    start="UPDATE reports SET status = 'Running', owner = %(owner)s, lease_until = %(lease)s, "
          "started_at = %(stamp)s, attempts = attempts + 1 WHERE report_id = %(id)s",
    complete="UPDATE reports SET status = 'Complete', finished_at = %(stamp)s, progress = 1, file = %(file)s, "
             "rows = %(rows)s, as_of = %(as_of)s, seconds = %(seconds)s, timings = %(timings)s, meta = %(meta)s, "
             "error = NULL, lease_until = NULL WHERE report_id = %(id)s",
    fail="UPDATE reports SET status = 'Failed', finished_at = %(stamp)s, error = %(error)s, lease_until = NULL "
         "WHERE report_id = %(id)s")


def claim_report_job(conn: psycopg.Connection, owner: str, lease_seconds: float, *, max_attempts: int,
                     exhausted_error: str) -> dict | None:
    """Take the oldest waiting job for `owner`, atomically across threads, processes and hosts, or None.

    Same contract as SQLite's: Running under a lease of `lease_seconds`, the attempt counted and recorded
    in `report_attempts` (the taken-over attempt closed as 'lease expired'); a taken-over job whose attempts
    reached `max_attempts` is marked Failed with `exhausted_error` instead, and is never claimed again; a
    live lease is never taken. Leases are on the database server's clock. Claims take the job table's
    lock (JOBS_LOCK, as SQLite's BEGIN IMMEDIATE), so they are one step against callers' check-then-act
    blocks; SKIP LOCKED still passes over a row another session holds for a moment (a progress update).
    Inside a caller's transaction, part of it.
    """
    cursor = _dicts(conn)
    waiting = _WAITING.format(now=_SERVER_NOW)
    if cursor.execute(f"SELECT 1 FROM reports WHERE {waiting} LIMIT 1").fetchone() is None:
        return None
    with _jobs(conn):
        now = cursor.execute(f"SELECT {_SERVER_NOW} AS now").fetchone()["now"]
        stamp, waiting = utc_now_iso(), _WAITING.format(now="%(now)s")
        exhausted = cursor.execute(
            "UPDATE reports SET status = 'Failed', finished_at = %(stamp)s, error = %(error)s, lease_until = NULL "
            "WHERE report_id IN (SELECT report_id FROM reports "
            f"  WHERE status = 'Running' AND {waiting} AND attempts >= %(max)s FOR UPDATE SKIP LOCKED) "
            "RETURNING report_id",
            {"stamp": stamp, "error": exhausted_error, "now": now, "max": max_attempts}).fetchall()
        for row in exhausted:
            common.end_attempt(conn, _SQL, row["report_id"], "lease expired", stamp)
        row = cursor.execute(
            "UPDATE reports SET status = 'Running', owner = %(owner)s, lease_until = %(lease)s, "
            "started_at = %(stamp)s, progress = 0, attempts = attempts + 1 "
            f"WHERE report_id = (SELECT report_id FROM reports WHERE {waiting} AND {_CLAIMABLE} "
            "  ORDER BY created_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED) "
            f"RETURNING {_JOB}",
            {"owner": owner, "lease": now + lease_seconds, "stamp": stamp, "now": now, "max": max_attempts}
        ).fetchone()
        return None if row is None else common.record_claim(conn, _SQL, row, owner, stamp)


def renew_report_leases(conn: psycopg.Connection, owner: str, report_ids, lease_seconds: float) -> int:
    """Extend the leases of `owner`'s Running jobs among `report_ids` (to the server's clock + `lease_seconds`);
    returns how many it still holds."""
    ids = list(report_ids)
    if not ids:
        return 0
    return conn.execute(
        f"UPDATE reports SET lease_until = {_SERVER_NOW} + %s "
        "WHERE owner = %s AND status = 'Running' AND report_id = ANY(%s::text[])",
        (float(lease_seconds), owner, ids)).rowcount


def count_queued_report_jobs(conn: psycopg.Connection) -> int:
    return _tuples(conn).execute("SELECT COUNT(*) FROM reports WHERE status = 'Queued'").fetchone()[0]


def set_report_progress(conn: psycopg.Connection, report_id: str, progress: float, owner: str | None = None) -> None:
    conn.execute(f"UPDATE reports SET progress = %(progress)s WHERE report_id = %(id)s{_owned_by(owner)}",
                 {"progress": float(progress), "id": report_id, "owner": owner})


def mark_report_complete(conn: psycopg.Connection, report_id: str, *, file: str, rows: int, as_of: str,
                         seconds: float, timings: dict | None = None, meta: dict | None = None,
                         owner: str | None = None) -> bool:
    """As SQLite's (with `owner` only while it holds the job, else only a job not ended), checked and
    changed under the job table's lock."""
    with _jobs(conn):
        return common.complete_job(conn, _SQL, _owned_by(owner), report_id, owner, file=file, rows=rows, as_of=as_of,
                                   seconds=seconds, timings=timings, meta=meta)


def mark_report_failed(conn: psycopg.Connection, report_id: str, error: str, owner: str | None = None) -> bool:
    """As SQLite's (with `owner` only while it holds the job, else only a job not ended), under the job
    table's lock."""
    with _jobs(conn):
        return common.fail_job(conn, _SQL, _owned_by(owner), report_id, error, owner)


def _owned_by(owner: str | None) -> str:
    """The condition an ending of a job adds: held by `owner`, or (without one) not ended yet."""
    return f" AND {_OPEN}" if owner is None else f" AND {_OWNED}"


def report_attempts(conn: psycopg.Connection, report_id: str | None = None) -> list[dict]:
    """The claims of one job (or of all), in order: attempt, owner, started_at, ended_at, outcome."""
    where, args = ("WHERE report_id = %s", (report_id,)) if report_id else ("", ())
    return [dict(row) for row in _dicts(conn).execute(
        f"SELECT * FROM report_attempts {where} ORDER BY report_id, attempt", args)]


def inspect_report_jobs(location: str) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """Every job row as stored (JSON columns as text, as SQLite's) by id, and every job's attempts in
    order. A plain connection: it neither creates nor migrates anything."""
    with _connect(location, autocommit=True, row_factory=dict_row) as conn:
        return common.job_table(conn.execute(f"SELECT {_JOB} FROM reports").fetchall(), report_attempts(conn))


def waiting_report_jobs(conn: psycopg.Connection) -> list[dict]:
    """Jobs waiting for a worker now (Queued, or Running under a lease that ran out), oldest first."""
    rows = _dicts(conn).execute(f"SELECT {_JOB} FROM reports WHERE {_WAITING.format(now=_SERVER_NOW)} "
                                "ORDER BY created_at, seq").fetchall()
    return [common.job_from_row(row) for row in rows]


def list_report_jobs(conn: psycopg.Connection, *, limit: int, offset: int = 0) -> tuple[list[dict], int]:
    """A page of jobs, newest first, and how many there are in all."""
    total = _tuples(conn).execute("SELECT COUNT(*) FROM reports").fetchone()[0]
    # SQLite reads a negative LIMIT as no limit; PostgreSQL's LIMIT NULL means the same.
    rows = _dicts(conn).execute(
        f"SELECT {_JOB} FROM reports ORDER BY created_at DESC, seq DESC LIMIT %s OFFSET %s",
        (None if limit < 0 else limit, max(offset, 0))).fetchall()
    return [common.job_from_row(row) for row in rows], total


def delete_report_job(conn: psycopg.Connection, report_id: str) -> dict | None:
    """Remove a job, its attempts, kept file and shard results; returns the job as it was (None if none)."""
    with _jobs(conn):
        row = _dicts(conn).execute(f"DELETE FROM reports WHERE report_id = %s RETURNING {_JOB}",
                                   (report_id,)).fetchone()
        for table in ("report_attempts", "report_files", "report_parts"):
            conn.execute(f"DELETE FROM {table} WHERE report_id = %s", (report_id,))
    return None if row is None else common.job_from_row(row)


def store_report_file(conn: psycopg.Connection, report_id: str, body: bytes) -> None:
    """Keep a finished report's CSV in the database (replacing an earlier copy), in the caller's
    transaction if it holds one."""
    conn.execute("INSERT INTO report_files (report_id, body) VALUES (%s, %s) "
                 "ON CONFLICT (report_id) DO UPDATE SET body = excluded.body", (report_id, bytes(body)))


def report_file(conn: psycopg.Connection, report_id: str) -> bytes | None:
    row = _tuples(conn).execute("SELECT body FROM report_files WHERE report_id = %s", (report_id,)).fetchone()
    return None if row is None else bytes(row[0])


def store_report_part(conn: psycopg.Connection, report_id: str, shard: int, shards: int, body: bytes,
                      progress_share: float = 0.9) -> None:
    """Keep one shard's result (a shard run twice is stored once) and set the job's progress to
    `progress_share` times the fraction of its `shards` stored, in one transaction. Only while the job is
    Running (checked under the job table's lock, so not between a merge's check and its completion)."""
    with _jobs(conn):
        conn.execute("INSERT INTO report_parts (report_id, shard, body) SELECT %(id)s, %(shard)s, %(body)s "
                     "WHERE EXISTS (SELECT 1 FROM reports WHERE report_id = %(id)s AND status = 'Running') "
                     "ON CONFLICT (report_id, shard) DO UPDATE SET body = excluded.body",
                     {"id": report_id, "shard": shard, "body": bytes(body)})
        conn.execute("UPDATE reports SET progress = %s::float8 * (SELECT COUNT(*) FROM report_parts "
                     "WHERE report_id = %s) / %s::float8 WHERE report_id = %s AND status = 'Running'",
                     (float(progress_share), report_id, shards, report_id))


def report_parts(conn: psycopg.Connection, report_id: str) -> list[bytes]:
    return [bytes(row[0]) for row in _tuples(conn).execute(
        "SELECT body FROM report_parts WHERE report_id = %s ORDER BY shard", (report_id,))]


def delete_report_parts(conn: psycopg.Connection, report_id: str) -> None:
    conn.execute("DELETE FROM report_parts WHERE report_id = %s", (report_id,))


def finished_report_jobs_before(conn: psycopg.Connection, finished_before: str) -> list[str]:
    return [row[0] for row in _tuples(conn).execute(
        "SELECT report_id FROM reports WHERE status IN ('Complete', 'Failed') AND finished_at < %s",
        (finished_before,))]


def live_report_attempts(conn: psycopg.Connection) -> set[tuple[str, int]]:
    """(report_id, attempt) of the jobs Running under a live lease (on the server's clock)."""
    return {(row[0], row[1]) for row in _tuples(conn).execute(
        f"SELECT report_id, attempts FROM reports WHERE status = 'Running' AND lease_until >= {_SERVER_NOW}")}


# --- writing loads ----------------------------------------------------------------------------------

def _begin_load(conn: psycopg.Connection) -> psycopg.Cursor:
    """In the load's transaction: wait for any other load to end (one at a time, as SQLite's write lock
    makes them), and give the load's sorts and aggregations memory. Returns a tuple-row cursor."""
    cursor = _tuples(conn)
    cursor.execute("SELECT pg_advisory_xact_lock(%s)", (LOAD_LOCK,))
    cursor.execute(f"SET LOCAL work_mem = '{LOAD_WORK_MEM}'")
    return cursor


def _copy_binary(cursor: psycopg.Cursor, statement: str, columns: list[tuple[np.ndarray, str]]) -> None:
    """COPY ... FROM STDIN (FORMAT binary) of equal-length NumPy columns, each with its PostgreSQL binary
    type: 'int8', 'int4', 'int2' or 'bool'. The rows are laid out by NumPy as one structured array (tuple
    header, then length and big-endian value per field), so no Python object is made per row."""
    formats = {"int8": ">i8", "int4": ">i4", "int2": ">i2", "bool": "u1"}
    dtype = np.dtype([("fields", ">i2")] + [item for i, (_, kind) in enumerate(columns)
                                            for item in ((f"size{i}", ">i4"), (f"value{i}", formats[kind]))])
    rows = len(columns[0][0]) if columns else 0
    with cursor.copy(statement) as copy:
        copy.write(b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8)     # signature, flags, header extension length
        for at in range(0, rows, COPY_ROWS):
            size = min(COPY_ROWS, rows - at)
            block = np.empty(size, dtype)
            block["fields"] = len(columns)
            for i, (values, kind) in enumerate(columns):
                block[f"size{i}"] = np.dtype(formats[kind]).itemsize
                block[f"value{i}"] = values[at:at + size]
            copy.write(block.tobytes())
        copy.write(b"\xff\xff")                                   # end of data


def _copy_frame(cursor: psycopg.Cursor, table: str, columns: list[str], frame: pd.DataFrame,
                ordinal: bool = False) -> None:
    """COPY the rows of `frame` (its `columns`, Python values, None = NULL) into `table`; with `ordinal`,
    each row's position first (column `ord`)."""
    values = [frame[column].astype(object).where(frame[column].notna(), None).tolist() for column in columns]
    names = (["ord"] if ordinal else []) + columns
    with cursor.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN") as copy:
        rows = zip(range(len(frame)), *values) if ordinal else zip(*values)
        for row in rows:
            copy.write_row(row)


def _store_keys(cursor: psycopg.Cursor, store_ids: pd.Index) -> np.ndarray:
    """store_key for each id in `store_ids` (unique), adding unknown ids to `stores` in that order with
    keys max + 1, max + 2, ... (as SQLite assigns them). Needs the load lock (see _begin_load)."""
    ids = store_ids.tolist()
    found = dict(cursor.execute("SELECT store_id, store_key FROM stores WHERE store_id = ANY(%s::text[])",
                                (ids,)).fetchall())
    new = [store_id for store_id in ids if store_id not in found]
    if new:
        base = cursor.execute("SELECT COALESCE(MAX(store_key), 0) FROM stores").fetchone()[0]
        with cursor.copy("COPY stores (store_key, store_id) FROM STDIN") as copy:
            for key, store_id in enumerate(new, base + 1):
                copy.write_row((key, store_id))
                found[store_id] = key
    return np.fromiter((found[store_id] for store_id in ids), np.int64, len(ids))


def ingest_store_status(conn: psycopg.Connection, frame: pd.DataFrame, source: str = "<request>") -> TableSummary:
    """As SQLite's (polls appended in one transaction, inactive winning), under the load lock; a load of
    many polls in a transaction of its own is followed by `_tidy`."""
    started = time.perf_counter()
    frame = ingestion._check_columns(frame, "store_status", source)
    summary = ingestion._start_summary(frame, "store_status", source)
    own_transaction = _idle(conn)
    with _write(conn):
        _begin_load(conn)
        load = _StatusLoad(conn, summary)
        load.add(frame, last=True)
        load.finish()
        _record_load(conn, summary, started)
    if own_transaction:
        _tidy(conn, [summary])
    summary.seconds = time.perf_counter() - started
    return summary


def _ingest_status_csv(conn: psycopg.Connection, name: str, data, names: list[str],
                       progress: bool | None = None) -> TableSummary:
    """Stream a status CSV into the caller's transaction (see `ingestion.stream_status_csv`)."""
    started = time.perf_counter()
    summary = ingestion.stream_status_csv(name, data, names, lambda summary, expected: _StatusLoad(conn, summary),
                                          progress=progress)
    _record_load(conn, summary, started)
    summary.seconds = time.perf_counter() - started
    return summary


# The groups of one load: each chunk's rows folded to one row per (store, instant) by ingestion.poll_groups,
# COPYed here as they come. A (store, instant) in several chunks has several rows until finish().
LOAD_GROUPS_TABLE = """CREATE TEMP TABLE load_groups (
    store_key BIGINT NOT NULL, timestamp_us BIGINT NOT NULL,
    has_active BOOLEAN NOT NULL, has_inactive BOOLEAN NOT NULL, rows INTEGER NOT NULL) ON COMMIT DROP"""
# The groups of several chunks folded: one row per (store, instant) of the whole load.
FOLDED_GROUPS = """(SELECT store_key, timestamp_us, bool_or(has_active) AS has_active,
                           bool_or(has_inactive) AS has_inactive, SUM(rows) AS rows
                    FROM load_groups GROUP BY store_key, timestamp_us)"""
# The whole write of a load's polls, in ONE statement, so every part of it sees the database as it was
# before the statement: `polls` is each (store, instant) of the load with `prior`, the status stored
# before the load (NULL: none); the counts come from it, not from what the statement writes.
# The categories (see _categories in storage/sqlite.py): each status the file brings is one row counted,
# its further rows are duplicates. An inactive row is new, changed (stored active) or already stored
# (stored inactive); an active row is conflicting where the instant is inactive (in the file or stored),
# else new or already stored. New polls are inserted (inactive if any row of theirs is; in key order, so
# the primary key index is appended to rather than split all over) and counted in poll_counts; a stored
# active poll an inactive row arrived for is set inactive.
LOAD_WRITE = """
WITH polls AS MATERIALIZED (
    SELECT g.store_key, g.timestamp_us, g.has_active, g.has_inactive, g.rows, {prior} AS prior
    FROM {groups} g {join}{order}
), inserted AS (
    INSERT INTO store_status (store_key, timestamp_us, active)
    SELECT store_key, timestamp_us, (has_active AND NOT has_inactive)::int FROM polls WHERE prior IS NULL
    RETURNING 1
), counted AS (
    INSERT INTO poll_counts (store_key, block, polls)
    SELECT store_key, (timestamp_us - ((timestamp_us % {block_us}) + {block_us}) % {block_us}) / {block_us}, COUNT(*)
    FROM polls WHERE prior IS NULL GROUP BY 1, 2
    ON CONFLICT (store_key, block) DO UPDATE SET polls = poll_counts.polls + excluded.polls
), changed AS (
    UPDATE store_status s SET active = 0 FROM polls p
    WHERE p.prior = 1 AND p.has_inactive AND s.store_key = p.store_key AND s.timestamp_us = p.timestamp_us
    RETURNING 1
)
SELECT COUNT(*) FILTER (WHERE prior IS NULL),
       COUNT(*) FILTER (WHERE (prior = 1 AND has_active AND NOT has_inactive) OR (prior = 0 AND has_inactive)),
       COUNT(*) FILTER (WHERE prior = 1 AND has_inactive),
       COUNT(*) FILTER (WHERE has_active AND (has_inactive OR prior = 0)),
       COALESCE(SUM(rows), 0) - COUNT(*) FILTER (WHERE has_active) - COUNT(*) FILTER (WHERE has_inactive),
       (SELECT COUNT(*) FROM inserted), (SELECT COUNT(*) FROM changed)
FROM polls"""
LOAD_JOIN = "LEFT JOIN store_status s ON s.store_key = g.store_key AND s.timestamp_us = g.timestamp_us"


class _StatusLoad:
    """One file's (or frame's) polls, written into the caller's transaction, with exact counts.

    `add` validates a chunk, folds it to groups (one per store and instant) and COPYs them into the TEMP
    table `load_groups`; nothing else is written until `finish`, which folds the groups several chunks
    brought, joins `store_status` for the status stored before the load, counts and writes (LOAD_WRITE),
    so the counts are exact however the file is cut into chunks.
    Measured at real size (1.85M polls in two chunks, sample_data stores=14000, into an empty database on
    a local PostgreSQL 15 with default settings): 0.6 s to COPY the groups; LOAD_WRITE about 4.5 s, of
    which folding the two chunks 1.1 s, inserting 1.85M rows into store_status and its primary key 2.3 s,
    poll_counts 0.6 s. Reading and validating the CSV (ingestion.py, as for SQLite) takes about 2.5 s.
    Loading the same file again: LOAD_WRITE 1.6 s (the join against store_status; nothing written).
    """

    def __init__(self, conn: psycopg.Connection, summary: TableSummary):
        self.conn, self.summary = conn, summary
        self.cursor = _tuples(conn)
        self.chunks = 0      # chunks that brought valid rows
        self.cursor.execute("DROP TABLE IF EXISTS pg_temp.load_groups")
        self.cursor.execute(LOAD_GROUPS_TABLE)

    def add(self, frame: pd.DataFrame, last: bool) -> None:
        groups = common.chunk_groups(frame, self.summary, lambda uniques: _store_keys(self.cursor, uniques))
        if groups is None:
            return
        keys, micros, has_active, has_inactive, rows = groups
        _copy_binary(self.cursor, "COPY load_groups FROM STDIN (FORMAT binary)",
                     [(keys, "int8"), (micros, "int8"), (has_active, "bool"), (has_inactive, "bool"),
                      (rows, "int4")])
        self.chunks += 1

    def finish(self) -> None:
        cursor = self.cursor
        counts = (0,) * 5
        if self.chunks:
            stored_before = cursor.execute("SELECT EXISTS (SELECT 1 FROM store_status)").fetchone()[0]
            cursor.execute("ANALYZE load_groups")   # TEMP tables have no statistics until analysed
            # Fold by sorting (its order then serves the insert too), not by hashing ~2M distinct keys:
            # measured 1.0 s against 2.1 s at real size. One chunk into an empty table: its groups are
            # already one per (store, instant) and in key order (COPYed sorted), so nothing to do.
            cursor.execute("SELECT set_config('enable_hashagg', 'off', true), set_config('jit', 'off', true)")
            statement = LOAD_WRITE.format(
                groups="load_groups" if self.chunks == 1 else FOLDED_GROUPS, block_us=BLOCK_US,
                prior="s.active" if stored_before else "NULL::smallint",
                join=LOAD_JOIN if stored_before else "",
                order="" if self.chunks == 1 and not stored_before else " ORDER BY g.store_key, g.timestamp_us")
            *counts, inserted, _ = (int(value) for value in cursor.execute(statement).fetchone())
            cursor.execute("RESET enable_hashagg")
            cursor.execute("RESET jit")
            if inserted != counts[0]:   # cannot happen under the load lock: the counts would be wrong
                raise RuntimeError(f"store_status load: {counts[0] - inserted} polls taken for new were stored")
        cursor.execute("DROP TABLE IF EXISTS pg_temp.load_groups")
        for name, count in zip(("new", "already_stored", "changed", "conflicting", "duplicates"), counts):
            setattr(self.summary, name, count)


def _record_load(conn: psycopg.Connection, summary: TableSummary, started: float) -> None:
    """Log what a load of one table said, in the load's own transaction (see `loads`, `metrics_facts`)."""
    common.record_load(conn, "INSERT INTO loads (finished_at, table_name, summary) "
                             "VALUES (%(finished_at)s, %(table)s, %(summary)s)", summary, started)


def ingest_business_hours(conn: psycopg.Connection, frame: pd.DataFrame, source: str = "<request>") -> TableSummary:
    """As SQLite's (every store's rows replaced by the file's), under the load lock, the new rows COPYed."""
    started = time.perf_counter()
    summary, unique = ingestion.business_hours_rows(frame, source)
    with _write(conn):
        cursor = _begin_load(conn)
        stores = pd.unique(unique["store_id"]).tolist()
        ingestion.count_replaced(summary, unique, cursor.execute(
            f"SELECT {', '.join(HOURS_COLUMNS)} FROM business_hours WHERE store_id = ANY(%s::text[])",
            (stores,)).fetchall())
        cursor.execute("DELETE FROM business_hours WHERE store_id = ANY(%s::text[])", (stores,))
        _copy_frame(cursor, "business_hours", HOURS_COLUMNS, unique)
        _record_load(conn, summary, started)
    summary.seconds = time.perf_counter() - started
    return summary


def ingest_timezones(conn: psycopg.Connection, frame: pd.DataFrame, source: str = "<request>") -> TableSummary:
    """As SQLite's (the last row per store wins), under the load lock: an upsert from a COPYed TEMP table."""
    started = time.perf_counter()
    summary, unique = ingestion.timezone_rows(frame, source)
    with _write(conn):
        cursor = _begin_load(conn)
        stored = dict(cursor.execute(
            "SELECT store_id, timezone_str FROM timezones WHERE store_id = ANY(%s::text[])",
            (unique["store_id"].tolist(),)).fetchall())
        ingestion.count_zone_changes(summary, unique, stored)
        cursor.execute("DROP TABLE IF EXISTS pg_temp.load_zones")
        cursor.execute("CREATE TEMP TABLE load_zones (ord BIGINT, store_id TEXT, timezone_str TEXT) ON COMMIT DROP")
        _copy_frame(cursor, "load_zones", ZONE_COLUMNS, unique, ordinal=True)
        # An upsert, in the file's order: a store's row keeps its place (seq), as SQLite's keeps its rowid.
        cursor.execute("INSERT INTO timezones (store_id, timezone_str) SELECT store_id, timezone_str "
                       "FROM load_zones ORDER BY ord "
                       "ON CONFLICT (store_id) DO UPDATE SET timezone_str = excluded.timezone_str")
        cursor.execute("DROP TABLE load_zones")
        _record_load(conn, summary, started)
    summary.seconds = time.perf_counter() - started
    return summary


def ingest_special_hours(conn: psycopg.Connection, frame: pd.DataFrame, source: str = "<request>") -> TableSummary:
    """As SQLite's (the rows of every (store, date) in the file replaced, other dates kept), under the load
    lock, the new rows COPYed."""
    started = time.perf_counter()
    summary, unique = ingestion.special_hours_rows(frame, source)
    pairs = unique[["store_id", "date"]].drop_duplicates()
    in_file = "(store_id, date) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
    arrays = (pairs["store_id"].tolist(), pairs["date"].tolist())
    with _write(conn):
        cursor = _begin_load(conn)
        ingestion.count_replaced(summary, unique, cursor.execute(
            f"SELECT {', '.join(SPECIAL_COLUMNS)} FROM special_hours WHERE {in_file}", arrays).fetchall())
        cursor.execute(f"DELETE FROM special_hours WHERE {in_file}", arrays)
        _copy_frame(cursor, "special_hours", SPECIAL_COLUMNS, unique)
        _record_load(conn, summary, started)
    summary.seconds = time.perf_counter() - started
    return summary


INGEST = {"business_hours": ingest_business_hours, "timezones": ingest_timezones,
          "special_hours": ingest_special_hours}


def load_files(conn: psycopg.Connection, status=None, hours=None, timezones=None, special_hours=None, *,
               progress: bool | None = None, name: str | None = None) -> list[TableSummary]:
    """Load the given CSVs (paths or file-likes; None = skip that table) in ONE transaction.

    As SQLite's: every header is checked and the small tables are read before anything is written
    (`ingestion.open_sources`); the status file then streams in chunks inside the same transaction, so a
    LoadError midway (or any error) leaves the database as it was, other tables of the call included.
    """
    sources = ingestion.open_sources(status, hours, timezones, special_hours, name=name)
    own_transaction = _idle(conn)
    with _write(conn):
        _begin_load(conn)
        summaries = common.load_sources(conn, sources, _ingest_status_csv, INGEST, progress)
    if own_transaction:
        _tidy(conn, summaries)
    return summaries


def _tidy(conn: psycopg.Connection, summaries: list[TableSummary]) -> None:
    """After a committed load that wrote many polls: VACUUM (ANALYZE) the poll tables, so the report's
    index-only scans need not visit the table for visibility (the visibility map is set) and the planner
    knows their size. Autovacuum would get there too, later. Measured at real size (sample_data
    stores=14000): read_report_inputs for all stores 0.69 s straight after a load, 0.49 s after this,
    which costs about 0.3 s of the load's time. Not for small loads: autovacuum handles those."""
    written = sum(s.new + s.changed for s in summaries if s.table == "store_status")
    if written >= VACUUM_AFTER_POLLS:
        conn.execute("VACUUM (ANALYZE) store_status, poll_counts, stores")


def has_polls(conn: psycopg.Connection) -> bool:
    return _tuples(conn).execute("SELECT 1 FROM store_status LIMIT 1").fetchone() is not None


def recent_loads(conn: psycopg.Connection, limit: int = 10) -> list[dict]:
    """The latest load summaries, newest first, each with its `finished_at`."""
    return [{"finished_at": row[0], **json.loads(row[1])} for row in _tuples(conn).execute(
        "SELECT finished_at, summary FROM loads ORDER BY load_id DESC LIMIT %s", (None if limit < 0 else limit,))]


def metrics_facts(conn: psycopg.Connection, report_seconds_buckets) -> dict:
    """What /metrics exposes, in one read (see storage/sqlite.py): jobs by status, cumulative report-duration
    buckets, rows ingested by table and outcome."""
    cursor = _tuples(conn)
    with _one_snapshot(conn):
        jobs = cursor.execute("SELECT status, COUNT(*) FROM reports GROUP BY status").fetchall()
        bounds = [float(bound) for bound in report_seconds_buckets]
        count, total, *at_most = cursor.execute(
            "SELECT COUNT(*), COALESCE(SUM(seconds), 0)"
            + "".join(", COUNT(*) FILTER (WHERE seconds <= %s)" for _ in bounds) + " FROM report_durations",
            bounds).fetchone()
        loads = cursor.execute(f"""
            SELECT table_name,
                   {', '.join(f"SUM((summary::jsonb ->> '{o}')::bigint)" for o in common.LOAD_OUTCOMES)},
                   SUM((SELECT COALESCE(SUM(value::bigint), 0) FROM jsonb_each_text(summary::jsonb -> 'rejected')))
            FROM loads GROUP BY table_name""").fetchall()
    return common.metrics_facts(jobs, list(report_seconds_buckets), count, total, at_most, loads)


# --- the report's reads -------------------------------------------------------------------------------

def _chosen_stores(store_ids: list[str] | None, key_range: tuple[int, int] | None) -> tuple[str, dict]:
    """The `chosen` CTE (the stores a report is about) and its named parameters."""
    where, params = [], {}
    if store_ids is not None:
        where.append("store_id = ANY(%(store_ids)s::text[])")
        params["store_ids"] = [str(store_id) for store_id in store_ids]
    if key_range is not None:
        where.append("store_key BETWEEN %(low)s AND %(high)s")
        params["low"], params["high"] = (int(bound) for bound in key_range)
    clause = "" if not where else " WHERE " + " AND ".join(where)
    return f"WITH chosen AS (SELECT store_key, store_id FROM stores{clause})", params


def _latest_poll_us(cursor: psycopg.Cursor) -> int | None:
    """The latest poll of any store: one backward index seek per store."""
    latest = cursor.execute("""SELECT MAX(l.t) FROM stores s CROSS JOIN LATERAL (
        SELECT p.timestamp_us AS t FROM store_status p WHERE p.store_key = s.store_key
        ORDER BY p.timestamp_us DESC LIMIT 1) l""").fetchone()[0]
    return None if latest is None else int(latest)


def plan_report_shards(location: str, *, shard_stores: int, shard_polls: int | None = None,
                       min_shards: int = 1, lookback_us: int = BLOCK_US, as_of_us: int | None = None,
                       store_ids: list[str] | None = None) -> tuple[int | None, list[tuple[int, int]]]:
    """The report's now (as_of, or the latest poll; None without polls) and store_key ranges [low, high]
    (inclusive) of at most `shard_stores` chosen stores and about `shard_polls` polls in [now - lookback,
    now] each (storage.cut_shards), in key order, in one snapshot.

    A store's polls in the window are estimated as SQLite estimates them, from the polls of each week-long
    block (`poll_counts` here, the lengths of `poll_blocks` there) prorated by how much of the block lies
    in the window, in the same floating-point arithmetic: the same data gives the same plan on both.
    """
    chosen, params = _chosen_stores(store_ids, None)
    with _snapshot(location) as cursor:
        now_us = _latest_poll_us(cursor) if as_of_us is None else as_of_us
        keys = [key for key, in cursor.execute(f"{chosen} SELECT store_key FROM chosen ORDER BY store_key", params)]
        counted = np.empty((0, 2))
        if shard_polls is not None and now_us is not None and keys:
            start = now_us - lookback_us
            counted = np.array(cursor.execute(f"""
                SELECT store_key, SUM(polls::float8
                       * (LEAST(%(end)s, (block + 1) * {BLOCK_US}) - GREATEST(%(start)s, block * {BLOCK_US}))
                       / {BLOCK_US})
                FROM poll_counts WHERE block BETWEEN %(first)s AND %(last)s GROUP BY store_key""",
                {"start": start, "end": now_us, "first": start // BLOCK_US, "last": now_us // BLOCK_US}
            ).fetchall(), dtype=np.float64).reshape(-1, 2)
    return now_us, cut_shards(keys, common.polls_per_key(keys, counted), shard_stores=shard_stores,
                              shard_polls=shard_polls, min_shards=min_shards)


def read_report_inputs(location: str, *, lookback_us: int, as_of_us: int | None = None,
                       store_ids: list[str] | None = None,
                       key_range: tuple[int, int] | None = None) -> ReportInputs:
    """The polls, hours, timezones and special hours a report at `as_of_us` (default: the latest poll)
    depends on, in one read-only REPEATABLE READ snapshot: the same frames as storage/sqlite.py returns.

    Polls: those in [now - lookback, now] plus each store's latest poll before that, read per chosen store
    with two LATERAL index range scans: the week's polls packed server-side into one bytea of big-endian
    int64s (timestamp_us * 2 + active) per store, which NumPy takes over without a Python object per poll,
    and the poll before the week (ORDER BY timestamp_us DESC LIMIT 1).

    Measured for a week of 1.6M polls of 14,000 stores (sample_data.generate_dataset(stores=14000), a local
    PostgreSQL 15 with default settings over a Unix socket, 2 CPUs): 0.48 s for all stores, as_of=None
    (SQLite: 0.22 s): the polls query 0.27 s, the 86k business-hours rows 0.09 s, finding the latest poll
    0.06 s. Straight after a load, before the visibility map is set (see _tidy): 0.69 s. Tried and slower:
    one row per poll by binary COPY, 0.85 s (mostly Python handling one COPY message per row); an ORDER BY
    inside the aggregate, 0.45 s for the polls query (the subquery's index order is used instead, and
    checked here).
    """
    chosen, params = _chosen_stores(store_ids, key_range)
    every_store = store_ids is None and key_range is None
    with _snapshot(location) as cursor:
        now_us = _latest_poll_us(cursor) if as_of_us is None else int(as_of_us)
        if now_us is None:
            return common.empty_report_inputs()
        week_start = now_us - int(lookback_us)
        args = {**params, "start": week_start, "now": now_us}
        stores = cursor.execute(f"{chosen} SELECT store_key, store_id FROM chosen ORDER BY store_key", params
                                ).fetchall()
        rows = _binary_rows(cursor, f"""{chosen}
            SELECT s.store_key, b.packed, w.polls FROM chosen s
            LEFT JOIN LATERAL (
                SELECT p.timestamp_us * 2 + p.active AS packed FROM store_status p
                WHERE p.store_key = s.store_key AND p.timestamp_us < %(start)s
                ORDER BY p.timestamp_us DESC LIMIT 1) b ON true
            LEFT JOIN LATERAL (
                SELECT string_agg(int8send(q.packed), ''::bytea) AS polls FROM (
                    SELECT p.timestamp_us * 2 + p.active AS packed FROM store_status p
                    WHERE p.store_key = s.store_key AND p.timestamp_us BETWEEN %(start)s AND %(now)s
                    ORDER BY p.timestamp_us) q) w ON true
            WHERE b.packed IS NOT NULL OR w.polls IS NOT NULL
            ORDER BY s.store_key""", args)
        # Hours, zones and special hours of the chosen stores, in the order SQLite's plans give them:
        # insertion order for every store; else by store_id (a store list) or store_key (a key range).
        if every_store:
            order, special_order = "h.seq", "h.seq"
            source = "{table} h"
        else:
            by = "s.store_id COLLATE \"C\"" if store_ids is not None else "s.store_key"
            order, special_order = f"{by}, h.seq", f"{by}, h.date COLLATE \"C\", h.seq"
            source = "chosen s JOIN {table} h ON h.store_id = s.store_id"
        prefix = "" if every_store else chosen
        hours_rows = cursor.execute(f"""{prefix} SELECT {', '.join('h.' + c for c in HOURS_COLUMNS)}
            FROM {source.format(table='business_hours')} ORDER BY {order}""", params).fetchall()
        zone_rows = cursor.execute(f"""{prefix} SELECT {', '.join('h.' + c for c in ZONE_COLUMNS)}
            FROM {source.format(table='timezones')} ORDER BY {order}""", params).fetchall()
        special_rows = cursor.execute(f"""{prefix} SELECT {', '.join('h.' + c for c in SPECIAL_COLUMNS)}
            FROM {source.format(table='special_hours')} ORDER BY {special_order}""", params).fetchall()

    row_keys = np.fromiter((row[0] for row in rows), np.int64, len(rows))
    has_before = np.fromiter((row[1] is not None for row in rows), bool, len(rows))
    before_keys = row_keys[has_before]
    before = np.fromiter((row[1] for row in rows if row[1] is not None), np.int64, int(has_before.sum()))
    blobs = [row[2] or b"" for row in rows]
    packed = np.frombuffer(b"".join(blobs), dtype=">i8").astype(np.int64)
    block_keys = np.repeat(row_keys, np.fromiter((len(blob) // 8 for blob in blobs), np.int64, len(blobs)))
    if len(packed) > 1:
        same_store = block_keys[1:] == block_keys[:-1]
        if np.any(same_store & ((packed[1:] >> 1) <= (packed[:-1] >> 1))):   # not in time order: sort
            order_ = np.lexsort((packed >> 1, block_keys))
            block_keys, packed = block_keys[order_], packed[order_]
    return common.report_inputs(now_us, stores, block_keys, packed, before_keys, before, hours_rows, zone_rows,
                                special_rows)


def _binary_rows(cursor: psycopg.Cursor, statement: str, params: dict) -> list[tuple]:
    """The rows of `statement` in binary format (bytea arrives as bytes without hex decoding)."""
    with cursor.connection.cursor(binary=True) as binary:
        return binary.execute(statement, params).fetchall()


def first_poll_us(location: str) -> int | None:
    """The earliest poll of any store (UTC microseconds), None without polls: one index seek per store."""
    with _snapshot(location) as cursor:
        first = cursor.execute("""SELECT MIN(f.t) FROM stores s CROSS JOIN LATERAL (
            SELECT p.timestamp_us AS t FROM store_status p WHERE p.store_key = s.store_key
            ORDER BY p.timestamp_us LIMIT 1) f""").fetchone()[0]
    return None if first is None else int(first)


# --- the service's other reads, and job starts by cluster workers ---------------------------------------

START_LOCK = 0x736D5F7374617274     # 'sm_start'


@contextmanager
def start_up_lock(location: str) -> Iterator[None]:
    """Held while a starting service creates the schema and loads a first data set, so that processes
    starting together, on any hosts, take turns: a session advisory lock on a connection of its own."""
    with _connect(location, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (START_LOCK,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (START_LOCK,))


def check_writable(conn: psycopg.Connection) -> None:
    """Raise unless this connection can write: a server that is read-only (a standby, or
    default_transaction_read_only) or unreachable fails; a write statement that changes nothing is rolled
    back. Row locks held by others do not matter (it touches no row)."""
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL statement_timeout = 1000")
        conn.execute("DELETE FROM reports WHERE false")


def latest_complete_report_id(conn: psycopg.Connection) -> str | None:
    row = _tuples(conn).execute("SELECT report_id FROM reports WHERE status = 'Complete' "
                                "ORDER BY created_at DESC, seq DESC LIMIT 1").fetchone()
    return None if row is None else row[0]


def find_stores(conn: psycopg.Connection, text: str, limit: int) -> tuple[int, list[tuple]]:
    """Polled stores whose id contains `text` (case-insensitive), those starting with it first, then by id
    (byte order, as SQLite's): (how many match, [(store_id, has business hours, timezone_str or None)])."""
    pattern, prefix = "%" + common.like_pattern(text) + "%", common.like_pattern(text) + "%"
    cursor = _tuples(conn)
    with _one_snapshot(conn):
        total = cursor.execute("SELECT COUNT(*) FROM stores WHERE store_id ILIKE %s", (pattern,)).fetchone()[0]
        rows = cursor.execute("""
            SELECT s.store_id,
                   EXISTS (SELECT 1 FROM business_hours h WHERE h.store_id = s.store_id),
                   (SELECT z.timezone_str FROM timezones z WHERE z.store_id = s.store_id)
            FROM stores s WHERE s.store_id ILIKE %(pattern)s
            ORDER BY s.store_id ILIKE %(prefix)s DESC, s.store_id COLLATE "C" LIMIT %(limit)s""",
                              {"pattern": pattern, "prefix": prefix, "limit": limit}).fetchall()
    return common.found_stores(total, rows)


def store_records(conn: psycopg.Connection, store_id: str) -> dict:
    """What the tables hold for one store: {"polled": bool, "weekly": [(day, start, end)], "timezone":
    (None: no row), "has_zone_row": bool, "special": [(date, start, end)]}, rows in day/date order."""
    cursor = _tuples(conn)
    with _one_snapshot(conn):
        polled = cursor.execute("SELECT 1 FROM stores WHERE store_id = %s", (store_id,)).fetchone() is not None
        weekly = cursor.execute("SELECT day_of_week, start_time_local, end_time_local FROM business_hours "
                                "WHERE store_id = %s ORDER BY day_of_week, start_time_local COLLATE \"C\"",
                                (store_id,)).fetchall()
        zone = cursor.execute("SELECT timezone_str FROM timezones WHERE store_id = %s", (store_id,)).fetchone()
        special = cursor.execute("SELECT date, start_time_local, end_time_local FROM special_hours WHERE "
                                 "store_id = %s ORDER BY date COLLATE \"C\", start_time_local COLLATE \"C\" NULLS FIRST",
                                 (store_id,)).fetchall()
    return common.store_record(polled, weekly, zone, special)


def data_facts(conn: psycopg.Connection, loads: int) -> dict:
    """What the database holds, in one snapshot: stores (polled), polls, first_us and last_us, stores
    without hours, [(trimmed zone text, stores)], special rows and their stores, stores not polled (hours or
    zone only), and the latest `loads` load summaries."""
    cursor = _tuples(conn)
    with _one_snapshot(conn):
        stores = cursor.execute("SELECT COUNT(*) FROM stores").fetchone()[0]
        polls = cursor.execute("SELECT COALESCE(SUM(polls), 0) FROM poll_counts").fetchone()[0]
        first, last = cursor.execute("""
            SELECT MIN(f.t), MAX(l.t) FROM stores s
            CROSS JOIN LATERAL (SELECT p.timestamp_us AS t FROM store_status p WHERE p.store_key = s.store_key
                                ORDER BY p.timestamp_us LIMIT 1) f
            CROSS JOIN LATERAL (SELECT p.timestamp_us AS t FROM store_status p WHERE p.store_key = s.store_key
                                ORDER BY p.timestamp_us DESC LIMIT 1) l""").fetchone()
        without_hours = cursor.execute(common.FACTS_WITHOUT_HOURS).fetchone()[0]
        zones = cursor.execute(common.FACTS_ZONES).fetchall()
        special_rows, special_stores = cursor.execute(common.FACTS_SPECIAL).fetchone()
        not_polled = cursor.execute(common.FACTS_NOT_POLLED).fetchone()[0]
        recent = recent_loads(conn, limit=loads)
    return common.data_facts(stores, polls, first, last, without_hours, zones, special_rows, special_stores,
                             not_polled, recent)


def start_report_attempt(conn: psycopg.Connection, report_id: str, owner: str, *, lease_until: float,
                         max_attempts: int, exhausted_error: str, owner_prefix: str) -> dict | None:
    """Start a job for a worker that was handed it (cluster mode: a Celery start task), not one that
    claimed it from the table (see storage/sqlite.py's for the whole contract)."""
    with _jobs(conn):    # the job table's lock: two deliveries of one start task take turns, count two attempts
        return common.start_attempt(conn, _SQL, report_id, owner, lease_until=lease_until, max_attempts=max_attempts,
                                    exhausted_error=exhausted_error, owner_prefix=owner_prefix)
