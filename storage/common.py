"""The Python the backends share around their own SQL: the job flows (ending a job, recording a claim,
starting a handed-over job: each backend gives its statements as a JobStatements and holds the transaction
and its lock), loading a set of files, and turning what a backend read into what callers get back (job
dicts, the report's frames, the pages' results). The SQL stays in storage/sqlite.py and storage/postgresql.py.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

import ingestion
from ingestion import TableSummary
from storage import (HOURS_COLUMNS, POLL_COLUMNS, SPECIAL_COLUMNS, ZONE_COLUMNS, ReportInputs, backend, empty_frame,
                     utc_now_iso)

# A job ends Complete or Failed; until then (Queued, Running) it may be started, completed or failed.
OPEN_STATUSES = ("Queued", "Running")
LOAD_OUTCOMES = ("new", "already_stored", "changed", "conflicting", "duplicates")


# --- report jobs ------------------------------------------------------------------------------------

def job_from_row(row) -> dict:
    """A job as callers get it from a `reports` row (a mapping): its JSON columns decoded."""
    job = dict(row)
    job["params"] = json.loads(job["params"])
    job["timings"] = json.loads(job["timings"]) if job["timings"] else None
    job["meta"] = json.loads(job["meta"]) if job["meta"] else None
    return job


@dataclass(frozen=True)
class JobStatements:
    """A backend's statements for the job flows below: its own SQL, with named parameters in its own style.
    Both drivers' connections run `conn.execute(sql, params)` and return a cursor with `rowcount`."""
    end_attempt: str    # close job `id`'s open attempt, if any, with `outcome` at `stamp`
    add_attempt: str    # record attempt number `attempt` of job `id` by `owner`, started at `stamp`
    add_duration: str   # a completed report's `seconds`, finished at `stamp` (kept for /metrics)
    start: str          # job `id` Running for `owner` under `lease` since `stamp`, the attempt counted
    complete: str       # job `id` Complete at `stamp` (file, rows, as_of, seconds, timings, meta), a condition to add
    fail: str           # job `id` Failed at `stamp` with `error`, a condition to add


def end_attempt(conn, sql: JobStatements, report_id: str, outcome: str, stamp: str) -> None:
    conn.execute(sql.end_attempt, {"id": report_id, "outcome": outcome, "stamp": stamp})


def complete_job(conn, sql: JobStatements, condition: str, report_id: str, owner: str | None, *, file: str,
                 rows: int, as_of: str, seconds: float, timings: dict | None, meta: dict | None) -> bool:
    """mark_report_complete's flow where `condition` (the backend's SQL, added to sql.complete) holds: the
    job Complete, its open attempt closed, its seconds kept for /metrics. Returns whether it completed the
    job. The caller holds the transaction."""
    stamp = utc_now_iso()
    done = conn.execute(sql.complete + condition, {
        "stamp": stamp, "file": file, "rows": rows, "as_of": as_of, "seconds": seconds, "id": report_id,
        "timings": json.dumps(timings or {}), "meta": json.dumps(meta or {}), "owner": owner}).rowcount == 1
    if done:
        end_attempt(conn, sql, report_id, "Complete", stamp)
        conn.execute(sql.add_duration, {"stamp": stamp, "seconds": seconds})
    return done


def fail_job(conn, sql: JobStatements, condition: str, report_id: str, error: str, owner: str | None) -> bool:
    """mark_report_failed's flow where `condition` holds: the job Failed, its open attempt closed."""
    stamp = utc_now_iso()
    done = conn.execute(sql.fail + condition, {"stamp": stamp, "error": error, "id": report_id,
                                               "owner": owner}).rowcount == 1
    if done:
        end_attempt(conn, sql, report_id, "Failed", stamp)
    return done


def record_claim(conn, sql: JobStatements, row, owner: str, stamp: str) -> dict:
    """After a claim's UPDATE ... RETURNING gave the job's `row`: close the attempt it took over (a dead
    process's, if any) as 'lease expired' and record the new one. Returns the job."""
    job = job_from_row(row)
    end_attempt(conn, sql, job["report_id"], "lease expired", stamp)
    conn.execute(sql.add_attempt, {"id": job["report_id"], "attempt": job["attempts"], "owner": owner,
                                   "stamp": stamp})
    return job


def start_attempt(conn, sql: JobStatements, report_id: str, owner: str, *, lease_until: float, max_attempts: int,
                  exhausted_error: str, owner_prefix: str) -> dict | None:
    """start_report_attempt's flow (see storage/sqlite.py), in the caller's transaction, which holds the
    backend's job-table lock."""
    operations, stamp = backend(conn), utc_now_iso()
    job = operations.get_report_job(conn, report_id)
    if job is None or job["status"] not in OPEN_STATUSES:
        return None                             # no such job, or it ended
    if job["status"] == "Running" and not str(job.get("owner") or "").startswith(owner_prefix):
        return None                             # another kind of worker runs it
    if job["status"] == "Running" and job["attempts"] >= max_attempts:
        operations.mark_report_failed(conn, report_id, exhausted_error)
        return operations.get_report_job(conn, report_id)
    end_attempt(conn, sql, report_id, "worker lost", stamp)
    conn.execute(sql.start, {"id": report_id, "owner": owner, "lease": lease_until, "stamp": stamp})
    conn.execute(sql.add_attempt, {"id": report_id, "attempt": job["attempts"] + 1, "owner": owner, "stamp": stamp})
    return operations.get_report_job(conn, report_id)


def job_table(rows, attempts) -> tuple[dict[str, dict], dict[str, list[dict]]]:
    """inspect_report_jobs' result: the job `rows` as stored by id, and `attempts` (report_attempts, in
    order) grouped by job."""
    by_job: dict[str, list[dict]] = {}
    for attempt in attempts:
        by_job.setdefault(attempt["report_id"], []).append(attempt)
    return {row["report_id"]: dict(row) for row in rows}, by_job


# --- loads -----------------------------------------------------------------------------------------------

def load_sources(conn, sources, ingest_status, ingest: dict, progress: bool | None) -> list[TableSummary]:
    """load_files' loads of `ingestion.open_sources`' sources, in the caller's transaction: the status file
    streamed by the backend's `ingest_status(conn, name, data, names, progress=)`, the small tables by
    `ingest[table](conn, frame, source=)`."""
    summaries = []
    for table, source in sources:
        if table == "store_status":
            summaries.append(ingest_status(conn, *source, progress=progress))
        else:
            summaries.append(ingest[table](conn, source, source=source.attrs["source"]))
    return summaries


def chunk_groups(frame: pd.DataFrame, summary: TableSummary, store_keys) -> tuple | None:
    """A chunk of polls validated (its rejects counted in `summary`) and folded to one group per (store,
    instant), with the keys the backend's `store_keys(unique store ids)` gives (see ingestion.poll_groups):
    (keys, micros, has_active, has_inactive, rows), or None when the chunk has no valid row."""
    uniques, codes, micros, active = ingestion.status_rows(frame, summary)
    if not len(codes):
        return None
    keys = store_keys(uniques)[codes]
    del codes
    return ingestion.poll_groups(keys, micros, active)


def record_load(conn, statement: str, summary: TableSummary, started: float) -> None:
    """Log what a load of one table said (`statement`: the backend's INSERT INTO loads of `finished_at`,
    `table`, `summary`), in the load's own transaction."""
    summary.seconds = time.perf_counter() - started
    conn.execute(statement, {"finished_at": utc_now_iso(), "table": summary.table,
                             "summary": json.dumps(summary.to_dict())})


# --- the pages' reads -----------------------------------------------------------------------------------

def like_pattern(text: str) -> str:
    """`text` for a LIKE ... ESCAPE '\\' pattern: %, _ and the backslash stand for themselves."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def found_stores(total, rows) -> tuple[int, list[tuple]]:
    return int(total), [(row[0], bool(row[1]), row[2]) for row in rows]


def store_record(polled: bool, weekly, zone, special) -> dict:
    """store_records' result from its four reads (`zone`: the timezones row, or None)."""
    return {"polled": polled, "weekly": [tuple(row) for row in weekly], "has_zone_row": zone is not None,
            "timezone": None if zone is None else zone[0], "special": [tuple(row) for row in special]}


def data_facts(stores, polls, first, last, without_hours, zones, special_rows, special_stores, not_polled,
               recent: list[dict]) -> dict:
    """data_facts' result from its reads."""
    return {"stores": int(stores), "polls": int(polls), "first_us": first, "last_us": last,
            "stores_without_hours": int(without_hours), "zones": [(row[0], int(row[1])) for row in zones],
            "special_hours_rows": int(special_rows), "stores_with_special_hours": int(special_stores),
            "stores_not_polled": int(not_polled), "loads": recent}


def metrics_facts(jobs, bounds, count, total, at_most, loads: Iterable) -> dict:
    """metrics_facts' result: `loads` holds (table, new, already_stored, changed, conflicting, duplicates,
    rejected) sums per table (None: no such rows)."""
    rows: dict[tuple[str, str], int] = {}
    for table, *values in loads:
        for outcome, value in zip(LOAD_OUTCOMES + ("rejected",), values):
            rows[(table, outcome)] = int(value or 0)
    return {"jobs_by_status": dict(jobs),
            "report_seconds": {"buckets": list(zip(bounds, at_most)), "count": count, "sum": float(total)},
            "rows_ingested": rows}


# --- the report's reads ---------------------------------------------------------------------------------

def polls_per_key(keys: list[int], counted: np.ndarray) -> np.ndarray:
    """The shard plan's estimate of each store's polls: `counted` rows (store_key, estimated polls) spread
    over `keys` (ascending; a store without a row has none), rounded up."""
    polls = np.zeros(len(keys), np.int64)
    if len(keys) and len(counted):
        at = np.searchsorted(keys, counted[:, 0].astype(np.int64))
        found = (at < len(keys)) & (np.asarray(keys)[np.minimum(at, len(keys) - 1)] == counted[:, 0])
        polls[at[found]] = np.ceil(counted[found, 1]).astype(np.int64)
    return polls


def empty_report_inputs() -> ReportInputs:
    """What a report reads from a database without polls."""
    return ReportInputs(*(empty_frame(columns) for columns in (POLL_COLUMNS, HOURS_COLUMNS, ZONE_COLUMNS)), None)


def report_inputs(now_us: int, stores: list, block_keys: np.ndarray, packed: np.ndarray, before_keys: np.ndarray,
                  before: np.ndarray, hours_rows, zone_rows, special_rows) -> ReportInputs:
    """The report's frames from what a backend read in its snapshot: the chosen `stores` [(store_key,
    store_id)] in key order, the polls of the window (`packed`: timestamp_us * 2 + active, in (store, time)
    order, `block_keys` their stores), each store's latest poll before the window (`before`, packed the same
    way, of `before_keys`, ascending), and the rows of the small tables.

    NumPy puts the polls together without a Python object per poll; store ids travel as a categorical over
    the chosen stores (one string per store, not per poll)."""
    # Each store's earlier poll goes just before its recent ones: the polls stay in (store, time) order.
    at = np.searchsorted(block_keys, before_keys, side="left")
    keys = np.insert(block_keys, at, before_keys)
    packed = np.insert(packed, at, before)
    t_us, active = packed >> 1, (packed & 1).astype(np.int8)
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
    special = pd.DataFrame(special_rows, columns=SPECIAL_COLUMNS, dtype=object)
    return ReportInputs(polls, hours, zones, pd.Timestamp(now_us, unit="us", tz="UTC"), special)


# The figures of `data_facts` that both backends read with the same SQL (plain SQL, no parameters).
FACTS_WITHOUT_HOURS = """SELECT COUNT(*) FROM stores s WHERE NOT EXISTS
    (SELECT 1 FROM business_hours h WHERE h.store_id = s.store_id)"""
FACTS_ZONES = """SELECT TRIM(COALESCE(z.timezone_str, '')) AS zone, COUNT(*) FROM stores s
    LEFT JOIN timezones z ON z.store_id = s.store_id GROUP BY 1"""
FACTS_SPECIAL = "SELECT COUNT(*), COUNT(DISTINCT store_id) FROM special_hours"
FACTS_NOT_POLLED = """SELECT COUNT(*) FROM (
    SELECT store_id FROM business_hours UNION SELECT store_id FROM timezones) AS k
    WHERE NOT EXISTS (SELECT 1 FROM stores s WHERE s.store_id = k.store_id)"""
