"""Storage: the SQLite schema, connections, report-job records, data loading and the report's reads.

Layout chosen for the report's hot path (reading a week of polls):
- `stores` maps each opaque `store_id` text to a small integer `store_key`; polls store the key.
- `store_status` is a WITHOUT ROWID table clustered on (store_key, timestamp_us): one poll per store and
  instant by construction, and "the last poll of store S before t" is one index seek. There is
  deliberately no secondary index on time: measured on 1.86M polls it doubled the ingest time.
- `poll_blocks` holds the same polls again, one row per store and week with the polls packed as int64s,
  rewritten in the transaction that writes them: a report reads ~28k rows instead of 1.6M.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import sqlite3
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

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
    file        TEXT                             -- file name inside the reports directory
);
CREATE INDEX IF NOT EXISTS reports_by_status ON reports (status);
"""

BUSY_TIMEOUT_MS = 30_000
BLOCK_US = 7 * 86_400_000_000  # polls are also kept in blocks of a week per store (see _rebuild_poll_blocks)
REBUILD_CHUNK = 4096           # (store, block) rows rewritten per statement


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
    _add_missing_columns(conn)
    _fill_poll_blocks(conn)
    return conn


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    """Columns added to the schema after a database was created (CREATE IF NOT EXISTS leaves it as is)."""
    report_columns = {row["name"] for row in conn.execute("PRAGMA table_info(reports)")}
    if "meta" not in report_columns:
        conn.execute("ALTER TABLE reports ADD COLUMN meta TEXT")


@contextmanager
def transaction(conn: sqlite3.Connection, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception (then re-raised)."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
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
    job["meta"] = json.loads(job["meta"]) if job["meta"] else None
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
                         seconds: float, timings: dict | None = None, meta: dict | None = None) -> None:
    conn.execute(
        "UPDATE reports SET status = 'Complete', finished_at = ?, progress = 1, file = ?, rows = ?, "
        "as_of = ?, seconds = ?, timings = ?, meta = ?, error = NULL WHERE report_id = ?",
        (utc_now_iso(), file, rows, as_of, seconds, json.dumps(timings or {}), json.dumps(meta or {}), report_id),
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


# --- ingestion --------------------------------------------------------------------------------------
#
# CSV -> validated, typed rows -> one transaction. Every table is read with all columns as text (store ids
# are opaque and never parsed as numbers), validated with vectorised string operations, and each row that
# cannot be read gets exactly one reject reason (the first that applies, in the order of the checks).

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "store_status": ("store_id", "status", "timestamp_utc"),
    "business_hours": ("store_id", "day_of_week", "start_time_local", "end_time_local"),
    "timezones": ("store_id", "timezone_str"),
}
# Header names seen in the wild (compared case-insensitively, surrounding spaces ignored).
COLUMN_ALIASES = {"day": "day_of_week", "dayofweek": "day_of_week", "day_of_week": "day_of_week"}

EMPTY_STORE_ID = "empty store_id"
MISSING_VALUE = "missing value"
UNKNOWN_STATUS = "unknown status"
UNPARSABLE_TIMESTAMP = "unparsable timestamp"
IMPOSSIBLE_TIMESTAMP = "impossible timestamp"
BAD_DAY = "day outside 0..6"
BAD_TIME = "time outside 00:00:00..23:59:59"
WRONG_FIELD_COUNT = "wrong number of fields"

# `2023-01-22 12:09:39.388884 UTC` (fraction of 0-6 digits) or ISO 8601 with `T`, `Z` or an offset;
# no zone at all means UTC (the column is `timestamp_utc`).
TIMESTAMP_RE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?: ?UTC|Z|[+-]\d{2}(?::?\d{2})?)?$"
# `HH:MM:SS` with an optional fraction; `H:MM` and `HH:MM` are read as `HH:MM:00`.
TIME_RE = r"^(?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2})(?P<f>\.\d{1,6})?)?$"

DEMO_STORES = 300             # size of the generated data set loaded on first start without data/*.csv
BULK_CACHE_KIB = 256 * 1024   # page cache while loading (PRAGMA cache_size, KiB)

# Polls are written as one JSON array per store: each element is timestamp_us * 2 + active, so SQLite
# unpacks the rows in C instead of Python binding 1.85M parameter tuples (measured 4.1 s -> 2.2 s including
# the JSON encoding). A poll already stored at the same instant keeps one row (the insert's row count is
# then the number of new polls); if the statuses differ, inactive (0) wins (STATUS_MAKE_INACTIVE, run for
# the inactive polls of a chunk only when some of its polls were already stored).
STATUS_INSERT = (
    "INSERT INTO store_status (store_key, timestamp_us, active) "
    "SELECT ?1, value >> 1, value & 1 FROM json_each(?2) WHERE true "
    "ON CONFLICT (store_key, timestamp_us) DO NOTHING"
)
STATUS_MAKE_INACTIVE = (
    "UPDATE store_status SET active = 0 "
    "WHERE store_key = ?1 AND active = 1 AND timestamp_us IN (SELECT value >> 1 FROM json_each(?2))"
)
# A status CSV is loaded in chunks of this many rows, so memory no longer grows with the file (measured
# peak RSS, whole file at once -> chunks: 1.85M rows 896 -> 580 MB, 21M rows 8.5 GB -> 1.0 GB, the rest
# being mostly SQLite's BULK_CACHE_KIB page cache). 500k rows took 450 MB / 810 MB but 30% longer on the
# 21M-row file (each chunk of a file in random order writes across every store's pages); 1M was as fast
# as the whole-file load at both sizes. STATUS_BLOCK_BYTES is the CSV reader's block.
STATUS_CHUNK_ROWS = 1_000_000
STATUS_BLOCK_BYTES = 1 << 22
STATUS_REASONS = (WRONG_FIELD_COUNT, EMPTY_STORE_ID, MISSING_VALUE, UNKNOWN_STATUS, UNPARSABLE_TIMESTAMP,
                  IMPOSSIBLE_TIMESTAMP)


class LoadError(Exception):
    """A load that cannot start: missing file, missing column, unreadable CSV. Nothing was written."""


@dataclass
class TableSummary:
    table: str                       # 'store_status' | 'business_hours' | 'timezones'
    source: str                      # path or '<request>'
    read: int                        # data rows read
    loaded: int                      # rows accepted (after de-duplication within the file)
    rejected: dict[str, int] = field(default_factory=dict)   # reason -> count
    examples: dict[str, str] = field(default_factory=dict)   # reason -> one example row, with its line
    duplicates: int = 0              # valid rows folded into another row of the same file
    seconds: float = 0.0             # time spent validating and writing

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def to_dict(self) -> dict:
        return {"table": self.table, "source": self.source, "read": self.read, "loaded": self.loaded,
                "duplicates": self.duplicates, "rejected": dict(self.rejected),
                "examples": dict(self.examples), "seconds": round(self.seconds, 3)}

    def format(self) -> str:
        lines = [f"{self.table} ({self.source}): read {self.read:,}, loaded {self.loaded:,}, "
                 f"duplicates {self.duplicates:,}, rejected {self.rejected_total:,} [{self.seconds:.1f} s]"]
        for reason, count in sorted(self.rejected.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"  rejected {count:,} x {reason}, e.g. {self.examples.get(reason, '?')}")
        return "\n".join(lines)


def _source_name(source) -> str:
    if isinstance(source, (str, Path)):
        return str(source)
    return str(getattr(source, "name", None) or "<request>")


def _canonical_column(name) -> str:
    """The column a header names: BOM and spaces dropped, case folded, day-column aliases resolved."""
    key = str(name).replace("\ufeff", "").strip().lower()
    return COLUMN_ALIASES.get(key, key)


def _normalise_header(names: list[str], table: str) -> list[str]:
    wanted = TABLE_COLUMNS[table]
    out = []
    for i, name in enumerate(names):
        key = _canonical_column(name)
        out.append(key if key in wanted and key not in out else f"_extra_{i}")
    return out


def read_table_csv(source, table: str) -> pd.DataFrame:
    """Read one table's CSV (path, or binary/text file-like) into a DataFrame of str columns.

    Only the table's columns are kept, under their canonical names (`day`/`dayOfWeek` -> `day_of_week`).
    Handles a UTF-8 BOM, CRLF, quoting, a missing final newline. Rows with the wrong number of fields are
    skipped and counted (reported by the ingest functions as 'wrong number of fields'); everything else
    is validated by `ingest_*`. Raises LoadError for a missing/unreadable file or a missing column.
    """
    name, data, names = _open_source(source, table)
    return _read_whole_csv(name, data, names, table)


def _open_source(source, table: str) -> tuple[str, object, list[str]]:
    """(name, path or BytesIO, normalised column names) after the header checks; LoadError otherwise."""
    if table not in TABLE_COLUMNS:
        raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLE_COLUMNS)}")
    name = _source_name(source)
    try:
        if isinstance(source, (str, Path)):
            with open(source, "rb") as handle:
                header = handle.readline()
            data = source
        else:
            raw = source.read()
            data = io.BytesIO(raw.encode("utf-8") if isinstance(raw, str) else bytes(raw))
            header = data.readline()
            data.seek(0)
    except FileNotFoundError:
        raise LoadError(f"{name}: file not found") from None
    except OSError as exc:
        raise LoadError(f"{name}: cannot read the file ({exc.strerror or exc})") from None
    try:
        header_text = header.decode("utf-8-sig").strip("\r\n")
    except UnicodeDecodeError:
        raise LoadError(f"{name}: not a UTF-8 CSV file") from None
    if not header_text.strip():
        raise LoadError(f"{name}: empty file, expected a header row with "
                        f"{', '.join(TABLE_COLUMNS[table])}")
    raw_names = next(csv.reader([header_text]))
    names = _normalise_header(raw_names, table)
    missing = [column for column in TABLE_COLUMNS[table] if column not in names]
    if missing:
        found = ", ".join(n.strip() for n in raw_names) or "nothing"
        raise LoadError(f"{name}: missing column {', '.join(missing)} for {table} (header has: {found})")
    return name, data, names


def _csv_options(names: list[str], table: str, on_invalid, use_threads: bool, **read) -> dict:
    return dict(
        read_options=pa_csv.ReadOptions(skip_rows=1, column_names=names, use_threads=use_threads, **read),
        parse_options=pa_csv.ParseOptions(invalid_row_handler=on_invalid),
        convert_options=pa_csv.ConvertOptions(
            column_types={column: pa.string() for column in names}, include_columns=list(TABLE_COLUMNS[table]),
            strings_can_be_null=False, quoted_strings_can_be_null=False))


def _unreadable(name: str, exc: Exception) -> LoadError:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return LoadError(f"{name}: unreadable CSV ({message})")


def _read_whole_csv(name: str, data, names: list[str], table: str) -> pd.DataFrame:
    def read(use_threads: bool) -> tuple[pa.Table, list]:
        invalid: list = []

        def on_invalid(row) -> str:
            invalid.append((row.number, row.text))
            return "skip"

        if hasattr(data, "seek"):
            data.seek(0)
        table_ = pa_csv.read_csv(str(data) if isinstance(data, Path) else data,
                                 **_csv_options(names, table, on_invalid, use_threads))
        return table_, invalid

    try:
        arrow, invalid = read(use_threads=True)
        if invalid and any(number is None for number, _ in invalid):
            arrow, invalid = read(use_threads=False)   # rare: re-read for the line numbers of bad rows
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise _unreadable(name, exc) from None
    frame = arrow.to_pandas()
    # Line numbers of the kept rows (header is line 1; blank lines are not counted).
    skipped = sorted(number for number, _ in invalid if number is not None)
    frame.attrs.update(source=name, from_csv=True, skipped_lines=skipped, wrong_field_examples=[
        f"line {number}: {text}" if number is not None else text for number, text in invalid[:1]])
    frame.attrs["wrong_field_count"] = len(invalid)
    return frame


def _line_number(frame: pd.DataFrame, position: int) -> int:
    """Line number in the CSV (header = line 1; blank lines are not counted, as by the CSV reader) of the
    kept row at `position`, or its 1-based row number for frames that did not come from a CSV."""
    if not frame.attrs.get("from_csv"):
        return position + 1
    # A chunk of a streamed file: kept rows before it, plus skipped lines before it no longer listed.
    line = position + 2 + int(frame.attrs.get("line_offset") or 0)
    for skipped in frame.attrs.get("skipped_lines") or ():   # sorted lines of rows dropped while reading
        if skipped > line:
            break
        line += 1
    return line


def _as_text(series: pd.Series) -> pd.Series:
    """A column as str with missing values as '' (JSON bodies may bring None or numbers)."""
    if series.dtype != "str" or series.isna().any():
        series = series.astype(object).where(series.notna(), "").astype(str)
    return series


class _Rejects:
    """Per-row reject reasons; the first reason that applies to a row is the one counted."""

    def __init__(self, frame: pd.DataFrame, columns: tuple[str, ...]):
        self.frame, self.columns = frame, columns
        self.code = np.zeros(len(frame), dtype=np.int8)
        self.reasons: list[str] = []

    def add(self, reason: str, mask) -> None:
        mask = np.asarray(mask, dtype=bool) & (self.code == 0)
        self.reasons.append(reason)
        self.code[mask] = len(self.reasons)

    @property
    def ok(self) -> np.ndarray:
        return self.code == 0

    def summarise(self, summary: TableSummary) -> None:
        counts = np.bincount(self.code, minlength=len(self.reasons) + 1)
        for index, reason in enumerate(self.reasons, start=1):
            if counts[index]:
                position = int(np.argmax(self.code == index))
                line = _line_number(self.frame, position)
                values = ",".join(str(self.frame[column].iloc[position]) for column in self.columns)
                where = "line" if self.frame.attrs.get("from_csv") else "row"
                summary.rejected[reason] = summary.rejected.get(reason, 0) + int(counts[index])
                summary.examples.setdefault(reason, f"{where} {line}: {values}")


def _start_summary(frame: pd.DataFrame, table: str, source: str) -> TableSummary:
    if source == "<request>" and frame.attrs.get("source"):
        source = frame.attrs["source"]
    summary = TableSummary(table=table, source=source, read=len(frame), loaded=0)
    wrong = int(frame.attrs.get("wrong_field_count") or 0)
    if wrong:
        _count_wrong_field_rows(summary, wrong, frame.attrs["wrong_field_examples"][0])
    return summary


def _count_wrong_field_rows(summary: TableSummary, count: int, example: str) -> None:
    """Rows the CSV reader skipped for their number of fields: read, and rejected with an example."""
    summary.read += count
    summary.rejected[WRONG_FIELD_COUNT] = count
    summary.examples[WRONG_FIELD_COUNT] = example


def _check_columns(frame: pd.DataFrame, table: str, source: str) -> pd.DataFrame:
    renamed = {}
    for column in frame.columns:
        key = _canonical_column(column)
        if key in TABLE_COLUMNS[table] and key != column and key not in frame.columns:
            renamed[column] = key
    if renamed:
        attrs = dict(frame.attrs)
        frame = frame.rename(columns=renamed)
        frame.attrs.update(attrs)
    missing = [column for column in TABLE_COLUMNS[table] if column not in frame.columns]
    if missing:
        raise LoadError(f"{source}: missing column {', '.join(missing)} for {table}")
    return frame


@contextmanager
def _write(conn: sqlite3.Connection) -> Iterator[None]:
    """One transaction, unless the caller already holds one (then its transaction is the unit)."""
    if conn.in_transaction:
        yield
    else:
        with transaction(conn):
            yield


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


def _parse_timestamps(text: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epoch microseconds, well-formed mask, valid mask) for stripped timestamp text."""
    well_formed = text.str.match(TIMESTAMP_RE).to_numpy(dtype=bool, na_value=False)
    cleaned = text.str.replace("UTC", "", regex=False).str.rstrip()
    cleaned = cleaned.where(well_formed, "")
    parsed = pd.to_datetime(cleaned, format="ISO8601", utc=True, errors="coerce")
    valid = parsed.notna().to_numpy() & well_formed
    micros = parsed.dt.as_unit("us").array.asi8.copy()
    return micros, well_formed, valid


def ingest_store_status(conn: sqlite3.Connection, frame: pd.DataFrame, source: str = "<request>") -> TableSummary:
    """Validate polls (raw text columns store_id, status, timestamp_utc) and append them in one transaction.

    A poll already stored for the same store and instant is kept once; if the statuses differ, inactive
    wins (also between duplicate rows of the frame). Returns the load summary.
    """
    started = time.perf_counter()
    frame = _check_columns(frame, "store_status", source)
    summary = _start_summary(frame, "store_status", source)
    with _bulk_settings(conn), _write(conn):
        load = _StatusLoad(conn, summary, streamed=False)
        load.add(frame)
        load.finish()
    summary.seconds = time.perf_counter() - started
    return summary


def _read_status_chunks(name: str, data, names: list[str]) -> Iterator[pd.DataFrame]:
    """The status CSV as DataFrames of STATUS_CHUNK_ROWS rows (the last one shorter), read as a stream.

    Each frame carries what `_line_number` and the summary need: `line_offset` (kept rows before it, plus
    skipped lines no longer listed), `skipped_lines` (lines of wrong-field rows from its start on), and the
    running `wrong_field_count` / `wrong_field_examples`. Serial reading (use_threads=False) is what gives
    the skipped rows their line numbers; it costs nothing measurable here (0.42 s vs 0.48 s at real size).
    An unreadable part of the file raises LoadError when it is reached.
    """
    skipped: list[int] = []
    state = {"count": 0, "example": None}

    def on_invalid(row) -> str:
        state["count"] += 1
        if row.number is not None:
            skipped.append(row.number)
        if state["example"] is None or (row.number is not None and row.number < state["example"][0]):
            state["example"] = (row.number, row.text)
        return "skip"

    chunk_rows = max(1, int(STATUS_CHUNK_ROWS))
    try:
        reader = pa_csv.open_csv(str(data) if isinstance(data, Path) else data,
                                 **_csv_options(names, "store_status", on_invalid, False,
                                                block_size=STATUS_BLOCK_BYTES))
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise _unreadable(name, exc) from None
    kept = pruned = 0             # kept rows emitted so far; skipped lines dropped from `skipped`
    pending: list[pa.RecordBatch] = []
    pending_rows = 0

    def emit(table: pa.Table) -> pd.DataFrame:
        frame = table.to_pandas()
        number, text = state["example"] or (None, "")
        frame.attrs.update(source=name, from_csv=True, line_offset=kept + pruned, skipped_lines=sorted(skipped),
                           wrong_field_count=state["count"],
                           wrong_field_examples=[f"line {number}: {text}" if number is not None else text])
        return frame

    try:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                batch = None
            except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
                raise _unreadable(name, exc) from None
            if batch is not None:
                pending.append(batch)
                pending_rows += batch.num_rows
            while pending_rows >= chunk_rows or (batch is None and pending_rows):
                table = pa.Table.from_batches(pending)
                size = min(chunk_rows, pending_rows)
                frame = emit(table.slice(0, size))
                rest = table.slice(size)
                pending, pending_rows = rest.to_batches(), rest.num_rows
                del table, rest
                yield frame
                # Skipped lines before this chunk's last row only shift later chunks: fold them into the offset.
                last = _line_number(frame, size - 1)
                skipped.sort()
                done = sum(1 for line in skipped if line < last)
                del skipped[:done]
                pruned += done
                kept += size
                del frame
            if batch is None:
                break
        if state["count"]:      # wrong-field rows after the last kept row (or a file of nothing else)
            yield emit(pa.table({column: pa.array([], pa.string()) for column in TABLE_COLUMNS["store_status"]}))
    finally:
        close = getattr(reader, "close", None)
        if close is not None:
            close()


def _ingest_status_csv(conn: sqlite3.Connection, name: str, data, names: list[str]) -> TableSummary:
    """Stream a status CSV into the caller's transaction, STATUS_CHUNK_ROWS rows at a time."""
    started = time.perf_counter()
    summary = TableSummary(table="store_status", source=name, read=0, loaded=0)
    load = _StatusLoad(conn, summary, streamed=True)
    wrong, example = 0, None
    for frame in _read_status_chunks(name, data, names):
        summary.read += len(frame)
        load.add(frame)
        wrong, example = frame.attrs["wrong_field_count"], frame.attrs["wrong_field_examples"][0]
    load.finish()
    if wrong:
        _count_wrong_field_rows(summary, wrong, example)
    # The reasons in the order of the checks, as a one-frame load lists them.
    order = {reason: i for i, reason in enumerate(STATUS_REASONS)}
    summary.rejected = dict(sorted(summary.rejected.items(), key=lambda item: order.get(item[0], len(order))))
    summary.examples = dict(sorted(summary.examples.items(), key=lambda item: order.get(item[0], len(order))))
    summary.seconds = time.perf_counter() - started
    return summary


def _grow(values: np.ndarray, size: int, fill: int) -> np.ndarray:
    if len(values) >= size:
        return values
    return np.concatenate([values, np.full(size - len(values) + 1024, fill, np.int64)])


def _unique_pairs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((b, a))
    a, b = a[order], b[order]
    first = np.r_[True, (a[1:] != a[:-1]) | (b[1:] != b[:-1])] if len(a) else np.zeros(0, bool)
    return a[first], b[first]


class _StatusLoad:
    """One file's (or frame's) polls, written chunk by chunk into the caller's transaction.

    Each chunk is validated, folded to one row per (store, instant) (inactive wins) and inserted; a poll
    already stored keeps one row, flipped to inactive if this one is. `poll_blocks` is rewritten once, in
    `finish()`, for every (store, block) the load touched, so it never disagrees with `store_status` when
    the transaction commits, and a block is not rebuilt once per chunk.

    `loaded` counts distinct polls of the file. Within a chunk that is exact. A row of a later chunk is a
    duplicate of an earlier chunk only if the earlier chunks had a poll of that store at that instant:
    rows inside the [first, last] instants the earlier chunks held for their store are inserted separately,
    and those the insert finds already stored are counted as duplicates, unless the store had polls at
    such instants before this load (then "stored by an earlier chunk" and "stored before" cannot be told
    apart without keeping every poll of the file; such rows count as loaded, not duplicates).
    """

    def __init__(self, conn: sqlite3.Connection, summary: TableSummary, streamed: bool):
        self.conn, self.summary = conn, summary
        self.accepted = self.loaded = self.chunks = 0
        self.seen_lo = self.seen_hi = np.empty(0, np.int64)       # by store_key: this load's earlier chunks
        self.before_lo = self.before_hi = np.empty(0, np.int64)   # by store_key: polls stored before the load
        self.touched_keys = self.touched_blocks = np.empty(0, np.int64)
        if streamed and conn.execute("SELECT 1 FROM store_status LIMIT 1").fetchone() is not None:
            spans = np.array(conn.execute("""
                SELECT store_key, (SELECT min(timestamp_us) FROM store_status p WHERE p.store_key = s.store_key),
                       (SELECT max(timestamp_us) FROM store_status p WHERE p.store_key = s.store_key)
                FROM stores s""").fetchall(), dtype=object).reshape(-1, 3)
            spans = spans[[lo is not None for lo in spans[:, 1]]].astype(np.int64)
            size = int(spans[:, 0].max(initial=-1)) + 1
            self.before_lo = _grow(self.before_lo, size, np.iinfo(np.int64).max)
            self.before_hi = _grow(self.before_hi, size, np.iinfo(np.int64).min)
            self.before_lo[spans[:, 0]], self.before_hi[spans[:, 0]] = spans[:, 1], spans[:, 2]

    def add(self, frame: pd.DataFrame) -> None:
        summary = self.summary
        store_id = _as_text(frame["store_id"]).str.strip()
        status = _as_text(frame["status"]).str.strip().str.lower()
        if pd.api.types.is_datetime64_any_dtype(frame["timestamp_utc"]):
            stamps = frame["timestamp_utc"]
            stamps = stamps.dt.tz_localize("UTC") if stamps.dt.tz is None else stamps.dt.tz_convert("UTC")
            micros = stamps.dt.as_unit("us").array.asi8.copy()
            well_formed = valid = stamps.notna().to_numpy()
            stamp_text = stamps.astype(str)
        else:
            stamp_text = _as_text(frame["timestamp_utc"]).str.strip()
            micros, well_formed, valid = _parse_timestamps(stamp_text)

        rejects = _Rejects(frame, TABLE_COLUMNS["store_status"])
        rejects.add(EMPTY_STORE_ID, (store_id == "").to_numpy())
        rejects.add(MISSING_VALUE, ((status == "") | (stamp_text == "")).to_numpy())
        active = (status == "active").to_numpy()
        rejects.add(UNKNOWN_STATUS, ~(active | (status == "inactive").to_numpy()))
        rejects.add(UNPARSABLE_TIMESTAMP, ~well_formed)
        rejects.add(IMPOSSIBLE_TIMESTAMP, ~valid)
        rejects.summarise(summary)

        ok = rejects.ok
        codes, uniques = pd.factorize(store_id[ok])
        micros = micros[ok]
        active = active[ok].astype(np.int64)
        del store_id, status, stamp_text, rejects
        if not len(codes):
            return
        keys = _store_keys(self.conn, pd.Index(uniques))[codes]
        # Sort by (store, instant, status): the first of equal (store, instant) rows is the inactive one.
        order = np.lexsort((active, micros, keys))
        keys, micros, active = keys[order], micros[order], active[order]
        first = np.ones(len(keys), dtype=bool)
        first[1:] = (keys[1:] != keys[:-1]) | (micros[1:] != micros[:-1])
        keys, micros, active = keys[first], micros[first], active[first]
        self.accepted += int(ok.sum())

        size = int(keys[-1]) + 1 if len(keys) else 0    # keys are sorted
        lo_max, hi_min = np.iinfo(np.int64).max, np.iinfo(np.int64).min
        self.seen_lo, self.seen_hi = _grow(self.seen_lo, size, lo_max), _grow(self.seen_hi, size, hi_min)
        self.before_lo, self.before_hi = _grow(self.before_lo, size, lo_max), _grow(self.before_hi, size, hi_min)
        # Rows an earlier chunk may have stored, where nothing was stored before the load: found stored
        # means a duplicate of an earlier chunk.
        certain = ((micros >= self.seen_lo[keys]) & (micros <= self.seen_hi[keys])
                   & ~((micros >= self.before_lo[keys]) & (micros <= self.before_hi[keys])))
        self.loaded += len(keys) - _write_polls(self.conn, keys, micros, active, certain)
        self.chunks += 1

        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], len(keys)] - 1
        store_keys = keys[starts]
        self.seen_lo[store_keys] = np.minimum(self.seen_lo[store_keys], micros[starts])
        self.seen_hi[store_keys] = np.maximum(self.seen_hi[store_keys], micros[ends])
        blocks = micros // BLOCK_US
        new_block = np.r_[True, (keys[1:] != keys[:-1]) | (blocks[1:] != blocks[:-1])]
        self.touched_keys, self.touched_blocks = _unique_pairs(
            np.concatenate([self.touched_keys, keys[new_block]]),
            np.concatenate([self.touched_blocks, blocks[new_block]]))

    def finish(self) -> None:
        if self.chunks:
            self.summary.loaded = self.loaded
            self.summary.duplicates = self.accepted - self.loaded
            _rebuild_poll_blocks(self.conn, self.touched_keys, self.touched_blocks)


def _write_polls(conn: sqlite3.Connection, keys: np.ndarray, micros: np.ndarray, active: np.ndarray,
                 certain: np.ndarray) -> int:
    """Insert polls sorted by (store_key, timestamp_us), unique on that pair; a poll already stored keeps
    one row, made inactive if the new one is. Does not touch `poll_blocks` (see `_StatusLoad.finish`).

    Returns how many rows of the `certain` mask were already stored (they are inserted by their own
    statements to tell).
    """
    inserted = certain_stored = 0
    for part in (~certain, certain):
        if not part.any():
            continue
        count = _insert_polls(conn, STATUS_INSERT, keys[part], micros[part], active[part])
        inserted += count
        if part is certain:
            certain_stored = int(part.sum()) - count
    if inserted < len(keys):     # some were stored already: inactive wins over a stored active poll
        inactive = active == 0
        if inactive.any():
            _insert_polls(conn, STATUS_MAKE_INACTIVE, keys[inactive], micros[inactive], active[inactive])
    return certain_stored


def _insert_polls(conn: sqlite3.Connection, statement: str, keys: np.ndarray, micros: np.ndarray,
                  active: np.ndarray) -> int:
    """Run `statement` once per store with its polls as one JSON array; the number of rows changed."""
    packed = micros * 2 + active
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)].tolist()
    store_keys = keys[starts].tolist()
    dumps = json.dumps
    cursor = conn.executemany(statement, ((key, dumps(packed[s:e].tolist())) for key, s, e in
                                          zip(store_keys, starts.tolist(), ends)))
    return max(int(cursor.rowcount), 0)


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
    """Validate business hours and replace, in one transaction, the rows of every store with a valid row.

    Times are stored normalised as `HH:MM:SS` plus the fraction as given; exact duplicate rows once.
    """
    started = time.perf_counter()
    frame = _check_columns(frame, "business_hours", source)
    summary = _start_summary(frame, "business_hours", source)
    store_id = _as_text(frame["store_id"]).str.strip()
    day = _as_text(frame["day_of_week"]).str.strip()
    start = _as_text(frame["start_time_local"]).str.strip()
    end = _as_text(frame["end_time_local"]).str.strip()

    rejects = _Rejects(frame, TABLE_COLUMNS["business_hours"])
    rejects.add(EMPTY_STORE_ID, (store_id == "").to_numpy())
    rejects.add(MISSING_VALUE, ((day == "") | (start == "") | (end == "")).to_numpy())
    day_ok = day.str.fullmatch(r"\+?0*[0-6]").to_numpy(dtype=bool, na_value=False)
    rejects.add(BAD_DAY, ~day_ok)
    start_text, start_ok = _normalise_times(start)
    end_text, end_ok = _normalise_times(end)
    rejects.add(BAD_TIME, ~(start_ok & end_ok))
    rejects.summarise(summary)

    ok = rejects.ok
    rows = pd.DataFrame({
        "store_id": store_id[ok].to_numpy(dtype=object),
        "day_of_week": pd.to_numeric(day[ok]).to_numpy(dtype=np.int64),
        "start_time_local": start_text[ok],
        "end_time_local": end_text[ok],
    })
    unique = rows.drop_duplicates()
    summary.loaded, summary.duplicates = len(unique), len(rows) - len(unique)
    with _write(conn):
        stores = json.dumps(pd.unique(unique["store_id"]).tolist())
        conn.execute("DELETE FROM business_hours WHERE store_id IN (SELECT value FROM json_each(?))", (stores,))
        conn.executemany(
            "INSERT INTO business_hours (store_id, day_of_week, start_time_local, end_time_local) "
            "VALUES (?, ?, ?, ?)", zip(*(unique[column].tolist() for column in unique.columns)))
    summary.seconds = time.perf_counter() - started
    return summary


def _normalise_times(text: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(`HH:MM:SS[.f]` text, valid mask) for local wall-clock times 00:00:00..23:59:59.999999."""
    parts = pc.extract_regex(pa.array(text, type=pa.string()), TIME_RE)   # null where no match
    ok = parts.is_valid()
    fields = {}
    for name in ("h", "m", "s", "f"):
        value = pc.fill_null(pc.struct_field(parts, name), "")
        if name in ("h", "m", "s"):                  # an absent group is "" (seconds default to 00)
            value = pc.if_else(pc.equal(value, ""), "00", value)
        fields[name] = value
    for name, limit in (("h", 23), ("m", 59), ("s", 59)):
        ok = pc.and_(ok, pc.less_equal(pc.cast(fields[name], pa.int32()), limit))
    normal = pc.binary_join_element_wise(pc.utf8_lpad(fields["h"], 2, "0"), fields["m"], fields["s"], ":")
    normal = pc.binary_join_element_wise(normal, fields["f"], "")
    return normal.to_numpy(zero_copy_only=False), ok.to_numpy(zero_copy_only=False)


def ingest_timezones(conn: sqlite3.Connection, frame: pd.DataFrame, source: str = "<request>") -> TableSummary:
    """Validate store timezones and replace those stores' rows in one transaction.

    The zone text is kept as given (trimmed; empty -> NULL): an unknown zone is not a reject, the report
    falls back to the default zone and counts it. For a store listed twice, the last row wins.
    """
    started = time.perf_counter()
    frame = _check_columns(frame, "timezones", source)
    summary = _start_summary(frame, "timezones", source)
    store_id = _as_text(frame["store_id"]).str.strip()
    zone = _as_text(frame["timezone_str"]).str.strip()

    rejects = _Rejects(frame, TABLE_COLUMNS["timezones"])
    rejects.add(EMPTY_STORE_ID, (store_id == "").to_numpy())
    rejects.summarise(summary)

    ok = rejects.ok
    rows = pd.DataFrame({"store_id": store_id[ok].to_numpy(dtype=object),
                         "timezone_str": zone[ok].to_numpy(dtype=object)})
    unique = rows.drop_duplicates("store_id", keep="last")
    unique = unique.assign(timezone_str=unique["timezone_str"].where(unique["timezone_str"] != "", None))
    summary.loaded, summary.duplicates = len(unique), len(rows) - len(unique)
    with _write(conn):
        conn.executemany(
            "INSERT INTO timezones (store_id, timezone_str) VALUES (?, ?) "
            "ON CONFLICT (store_id) DO UPDATE SET timezone_str = excluded.timezone_str",
            unique.itertuples(index=False, name=None))
    summary.seconds = time.perf_counter() - started
    return summary


# The status file streams through _ingest_status_csv; the small tables load whole.
INGEST = {"business_hours": ingest_business_hours, "timezones": ingest_timezones}


def load_files(conn: sqlite3.Connection, status=None, hours=None, timezones=None) -> list[TableSummary]:
    """Load the given CSVs (paths or file-likes; None = skip that table) in ONE transaction.

    Every file's header is checked, and the hours and timezones files are read, before anything is
    written. The status file is then streamed in chunks of STATUS_CHUNK_ROWS rows inside the same
    transaction (bounded memory for any file size), so a LoadError found midway (an unreadable part)
    also leaves the database as it was, including the other tables of the call.
    """
    frames = []
    for table, source in (("store_status", status), ("business_hours", hours), ("timezones", timezones)):
        if source is None:
            continue
        if table == "store_status":
            frames.append((table, _open_source(source, table)))
        else:
            frames.append((table, read_table_csv(source, table)))
    summaries = []
    with _bulk_settings(conn), _write(conn):
        for table, frame in frames:
            if table == "store_status":
                summaries.append(_ingest_status_csv(conn, *frame))
            else:
                summaries.append(INGEST[table](conn, frame, source=frame.attrs["source"]))
    return summaries


def default_files(data_dir: str | Path) -> dict[str, Path | None]:
    """The CSVs of `data_dir` by table: store_status.csv, business_hours.csv or menu_hours.csv,
    timezones.csv (None where no such file exists)."""
    data_dir = Path(data_dir)

    def first(*names: str) -> Path | None:
        return next((data_dir / n for n in names if (data_dir / n).is_file()), None)

    return {"store_status": first("store_status.csv"),
            "business_hours": first("business_hours.csv", "menu_hours.csv"),
            "timezones": first("timezones.csv", "store_timezones.csv")}


def ensure_loaded(conn: sqlite3.Connection, data_dir: str | Path) -> str:
    """First start: if the database has no polls, load `data_dir`'s CSVs, else a generated demo set.

    Returns a one-line description of what happened, for the caller's log. A LoadError from data_dir's
    files propagates (nothing is written).
    """
    if conn.execute("SELECT 1 FROM store_status LIMIT 1").fetchone() is not None:
        return "database already has polls; nothing loaded"
    data_dir = Path(data_dir)
    files = default_files(data_dir)
    if files["store_status"] is not None:
        origin = f"CSV files from {data_dir}"
    else:
        import sample_data  # lazily: only a first start without data needs the generator

        paths = sample_data.generate_dataset(data_dir / "generated", stores=DEMO_STORES, seed=0)
        files = {table: Path(paths[table]) for table in TABLE_COLUMNS}
        origin = f"a generated demo set ({DEMO_STORES} stores, no store_status.csv in {data_dir})"
    summaries = load_files(conn, status=files["store_status"], hours=files["business_hours"],
                           timezones=files["timezones"])
    parts = [f"{s.table} {s.loaded:,} rows" + (f" ({s.rejected_total:,} rejected)" if s.rejected else "")
             for s in summaries]
    return f"empty database: loaded {origin}: " + ", ".join(parts)


# --- command line -----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    """`python database.py load [--db PATH] [--status P] [--hours P] [--timezones P]` or `... init`."""
    from config import Settings

    parser = argparse.ArgumentParser(prog="database.py", description="store-monitoring storage")
    commands = parser.add_subparsers(dest="command", required=True)
    init = commands.add_parser("init", help="create the database schema")
    load = commands.add_parser(
        "load", help="load CSV files (all in one transaction); without table options, the files of the "
                     "data directory: store_status.csv, business_hours.csv or menu_hours.csv, timezones.csv")
    for sub in (init, load):
        sub.add_argument("--db", type=Path, help="SQLite file (default: SM_DATABASE or the project's)")
    load.add_argument("--status", type=Path, help="store_status CSV (store_id,status,timestamp_utc)")
    load.add_argument("--hours", type=Path, help="business hours CSV (store_id,day|dayOfWeek|day_of_week,"
                                                 "start_time_local,end_time_local)")
    load.add_argument("--timezones", type=Path, help="timezones CSV (store_id,timezone_str)")
    load.add_argument("--data-dir", type=Path, help="directory of the default files (default: SM_DATA_DIR)")
    args = parser.parse_args(argv)

    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    db_path = args.db or settings.database_path
    if args.command == "init":
        try:
            connect(db_path).close()
        except sqlite3.Error as exc:
            print(f"error: {db_path}: {exc}", file=sys.stderr)
            return 2
        print(f"schema ready in {db_path}")
        return 0

    paths = {"store_status": args.status, "business_hours": args.hours, "timezones": args.timezones}
    if not any(paths.values()):
        data_dir = args.data_dir or settings.data_dir
        paths = default_files(data_dir)
        if paths["store_status"] is None:
            print(f"error: {Path(data_dir) / 'store_status.csv'}: file not found "
                  f"(put the CSVs there or give --status/--hours/--timezones)", file=sys.stderr)
            return 2
        for table, label in (("business_hours", "business_hours.csv or menu_hours.csv"),
                             ("timezones", "timezones.csv")):
            if paths[table] is None:
                print(f"{table}: no {label} in {data_dir}; skipped")
    started = time.perf_counter()
    try:
        conn = connect(db_path)
    except sqlite3.Error as exc:
        print(f"error: {db_path}: cannot open the database: {exc}; nothing was loaded", file=sys.stderr)
        return 2
    try:
        summaries = load_files(conn, status=paths["store_status"], hours=paths["business_hours"],
                               timezones=paths["timezones"])
    except LoadError as exc:
        print(f"error: {exc}; nothing was loaded", file=sys.stderr)
        return 2
    except sqlite3.Error as exc:
        print(f"error: {db_path}: {exc}; nothing was loaded", file=sys.stderr)
        return 1
    finally:
        conn.close()
    for summary in summaries:
        print(summary.format())
    print(f"loaded into {db_path} in {time.perf_counter() - started:.1f} s (one transaction)")
    return 0

# --- report inputs ------------------------------------------------------------------------------------
# Owned by the report path: reads just what one report needs, in one snapshot.

POLL_COLUMNS = ["store_id", "timestamp_utc", "status"]
HOURS_COLUMNS = ["store_id", "day_of_week", "start_time_local", "end_time_local"]
ZONE_COLUMNS = ["store_id", "timezone_str"]


@dataclass
class ReportInputs:
    polls: pd.DataFrame           # store_id (categorical), timestamp_utc (datetime64[us, UTC]), status (categorical)
    business_hours: pd.DataFrame  # store_id, day_of_week, start_time_local, end_time_local
    timezones: pd.DataFrame       # store_id, timezone_str
    now: pd.Timestamp | None      # as_of, or the latest poll; None when there are no polls


def read_report_inputs(database_path: str | Path, *, lookback_us: int, as_of_us: int | None = None,
                       store_ids: list[str] | None = None) -> ReportInputs:
    """The polls, hours and timezones a report at `as_of_us` (default: the latest poll) depends on.

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
    # `chosen` is the stores the report is about (all, or those asked for). Placeholders bind in the
    # order they appear in the text: the ids of `chosen` always come first.
    chosen = "WITH chosen AS (SELECT store_key, store_id FROM stores{})".format(
        "" if store_ids is None else " WHERE store_id IN (SELECT value FROM json_each(?))")
    ids = () if store_ids is None else (json.dumps(list(store_ids)),)
    conn = sqlite3.connect(database_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        conn.execute("BEGIN")  # deferred: the snapshot starts at the first read and holds until ROLLBACK
        if as_of_us is None:
            # The latest poll: one primary-key seek per store.
            latest = conn.execute("""SELECT MAX((SELECT MAX(p.timestamp_us) FROM store_status p
                                                 WHERE p.store_key = s.store_key)) FROM stores s""").fetchone()[0]
            now_us = None if latest is None else int(latest)
        else:
            now_us = as_of_us
        if now_us is None:
            return ReportInputs(*(pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
                                  for columns in (POLL_COLUMNS, HOURS_COLUMNS, ZONE_COLUMNS)), None)
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
        if store_ids is None:
            hours_rows = conn.execute(f"SELECT {', '.join(HOURS_COLUMNS)} FROM business_hours").fetchall()
            zone_rows = conn.execute(f"SELECT {', '.join(ZONE_COLUMNS)} FROM timezones").fetchall()
        else:
            hours_rows = conn.execute(f"""{chosen} SELECT {', '.join('h.' + c for c in HOURS_COLUMNS)}
                FROM chosen s JOIN business_hours h ON h.store_id = s.store_id""", ids).fetchall()
            zone_rows = conn.execute(f"""{chosen} SELECT s.store_id, z.timezone_str
                FROM chosen s JOIN timezones z ON z.store_id = s.store_id""", ids).fetchall()
    finally:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        conn.close()

    packed = np.frombuffer(b"".join(polls for _, polls in blocks), dtype="<i8").astype(np.int64)
    block_keys = np.repeat(np.array([key for key, _ in blocks], dtype=np.int64),
                           np.array([len(polls) // 8 for _, polls in blocks], dtype=np.int64))
    recent = (packed >> 1 >= week_start) & (packed >> 1 <= now_us)
    block_keys, packed = block_keys[recent], packed[recent]
    # Each store's earlier poll goes just before its recent ones: the polls stay in (store, time) order.
    at = np.searchsorted(block_keys, before[:, 0], side="left")
    keys = np.insert(block_keys, at, before[:, 0])
    packed = np.insert(packed, at, before[:, 1])
    t_us, active = packed >> 1, (packed & 1).astype(np.int8)
    # Store ids travel as a categorical over the chosen stores: one string per store, not per poll.
    store_keys = np.array([key for key, _ in stores], dtype=np.int64)
    position = np.full(int(store_keys.max(initial=-1)) + 1, -1, np.int64)
    position[store_keys] = np.arange(len(store_keys))
    polls = pd.DataFrame({
        "store_id": pd.Categorical.from_codes(position[keys], categories=[store_id for _, store_id in stores]),
        "timestamp_utc": pd.Series(t_us.astype("datetime64[us]")).dt.tz_localize("UTC"),
        "status": pd.Categorical.from_codes(active, categories=["inactive", "active"]),
    })
    hours = pd.DataFrame(hours_rows, columns=HOURS_COLUMNS, dtype=object)
    zones = pd.DataFrame(zone_rows, columns=ZONE_COLUMNS, dtype=object)
    return ReportInputs(polls, hours, zones, pd.Timestamp(now_us, unit="us", tz="UTC"))


def first_poll_us(database_path: str | Path) -> int | None:
    """The earliest poll of any store (UTC microseconds), None without polls: one seek per store."""
    conn = sqlite3.connect(database_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    try:
        first = conn.execute("""SELECT MIN((SELECT MIN(p.timestamp_us) FROM store_status p
                                            WHERE p.store_key = s.store_key)) FROM stores s""").fetchone()[0]
    finally:
        conn.close()
    return None if first is None else int(first)


if __name__ == "__main__":
    raise SystemExit(main())
