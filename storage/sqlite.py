"""The SQLite storage backend (the embedded default): schema, connections, report-job records, writing
loads and the report's reads. Validation is shared with the other backends (ingestion.py); the operations
every backend provides are listed in storage/__init__.py.

Layout chosen for the report's hot path (reading a week of polls):
- `stores` maps each opaque `store_id` text to a small integer `store_key`; polls store the key.
- `store_status` is a WITHOUT ROWID table clustered on (store_key, timestamp_us): one poll per store and
  instant by construction, and "the last poll of store S before t" is one index seek. There is
  deliberately no secondary index on time: measured on 1.86M polls it doubled the ingest time.
- `poll_blocks` holds the same polls again, one row per store and week with the polls packed as int64s,
  rewritten in the transaction that writes them: a report reads ~28k rows instead of 1.6M.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

import ingestion
from ingestion import TableSummary
from storage import (HOURS_COLUMNS, SPECIAL_COLUMNS, ZONE_COLUMNS, ReportInputs, common, cut_shards, sqlite_path,
                     utc_now_iso)

SCHEMA = """
CREATE TABLE IF NOT EXISTS stores (
    store_key INTEGER PRIMARY KEY,
    store_id  TEXT NOT NULL UNIQUE
);
CREATE TABLE IF NOT EXISTS store_status (
    store_key    INTEGER NOT NULL REFERENCES stores(store_key),
    timestamp_us INTEGER NOT NULL,               -- UTC, microseconds since the Unix epoch
    active       INTEGER NOT NULL CHECK (active IN (0, 1)),
    PRIMARY KEY (store_key, timestamp_us)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS poll_blocks (
    store_key    INTEGER NOT NULL REFERENCES stores(store_key),
    block        INTEGER NOT NULL,               -- floor(timestamp_us / BLOCK_US): 7-day blocks since the epoch
    polls        BLOB NOT NULL,                  -- the block's polls: int64 little-endian, timestamp_us * 2 + active
    PRIMARY KEY (store_key, block)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS business_hours (
    store_id         TEXT NOT NULL,
    day_of_week      INTEGER NOT NULL CHECK (day_of_week BETWEEN 0 AND 6),
    start_time_local TEXT NOT NULL,              -- 'HH:MM:SS' or 'HH:MM:SS.ffffff', local wall clock
    end_time_local   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS business_hours_by_store ON business_hours (store_id);
CREATE TABLE IF NOT EXISTS timezones (
    store_id     TEXT PRIMARY KEY,
    timezone_str TEXT
);
CREATE TABLE IF NOT EXISTS special_hours (      -- optional: a date's hours replace its weekday's
    store_id         TEXT NOT NULL,
    date             TEXT NOT NULL,              -- local calendar date 'YYYY-MM-DD'
    start_time_local TEXT,                       -- 'HH:MM:SS[.f]'; both NULL: closed that date
    end_time_local   TEXT,
    CHECK ((start_time_local IS NULL) = (end_time_local IS NULL))
);
CREATE INDEX IF NOT EXISTS special_hours_by_store ON special_hours (store_id, date);
CREATE TABLE IF NOT EXISTS reports (
    report_id   TEXT PRIMARY KEY,
    status      TEXT NOT NULL CHECK (status IN ('Queued', 'Running', 'Complete', 'Failed')),
    created_at  TEXT NOT NULL,
    started_at  TEXT,
    finished_at TEXT,
    params      TEXT NOT NULL DEFAULT '{}',      -- JSON: as_of, store_ids, columns as requested
    as_of       TEXT,                            -- the report's `now`, ISO 8601 UTC, once known
    rows        INTEGER,
    seconds     REAL,
    timings     TEXT,                            -- JSON: seconds spent in load / compute / write
    meta        TEXT,                            -- JSON: store counts, defaulted/unknown timezones
    progress    REAL NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    file        TEXT,                            -- file name inside the reports directory
    owner       TEXT,                            -- the worker pool (host:pid:token) that claimed it last
    lease_until REAL                             -- Unix seconds; a Running job past it is taken over
);
CREATE INDEX IF NOT EXISTS reports_by_status ON reports (status);
CREATE TABLE IF NOT EXISTS report_durations (   -- one row per completed report, kept when the report is
    finished_at TEXT NOT NULL,                   -- deleted: /metrics' report-seconds histogram only grows
    seconds     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS loads (              -- one row per table of each load, written in its transaction
    load_id     INTEGER PRIMARY KEY,
    finished_at TEXT NOT NULL,                   -- ISO 8601 UTC
    table_name  TEXT NOT NULL,
    summary     TEXT NOT NULL                    -- JSON: TableSummary.to_dict()
);
CREATE TABLE IF NOT EXISTS report_files (      -- finished reports kept in the database (see store_report_file)
    report_id TEXT PRIMARY KEY,
    body      BLOB NOT NULL                     -- the CSV file's bytes
);
CREATE TABLE IF NOT EXISTS report_parts (      -- cluster mode: each shard's computed rows until the merge
    report_id TEXT NOT NULL,
    shard     INTEGER NOT NULL,
    body      BLOB NOT NULL,                    -- the shard's rows and metadata (see cluster.py)
    PRIMARY KEY (report_id, shard)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS report_attempts (    -- one row per claim of a job: who ran it, how it ended
    report_id  TEXT NOT NULL,
    attempt    INTEGER NOT NULL,                -- reports.attempts after the claim
    owner      TEXT NOT NULL,
    started_at TEXT NOT NULL,
    ended_at   TEXT,
    outcome    TEXT,                            -- Complete, Failed, or 'lease expired' (its process died)
    PRIMARY KEY (report_id, attempt)
) WITHOUT ROWID;
"""

BUSY_TIMEOUT_MS = 30_000
BLOCK_US = 7 * 86_400_000_000  # polls are also kept in blocks of a week per store (see _rebuild_poll_blocks)
REBUILD_CHUNK = 4096           # (store, block) rows rewritten per statement
BULK_CACHE_KIB = 256 * 1024   # page cache while loading (PRAGMA cache_size, KiB)

# Polls are written as one JSON array per store: each element is timestamp_us * 2 + active, so SQLite
# unpacks the rows in C instead of Python binding 1.85M parameter tuples (measured 4.1 s -> 2.2 s including
# the JSON encoding). `_StatusLoad` inserts only polls it knows are not stored (DO NOTHING is a safety
# net) and runs STATUS_MAKE_INACTIVE only for stored active polls an inactive row overrides.
STATUS_INSERT = (
    "INSERT INTO store_status (store_key, timestamp_us, active) "
    "SELECT ?1, value >> 1, value & 1 FROM json_each(?2) WHERE true "
    "ON CONFLICT (store_key, timestamp_us) DO NOTHING"
)
STATUS_MAKE_INACTIVE = (
    "UPDATE store_status SET active = 0 "
    "WHERE store_key = ?1 AND active = 1 AND timestamp_us IN (SELECT value >> 1 FROM json_each(?2))"
)


def connect(location: str | Path) -> sqlite3.Connection:
    """A connection for one thread: WAL (readers never block the writer), a busy timeout, the schema.

    Autocommit mode (isolation_level=None): callers open transactions explicitly with `transaction()`,
    so a load is one transaction and a failed load leaves the database as it was.
    """
    path = sqlite_path(location)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    _use_wal(conn)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executescript(SCHEMA)
    _add_missing_columns(conn)
    _fill_poll_blocks(conn)
    return conn


def _use_wal(conn: sqlite3.Connection) -> None:
    """Switch a new database to WAL. Changing the journal mode does not wait on SQLite's busy handler: when
    several processes open a new file at once, all but one get 'database is locked' at once (seen: 11 of
    200 rounds of 6 threads). Retry until the busy timeout, like any other statement would wait."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Columns added to the schema after a database was created (CREATE IF NOT EXISTS leaves it as is)."""
    added = {"meta": "TEXT", "owner": "TEXT", "lease_until": "REAL"}

    def missing() -> list[str]:
        report_columns = {row["name"] for row in conn.execute("PRAGMA table_info(reports)")}
        return [name for name in added if name not in report_columns]

    if missing():
        with transaction(conn):  # several processes may open an old database at once: one migrates
            for name in missing():
                conn.execute(f"ALTER TABLE reports ADD COLUMN {name} {added[name]}")


@contextmanager
def transaction(conn: sqlite3.Connection, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (then re-raised). Inside a transaction of
    the same connection it raises sqlite3.OperationalError ("cannot start a transaction within a
    transaction"); the backend's own operations join the caller's transaction instead (`_write`)."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def _write(conn: sqlite3.Connection, immediate: bool = True) -> Iterator[None]:
    """One transaction, unless the caller already holds one (then its transaction is the unit): what the
    backend's operations run in, so that they join a caller's transaction instead of failing in it."""
    if conn.in_transaction:
        yield
    else:
        with transaction(conn, immediate):
            yield


def _snapshot(conn: sqlite3.Connection):
    """One read transaction (one snapshot for several queries), unless the caller holds one already."""
    return _write(conn, immediate=False)


# --- report jobs ------------------------------------------------------------------------------------

def create_report_job(conn: sqlite3.Connection, report_id: str, params: dict) -> None:
    conn.execute(
        "INSERT INTO reports (report_id, status, created_at, params) VALUES (?, 'Queued', ?, ?)",
        (report_id, utc_now_iso(), json.dumps(params, sort_keys=True)),
    )


def get_report_job(conn: sqlite3.Connection, report_id: str) -> dict | None:
    row = conn.execute("SELECT * FROM reports WHERE report_id = ?", (report_id,)).fetchone()
    return None if row is None else common.job_from_row(row)


def mark_report_running(conn: sqlite3.Connection, report_id: str) -> None:
    """Running without an owner or a lease (tests; a job left like this is taken over like a dead one)."""
    conn.execute(
        "UPDATE reports SET status = 'Running', started_at = ?, progress = 0, attempts = attempts + 1 "
        "WHERE report_id = ?",
        (utc_now_iso(), report_id),
    )


# A job waits for a worker while it is Queued, or Running under a lease that ran out: the process that
# claimed it died (or stopped renewing). Leases are Unix seconds of the machine's clock; a Running job
# without a lease (left by a version before leases) counts as run out. `:now` is bound by the caller.
_WAITING = "(status = 'Queued' OR (status = 'Running' AND (lease_until IS NULL OR lease_until < :now)))"
_OWNED = "owner = :owner AND status = 'Running'"
_OPEN = "status IN ('Queued', 'Running')"   # not ended yet
# A job a claim may run: a Running one taken over only below its maximum of attempts (`:max`).
_CLAIMABLE = "(status = 'Queued' OR attempts < :max)"
# The statements of the job flows shared with the other backend (storage/common.py).
_SQL = common.JobStatements(
    end_attempt="UPDATE report_attempts SET ended_at = :stamp, outcome = :outcome "
                "WHERE report_id = :id AND ended_at IS NULL",
    add_attempt="INSERT INTO report_attempts (report_id, attempt, owner, started_at) "
                "VALUES (:id, :attempt, :owner, :stamp)",
    add_duration="INSERT INTO report_durations (finished_at, seconds) VALUES (:stamp, :seconds)",
    start="UPDATE reports SET status = 'Running', owner = :owner, lease_until = :lease, started_at = :stamp, "
          "attempts = attempts + 1 WHERE report_id = :id",
    complete="UPDATE reports SET status = 'Complete', finished_at = :stamp, progress = 1, file = :file, rows = :rows, "
             "as_of = :as_of, seconds = :seconds, timings = :timings, meta = :meta, error = NULL, lease_until = NULL "
             "WHERE report_id = :id",
    fail="UPDATE reports SET status = 'Failed', finished_at = :stamp, error = :error, lease_until = NULL "
         "WHERE report_id = :id")


def claim_report_job(conn: sqlite3.Connection, owner: str, lease_seconds: float, *, max_attempts: int,
                     exhausted_error: str) -> dict | None:
    """Take the oldest waiting job for `owner`, atomically across threads and processes, or None.

    The claim sets the job Running under a lease of `lease_seconds` and counts the attempt; a job taken
    over from a dead process whose attempts already reached `max_attempts` is marked Failed with
    `exhausted_error` instead. A job whose lease is live is never taken. Each claim is also recorded in
    `report_attempts`, and the attempt it took over is closed there as 'lease expired'. A job whose
    attempts reached `max_attempts` is never claimed again. Inside a caller's transaction, part of it.
    """
    # A read first (WAL: no lock), so idle workers polling the table do not queue for the write lock.
    if conn.execute(f"SELECT 1 FROM reports WHERE {_WAITING} LIMIT 1", {"now": time.time()}).fetchone() is None:
        return None
    with _write(conn):  # BEGIN IMMEDIATE: one claimer at a time; `now` is read once the lock is held
        now, stamp = time.time(), utc_now_iso()
        exhausted = conn.execute(
            "UPDATE reports SET status = 'Failed', finished_at = :stamp, error = :error, lease_until = NULL "
            f"WHERE status = 'Running' AND {_WAITING} AND attempts >= :max RETURNING report_id",
            {"stamp": stamp, "error": exhausted_error, "now": now, "max": max_attempts}).fetchall()
        for row in exhausted:
            common.end_attempt(conn, _SQL, row["report_id"], "lease expired", stamp)
        rows = conn.execute(
            "UPDATE reports SET status = 'Running', owner = :owner, lease_until = :lease, started_at = :stamp, "
            "progress = 0, attempts = attempts + 1 "
            f"WHERE report_id = (SELECT report_id FROM reports WHERE {_WAITING} AND {_CLAIMABLE} "
            "ORDER BY created_at, rowid LIMIT 1) RETURNING *",
            {"owner": owner, "lease": now + lease_seconds, "stamp": stamp, "now": now, "max": max_attempts}
        ).fetchall()
        return common.record_claim(conn, _SQL, rows[0], owner, stamp) if rows else None


def renew_report_leases(conn: sqlite3.Connection, owner: str, report_ids, lease_seconds: float) -> int:
    """Extend the leases of `owner`'s Running jobs among `report_ids`; returns how many it still holds."""
    ids = list(report_ids)
    if not ids:
        return 0
    marks = ", ".join("?" * len(ids))
    cursor = conn.execute(
        f"UPDATE reports SET lease_until = ? WHERE owner = ? AND status = 'Running' AND report_id IN ({marks})",
        (time.time() + lease_seconds, owner, *ids))
    return cursor.rowcount


def count_queued_report_jobs(conn: sqlite3.Connection) -> int:
    """Jobs waiting for their first run, in every process on this database (the queue's depth)."""
    return conn.execute("SELECT COUNT(*) FROM reports WHERE status = 'Queued'").fetchone()[0]


def set_report_progress(conn: sqlite3.Connection, report_id: str, progress: float, owner: str | None = None) -> None:
    """Record progress; with `owner`, only while that owner holds the job."""
    conn.execute(f"UPDATE reports SET progress = :progress WHERE report_id = :id{_owned_by(owner)}",
                 {"progress": float(progress), "id": report_id, "owner": owner})


def mark_report_complete(conn: sqlite3.Connection, report_id: str, *, file: str, rows: int, as_of: str,
                         seconds: float, timings: dict | None = None, meta: dict | None = None,
                         owner: str | None = None) -> bool:
    """Complete the job; with `owner`, only if that owner still holds it, else only if it has not ended
    (Queued or Running). Returns whether it did."""
    with _write(conn):
        return common.complete_job(conn, _SQL, _owned_by(owner), report_id, owner, file=file, rows=rows, as_of=as_of,
                                   seconds=seconds, timings=timings, meta=meta)


def mark_report_failed(conn: sqlite3.Connection, report_id: str, error: str, owner: str | None = None) -> bool:
    """Fail the job; with `owner`, only if that owner still holds it, else only if it has not ended (Queued
    or Running). Returns whether it did."""
    with _write(conn):
        return common.fail_job(conn, _SQL, _owned_by(owner), report_id, error, owner)


def _owned_by(owner: str | None) -> str:
    """The condition an ending of a job adds: held by `owner`, or (without one) not ended yet."""
    return f" AND {_OPEN}" if owner is None else f" AND {_OWNED}"


def report_attempts(conn: sqlite3.Connection, report_id: str | None = None) -> list[dict]:
    """The claims of one job (or of all), in order: attempt, owner, started_at, ended_at, outcome."""
    where, args = ("WHERE report_id = ?", (report_id,)) if report_id else ("", ())
    return [dict(row) for row in conn.execute(
        f"SELECT * FROM report_attempts {where} ORDER BY report_id, attempt", args)]


def inspect_report_jobs(location: str | Path) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """A live service's job table as stored, for watching it from outside (the soak run, the process
    tests): every job row by id, and every job's attempts in order. A plain read-only connection: it
    neither creates nor migrates anything in the database it looks at."""
    conn = sqlite3.connect(sqlite_path(location), timeout=BUSY_TIMEOUT_MS / 1000)
    conn.row_factory = sqlite3.Row
    try:
        return common.job_table(conn.execute("SELECT * FROM reports").fetchall(), report_attempts(conn))
    finally:
        conn.close()


def waiting_report_jobs(conn: sqlite3.Connection) -> list[dict]:
    """Jobs waiting for a worker now (Queued, or Running under a lease that ran out), oldest first."""
    rows = conn.execute(f"SELECT * FROM reports WHERE {_WAITING} ORDER BY created_at, rowid",
                        {"now": time.time()}).fetchall()
    return [common.job_from_row(row) for row in rows]


def list_report_jobs(conn: sqlite3.Connection, *, limit: int, offset: int = 0) -> tuple[list[dict], int]:
    """A page of jobs, newest first, and how many there are in all."""
    total = conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0]
    rows = conn.execute("SELECT * FROM reports ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?",
                        (limit, offset)).fetchall()
    return [common.job_from_row(row) for row in rows], total


def delete_report_job(conn: sqlite3.Connection, report_id: str) -> dict | None:
    """Remove a job and its attempts; returns the job as it was (None if there was none). A run still
    going on loses its job: it cannot record an end, so its result is discarded like a lost lease's."""
    with _write(conn):
        row = conn.execute("DELETE FROM reports WHERE report_id = ? RETURNING *", (report_id,)).fetchone()
        conn.execute("DELETE FROM report_attempts WHERE report_id = ?", (report_id,))
        conn.execute("DELETE FROM report_files WHERE report_id = ?", (report_id,))
        conn.execute("DELETE FROM report_parts WHERE report_id = ?", (report_id,))
    return None if row is None else common.job_from_row(row)


def store_report_file(conn: sqlite3.Connection, report_id: str, body: bytes) -> None:
    """Keep a finished report's CSV in the database (replacing an earlier copy), in the caller's transaction
    if it holds one: every process serving this database can then send it."""
    conn.execute("INSERT INTO report_files (report_id, body) VALUES (?, ?) "
                 "ON CONFLICT (report_id) DO UPDATE SET body = excluded.body", (report_id, body))


def report_file(conn: sqlite3.Connection, report_id: str) -> bytes | None:
    """A report's CSV as kept by store_report_file, or None."""
    row = conn.execute("SELECT body FROM report_files WHERE report_id = ?", (report_id,)).fetchone()
    return None if row is None else bytes(row[0])


def store_report_part(conn: sqlite3.Connection, report_id: str, shard: int, shards: int, body: bytes,
                      progress_share: float = 0.9) -> None:
    """Keep one shard's result (replacing an earlier copy: a shard run twice is stored once) and set the
    job's progress to `progress_share` times the fraction of its `shards` stored, in one transaction. Only
    while the job is Running: a shard delivered again after the merge, or after the job was deleted,
    stores nothing."""
    with _write(conn):
        conn.execute("INSERT INTO report_parts (report_id, shard, body) SELECT ?1, ?2, ?3 "
                     "WHERE EXISTS (SELECT 1 FROM reports WHERE report_id = ?1 AND status = 'Running') "
                     "ON CONFLICT (report_id, shard) DO UPDATE SET body = excluded.body", (report_id, shard, body))
        conn.execute("UPDATE reports SET progress = ? * (SELECT COUNT(*) FROM report_parts WHERE report_id = ?) / ? "
                     "WHERE report_id = ? AND status = 'Running'", (progress_share, report_id, shards, report_id))


def report_parts(conn: sqlite3.Connection, report_id: str) -> list[bytes]:
    """The stored shard results of a job, in shard order."""
    return [bytes(row[0]) for row in conn.execute(
        "SELECT body FROM report_parts WHERE report_id = ? ORDER BY shard", (report_id,))]


def delete_report_parts(conn: sqlite3.Connection, report_id: str) -> None:
    conn.execute("DELETE FROM report_parts WHERE report_id = ?", (report_id,))


def finished_report_jobs_before(conn: sqlite3.Connection, finished_before: str) -> list[str]:
    """Ids of the Complete or Failed jobs that finished before the ISO 8601 UTC instant given."""
    return [row[0] for row in conn.execute(
        "SELECT report_id FROM reports WHERE status IN ('Complete', 'Failed') AND finished_at < ?",
        (finished_before,))]


def live_report_attempts(conn: sqlite3.Connection) -> set[tuple[str, int]]:
    """(report_id, attempt) of the jobs Running under a live lease: their attempt files are in use."""
    return {(row[0], row[1]) for row in conn.execute(
        "SELECT report_id, attempts FROM reports WHERE status = 'Running' AND lease_until >= ?", (time.time(),))}


# --- writing loads ----------------------------------------------------------------------------------

@contextmanager
def _bulk_settings(conn: sqlite3.Connection) -> Iterator[None]:
    """Connection settings for a big load, restored afterwards. Only outside a transaction.

    Foreign-key checks are switched off for the load: every store_key written comes from the `stores`
    rows inserted or read in the same transaction, so the check could only cost time (about a third).
    """
    if conn.in_transaction:
        yield
        return
    old = {pragma: conn.execute(f"PRAGMA {pragma}").fetchone()[0]
           for pragma in ("foreign_keys", "cache_size", "threads")}
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute(f"PRAGMA cache_size = -{BULK_CACHE_KIB}")
    conn.execute("PRAGMA threads = 2")
    try:
        yield
    finally:
        if not conn.in_transaction:
            for pragma, value in old.items():
                conn.execute(f"PRAGMA {pragma} = {int(value)}")


def _store_keys(conn: sqlite3.Connection, store_ids: pd.Index) -> np.ndarray:
    """store_key for each id in `store_ids` (unique), inserting unknown ids into `stores`."""
    ids = store_ids.tolist()
    conn.executemany("INSERT OR IGNORE INTO stores (store_id) VALUES (?)", ((i,) for i in ids))
    cursor = conn.cursor()
    cursor.row_factory = None
    if len(ids) <= 500:
        rows = cursor.execute(
            f"SELECT store_id, store_key FROM stores WHERE store_id IN ({','.join('?' * len(ids))})", ids
        ).fetchall() if ids else []
    else:
        rows = cursor.execute("SELECT store_id, store_key FROM stores").fetchall()
    mapping = pd.Series([key for _, key in rows], index=pd.Index([sid for sid, _ in rows], dtype=object),
                        dtype="int64")
    keys = mapping.reindex(pd.Index(ids, dtype=object)).to_numpy()
    return keys.astype(np.int64)



def ingest_store_status(conn: sqlite3.Connection, frame: pd.DataFrame, source: str = "<request>") -> TableSummary:
    """Validate polls (raw text columns store_id, status, timestamp_utc) and append them in one transaction.

    A poll already stored for the same store and instant is kept once; if the statuses differ, inactive
    wins (also between duplicate rows of the frame). Returns the load summary.
    """
    started = time.perf_counter()
    frame = ingestion._check_columns(frame, "store_status", source)
    summary = ingestion._start_summary(frame, "store_status", source)
    with _bulk_settings(conn), _write(conn):
        load = _StatusLoad(conn, summary)
        load.add(frame, last=True)
        load.finish()
        _record_load(conn, summary, started)
    summary.seconds = time.perf_counter() - started
    return summary


def _ingest_status_csv(conn: sqlite3.Connection, name: str, data, names: list[str],
                       progress: bool | None = None) -> TableSummary:
    """Stream a status CSV into the caller's transaction (see `ingestion.stream_status_csv`)."""
    started = time.perf_counter()
    summary = ingestion.stream_status_csv(name, data, names, lambda summary, expected: _StatusLoad(
        conn, summary, expected_bytes=expected), progress=progress)
    _record_load(conn, summary, started)  # the caller (load_files) holds the transaction
    summary.seconds = time.perf_counter() - started
    return summary


def _record_load(conn: sqlite3.Connection, summary: TableSummary, started: float) -> None:
    """Log what a load of one table said, in the load's own transaction (see `loads`, `metrics_facts`)."""
    common.record_load(conn, "INSERT INTO loads (finished_at, table_name, summary) "
                             "VALUES (:finished_at, :table, :summary)", summary, started)


def recent_loads(conn: sqlite3.Connection, limit: int = 10) -> list[dict]:
    """The latest load summaries, newest first, each with its `finished_at`."""
    return [{"finished_at": row[0], **json.loads(row[1])} for row in conn.execute(
        "SELECT finished_at, summary FROM loads ORDER BY load_id DESC LIMIT ?", (limit,))]


def metrics_facts(conn: sqlite3.Connection, report_seconds_buckets) -> dict:
    """What /metrics exposes, in one snapshot: jobs by status, the durations of every report ever completed
    as cumulative bucket counts (from `report_durations`, which deleting reports leaves alone, so the
    histogram never goes down), and rows ingested by table and outcome (summed over the load log)."""
    bounds = list(report_seconds_buckets)
    with _snapshot(conn):
        jobs = conn.execute("SELECT status, COUNT(*) FROM reports GROUP BY status").fetchall()
        count, total, *at_most = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(seconds), 0)"
            + "".join(", COALESCE(SUM(seconds <= ?), 0)" for _ in bounds) + " FROM report_durations",
            bounds).fetchone()
        loads = conn.execute(f"""
            SELECT table_name, {', '.join(f"SUM(json_extract(summary, '$.{o}'))" for o in common.LOAD_OUTCOMES)},
                   SUM((SELECT COALESCE(SUM(value), 0) FROM json_each(summary, '$.rejected')))
            FROM loads GROUP BY table_name""").fetchall()
    return common.metrics_facts(jobs, bounds, count, total, at_most, loads)



def _grow(values: np.ndarray, size: int, fill: int) -> np.ndarray:
    if len(values) >= size:
        return values
    return np.concatenate([values, np.full(size - len(values) + 1024, fill, np.int64)])


def _unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    first = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])] if len(a) else np.zeros(0, bool)
    return a[first], b[first]


class _SeenFilter:
    """A Bloom filter of (store_key, instant) pairs: the groups of a load's earlier chunks.

    No false negatives: a pair it does not hold was certainly not in an earlier chunk. A pair it holds may
    not have been (under 1 % at the sizes used); that costs one exact look-up, never a wrong count.
    Blocked: a pair's 3 bits lie in one 64-bit word, so it costs one random memory access (measured per
    1M pairs into 32 MB: 0.05 s to add, 0.02 s to test; three separate bits with np.bitwise_or.at: 0.33 s).
    Memory is fixed from the file's size: one bit per 8 bytes, rounded up to a power of two (2 MB for
    the 100 MB real-size file, 32 MB for the 10x one).
    """

    STEP = 1 << 18          # pairs hashed at a time: bounds the temporary arrays (a few MB)

    def __init__(self, expected_bytes: int):
        bits = 1 << max(16, (max(int(expected_bytes), 1) // 8 - 1).bit_length())
        self.words = np.zeros(bits // 64, np.uint64)
        self.word_mask = np.uint64(len(self.words) - 1)

    def _hash(self, keys: np.ndarray, micros: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(word index, 3-bit mask) of each pair."""
        x = np.ascontiguousarray(keys, np.int64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        x ^= np.ascontiguousarray(micros, np.int64).view(np.uint64)
        x ^= x >> np.uint64(30)                     # splitmix64's finaliser
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
        one, low6 = np.uint64(1), np.uint64(63)
        mask = (one << (x & low6)) | (one << ((x >> np.uint64(6)) & low6)) | (one << ((x >> np.uint64(12)) & low6))
        return ((x >> np.uint64(32)) & self.word_mask).astype(np.intp), mask

    def add(self, keys: np.ndarray, micros: np.ndarray) -> None:
        for at in range(0, len(keys), self.STEP):
            index, mask = self._hash(keys[at:at + self.STEP], micros[at:at + self.STEP])
            while len(index):       # pairs sharing a word overwrite each other's bits: set those again
                self.words[index] |= mask
                lost = (self.words[index] & mask) != mask
                index, mask = index[lost], mask[lost]

    def contains(self, keys: np.ndarray, micros: np.ndarray) -> np.ndarray:
        found = np.empty(len(keys), bool)
        for at in range(0, len(keys), self.STEP):
            index, mask = self._hash(keys[at:at + self.STEP], micros[at:at + self.STEP])
            found[at:at + self.STEP] = (self.words[index] & mask) == mask
        return found


_CATEGORIES = ("new", "already_stored", "changed", "conflicting")
_NONE, _NO_RECORD = 2, 3          # stored status "no poll"; `load_groups` has no row for the group
# The TEMP table of one load that remembers groups of earlier chunks (see _StatusLoad).
LOAD_GROUPS_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS load_groups (store_key INTEGER NOT NULL, timestamp_us INTEGER NOT NULL, "
    "prior INTEGER NOT NULL, seen INTEGER NOT NULL, PRIMARY KEY (store_key, timestamp_us)) WITHOUT ROWID")
# For one store (?1) and its instants (?2, a JSON array), one text of per-instant codes: its position in
# the array * 64 + stored status now (0, 1, 2 = none) + 4 * recorded prior (3 = no record) + 16 * recorded
# seen. One query per store: measured at real size twice as fast as a TEMP table of the instants joined
# once, and the position makes the result independent of the order SQLite concatenates in.
LOAD_LOOKUP = f"""
    SELECT group_concat(j.key * 64 + coalesce(s.active, {_NONE}) + 4 * coalesce(g.prior, {_NO_RECORD})
                        + 16 * coalesce(g.seen, 0))
    FROM json_each(?2) j
    LEFT JOIN main.store_status s ON s.store_key = ?1 AND s.timestamp_us = j.value
    LEFT JOIN temp.load_groups g ON g.store_key = ?1 AND g.timestamp_us = j.value"""
# Each value: timestamp_us * 16 + prior * 4 + seen (bit 1: an active row, bit 2: an inactive row).
LOAD_RECORD = (
    "INSERT INTO temp.load_groups (store_key, timestamp_us, prior, seen) "
    "SELECT ?1, value >> 4, (value >> 2) & 3, value & 3 FROM json_each(?2) WHERE true "
    "ON CONFLICT (store_key, timestamp_us) DO UPDATE SET seen = excluded.seen"
)


def _categories(prior: np.ndarray, active_seen: np.ndarray, inactive_seen: np.ndarray) -> tuple[int, ...]:
    """(new, already_stored, changed, conflicting) of groups, each one (store, instant), given the status
    stored before the load (`prior`: 0, 1, or _NONE) and whether the file had active / inactive rows for it.

    Each status the file brings is one row counted here (further rows with that status are duplicates):
    the inactive row is new, changed (stored active) or already stored (stored inactive); the active row
    is conflicting where the instant is inactive (in the file or stored), else new or already stored.
    """
    new = (prior == _NONE) & (active_seen | inactive_seen)
    already = ((prior == 1) & active_seen & ~inactive_seen) | ((prior == 0) & inactive_seen)
    changed = (prior == 1) & inactive_seen
    conflicting = active_seen & (inactive_seen | (prior == 0))
    return tuple(int(np.count_nonzero(mask)) for mask in (new, already, changed, conflicting))


class _StatusLoad:
    """One file's (or frame's) polls, written chunk by chunk into the caller's transaction, with exact counts.

    Each chunk is validated and folded to groups, one per (store, instant): a group the database does not
    have is inserted (inactive if any of its rows is), a stored active poll is made inactive by an inactive
    row, anything else is left alone. `poll_blocks` is rewritten once, in `finish()`, for every
    (store, block) whose polls changed, so it never disagrees with `store_status` when the transaction
    commits, and a block is not rebuilt once per chunk.

    Counts (see TableSummary) are exact however the file is cut into chunks: a group's categories follow
    from its status stored before the load (`prior`) and which statuses the file's rows brought, so each
    chunk adds the difference its rows make. What earlier chunks of this load did is known without keeping
    the file's polls:
    - A group outside its store's [first, last] poll stored before the load (the "before span") was not
      stored before; a group the Bloom filter of earlier chunks' groups (`_SeenFilter`) does not hold was
      in no earlier chunk. A group that is both needs no look-up: new to the database and to the file.
      That is every group of a fresh load, but for the filter's rare false positives and real repeats.
    - Any other group is looked up (LOAD_LOOKUP, per store): its stored status now, and its row in the TEMP
      table `load_groups`, which holds (prior, statuses seen) for every earlier-chunk group inside the
      before span and for every group outside it that had both statuses. For other groups outside the
      span the stored status now tells all: none = not seen, active = only active rows seen, inactive =
      only inactive rows seen. The last chunk records nothing (nothing follows it).
    Measured at real size (1.85M polls, two chunks): a fresh load pays about 0.1 s for this (the filter);
    loading the same file again, where every group lies in the before span, about 0.5 s (look-ups and
    `load_groups`), partly won back by writing nothing and rebuilding no `poll_blocks` row.
    """

    def __init__(self, conn: sqlite3.Connection, summary: TableSummary, expected_bytes: int = 0):
        self.conn, self.summary, self.expected_bytes = conn, summary, expected_bytes
        self.counts = dict.fromkeys(_CATEGORIES + ("duplicates",), 0)
        self.stored_before = conn.execute("SELECT 1 FROM store_status LIMIT 1").fetchone() is not None
        self.span_known = np.empty(0, np.int64)                    # by store_key: before span fetched (1)
        self.before_lo = self.before_hi = np.empty(0, np.int64)    # by store_key: polls stored before the load
        self.seen: _SeenFilter | None = None                       # groups of earlier chunks
        self.temp_tables = False
        self.touched_keys = self.touched_blocks = np.empty(0, np.int64)

    def add(self, frame: pd.DataFrame, last: bool) -> None:
        """Validate, count and write one chunk; `last`: no chunk follows it (nothing needs remembering)."""
        groups = common.chunk_groups(frame, self.summary, lambda uniques: _store_keys(self.conn, uniques))
        if groups is not None:
            self._add_groups(*groups, last)

    def _add_groups(self, keys, micros, active_rows, inactive_rows, rows, last: bool) -> None:
        n = len(keys)
        in_before = self._in_before(keys, micros)
        look = in_before if self.seen is None else in_before | self.seen.contains(keys, micros)
        prior = np.full(n, _NONE, np.int8)         # stored status before the load
        now = np.full(n, _NONE, np.int8)           # stored status now (before this chunk)
        active_seen, inactive_seen = np.zeros(n, bool), np.zeros(n, bool)   # in earlier chunks
        if look.any():
            code = self._look_up(keys[look], micros[look])
            stored, recorded_prior, recorded_seen = code & 3, (code >> 2) & 3, code >> 4
            recorded, inside = recorded_prior != _NO_RECORD, in_before[look]
            now[look] = stored
            prior[look] = np.where(recorded, recorded_prior, np.where(inside, stored, _NONE))
            active_seen[look] = np.where(recorded, (recorded_seen & 1) != 0, ~inside & (stored == 1))
            inactive_seen[look] = np.where(recorded, (recorded_seen & 2) != 0, ~inside & (stored == 0))
        active_after, inactive_after = active_seen | active_rows, inactive_seen | inactive_rows
        before = _categories(prior, active_seen, inactive_seen)
        after = _categories(prior, active_after, inactive_after)
        for name, old, new in zip(_CATEGORIES, before, after):
            self.counts[name] += new - old
        self.counts["duplicates"] += int(rows.sum() - np.count_nonzero(active_rows & ~active_seen)
                                         - np.count_nonzero(inactive_rows & ~inactive_seen))

        insert = now == _NONE
        make_inactive = (now == 1) & inactive_rows
        if insert.all():    # a fresh load: no copies of the chunk's keys and instants
            inserted = _insert_polls(self.conn, STATUS_INSERT, keys, micros, active_rows & ~inactive_rows)
        elif insert.any():
            inserted = _insert_polls(self.conn, STATUS_INSERT, keys[insert], micros[insert],
                                     (active_rows & ~inactive_rows)[insert])
        if insert.any():
            if inserted != np.count_nonzero(insert):   # cannot happen: the counts above would be wrong
                raise RuntimeError(f"store_status load: {np.count_nonzero(insert) - inserted} polls taken "
                                   "for new were stored already")
        if make_inactive.any():
            _insert_polls(self.conn, STATUS_MAKE_INACTIVE, keys[make_inactive], micros[make_inactive],
                          np.zeros(np.count_nonzero(make_inactive), np.int64))
        if not last:
            record = in_before | (active_after & inactive_after)
            if record.any():
                self._temp()
                _per_store(self.conn, LOAD_RECORD, keys[record],
                           micros[record] * 16 + prior[record] * 4 + active_after[record] + 2 * inactive_after[record])
            if self.seen is None:
                self.seen = _SeenFilter(self.expected_bytes)
            self.seen.add(keys, micros)

        written = insert | make_inactive
        if written.any():
            keys, blocks = keys[written], micros[written] // BLOCK_US
            new_block = np.r_[True, (keys[1:] != keys[:-1]) | (blocks[1:] != blocks[:-1])]
            self.touched_keys, self.touched_blocks = _unique_pairs(
                np.concatenate([self.touched_keys, keys[new_block]]),
                np.concatenate([self.touched_blocks, blocks[new_block]]))

    def _in_before(self, keys: np.ndarray, micros: np.ndarray) -> np.ndarray:
        """Whether each group (sorted by store) lies inside its store's span of polls stored before the load.

        A store's span is read when the load first meets the store, before any of its polls is written.
        """
        if not self.stored_before:
            return np.zeros(len(keys), bool)
        size = int(keys[-1]) + 1
        self.span_known = _grow(self.span_known, size, 0)
        self.before_lo, self.before_hi = _grow(self.before_lo, size, 1), _grow(self.before_hi, size, 0)
        store_keys = keys[np.r_[True, keys[1:] != keys[:-1]]]
        unknown = store_keys[self.span_known[store_keys] == 0]
        if len(unknown):
            spans = np.array(self.conn.execute("""
                SELECT j.value,
                       coalesce((SELECT min(timestamp_us) FROM store_status p WHERE p.store_key = j.value), 1),
                       coalesce((SELECT max(timestamp_us) FROM store_status p WHERE p.store_key = j.value), 0)
                FROM json_each(?) j""", (json.dumps(unknown.tolist()),)).fetchall(), dtype=np.int64).reshape(-1, 3)
            self.before_lo[spans[:, 0]], self.before_hi[spans[:, 0]] = spans[:, 1], spans[:, 2]
            self.span_known[unknown] = 1
        return (micros >= self.before_lo[keys]) & (micros <= self.before_hi[keys])

    def _temp(self) -> None:
        if not self.temp_tables:
            self.conn.execute(LOAD_GROUPS_TABLE)
            self.conn.execute("DELETE FROM temp.load_groups")
            self.temp_tables = True

    def _look_up(self, keys: np.ndarray, micros: np.ndarray) -> np.ndarray:
        """LOAD_LOOKUP's code (without the position) for each of these groups (sorted by store)."""
        self._temp()
        cursor = self.conn.cursor()
        cursor.row_factory = None
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], len(keys)]
        dumps = json.dumps
        texts = [cursor.execute(LOAD_LOOKUP, (key, dumps(micros[start:end].tolist()))).fetchone()[0]
                 for key, start, end in zip(keys[starts].tolist(), starts.tolist(), ends.tolist())]
        values = np.fromstring(",".join(texts), dtype=np.int64, sep=",")
        code = np.full(len(keys), -1, np.int64)
        code[np.repeat(starts, ends - starts) + (values >> 6)] = values & 63
        if (code < 0).any():
            raise RuntimeError("store_status load: a look-up returned too few rows")
        return code

    def finish(self) -> None:
        for name, count in self.counts.items():
            setattr(self.summary, name, count)
        if len(self.touched_keys):
            _rebuild_poll_blocks(self.conn, self.touched_keys, self.touched_blocks)
        if self.temp_tables:
            self.conn.execute("DROP TABLE temp.load_groups")
            self.temp_tables = False


def _per_store(conn: sqlite3.Connection, statement: str, keys: np.ndarray, values: np.ndarray) -> int:
    """Run `statement` once per store (?1) with its values as one JSON array (?2); keys sorted. Returns the
    number of rows changed."""
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)].tolist()
    store_keys = keys[starts].tolist()
    dumps = json.dumps
    cursor = conn.executemany(statement, ((key, dumps(values[s:e].tolist())) for key, s, e in
                                          zip(store_keys, starts.tolist(), ends)))
    return max(int(cursor.rowcount), 0)


def _insert_polls(conn: sqlite3.Connection, statement: str, keys: np.ndarray, micros: np.ndarray,
                  active: np.ndarray) -> int:
    """Run `statement` once per store with its polls (timestamp_us * 2 + active) as one JSON array; the
    number of rows changed."""
    return _per_store(conn, statement, keys, micros * 2 + active)


def _rebuild_poll_blocks(conn: sqlite3.Connection, store_keys: np.ndarray, blocks: np.ndarray) -> None:
    """Rewrite the `poll_blocks` rows of these (store, block) pairs from `store_status`.

    `poll_blocks` holds the same polls as `store_status`, one row per store and week-long block, so a
    report reads about 30k rows for a week of 14,000 stores instead of 1.6M: SQLite's cost is per row
    (0.42 s just to step through the week's 1.6M rows of store_status). It is rewritten in the
    transaction that writes the polls, so the two tables never disagree.
    """
    for chunk in range(0, len(store_keys), REBUILD_CHUNK):  # bounds the memory of a big load
        _rebuild_poll_block_rows(conn, store_keys[chunk:chunk + REBUILD_CHUNK], blocks[chunk:chunk + REBUILD_CHUNK])


def _rebuild_poll_block_rows(conn: sqlite3.Connection, store_keys: np.ndarray, blocks: np.ndarray) -> None:
    conn.execute("CREATE TEMP TABLE IF NOT EXISTS touched_blocks (store_key INTEGER, block INTEGER)")
    conn.execute("DELETE FROM touched_blocks")
    conn.executemany("INSERT INTO touched_blocks VALUES (?, ?)", zip(store_keys.tolist(), blocks.tolist()))
    rows = conn.execute(f"""
        SELECT t.store_key, t.block,
               (SELECT group_concat(p.timestamp_us * 2 + p.active) FROM store_status p
                 WHERE p.store_key = t.store_key
                   AND p.timestamp_us >= t.block * {BLOCK_US} AND p.timestamp_us < (t.block + 1) * {BLOCK_US})
        FROM touched_blocks t""").fetchall()
    conn.execute("DELETE FROM touched_blocks")
    rows = [row for row in rows if row[2] is not None]
    texts = [text for _, _, text in rows]
    counts = np.fromiter((text.count(",") + 1 for text in texts), np.int64, len(texts))
    values = np.fromstring(",".join(texts), dtype=np.int64, sep=",").astype("<i8") if texts else np.empty(0, "<i8")
    ends = np.cumsum(counts)
    conn.executemany("INSERT OR REPLACE INTO poll_blocks (store_key, block, polls) VALUES (?, ?, ?)",
                     ((key, block, values[end - count:end].tobytes())
                      for (key, block, _), count, end in zip(rows, counts.tolist(), ends.tolist())))


def _fill_poll_blocks(conn: sqlite3.Connection) -> None:
    """A database written before `poll_blocks` existed: derive it once from all stored polls."""
    if conn.execute("SELECT 1 FROM poll_blocks LIMIT 1").fetchone() is not None:
        return
    if conn.execute("SELECT 1 FROM store_status LIMIT 1").fetchone() is None:
        return
    with transaction(conn):
        pairs = np.array(conn.execute(f"""
            SELECT DISTINCT store_key,
                   (timestamp_us - ((timestamp_us % {BLOCK_US}) + {BLOCK_US}) % {BLOCK_US}) / {BLOCK_US}
            FROM store_status""").fetchall(), dtype=np.int64).reshape(-1, 2)
        _rebuild_poll_blocks(conn, pairs[:, 0], pairs[:, 1])


def ingest_business_hours(conn: sqlite3.Connection, frame: pd.DataFrame, source: str = "<request>") -> TableSummary:
    """Validate business hours and replace, in one transaction, the rows of every store with a valid row."""
    started = time.perf_counter()
    summary, unique = ingestion.business_hours_rows(frame, source)
    with _write(conn):
        stores = json.dumps(pd.unique(unique["store_id"]).tolist())
        ingestion.count_replaced(summary, unique, conn.execute(
            f"SELECT {', '.join(HOURS_COLUMNS)} FROM business_hours "
            "WHERE store_id IN (SELECT value FROM json_each(?))", (stores,)).fetchall())
        conn.execute("DELETE FROM business_hours WHERE store_id IN (SELECT value FROM json_each(?))", (stores,))
        conn.executemany(
            "INSERT INTO business_hours (store_id, day_of_week, start_time_local, end_time_local) "
            "VALUES (?, ?, ?, ?)", zip(*(unique[column].tolist() for column in unique.columns)))
        _record_load(conn, summary, started)
    summary.seconds = time.perf_counter() - started
    return summary


def ingest_timezones(conn: sqlite3.Connection, frame: pd.DataFrame, source: str = "<request>") -> TableSummary:
    """Validate store timezones and replace those stores' rows in one transaction (last row per store wins)."""
    started = time.perf_counter()
    summary, unique = ingestion.timezone_rows(frame, source)
    with _write(conn):
        stored = {row[0]: row[1] for row in conn.execute(
            "SELECT store_id, timezone_str FROM timezones WHERE store_id IN (SELECT value FROM json_each(?))",
            (json.dumps(unique["store_id"].tolist()),))}
        ingestion.count_zone_changes(summary, unique, stored)
        conn.executemany(
            "INSERT INTO timezones (store_id, timezone_str) VALUES (?, ?) "
            "ON CONFLICT (store_id) DO UPDATE SET timezone_str = excluded.timezone_str",
            unique.itertuples(index=False, name=None))
        _record_load(conn, summary, started)
    summary.seconds = time.perf_counter() - started
    return summary


def ingest_special_hours(conn: sqlite3.Connection, frame: pd.DataFrame, source: str = "<request>") -> TableSummary:
    """Validate special hours and replace, in one transaction, the stored rows of every (store, date) that
    has a valid row; other dates are kept."""
    started = time.perf_counter()
    summary, unique = ingestion.special_hours_rows(frame, source)
    pairs = json.dumps(unique[["store_id", "date"]].drop_duplicates().to_numpy().tolist())
    in_file = "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)"
    with _write(conn):
        ingestion.count_replaced(summary, unique, conn.execute(
            f"SELECT {', '.join(SPECIAL_COLUMNS)} FROM special_hours WHERE (store_id, date) IN ({in_file})",
            (pairs,)).fetchall())
        conn.execute(f"DELETE FROM special_hours WHERE (store_id, date) IN ({in_file})", (pairs,))
        conn.executemany(
            f"INSERT INTO special_hours ({', '.join(SPECIAL_COLUMNS)}) VALUES (?, ?, ?, ?)",
            zip(*(unique[column].tolist() for column in SPECIAL_COLUMNS)))
        _record_load(conn, summary, started)
    summary.seconds = time.perf_counter() - started
    return summary


# The status file streams through _ingest_status_csv; the small tables load whole.
INGEST = {"business_hours": ingest_business_hours, "timezones": ingest_timezones,
          "special_hours": ingest_special_hours}


def load_files(conn: sqlite3.Connection, status=None, hours=None, timezones=None, special_hours=None, *,
               progress: bool | None = None, name: str | None = None) -> list[TableSummary]:
    """Load the given CSVs (paths or file-likes; None = skip that table) in ONE transaction.

    Every file's header is checked, and the hours, timezones and special-hours files are read, before
    anything is written (`ingestion.open_sources`). The status file is then streamed in chunks inside the
    same transaction (bounded memory for any file size), so a LoadError found midway (an unreadable part)
    also leaves the database as it was, including the other tables of the call. `progress`: the status
    file's progress bar (None: on a terminal only). `name`: what messages, summaries and the load log call
    every source instead of its path (the HTTP API spools an upload to a temporary file and says '<request>').
    """
    sources = ingestion.open_sources(status, hours, timezones, special_hours, name=name)
    with _bulk_settings(conn), _write(conn):
        return common.load_sources(conn, sources, _ingest_status_csv, INGEST, progress)


def has_polls(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM store_status LIMIT 1").fetchone() is not None


def _chosen_stores(store_ids: list[str] | None, key_range: tuple[int, int] | None) -> tuple[str, tuple]:
    """The `chosen` CTE (the stores a report is about: all, those asked for, those in a store_key range)
    and its parameters, which bind first (placeholders bind in the order they appear in the text)."""
    where, params = [], []
    if store_ids is not None:
        where.append("store_id IN (SELECT value FROM json_each(?))")
        params.append(json.dumps(list(store_ids)))
    if key_range is not None:
        where.append("store_key BETWEEN ? AND ?")
        params.extend(int(bound) for bound in key_range)
    clause = "" if not where else " WHERE " + " AND ".join(where)
    return f"WITH chosen AS (SELECT store_key, store_id FROM stores{clause})", tuple(params)


def _latest_poll_us(conn: sqlite3.Connection) -> int | None:
    """The latest poll of any store: one primary-key seek per store."""
    latest = conn.execute("""SELECT MAX((SELECT MAX(p.timestamp_us) FROM store_status p
                                         WHERE p.store_key = s.store_key)) FROM stores s""").fetchone()[0]
    return None if latest is None else int(latest)


def plan_report_shards(location: str | Path, *, shard_stores: int, shard_polls: int | None = None,
                       min_shards: int = 1, lookback_us: int = BLOCK_US, as_of_us: int | None = None,
                       store_ids: list[str] | None = None) -> tuple[int | None, list[tuple[int, int]]]:
    """The report's now (as_of, or the latest poll; None without polls) and store_key ranges [low, high]
    (inclusive) of at most `shard_stores` chosen stores and about `shard_polls` polls in [now - lookback,
    now] each (see storage.cut_shards), in key order, in one snapshot.

    Stores are independent of each other in a report, so each range can be read and computed on its own.
    A store's polls in the window are estimated from its `poll_blocks` rows (their lengths, prorated by
    how much of each block lies in the window): reading the polls themselves would cost as much as the
    report's own read.
    """
    chosen, params = _chosen_stores(store_ids, None)
    conn = sqlite3.connect(sqlite_path(location), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute("BEGIN")
        now_us = _latest_poll_us(conn) if as_of_us is None else as_of_us
        keys = [key for key, in conn.execute(f"{chosen} SELECT store_key FROM chosen ORDER BY store_key", params)]
        counted = np.empty((0, 2))
        if shard_polls is not None and now_us is not None and keys:
            start = now_us - lookback_us
            counted = np.array(conn.execute(f"""
                SELECT store_key, SUM(length(polls) / 8.0 *
                       (MIN(:end, (block + 1) * {BLOCK_US}) - MAX(:start, block * {BLOCK_US})) / {BLOCK_US})
                FROM poll_blocks WHERE block BETWEEN :first AND :last GROUP BY store_key""",
                {"start": start, "end": now_us, "first": start // BLOCK_US, "last": now_us // BLOCK_US}
            ).fetchall(), dtype=np.float64).reshape(-1, 2)
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()
    return now_us, cut_shards(keys, common.polls_per_key(keys, counted), shard_stores=shard_stores,
                              shard_polls=shard_polls, min_shards=min_shards)


def read_report_inputs(location: str | Path, *, lookback_us: int, as_of_us: int | None = None,
                       store_ids: list[str] | None = None,
                       key_range: tuple[int, int] | None = None) -> ReportInputs:
    """The polls, hours, timezones and special hours a report at `as_of_us` (default: the latest poll) depends on.

    Polls: those in [now - lookback, now], plus each store's latest poll before that. Only that one can
    matter for the look-back window: nearest-poll interpolation looks at the closest poll on either
    side, so an older poll is always hidden behind it. The report is therefore exact without reading
    all history.

    One read transaction gives a consistent snapshot: a concurrent ingestion is seen entirely or not at
    all. The recent polls come from `poll_blocks`, one row of packed int64s per store and week, which NumPy
    takes over without a Python object per poll. Measured for a week of 1.6M polls: 0.08 s, against
    0.42 s for SQLite to step through the 1.6M rows of `store_status` even just to join them into one
    text, and 2.3 s for fetchall(). (Drivers that bring their own SQLite, such as ADBC's, are not an
    option: two SQLite copies in one process break each other's POSIX locks on the same file.)
    """
    # `chosen` is the stores the report is about (all, those asked for, those of a shard's key range).
    # Placeholders bind in the order they appear in the text: the parameters of `chosen` always come first.
    chosen, ids = _chosen_stores(store_ids, key_range)
    every_store = store_ids is None and key_range is None
    conn = sqlite3.connect(sqlite_path(location), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute("BEGIN")  # deferred: the snapshot starts at the first read and holds until ROLLBACK
        if as_of_us is None:
            now_us = _latest_poll_us(conn)
        else:
            now_us = as_of_us
        if now_us is None:
            return common.empty_report_inputs()
        week_start = now_us - lookback_us
        stores = conn.execute(f"{chosen} SELECT store_key, store_id FROM chosen ORDER BY store_key", ids).fetchall()
        # The blocks that overlap [week_start, now], in primary-key order: the engine finds them sorted.
        blocks = conn.execute(f"""{chosen}
            SELECT b.store_key, b.polls FROM chosen s CROSS JOIN poll_blocks b
              ON b.store_key = s.store_key AND b.block >= ? AND b.block <= ?
            ORDER BY s.store_key, b.block""", ids + (week_start // BLOCK_US, now_us // BLOCK_US)).fetchall()
        # Latest poll before the week, per store; time and status packed in one value (t * 2 + active)
        # so one correlated seek per store returns both.
        before = np.array(conn.execute(f"""{chosen}
            SELECT s.store_key, packed FROM (
                SELECT s.store_key,
                       (SELECT p.timestamp_us * 2 + p.active FROM store_status p
                         WHERE p.store_key = s.store_key AND p.timestamp_us < ?
                         ORDER BY p.timestamp_us DESC LIMIT 1) AS packed
                FROM chosen s) AS s
            WHERE packed IS NOT NULL ORDER BY s.store_key""", ids + (week_start,)).fetchall(),
                          dtype=np.int64).reshape(-1, 2)
        # Hours and zones of the chosen stores (the engine ignores those of stores without polls, so for
        # a report on every store the plain scans are cheapest). Object columns: building pandas'
        # Arrow strings from 86k tuples costs twice as long, and the engine factorises them anyway.
        if every_store:
            hours_rows = conn.execute(f"SELECT {', '.join(HOURS_COLUMNS)} FROM business_hours").fetchall()
            zone_rows = conn.execute(f"SELECT {', '.join(ZONE_COLUMNS)} FROM timezones").fetchall()
        else:
            hours_rows = conn.execute(f"""{chosen} SELECT {', '.join('h.' + c for c in HOURS_COLUMNS)}
                FROM chosen s JOIN business_hours h ON h.store_id = s.store_id""", ids).fetchall()
            zone_rows = conn.execute(f"""{chosen} SELECT s.store_id, z.timezone_str
                FROM chosen s JOIN timezones z ON z.store_id = s.store_id""", ids).fetchall()
        # Special hours: all of them (the table is small), or those of the chosen stores. A database
        # opened only by an older version has no such table.
        special_rows = []
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'special_hours'").fetchone():
            if every_store:
                special_rows = conn.execute(f"SELECT {', '.join(SPECIAL_COLUMNS)} FROM special_hours").fetchall()
            else:
                special_rows = conn.execute(f"""{chosen} SELECT {', '.join('h.' + c for c in SPECIAL_COLUMNS)}
                    FROM chosen s JOIN special_hours h ON h.store_id = s.store_id""", ids).fetchall()
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()

    packed = np.frombuffer(b"".join(polls for _, polls in blocks), dtype="<i8").astype(np.int64)
    block_keys = np.repeat(np.array([key for key, _ in blocks], dtype=np.int64),
                           np.array([len(polls) // 8 for _, polls in blocks], dtype=np.int64))
    recent = (packed >> 1 >= week_start) & (packed >> 1 <= now_us)
    return common.report_inputs(now_us, stores, block_keys[recent], packed[recent], before[:, 0], before[:, 1],
                                hours_rows, zone_rows, special_rows)


def first_poll_us(location: str | Path) -> int | None:
    """The earliest poll of any store (UTC microseconds), None without polls: one seek per store."""
    conn = sqlite3.connect(sqlite_path(location), timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        first = conn.execute("""SELECT MIN((SELECT MIN(p.timestamp_us) FROM store_status p
                                            WHERE p.store_key = s.store_key)) FROM stores s""").fetchone()[0]
    finally:
        conn.close()
    return None if first is None else int(first)


# --- the service's other reads, and job starts by cluster workers ---------------------------------------

@contextmanager
def start_up_lock(location: str | Path) -> Iterator[None]:
    """Held while a starting service creates the schema and loads a first data set, so that processes
    starting together on one database take turns: an exclusive lock on a file beside the database."""
    import fcntl

    lock_path = Path(f"{sqlite_path(location)}-startup.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        yield


def check_writable(conn: sqlite3.Connection) -> None:
    """Raise unless this connection can start a write transaction and write (rolled back at once). A write
    held by someone else (a load) for more than a second is fine: the database is writable. Inside a
    caller's transaction the write is made in a savepoint and rolled back to it."""
    nested = conn.in_transaction
    conn.execute("PRAGMA busy_timeout = 1000")
    try:
        conn.execute("SAVEPOINT check_writable" if nested else "BEGIN IMMEDIATE")
        try:
            conn.execute("DELETE FROM reports WHERE 0")  # a write statement that changes nothing
        finally:
            conn.execute("ROLLBACK TO check_writable" if nested else "ROLLBACK")
            if nested:
                conn.execute("RELEASE check_writable")
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in str(exc):
            return
        raise
    finally:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")


def latest_complete_report_id(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT report_id FROM reports WHERE status = 'Complete' "
                       "ORDER BY created_at DESC, rowid DESC LIMIT 1").fetchone()
    return None if row is None else row[0]


def find_stores(conn: sqlite3.Connection, text: str, limit: int) -> tuple[int, list[tuple]]:
    """Polled stores whose id contains `text` (case-insensitive), those starting with it first, then by id:
    (how many match, [(store_id, has business hours, timezone_str or None)] of at most `limit`), in one
    snapshot."""
    pattern, prefix = "%" + common.like_pattern(text) + "%", common.like_pattern(text) + "%"
    with _snapshot(conn):
        total = conn.execute("SELECT COUNT(*) FROM stores WHERE store_id LIKE ? ESCAPE '\\'",
                             (pattern,)).fetchone()[0]
        rows = conn.execute("""
            SELECT s.store_id,
                   EXISTS (SELECT 1 FROM business_hours h WHERE h.store_id = s.store_id) AS has_hours,
                   (SELECT z.timezone_str FROM timezones z WHERE z.store_id = s.store_id) AS timezone
            FROM stores s WHERE s.store_id LIKE ?1 ESCAPE '\\'
            ORDER BY s.store_id LIKE ?2 ESCAPE '\\' DESC, s.store_id LIMIT ?3""", (pattern, prefix, limit)).fetchall()
    return common.found_stores(total, rows)


def store_records(conn: sqlite3.Connection, store_id: str) -> dict:
    """What the tables hold for one store: {"polled": bool, "weekly": [(day, start, end)], "timezone":
    (None: no row), "has_zone_row": bool, "special": [(date, start, end)]}, rows in day/date order, in one
    snapshot."""
    with _snapshot(conn):
        polled = conn.execute("SELECT 1 FROM stores WHERE store_id = ?", (store_id,)).fetchone() is not None
        weekly = conn.execute("SELECT day_of_week, start_time_local, end_time_local FROM business_hours "
                              "WHERE store_id = ? ORDER BY day_of_week, start_time_local", (store_id,)).fetchall()
        zone = conn.execute("SELECT timezone_str FROM timezones WHERE store_id = ?", (store_id,)).fetchone()
        special = conn.execute("SELECT date, start_time_local, end_time_local FROM special_hours "
                               "WHERE store_id = ? ORDER BY date, start_time_local", (store_id,)).fetchall()
    return common.store_record(polled, weekly, zone, special)


def data_facts(conn: sqlite3.Connection, loads: int) -> dict:
    """What the database holds, in one snapshot: stores (polled), polls, first_us and last_us, stores
    without hours, [(trimmed zone text, stores)], special rows and their stores, stores not polled (hours or
    zone only), and the latest `loads` load summaries."""
    with _snapshot(conn):
        stores = conn.execute("SELECT COUNT(*) FROM stores").fetchone()[0]
        polls = conn.execute("SELECT COALESCE(SUM(length(polls)), 0) / 8 FROM poll_blocks").fetchone()[0]
        first, last = conn.execute("""
            SELECT MIN((SELECT MIN(p.timestamp_us) FROM store_status p WHERE p.store_key = s.store_key)),
                   MAX((SELECT MAX(p.timestamp_us) FROM store_status p WHERE p.store_key = s.store_key))
            FROM stores s""").fetchone()
        without_hours = conn.execute(common.FACTS_WITHOUT_HOURS).fetchone()[0]
        zones = conn.execute(common.FACTS_ZONES).fetchall()
        special_rows, special_stores = conn.execute(common.FACTS_SPECIAL).fetchone()
        not_polled = conn.execute(common.FACTS_NOT_POLLED).fetchone()[0]
        recent = recent_loads(conn, limit=loads)
    return common.data_facts(stores, polls, first, last, without_hours, zones, special_rows, special_stores,
                             not_polled, recent)


def start_report_attempt(conn: sqlite3.Connection, report_id: str, owner: str, *, lease_until: float,
                         max_attempts: int, exhausted_error: str, owner_prefix: str) -> dict | None:
    """Start a job for a worker that was handed it (cluster mode: a Celery start task), not one that
    claimed it from the table: set it Running for `owner` under `lease_until`, count the attempt and record
    it in `report_attempts` (closing an open one as 'worker lost': its worker died before the task was
    acknowledged). Returns the job as it now is; None when there is nothing to start (no such job, it
    ended, or an owner not starting with `owner_prefix` runs it); a job whose attempts already reached
    `max_attempts` is marked Failed with `exhausted_error` and returned as such."""
    with _write(conn):   # BEGIN IMMEDIATE: two deliveries of one start task take turns
        return common.start_attempt(conn, _SQL, report_id, owner, lease_until=lease_until, max_attempts=max_attempts,
                                    exhausted_error=exhausted_error, owner_prefix=owner_prefix)
