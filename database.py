"""Storage: the SQLite schema, connections, report-job records and data loading.

Layout chosen for the report's hot path (reading a week of polls):
- `stores` maps each opaque `store_id` text to a small integer `store_key`; polls store the key, so a
  report reads three integer columns per poll instead of a 19-36 character string.
- `store_status` is a WITHOUT ROWID table clustered on (store_key, timestamp_us): one poll per store and
  instant by construction, and "the last poll of store S before t" is one index seek.
- "Polls between t0 and t1" is one primary-key range seek per store (a join from `stores`), which also
  returns them in (store, time) order. There is deliberately no secondary index on time: measured on
  1.86M polls it doubled the ingest time (12 s -> 22 s) and did not make the report's read faster.
"""
from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

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
    progress    REAL NOT NULL DEFAULT 0,
    attempts    INTEGER NOT NULL DEFAULT 0,
    error       TEXT,
    file        TEXT                             -- file name inside the reports directory
);
CREATE INDEX IF NOT EXISTS reports_by_status ON reports (status);
"""

BUSY_TIMEOUT_MS = 30_000


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection for one thread: WAL (readers never block the writer), a busy timeout, the schema.

    Autocommit mode (isolation_level=None): callers open transactions explicitly with `transaction()`,
    so a load is one transaction and a failed load leaves the database as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.executescript(SCHEMA)
    return conn


@contextmanager
def transaction(conn: sqlite3.Connection, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (then re-raised)."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- report jobs ------------------------------------------------------------------------------------

def create_report_job(conn: sqlite3.Connection, report_id: str, params: dict) -> None:
    conn.execute(
        "INSERT INTO reports (report_id, status, created_at, params) VALUES (?, 'Queued', ?, ?)",
        (report_id, utc_now_iso(), json.dumps(params, sort_keys=True)),
    )


def get_report_job(conn: sqlite3.Connection, report_id: str) -> dict | None:
    row = conn.execute("SELECT * FROM reports WHERE report_id = ?", (report_id,)).fetchone()
    if row is None:
        return None
    job = dict(row)
    job["params"] = json.loads(job["params"])
    job["timings"] = json.loads(job["timings"]) if job["timings"] else None
    return job


def mark_report_running(conn: sqlite3.Connection, report_id: str) -> None:
    conn.execute(
        "UPDATE reports SET status = 'Running', started_at = ?, progress = 0, attempts = attempts + 1 "
        "WHERE report_id = ?",
        (utc_now_iso(), report_id),
    )


def set_report_progress(conn: sqlite3.Connection, report_id: str, progress: float) -> None:
    conn.execute("UPDATE reports SET progress = ? WHERE report_id = ?", (float(progress), report_id))


def mark_report_complete(conn: sqlite3.Connection, report_id: str, *, file: str, rows: int, as_of: str,
                         seconds: float, timings: dict | None = None) -> None:
    conn.execute(
        "UPDATE reports SET status = 'Complete', finished_at = ?, progress = 1, file = ?, rows = ?, "
        "as_of = ?, seconds = ?, timings = ?, error = NULL WHERE report_id = ?",
        (utc_now_iso(), file, rows, as_of, seconds, json.dumps(timings or {}), report_id),
    )


def mark_report_failed(conn: sqlite3.Connection, report_id: str, error: str) -> None:
    conn.execute(
        "UPDATE reports SET status = 'Failed', finished_at = ?, error = ? WHERE report_id = ?",
        (utc_now_iso(), error, report_id),
    )


def unfinished_report_jobs(conn: sqlite3.Connection) -> list[dict]:
    """Jobs left Queued or Running (by a crash or a stop), oldest first."""
    rows = conn.execute(
        "SELECT report_id FROM reports WHERE status IN ('Queued', 'Running') ORDER BY created_at"
    ).fetchall()
    return [get_report_job(conn, row["report_id"]) for row in rows]
