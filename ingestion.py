"""Ingestion that every storage backend shares: reading the input CSVs, validating rows, load summaries.

CSV (or a request's JSON rows) -> validated, typed rows -> the backend writes them in one transaction.
Every table is read with all columns as text (store ids are opaque and never parsed as numbers),
validated with vectorised string operations, and each row that cannot be read gets exactly one reject
reason (the first that applies, in the order of the checks). Nothing here touches a database: the
`validate_*` functions return the rows to write and a `TableSummary` whose reject counts are final; the
backend (storage/sqlite.py, storage/postgresql.py) adds how many rows were new, already stored or changed.
"""
from __future__ import annotations

import csv
import io
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
from tqdm import tqdm

TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "store_status": ("store_id", "status", "timestamp_utc"),
    "business_hours": ("store_id", "day_of_week", "start_time_local", "end_time_local"),
    "timezones": ("store_id", "timezone_str"),
    "special_hours": ("store_id", "date", "start_time_local", "end_time_local"),
}
# Header names seen in the wild (compared case-insensitively, surrounding spaces ignored).
COLUMN_ALIASES = {"day": "day_of_week", "dayofweek": "day_of_week", "day_of_week": "day_of_week"}

EMPTY_STORE_ID = "empty store_id"
UNSAFE_STORE_ID = "unsafe store_id"
MISSING_VALUE = "missing value"
UNKNOWN_STATUS = "unknown status"
UNPARSABLE_TIMESTAMP = "unparsable timestamp"
IMPOSSIBLE_TIMESTAMP = "impossible timestamp"
BAD_DAY = "day outside 0..6"
BAD_TIME = "time outside 00:00:00..23:59:59"
WRONG_FIELD_COUNT = "wrong number of fields"
BAD_DATE = "bad date"
ONE_TIME_EMPTY = "one time empty"

# `2023-01-22 12:09:39.388884 UTC` (fraction of 0-6 digits) or ISO 8601 with `T`, `Z` or an offset;
# no zone at all means UTC (the column is `timestamp_utc`).
TIMESTAMP_RE = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?: ?UTC|Z|[+-]\d{2}(?::?\d{2})?)?$"
# `HH:MM:SS` with an optional fraction; `H:MM` and `HH:MM` are read as `HH:MM:00`.
TIME_RE = r"^(?P<h>\d{1,2}):(?P<m>\d{2})(?::(?P<s>\d{2})(?P<f>\.\d{1,6})?)?$"
DATE_RE = r"(?!0000)\d{4}-\d{2}-\d{2}"   # special_hours.date, a local calendar date; also checked to exist
# A store id is opaque text, but it ends up in CSV files, logs and spreadsheets: at most MAX_STORE_ID
# characters, no control characters (a CR split a JSON id into a phantom store; a NUL cannot be selected
# again), and no first character a spreadsheet reads as a formula (=, +, -, @). One exception: a minus
# followed by digits only, a negative integer id as the real data's signed 64-bit ids allow; a
# spreadsheet reads it as a number, never as a formula (and report CSVs still quote it as text).
MAX_STORE_ID = 255
UNSAFE_STORE_ID_RE = r"[=+@]|-(?![0-9]+\Z)|.*[\x00-\x1f\x7f]"
EXAMPLE_VALUE_CHARS = 80      # a reject's example shows at most this much of each value

DEMO_STORES = 300             # size of the generated data set loaded on first start without data/*.csv
# A status CSV is loaded in chunks of this many rows, so memory no longer grows with the file (measured
# peak RSS, whole file at once -> chunks: 1.85M rows 896 -> 580 MB, 21M rows 8.5 GB -> 1.0 GB, the rest
# being mostly the database's page cache). 500k rows took 450 MB / 810 MB but 30% longer on the
# 21M-row file (each chunk of a file in random order writes across every store's pages); 1M was as fast
# as the whole-file load at both sizes. STATUS_BLOCK_BYTES is the CSV reader's block.
STATUS_CHUNK_ROWS = 1_000_000
STATUS_BLOCK_BYTES = 1 << 22
STATUS_REASONS = (WRONG_FIELD_COUNT, EMPTY_STORE_ID, UNSAFE_STORE_ID, MISSING_VALUE, UNKNOWN_STATUS,
                  UNPARSABLE_TIMESTAMP, IMPOSSIBLE_TIMESTAMP)


class LoadError(Exception):
    """A load that cannot start: missing file, missing column, unreadable CSV. Nothing was written."""


@dataclass
class TableSummary:
    """What one load did with one table's rows. Every row read lands in exactly one category:

    read = new + already_stored + changed + conflicting + duplicates + rejected (`categories_total`).

    - new: a row the database did not have (store_status: a poll at a new instant).
    - already_stored: identical to a row stored before this load; nothing changes.
    - changed: store_status: a stored `active` poll this row made `inactive` (inactive wins);
      timezones: a store whose stored zone this row replaced. Always 0 for the hours tables.
    - conflicting: store_status only: an `active` row at an instant that is `inactive`, stored before
      this load or in the file; inactive wins, so the row changes nothing.
    - duplicates: a repeat of an earlier row of the same file (same store, instant and status; for
      timezones, a store listed again: its last row counts; for the hours tables, the same row again).
    - rejected: by reason, with one example each.
    `removed` is not a category of rows read: the stored rows the file replaced and does not have
    itself (business_hours: of its stores; special_hours: of its (store, date) pairs).
    `loaded` (kept for older clients) is read - rejected - duplicates: the rows accepted, new or not.
    """
    table: str                       # 'store_status' | 'business_hours' | 'timezones' | 'special_hours'
    source: str                      # path or '<request>'
    read: int                        # data rows read
    rejected: dict[str, int] = field(default_factory=dict)   # reason -> count
    examples: dict[str, str] = field(default_factory=dict)   # reason -> one example row, with its line
    duplicates: int = 0
    seconds: float = 0.0             # time spent validating and writing
    new: int = 0
    already_stored: int = 0
    changed: int = 0
    conflicting: int = 0
    removed: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    @property
    def loaded(self) -> int:
        return self.read - self.rejected_total - self.duplicates

    @property
    def categories_total(self) -> int:
        return (self.new + self.already_stored + self.changed + self.conflicting + self.duplicates
                + self.rejected_total)

    def to_dict(self) -> dict:
        return {"table": self.table, "source": self.source, "read": self.read, "new": self.new,
                "already_stored": self.already_stored, "changed": self.changed,
                "conflicting": self.conflicting, "duplicates": self.duplicates,
                "rejected": dict(self.rejected), "examples": dict(self.examples), "removed": self.removed,
                "loaded": self.loaded, "seconds": round(self.seconds, 3)}

    def format(self) -> str:
        labels = SUMMARY_LABELS.get(self.table, SUMMARY_LABELS["store_status"])
        counts = ", ".join(f"{label} {getattr(self, name):,}" for name, label in labels)
        text = f"{self.table} ({self.source}): read {self.read:,}: {counts}, rejected {self.rejected_total:,}"
        if self.table in REPLACED_BY_FILE:
            text += f"; removed {self.removed:,} stored rows {REPLACED_BY_FILE[self.table]}"
        lines = [f"{text} [{self.seconds:.1f} s]"]
        if self.conflicting:
            lines.append("  conflicting: active where the same instant is inactive (stored or in the file); "
                         "inactive kept")
        for reason, count in sorted(self.rejected.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"  rejected {count:,} x {reason}, e.g. {self.examples.get(reason, '?')}")
        return "\n".join(lines)


# The categories each table's summary text names (all of them are always in to_dict; the others are 0).
SUMMARY_LABELS = {
    "store_status": (("new", "new"), ("already_stored", "already stored"), ("changed", "changed to inactive"),
                     ("conflicting", "conflicting"), ("duplicates", "duplicates")),
    "business_hours": (("new", "new"), ("already_stored", "already stored"), ("duplicates", "duplicates")),
    "special_hours": (("new", "new"), ("already_stored", "already stored"), ("duplicates", "duplicates")),
    "timezones": (("new", "new"), ("already_stored", "already stored"), ("changed", "changed"),
                  ("duplicates", "duplicates (store listed again, last row counts)")),
}
REPLACED_BY_FILE = {"business_hours": "the file replaced (its stores' schedules)",
                    "special_hours": "the file replaced (its stores' dates)"}


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


def read_table_csv(source, table: str, name: str | None = None) -> pd.DataFrame:
    """Read one table's CSV (path, or binary/text file-like) into a DataFrame of str columns.

    Only the table's columns are kept, under their canonical names (`day`/`dayOfWeek` -> `day_of_week`).
    Handles a UTF-8 BOM, CRLF, quoting, a missing final newline. Rows with the wrong number of fields are
    skipped and counted (reported by the ingest functions as 'wrong number of fields'); everything else
    is validated by `ingest_*`. Raises LoadError for a missing/unreadable file or a missing column.
    `name`: what messages and the summary call the source instead of its path (e.g. '<request>').
    """
    name, data, names = _open_source(source, table, name)
    return _read_whole_csv(name, data, names, table)


def _open_source(source, table: str, name: str | None = None) -> tuple[str, object, list[str]]:
    """(name, path or BytesIO, normalised column names) after the header checks; LoadError otherwise."""
    if table not in TABLE_COLUMNS:
        raise ValueError(f"unknown table {table!r}; expected one of {', '.join(TABLE_COLUMNS)}")
    name = name or _source_name(source)
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
    try:
        raw_names = next(csv.reader([header_text]))
    except csv.Error as exc:  # e.g. a lone carriage return inside the header line
        raise LoadError(f"{name}: unreadable header line ({exc})") from None
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

    def add_store_ids(self, store_id: pd.Series) -> None:
        """The store-id checks every table shares: empty, then unsafe (see UNSAFE_STORE_ID_RE)."""
        self.add(EMPTY_STORE_ID, (store_id == "").to_numpy())
        unsafe = store_id.str.match(UNSAFE_STORE_ID_RE, flags=re.DOTALL) | (store_id.str.len() > MAX_STORE_ID)
        self.add(UNSAFE_STORE_ID, unsafe.to_numpy(dtype=bool, na_value=True))

    @property
    def ok(self) -> np.ndarray:
        return self.code == 0

    def summarise(self, summary: TableSummary) -> None:
        counts = np.bincount(self.code, minlength=len(self.reasons) + 1)
        for index, reason in enumerate(self.reasons, start=1):
            if counts[index]:
                position = int(np.argmax(self.code == index))
                line = _line_number(self.frame, position)
                values = ",".join(_example_value(self.frame[column].iloc[position]) for column in self.columns)
                where = "line" if self.frame.attrs.get("from_csv") else "row"
                summary.rejected[reason] = summary.rejected.get(reason, 0) + int(counts[index])
                summary.examples.setdefault(reason, f"{where} {line}: {values}")


def _example_value(value) -> str:
    """A value as a reject example shows it: control characters escaped, long text cut short."""
    text = str(value).encode("unicode_escape").decode("ascii") if re.search(r"[\x00-\x1f\x7f]", str(value)) \
        else str(value)
    return text if len(text) <= EXAMPLE_VALUE_CHARS else f"{text[:EXAMPLE_VALUE_CHARS]}… ({len(text):,} characters)"


def _start_summary(frame: pd.DataFrame, table: str, source: str) -> TableSummary:
    if source == "<request>" and frame.attrs.get("source"):
        source = frame.attrs["source"]
    summary = TableSummary(table=table, source=source, read=len(frame))
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




def _parse_timestamps(text: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(epoch microseconds, well-formed mask, valid mask) for stripped timestamp text."""
    well_formed = text.str.match(TIMESTAMP_RE).to_numpy(dtype=bool, na_value=False)
    cleaned = text.str.replace("UTC", "", regex=False).str.rstrip()
    cleaned = cleaned.where(well_formed, "")
    parsed = pd.to_datetime(cleaned, format="ISO8601", utc=True, errors="coerce")
    valid = parsed.notna().to_numpy() & well_formed
    micros = parsed.dt.as_unit("us").array.asi8.copy()
    return micros, well_formed, valid



def _read_status_chunks(name: str, data, names: list[str]) -> Iterator[pd.DataFrame]:
    """The status CSV as DataFrames of STATUS_CHUNK_ROWS rows (the last one shorter), read as a stream.

    Each frame carries what `_line_number` and the summary need: `line_offset` (kept rows before it, plus
    skipped lines no longer listed), `skipped_lines` (lines of wrong-field rows from its start on), and the
    running `wrong_field_count` / `wrong_field_examples`; for the load, `last_chunk` (no rows follow it)
    and `bytes` (the CSV text of its rows: the columns read, separators, line ends; for the progress bar).
    Serial reading (use_threads=False) is what gives
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

    def emit(table: pa.Table, last: bool) -> pd.DataFrame:
        text_bytes = sum(pc.sum(pc.binary_length(column)).as_py() or 0 for column in table.columns)
        frame = table.to_pandas()
        number, text = state["example"] or (None, "")
        frame.attrs.update(source=name, from_csv=True, line_offset=kept + pruned, skipped_lines=sorted(skipped),
                           wrong_field_count=state["count"],
                           wrong_field_examples=[f"line {number}: {text}" if number is not None else text],
                           last_chunk=last, bytes=text_bytes + table.num_rows * len(names))
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
                frame = emit(table.slice(0, size), last=batch is None and pending_rows <= chunk_rows)
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
            yield emit(pa.table({column: pa.array([], pa.string()) for column in TABLE_COLUMNS["store_status"]}),
                       last=True)
    finally:
        close = getattr(reader, "close", None)
        if close is not None:
            close()



def _source_bytes(data) -> int:
    """Size in bytes of a source from `_open_source` (a path or an in-memory buffer); 0 if unknown."""
    try:
        if isinstance(data, (str, Path)):
            return Path(data).stat().st_size
        return len(data.getbuffer())
    except (OSError, AttributeError, TypeError):
        return 0


PROGRESS_DELAY_S = 2.0   # a load shows its progress bar only once it has run this long
PROGRESS_REFRESH_S = 0.5  # and redraws it at most this often


def _progress_bar(total_bytes: int, desc: str, enabled: bool | None) -> tqdm:
    """A progress bar on stderr by bytes of the file (MB done, rate, time left; the caller adds rows).

    enabled=None: only on a terminal (tqdm's `disable=None` tests stderr), so logs, pipes, tests and the
    benchmark stay quiet; it appears once the load has run PROGRESS_DELAY_S and is cleared at the end.
    """
    return tqdm(total=total_bytes, desc=desc, unit="B", unit_scale=True, unit_divisor=1000, file=sys.stderr,
                disable=None if enabled is None else not enabled, delay=PROGRESS_DELAY_S, leave=False,
                mininterval=PROGRESS_REFRESH_S, miniters=1, dynamic_ncols=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}B/{total_fmt}B "
                           "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")



def status_rows(frame: pd.DataFrame, summary: TableSummary) -> tuple[pd.Index, np.ndarray, np.ndarray, np.ndarray]:
    """Validate one chunk of polls (columns store_id, status, timestamp_utc: text, or timestamps from a JSON
    body) and add its rejects to `summary`. Returns the valid rows as (the distinct store ids, each row's
    code into them, UTC microseconds, active 1/0)."""
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
    rejects.add_store_ids(store_id)
    rejects.add(MISSING_VALUE, ((status == "") | (stamp_text == "")).to_numpy())
    active = (status == "active").to_numpy()
    rejects.add(UNKNOWN_STATUS, ~(active | (status == "inactive").to_numpy()))
    rejects.add(UNPARSABLE_TIMESTAMP, ~well_formed)
    rejects.add(IMPOSSIBLE_TIMESTAMP, ~valid)
    rejects.summarise(summary)

    ok = rejects.ok
    codes, uniques = pd.factorize(store_id[ok])
    return pd.Index(uniques), codes, micros[ok], active[ok].astype(np.int64)


def poll_groups(keys: np.ndarray, micros: np.ndarray, active: np.ndarray):
    """Rows folded to groups, one per (store, instant), sorted by store then instant: (keys, micros,
    whether the group has an active row, whether it has an inactive row, rows in the group)."""
    # Sort by (store, instant, status): a group's inactive rows come first, its active rows last.
    order = np.lexsort((active, micros, keys))
    keys, micros, active = keys[order], micros[order], active[order]
    del order
    starts = np.flatnonzero(np.r_[True, (keys[1:] != keys[:-1]) | (micros[1:] != micros[:-1])])
    ends = np.r_[starts[1:], len(keys)]
    return keys[starts], micros[starts], active[ends - 1] == 1, active[starts] == 0, ends - starts


def stream_status_csv(name: str, data, names: list[str], start_load: Callable, progress: bool | None = None
                      ) -> TableSummary:
    """Stream a status CSV, STATUS_CHUNK_ROWS rows at a time, into a backend's load: `start_load(summary,
    expected_bytes)` returns an object with `add(frame, last)` (validate, count, write a chunk) and
    `finish()`. Shows a progress bar on a terminal (`_progress_bar`; `progress` True/False forces it)."""
    started = time.perf_counter()
    summary = TableSummary(table="store_status", source=name, read=0)
    total = _source_bytes(data)
    load = start_load(summary, total)
    wrong, example = 0, None
    done = 0
    with _progress_bar(total, "store_status", progress) as bar:
        for frame in _read_status_chunks(name, data, names):
            summary.read += len(frame)
            load.add(frame, last=frame.attrs["last_chunk"])
            wrong, example = frame.attrs["wrong_field_count"], frame.attrs["wrong_field_examples"][0]
            step = max(0, min(int(frame.attrs["bytes"]), total - done))
            done += step
            bar.set_postfix_str(f"{summary.read:,} rows, "
                                f"{summary.read / max(time.perf_counter() - started, 1e-9):,.0f} rows/s",
                                refresh=False)
            bar.update(step)
        bar.set_description_str("store_status: writing")   # the rest of the load's time
        load.finish()
        bar.update(max(0, total - done))
    if wrong:
        _count_wrong_field_rows(summary, wrong, example)
    # The reasons in the order of the checks, as a one-frame load lists them.
    order = {reason: i for i, reason in enumerate(STATUS_REASONS)}
    summary.rejected = dict(sorted(summary.rejected.items(), key=lambda item: order.get(item[0], len(order))))
    summary.examples = dict(sorted(summary.examples.items(), key=lambda item: order.get(item[0], len(order))))
    summary.seconds = time.perf_counter() - started
    return summary


def business_hours_rows(frame: pd.DataFrame, source: str) -> tuple[TableSummary, pd.DataFrame]:
    """Validate business hours: the summary (rejects, duplicates) and the distinct valid rows, times
    normalised as `HH:MM:SS` plus the fraction as given."""
    frame = _check_columns(frame, "business_hours", source)
    summary = _start_summary(frame, "business_hours", source)
    store_id = _as_text(frame["store_id"]).str.strip()
    day = _as_text(frame["day_of_week"]).str.strip()
    start = _as_text(frame["start_time_local"]).str.strip()
    end = _as_text(frame["end_time_local"]).str.strip()

    rejects = _Rejects(frame, TABLE_COLUMNS["business_hours"])
    rejects.add_store_ids(store_id)
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
    summary.duplicates = len(rows) - len(unique)
    return summary, unique


def timezone_rows(frame: pd.DataFrame, source: str) -> tuple[TableSummary, pd.DataFrame]:
    """Validate store timezones: the summary and one row per store (the last one listed), zone text as
    given (trimmed; empty -> None). An unknown zone is not a reject: the report falls back to the default
    zone and counts it."""
    frame = _check_columns(frame, "timezones", source)
    summary = _start_summary(frame, "timezones", source)
    store_id = _as_text(frame["store_id"]).str.strip()
    zone = _as_text(frame["timezone_str"]).str.strip()

    rejects = _Rejects(frame, TABLE_COLUMNS["timezones"])
    rejects.add_store_ids(store_id)
    rejects.summarise(summary)

    ok = rejects.ok
    rows = pd.DataFrame({"store_id": store_id[ok].to_numpy(dtype=object),
                         "timezone_str": zone[ok].to_numpy(dtype=object)})
    unique = rows.drop_duplicates("store_id", keep="last")
    unique = unique.assign(timezone_str=unique["timezone_str"].where(unique["timezone_str"] != "", None))
    summary.duplicates = len(rows) - len(unique)
    return summary, unique


def special_hours_rows(frame: pd.DataFrame, source: str) -> tuple[TableSummary, pd.DataFrame]:
    """Validate special hours (a local date's own hours, replacing its weekday's): the summary and the
    distinct valid rows. Both times empty = closed that date (None times); times are normalised like
    business hours. Reject reasons: empty or unsafe store_id, bad date (not a real YYYY-MM-DD date), one
    time empty, time outside 00:00:00..23:59:59."""
    frame = _check_columns(frame, "special_hours", source)
    summary = _start_summary(frame, "special_hours", source)
    store_id = _as_text(frame["store_id"]).str.strip()
    date = _as_text(frame["date"]).str.strip()
    start = _as_text(frame["start_time_local"]).str.strip()
    end = _as_text(frame["end_time_local"]).str.strip()

    rejects = _Rejects(frame, TABLE_COLUMNS["special_hours"])
    rejects.add_store_ids(store_id)
    date_form = date.str.fullmatch(DATE_RE).to_numpy(dtype=bool, na_value=False)
    real_date = pd.to_datetime(date.where(date_form, ""), format="%Y-%m-%d", errors="coerce").notna().to_numpy()
    rejects.add(BAD_DATE, ~(date_form & real_date))
    start_empty, end_empty = (start == "").to_numpy(), (end == "").to_numpy()
    rejects.add(ONE_TIME_EMPTY, start_empty != end_empty)
    closed = start_empty & end_empty
    start_text, start_ok = _normalise_times(start)
    end_text, end_ok = _normalise_times(end)
    rejects.add(BAD_TIME, ~closed & ~(start_ok & end_ok))
    rejects.summarise(summary)

    ok = rejects.ok
    rows = pd.DataFrame({
        "store_id": store_id[ok].to_numpy(dtype=object),
        "date": date[ok].to_numpy(dtype=object),
        "start_time_local": np.where(closed, None, start_text)[ok].astype(object),
        "end_time_local": np.where(closed, None, end_text)[ok].astype(object),
    }, dtype=object)   # keeps None (closed) as None, not NaN
    unique = rows.drop_duplicates()
    summary.duplicates = len(rows) - len(unique)
    return summary, unique


def count_replaced(summary: TableSummary, rows: pd.DataFrame, stored: list) -> None:
    """new, already_stored and removed of a file whose (distinct) `rows` replace the `stored` rows of the
    same stores (or (store, date) pairs): a file row identical to a stored one is already stored; a stored
    row the file does not have is removed."""
    stored_rows = {tuple(row) for row in stored}
    file_rows = zip(*(rows[column].astype(object).where(rows[column].notna(), None).tolist()
                      for column in rows.columns))
    already = sum(1 for row in file_rows if row in stored_rows)
    summary.new, summary.already_stored, summary.removed = len(rows) - already, already, len(stored) - already


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


# load_files' keyword for each table's file.
LOAD_KEYWORDS = {"store_status": "status", "business_hours": "hours", "timezones": "timezones",
                 "special_hours": "special_hours"}


def open_sources(status=None, hours=None, timezones=None, special_hours=None, *, name: str | None = None) -> list:
    """What a load of these files (paths or file-likes; None = skip) reads before it writes anything:
    every header is checked and the small tables are read whole, so a LoadError leaves the database alone.
    Returns (table, source) pairs: the status file as (name, data, column names) for `stream_status_csv`,
    the others as DataFrames."""
    sources = []
    for table, source in (("store_status", status), ("business_hours", hours), ("timezones", timezones),
                          ("special_hours", special_hours)):
        if source is None:
            continue
        if table == "store_status":
            sources.append((table, _open_source(source, table, name)))
        else:
            sources.append((table, read_table_csv(source, table, name)))
    return sources


def default_files(data_dir: str | Path) -> dict[str, Path | None]:
    """The CSVs of `data_dir` by table: store_status.csv, business_hours.csv or menu_hours.csv,
    timezones.csv, special_hours.csv (None where no such file exists)."""
    data_dir = Path(data_dir)

    def first(*names: str) -> Path | None:
        return next((data_dir / n for n in names if (data_dir / n).is_file()), None)

    return {"store_status": first("store_status.csv"),
            "business_hours": first("business_hours.csv", "menu_hours.csv"),
            "timezones": first("timezones.csv", "store_timezones.csv"),
            "special_hours": first("special_hours.csv")}


def count_zone_changes(summary: TableSummary, rows: pd.DataFrame, stored: dict) -> None:
    """new, already_stored and changed of timezone rows (one per store) against the `stored` zones of
    the same stores (store_id -> zone)."""
    zones = rows["timezone_str"].astype(object).where(rows["timezone_str"].notna(), None).tolist()
    for store, zone in zip(rows["store_id"].tolist(), zones):
        if store not in stored:
            summary.new += 1
        elif stored[store] == zone:
            summary.already_stored += 1
        else:
            summary.changed += 1
