"""The reports service: what the JSON API and the pages both show, computed in one place.

Every function takes the service's `Settings` (for the database path, the reports directory and the
defaults) and returns plain dicts and lists, ready for `jsonify` or a Jinja template. Nothing here
knows about Flask: the API blueprint and the pages blueprint (`dashboard.py`) call the same functions,
so a page and its JSON endpoint never compute a thing twice. Errors are `NotFound`, `BadRequest` and
`Conflict` (all `ServiceError`, with the HTTP status on the exception), which each blueprint maps to its
own answer (JSON or an HTML page).

- `report_rows`: a page of a completed report's rows, sorted by any column, filtered by store id. The
  report's CSV is parsed once per (report, file version) and kept in a small LRU cache, so paging
  through 14,000 rows costs a sort (cached too) and a slice.
- `fleet_figures`: the report's totals across stores (share of business time up per window, stores
  down in the last hour) with the job's warnings and metadata.
- `report_job`, `recent_reports`: what the job table says about reports (status, progress, parameters).
- `find_stores`, `store_hours`, `data_summary`: what the database holds.
- `store_timeline`: one store's business intervals, polls and status segments
  (`report_generator.generate_timeline`), whose totals equal the store's report row.
"""
from __future__ import annotations

import csv
import re
import threading
from collections import OrderedDict
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

import database
import report_generator
from config import MAX_REACH_MINUTES
from jobs import iso_utc

# --- errors -----------------------------------------------------------------------------------------


class ServiceError(Exception):
    """A request the service cannot answer; `status` is the HTTP status a blueprint should give."""

    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class NotFound(ServiceError):
    status = 404


class BadRequest(ServiceError):
    status = 400


class Conflict(ServiceError):
    """A valid request that this resource cannot answer as it is (a standard report sorted by an
    `unknown_*` column, which only extended reports have)."""

    status = 409


# --- parameters -------------------------------------------------------------------------------------

STANDARD_COLUMNS = list(report_generator.STANDARD_COLUMNS)
EXTENDED_COLUMNS = list(report_generator.EXTENDED_COLUMNS)
NUMBER_COLUMNS = EXTENDED_COLUMNS[1:]
WINDOWS = ("hour", "day", "week")
WINDOW_UNITS = {"hour": "minutes", "day": "hours", "week": "hours"}
DEFAULT_SORT = "downtime_last_week"   # worst stores first
DEFAULT_ORDER = "desc"
ORDERS = ("asc", "desc")
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
FIND_LIMIT = 20
MAX_FIND_LIMIT = 200
TIMELINE_DAYS = 7
MAX_TIMELINE_DAYS = 7
RECENT_REPORTS = 10
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
KNOWN_ZONES = report_generator.KNOWN_ZONES
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class _Default:
    """Marks a parameter left out (for reach, None already means unbounded)."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()


def _connect(settings):
    return database.connect(settings.database)


def check_report_id(report_id) -> str:
    text = str(report_id).strip() if report_id is not None else ""
    if not UUID_RE.match(text):
        raise BadRequest(f"report_id must be a UUID such as the one /trigger_report returned, got {report_id!r}")
    return text.lower()


def parse_instant(value, name: str = "as_of") -> str | None:
    """An instant (ISO 8601 text, `... UTC` text or a datetime) -> ISO UTC text with `Z`; None stays None.
    A time without an offset is UTC."""
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value
    else:
        text = str(value).strip()
        if not text:
            return None
        if text.endswith("UTC"):   # "... UTC" (the polls' form) or "...UTC"
            text = text[:-3].rstrip()
        if text.endswith(("z", "Z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise BadRequest(f"{name} is not a valid ISO 8601 date-time: {value!r} "
                             "(expected e.g. \"2023-01-25T18:13:22Z\")") from None
    if not 1970 <= moment.year <= 2200:   # as written (as the API's as_of rule): its UTC year may be next door
        raise BadRequest(f"{name} must lie between the years 1970 and 2200: {value!r}")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        moment = moment.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise BadRequest(f"{name} is out of range: {value!r}") from None
    return iso_utc(moment)


def check_reach(value) -> int | None:
    """Reach in minutes (1..MAX_REACH_MINUTES) or None for unbounded. Text 'none'/'unbounded' is None."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("none", "null", "unbounded"):
            return None
        try:
            value = int(text)
        except ValueError:
            raise BadRequest(f"reach_minutes must be a whole number of minutes from 1 to {MAX_REACH_MINUTES}, "
                             f"or 'unbounded'; got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_REACH_MINUTES:
        raise BadRequest(f"reach_minutes must be from 1 to {MAX_REACH_MINUTES} minutes, or unbounded; got {value!r}")
    return value


def _int_param(value, name: str, default: int, low: int, high: int) -> int:
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise BadRequest(f"{name} must be a whole number, got {value!r}") from None
    if isinstance(value, bool) or not low <= number <= high:
        raise BadRequest(f"{name} must be from {low} to {high}, got {value!r}")
    return number


# --- report jobs ------------------------------------------------------------------------------------

def _job_summary(job: dict, settings) -> dict:
    """A job row as the pages and the API show it."""
    params = job.get("params") or {}
    meta = dict(job.get("meta") or {})
    warnings = meta.pop("warnings", [])
    meta.pop("reach_minutes", None)
    status = job["status"]
    store_ids = params.get("store_ids")
    return {
        "report_id": job["report_id"],
        "status": status,                         # Queued, Running, Complete or Failed
        "progress": round(float(job.get("progress") or 0.0), 4),
        "error": job.get("error") if status == "Failed" else None,
        "created_at": job.get("created_at"),
        "started_at": job.get("started_at"),
        "finished_at": job.get("finished_at"),
        "as_of": job.get("as_of"),                # the report's `now`, once known
        "requested_as_of": params.get("as_of"),   # None: the latest poll
        "reach_minutes": params.get("reach_minutes", settings.poll_reach_minutes),
        "columns": params.get("columns") or "standard",
        "store_ids": len(store_ids) if store_ids else None,   # how many stores were asked for (None: all)
        "store_id_examples": list(store_ids[:5]) if store_ids else [],
        "rows": job.get("rows"),
        "seconds": job.get("seconds"),
        "warnings": warnings,
        "meta": meta,
        "download_url": f"/reports/{job['report_id']}.csv" if status == "Complete" else None,
    }


def report_job(settings, report_id) -> dict:
    """What the job table says about one report (any status). NotFound if there is no such report."""
    report_id = check_report_id(report_id)
    with closing(_connect(settings)) as conn:
        job = database.get_report_job(conn, report_id)
    if job is None:
        raise NotFound(f"no report with id {report_id}")
    return _job_summary(job, settings)


def recent_reports(settings, limit: int = RECENT_REPORTS, offset: int = 0) -> dict:
    """The latest reports, newest first: {"total", "reports": [job summaries]}."""
    limit = _int_param(limit, "limit", RECENT_REPORTS, 1, MAX_LIMIT)
    offset = _int_param(offset, "offset", 0, 0, 10**9)
    with closing(_connect(settings)) as conn:
        jobs, total = database.list_report_jobs(conn, limit=limit, offset=offset)
    return {"total": total, "reports": [_job_summary(job, settings) for job in jobs]}


def latest_complete_report(settings) -> dict | None:
    """The newest Complete report's summary, or None."""
    with closing(_connect(settings)) as conn:
        report_id = database.latest_complete_report_id(conn)
        job = None if report_id is None else database.get_report_job(conn, report_id)
    return None if job is None else _job_summary(job, settings)


# --- a report's rows, parsed once -------------------------------------------------------------------

class _ParsedReport:
    """One report file, parsed: store ids, the number columns, and sort orders computed on demand."""

    def __init__(self, columns: list[str], store_ids: list[str], values: dict[str, np.ndarray]):
        self.columns = columns
        self.store_ids = store_ids
        self.store_ids_lower = [s.lower() for s in store_ids]
        self.values = values
        self.id_order = np.array(sorted(range(len(store_ids)), key=store_ids.__getitem__), dtype=np.int64)
        self.id_rank = np.empty(len(store_ids), dtype=np.int64)
        self.id_rank[self.id_order] = np.arange(len(store_ids))
        self._orders: dict[tuple[str, str], np.ndarray] = {}
        self._index: dict[str, int] | None = None
        self._lock = threading.Lock()
        self.figures = _figures(columns, values, len(store_ids))

    def order(self, sort: str, order: str) -> np.ndarray:
        """Row positions sorted by `sort` (ties: store id ascending)."""
        key = (sort, order)
        with self._lock:
            cached = self._orders.get(key)
        if cached is not None:
            return cached
        if sort == "store_id":
            result = self.id_order if order == "asc" else self.id_order[::-1]
        else:
            primary = self.values[sort]
            result = np.lexsort((self.id_rank, primary if order == "asc" else -primary))
        with self._lock:
            self._orders[key] = result
        return result

    def position(self, store_id: str) -> int | None:
        with self._lock:
            if self._index is None:
                self._index = {s: i for i, s in enumerate(self.store_ids)}
            return self._index.get(store_id)

    def row(self, position: int) -> dict:
        row = {"store_id": self.store_ids[position]}
        for column in self.columns[1:]:
            row[column] = float(self.values[column][position])
        return row


def _figures(columns: list[str], values: dict[str, np.ndarray], stores: int) -> dict:
    """Fleet totals: per window, business time up / down / unknown summed over the stores and the share up."""
    windows = {}
    for window in WINDOWS:
        up = float(values[f"uptime_last_{window}"].sum()) if stores else 0.0
        down = float(values[f"downtime_last_{window}"].sum()) if stores else 0.0
        unknown_column = f"unknown_last_{window}"
        unknown = float(values[unknown_column].sum()) if unknown_column in values and stores else None
        known = up + down
        windows[window] = {
            "unit": WINDOW_UNITS[window],
            "uptime": round(up, 2), "downtime": round(down, 2),
            "unknown": None if unknown is None else round(unknown, 2),
            # Share of the business time with a known status that was up; None without any.
            "share_up": round(up / known, 6) if known > 0 else None,
            # Share of all business time that no poll speaks for (extended reports only).
            "share_unknown": (round(unknown / (known + unknown), 6)
                              if unknown is not None and known + unknown > 0 else None),
        }
    down_hour = values["downtime_last_hour"] > 0 if stores else np.zeros(0, bool)
    week_known = (values["uptime_last_week"] + values["downtime_last_week"]) if stores else np.zeros(0)
    return {
        "stores": stores,
        "stores_down_last_hour": int(down_hour.sum()),
        "stores_with_downtime_last_day": int((values["downtime_last_day"] > 0).sum()) if stores else 0,
        "stores_without_known_time_last_week": int((week_known == 0).sum()),
        "windows": windows,
    }


_CACHE_SIZE = 4
_cache: "OrderedDict[tuple, _ParsedReport]" = OrderedDict()
_cache_lock = threading.Lock()


def _unsafe_prefix_removed(text: str) -> str:
    """Undo `report_generator.spreadsheet_safe`: the CSV shows a formula-like id with an apostrophe."""
    if text.startswith("'") and report_generator.FORMULA_START_RE.match(text[1:]):
        return text[1:]
    return text


def _parse_report_file(path: Path) -> _ParsedReport:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        try:
            header = next(reader)
        except StopIteration:
            header = list(STANDARD_COLUMNS)
        rows = list(reader)
    if header[:1] != ["store_id"] or any(column not in NUMBER_COLUMNS for column in header[1:]):
        raise ValueError(f"unexpected report header in {path.name}: {header}")
    store_ids = [_unsafe_prefix_removed(row[0]) for row in rows]
    values = {}
    for index, column in enumerate(header[1:], start=1):
        values[column] = np.array([row[index] for row in rows], dtype=np.float64) if rows else np.zeros(0)
    return _ParsedReport(header, store_ids, values)


def _complete_job(settings, report_id) -> dict:
    report_id = check_report_id(report_id)
    with closing(_connect(settings)) as conn:
        job = database.get_report_job(conn, report_id)
    if job is None or job["status"] != "Complete":
        raise NotFound(f"no completed report with id {report_id}")
    return job


def report_file_path(settings, job: dict) -> Path:
    """The CSV of a Complete job in this process's reports folder: the file if it is there, else the copy
    kept in the database (cluster mode: the report was made by a Celery worker, on any host), written
    into the folder first (atomically: a reader sees no file or the whole one). NotFound if neither exists.

    Nothing assumes that the process which computed a report shares this folder."""
    name = job.get("file")
    if not name or Path(name).name != name:  # the name comes from the job table; never a path
        raise NotFound(f"the file of report {job['report_id']} is missing")
    path = Path(settings.reports_dir) / name
    if path.is_file():
        return path
    with closing(_connect(settings)) as conn:
        body = database.report_file(conn, job["report_id"])
    if body is None:
        raise NotFound(f"the file of report {job['report_id']} is missing (deleted?)")
    report_generator.write_bytes_atomically(body, path)
    return path


def _parsed(settings, job: dict) -> _ParsedReport:
    path = report_file_path(settings, job)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise NotFound(f"the file of report {job['report_id']} is missing (deleted?)") from None
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    with _cache_lock:
        parsed = _cache.get(key)
        if parsed is not None:
            _cache.move_to_end(key)
            return parsed
    parsed = _parse_report_file(path)  # outside the lock: two threads may parse once each, both correct
    with _cache_lock:
        _cache[key] = parsed
        _cache.move_to_end(key)
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return parsed


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def report_rows(settings, report_id, *, sort: str | None = None, order: str | None = None,
                limit=None, offset=None, q: str | None = None) -> dict:
    """A page of a completed report's rows.

    `sort`: any column of the report (default `downtime_last_week`; an `unknown_*` column of a standard
    report is a Conflict, another name a BadRequest); `order`: asc or desc (default: desc
    for a number column, asc for store_id); ties are broken by store id, ascending. `q`: keep the rows
    whose store id contains it (case-insensitive). `limit` (1..1000, default 50) and `offset` page them.
    Returns {"report_id", "total" (rows after the filter), "rows", "columns", "sort", "order", "limit",
    "offset", "q"}.
    """
    job = _complete_job(settings, report_id)
    parsed = _parsed(settings, job)
    sort = (sort or DEFAULT_SORT).strip()
    if sort in EXTENDED_COLUMNS and sort not in parsed.columns:
        raise Conflict(f"report {job['report_id']} has the standard columns, without {sort}: sort by one of "
                       f"{', '.join(parsed.columns)}, or trigger a report with \"columns\": \"extended\"")
    if sort not in parsed.columns:
        raise BadRequest(f"sort must be one of the report's columns ({', '.join(parsed.columns)}), got {sort!r}")
    order = (order or ("asc" if sort == "store_id" else DEFAULT_ORDER)).strip().lower()
    if order not in ORDERS:
        raise BadRequest(f"order must be asc or desc, got {order!r}")
    limit = _int_param(limit, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
    offset = _int_param(offset, "offset", 0, 0, 10**9)
    q = (q or "").strip()
    positions = parsed.order(sort, order)
    if q:
        needle = q.lower()
        mask = np.fromiter((needle in s for s in parsed.store_ids_lower), dtype=bool,
                           count=len(parsed.store_ids))
        positions = positions[mask[positions]]
    page = positions[offset:offset + limit]
    return {
        "report_id": job["report_id"],
        "total": int(len(positions)),
        "rows": [parsed.row(int(p)) for p in page],
        "columns": list(parsed.columns),
        "sort": sort, "order": order, "limit": limit, "offset": offset, "q": q,
    }


def report_row(settings, report_id, store_id: str) -> dict | None:
    """One store's row of a completed report, or None if the store is not in it."""
    job = _complete_job(settings, report_id)
    parsed = _parsed(settings, job)
    position = parsed.position(store_id)
    return None if position is None else parsed.row(position)


def fleet_figures(settings, report_id) -> dict:
    """A completed report across its stores, with the job's facts:

    {"report": job summary (as_of, reach_minutes, columns, warnings, meta, ...), "stores",
     "stores_down_last_hour" (downtime_last_hour > 0), "stores_with_downtime_last_day",
     "stores_without_known_time_last_week" (no up or down time in the week: no poll speaks for it),
     "windows": {"hour"|"day"|"week": {"unit", "uptime", "downtime", "unknown" (extended only),
                                        "share_up" = sum uptime / (sum uptime + sum downtime), "share_unknown"}}}
    """
    job = _complete_job(settings, report_id)
    parsed = _parsed(settings, job)
    return {"report": _job_summary(job, settings), **parsed.figures}


# --- stores -----------------------------------------------------------------------------------------

def find_stores(settings, q: str | None, limit=None) -> dict:
    """Polled stores whose id contains `q` (case-insensitive), those starting with it first.

    {"q", "total" (all matches), "stores": [{"store_id", "has_hours", "timezone" (None: missing),
    "timezone_known"}]}. An empty `q` lists the first stores by id.
    """
    limit = _int_param(limit, "limit", FIND_LIMIT, 1, MAX_FIND_LIMIT)
    q = (q or "").strip()
    with closing(_connect(settings)) as conn:
        total, rows = database.find_stores(conn, q, limit)
    stores = []
    for store_id, has_hours, zone in rows:
        zone = (zone or "").strip() or None
        stores.append({"store_id": store_id, "has_hours": has_hours, "timezone": zone,
                       "timezone_known": zone is not None and zone in KNOWN_ZONES})
    return {"q": q, "total": int(total), "stores": stores}


def _time_text(value: str | None) -> str | None:
    """'09:00:00' -> '09:00', '23:59:59' -> '24:00' (midnight at the end of the day), fractions dropped."""
    if value is None:
        return None
    text = str(value).strip()
    if text.startswith("23:59:59"):
        return "24:00"
    parts = text.split(".")[0].split(":")
    if len(parts) >= 3 and parts[2] not in ("00", ""):
        return f"{int(parts[0]):02d}:{parts[1]}:{parts[2]}"
    return f"{int(parts[0]):02d}:{parts[1]}" if len(parts) >= 2 else text


def _hours_kind(start: str | None, end: str | None) -> str:
    if start is None or end is None:
        return "closed"
    s, e = _seconds_of(start), _seconds_of(end)
    if e >= 86399 and s == 0:
        return "all day"
    if s == e:
        return "24 hours"
    if e <= s:
        return "overnight"
    return ""


def _seconds_of(text: str) -> float:
    parts = str(text).strip().split(":")
    return int(parts[0]) * 3600 + int(parts[1]) * 60 + (float(parts[2]) if len(parts) > 2 else 0)


def store_hours(settings, store_id: str) -> dict:
    """A store's time zone, weekly hours and special dates, as loaded.

    {"store_id", "polled": bool, "timezone" (as loaded, None: missing), "timezone_used", "timezone_source",
     "open_all_week" (no weekly rows: 24/7), "weekly": [{"day_of_week", "day", "start", "end", "kind"}],
     "special": [{"date", "closed", "start", "end", "kind"}]}. NotFound if no table knows the store.
    """
    store_id = (store_id or "").strip()
    if not store_id:
        raise BadRequest("store_id must not be empty")
    with closing(_connect(settings)) as conn:
        records = database.store_records(conn, store_id)
    polled, weekly, special = records["polled"], records["weekly"], records["special"]
    if not (polled or weekly or records["has_zone_row"] or special):
        raise NotFound(f"no store with id {store_id!r}")
    zone = (records["timezone"] or "").strip() or None
    if zone is None:
        used, source = settings.default_timezone, "default (missing)"
    elif zone not in KNOWN_ZONES:
        used, source = settings.default_timezone, "default (unknown)"
    else:
        used, source = zone, "store"
    return {
        "store_id": store_id,
        "polled": polled,
        "timezone": zone,
        "timezone_used": used,
        "timezone_source": source,
        "open_all_week": not weekly,
        "weekly": [{"day_of_week": int(r[0]), "day": DAY_NAMES[int(r[0])], "start": _time_text(r[1]),
                    "end": _time_text(r[2]), "kind": _hours_kind(r[1], r[2])} for r in weekly],
        "special": [{"date": r[0], "closed": r[1] is None, "start": _time_text(r[1]), "end": _time_text(r[2]),
                     "kind": _hours_kind(r[1], r[2])} for r in special],
    }


# --- the data -----------------------------------------------------------------------------------------

def _iso_from_us(value) -> str | None:
    if value is None:
        return None
    return iso_utc(EPOCH + timedelta(microseconds=int(value)))


def data_summary(settings, loads: int = 5) -> dict:
    """What the database holds: {"stores" (polled), "polls", "first_poll", "last_poll" (ISO UTC),
    "stores_without_hours" (open 24/7), "stores_without_timezone", "stores_with_unknown_timezone",
    "special_hours_rows", "stores_with_special_hours", "stores_not_polled" (hours or zone only),
    "default_timezone", "last_load" (the newest load summary of any table, with its finished_at), "loads"
    (the latest `loads` summaries, newest first)}."""
    with closing(_connect(settings)) as conn:
        facts = database.data_facts(conn, loads=max(int(loads), 1))
    zones, recent = facts["zones"], facts["loads"]
    stores, polls, first, last = facts["stores"], facts["polls"], facts["first_us"], facts["last_us"]
    without_hours, special_rows, special_stores, not_polled = (
        facts["stores_without_hours"], facts["special_hours_rows"], facts["stores_with_special_hours"],
        facts["stores_not_polled"])
    without_zone = sum(count for zone, count in zones if not zone)
    unknown_zone = sum(count for zone, count in zones if zone and zone not in KNOWN_ZONES)
    return {
        "stores": int(stores),
        "polls": int(polls),
        "first_poll": _iso_from_us(first),
        "last_poll": _iso_from_us(last),
        "stores_without_hours": int(without_hours),
        "stores_without_timezone": int(without_zone),
        "stores_with_unknown_timezone": int(unknown_zone),
        "special_hours_rows": int(special_rows),
        "stores_with_special_hours": int(special_stores),
        "stores_not_polled": int(not_polled),
        "default_timezone": settings.default_timezone,
        "last_load": recent[0] if recent else None,
        "loads": recent,
    }


# --- timelines ----------------------------------------------------------------------------------------

def store_timeline(settings, store_id: str, *, as_of=None, reach_minutes=DEFAULT, days=None) -> dict:
    """One store's timeline over the `days` (1..7, default 7) before `as_of` (default: the latest poll):
    business intervals, polls, and up/down/unknown segments each naming its poll, with the per-window
    totals under the report's column names (`report_generator.generate_timeline`). `reach_minutes`:
    minutes, None for unbounded, left out for the service's default. NotFound: unknown store, or no polls.
    """
    store_id = (store_id or "").strip()
    if not store_id:
        raise BadRequest("store_id must not be empty")
    as_of = parse_instant(as_of)
    reach = settings.poll_reach_minutes if reach_minutes is DEFAULT else check_reach(reach_minutes)
    days = _int_param(days, "days", TIMELINE_DAYS, 1, MAX_TIMELINE_DAYS)
    try:
        return report_generator.generate_timeline(settings.database, store_id, as_of=as_of,
                                                  reach_minutes=reach, days=days,
                                                  default_timezone=settings.default_timezone)
    except KeyError:
        raise NotFound(f"no polled store with id {store_id!r}" if as_of is None else
                       f"no store with id {store_id!r} was polled at or before {as_of}") from None
    except report_generator.ReportError as exc:
        raise NotFound(str(exc)) from None


def report_parameters(settings, report_id) -> dict:
    """The as_of and reach a completed report was made with, to draw a store's timeline the same way."""
    job = report_job(settings, report_id)
    if job["status"] != "Complete":
        raise NotFound(f"no completed report with id {job['report_id']}")
    return {"as_of": job["as_of"], "reach_minutes": job["reach_minutes"], "columns": job["columns"]}
