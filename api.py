"""The JSON API: one flask-openapi3 `APIBlueprint`, its routes declared with the models of `api_models.py`.

`build_api()` makes a fresh blueprint for each app (`app.create_app`), so every app has its own OpenAPI
paths. Errors are JSON `{"error": "..."}` (`ApiError`, the reports service's `ServiceError` with the status it
carries, and the app's handlers in app.py); the pages blueprint sits beside this one with HTML errors of
its own.

The endpoints behind the pages (`GET /reports/<id>/rows`, `/stores/<store_id>/timeline`, `/stores`,
`/data/summary`) are one call each into `reports_service`, the functions the pages call: nothing is
computed here. Their parameters are validated by the query models first, so the service only sees what
the document allows.

Request bodies are read here, from the WSGI input, never through Flask's unbounded `get_data`:
- `read_body(limit, sink)` honours Content-Length and reads chunked bodies (the server terminates the
  stream: gunicorn and werkzeug set `wsgi.input_terminated`) up to `limit` + 1 bytes; one byte more is a
  413 with nothing written, however the body was sent. Before answering, the rest of the body is read
  and dropped (at most DRAIN_BYTES more, for at most DRAIN_SECONDS): gunicorn itself drains only 64 KiB
  before it closes the connection, and a client still sending (Python's http.client, requests) would then
  see a broken pipe instead of its 413. A body declared bigger than limit + DRAIN_BYTES is answered at once.
- A trigger body is at most 1 MiB and must be empty or a JSON object; it is then handed to flask-openapi3,
  which validates it with `TriggerRequest`.
- An upload (POST /store_status, /special_hours) is at most 32 MiB of text/csv or application/json (415
  otherwise). It is spooled to a temporary file once past 1 MiB (`Spool`, in `<reports dir>/../.uploads`),
  so receiving costs no memory; then it waits for the process's upload slot (`UPLOAD_SLOTS`, at most
  `UPLOAD_WAIT_SECONDS`, then 429 with Retry-After) and is loaded: CSV through `database.load_files`, which
  streams the file in chunks; JSON validated by pydantic into rows and loaded with `database.ingest_*` as a
  DataFrame (never through CSV text, so a `\\r` inside a value stays inside that value). Loads are one
  SQLite writer at a time anyway, so one slot per process loses no throughput and bounds memory.
"""
from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import pandas as pd
from flask import Response, current_app, g, jsonify, request, send_file
from flask_openapi3 import APIBlueprint, Tag
from pydantic import ValidationError
from werkzeug.http import parse_options_header

import api_models as m
import database
import metrics
import reports_service as service
from config import MAX_REACH_MINUTES, Settings
from jobs import BrokerUnavailable, QueueFull, ReportJobs, iso_utc

log = logging.getLogger("store_monitoring.app")

API = "api"                          # the blueprint's name: its endpoints are "api.<function>"
EXTENSION = "store_monitoring"       # app.extensions key of the ReportJobs
UPLOADS_EXTENSION = "store_monitoring_uploads"

MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # POST /store_status, /special_hours: ~700k polls as CSV; more: `make load`
MAX_TRIGGER_BYTES = 1024 * 1024      # POST /trigger_report
SPOOL_BYTES = 1024 * 1024            # an upload past this goes to a temporary file while it is received
READ_CHUNK = 64 * 1024
DRAIN_BYTES = 64 * 1024 * 1024       # past the limit, at most this much more is read (and dropped) ...
DRAIN_SECONDS = 30.0                 # ... for at most this long, so that the client can read its 413
UPLOAD_SLOTS = 1                     # uploads loaded at once by one process (SQLite has one writer anyway)
UPLOAD_WAIT_SECONDS = 20.0           # an upload waits this long for the slot, then gets 429
UPLOAD_RETRY_AFTER = 5
UPLOAD_FILE_PREFIX = "upload-"
STALE_UPLOAD_SECONDS = 3600          # spool files left by a killed process are removed at start-up after this
CSV_TYPES = ("text/csv",)
JSON_TYPES = ("application/json",)

TRIGGER_KEYS = tuple(m.TriggerRequest.model_fields)
POLL_KEYS = tuple(m.Poll.__annotations__)
SPECIAL_KEYS = tuple(m.SpecialHours.__annotations__)

# How a field's rule reads in an error message (the schema says the same in the document).
FIELD_RULES = {
    "as_of": "an ISO 8601 date or date-time with a year from 1970 to 2200, e.g. \"2023-01-25T18:13:22Z\"",
    "store_ids": (f"a non-empty list of at most {m.MAX_STORE_IDS:,} store ids, each a string of 1 to "
                  f"{m.MAX_STORE_ID_CHARS} characters (leave it out to report on every store)"),
    "store_ids[]": f"a store id: a string of 1 to {m.MAX_STORE_ID_CHARS} characters, not only white space",
    "columns": "\"standard\" or \"extended\"",
    "reach_minutes": f"an integer from 1 to {MAX_REACH_MINUTES}, or null for unbounded reach",
    "report_id": "a UUID such as the one /trigger_report returned",
    "limit": f"an integer from 1 to {m.MAX_LIST_LIMIT}",
    "offset": f"an integer from 0 to {m.MAX_LIST_OFFSET:,}",
}


class ApiError(Exception):
    """A client error answered as `{"error": message}` with `status` (and `headers`)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


# --- the app's state --------------------------------------------------------------------------------

def settings() -> Settings:
    return current_app.config["SM_SETTINGS"]


def jobs() -> ReportJobs:
    return current_app.extensions[EXTENSION]


def db():
    """This request's connection, opened on first use and closed at teardown (`close_connection`)."""
    if "db" not in g:
        g.db = database.connect(settings().database)
    return g.db


def close_connection(_exc=None) -> None:
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


def uploads_dir(app_settings: Settings) -> Path:
    """Where uploads are spooled: beside the reports folder, on the service's own disk (not /tmp, which
    may be memory)."""
    return Path(app_settings.reports_dir).resolve().parent / ".uploads"


def remove_stale_uploads(directory: Path) -> int:
    """Spool files older than STALE_UPLOAD_SECONDS (left by a killed process); live ones are younger."""
    removed = 0
    if not directory.is_dir():
        return 0
    cutoff = time.time() - STALE_UPLOAD_SECONDS
    for path in directory.glob(f"{UPLOAD_FILE_PREFIX}*"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError:
            pass
    return removed


# --- validation messages ----------------------------------------------------------------------------

def _shown(value) -> str:
    try:
        text = json.dumps(value, ensure_ascii=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_validation_error(exc: ValidationError, *, items: tuple[str, ...] | None = None) -> str:
    """One readable line for a pydantic error: where, and what the rule is (at most 3 problems).

    `items`: the body is a JSON list of objects with these keys (uploads); locations start with the item."""
    shape = "{" + ", ".join(items) + "}" if items else ""
    parts = []
    for error in exc.errors(include_url=False, include_context=True)[:3]:
        loc, kind = list(error["loc"]), error["type"]
        if kind == "json_invalid":
            detail = str(error.get("ctx", {}).get("error", error["msg"]))
            parts.append(f"the request body is not usable JSON: {detail}" + (
                f"; send a JSON list of objects {shape}" if items else ""))
            continue
        where = ""
        if items and loc and isinstance(loc[0], int):
            where = f"item {loc.pop(0)}"
        elif items and not loc:
            parts.append(f"the request body must be a JSON list of objects {shape}")
            continue
        field = next((part for part in loc if isinstance(part, str)), None)
        path = "".join(f"[{part}]" if isinstance(part, int) else (f".{part}" if i else part)
                       for i, part in enumerate(loc))
        where = f"{where}: {path}" if where and path else (where or path)
        if kind == "query_rule":   # a rule of its own (api_models.ReachQuery)
            parts.append(f"{where} {error['msg']}; got {_shown(error.get('input'))}")
        elif kind == "extra_forbidden":
            allowed = ", ".join(items or TRIGGER_KEYS)
            parts.append(f"{where}: unknown key; allowed: {allowed}" if items
                         else f"unknown key {path!r}; allowed: {allowed}")
        elif kind == "missing":
            parts.append(f"{where} is required")
        elif kind == "value_error" and not loc:
            parts.append(str(error.get("ctx", {}).get("error", error["msg"])))
        elif kind in ("dict_type", "model_type") and items:
            parts.append(f"{where} is not an object {shape}")
        elif field in FIELD_RULES and not items:
            rule = FIELD_RULES.get(f"{field}[]") if isinstance(loc[-1], int) else None
            parts.append(f"{where} must be {rule or FIELD_RULES[field]}; got {_shown(error.get('input'))}")
        else:
            parts.append(f"{where}: {error['msg'][0].lower()}{error['msg'][1:]}; got {_shown(error.get('input'))}")
    if len(exc.errors()) > 3:
        parts.append(f"and {len(exc.errors()) - 3} more problems")
    return "; ".join(parts) or "the request is not valid"


def validation_error_response(exc: ValidationError) -> Response:
    """flask-openapi3's validation_error_callback: our error shape, status 400."""
    return error_response(400, describe_validation_error(exc))


# --- request bodies ---------------------------------------------------------------------------------

def _too_large(limit: int) -> ApiError:
    advice = "; load bigger files with `make load` on the server" if limit == MAX_UPLOAD_BYTES else ""
    return ApiError(413, f"request body is too large (limit {limit} bytes){advice}")


def read_body(limit: int, sink: Callable[[bytes], object]) -> int:
    """Pass the request body to `sink` chunk by chunk; returns its size. More than `limit` bytes, by
    Content-Length or as sent (chunked), raises a 413 ApiError before anything is loaded."""
    environ = request.environ
    declared = environ.get("CONTENT_LENGTH") or None
    if declared is not None:
        try:
            declared = int(declared)
        except ValueError:
            raise ApiError(400, "the Content-Length header is not a number") from None
        if declared < 0:
            raise ApiError(400, "the Content-Length header is negative")
        if declared > limit:
            if declared - limit <= DRAIN_BYTES:
                _discard(environ["wsgi.input"], declared)
            raise _too_large(limit)
    elif not environ.get("wsgi.input_terminated"):
        return 0  # neither a length nor a stream the server ends: HTTP says there is no body
    stream = environ["wsgi.input"]
    total = 0
    while declared is None or total < declared:
        want = READ_CHUNK if declared is None else min(READ_CHUNK, declared - total)
        chunk = stream.read(want)
        if not chunk:
            break
        total += len(chunk)
        if total > limit:
            _discard(stream, None if declared is None else declared - total)
            raise _too_large(limit)
        sink(chunk)
    return total


def _discard(stream, remaining: int | None) -> None:
    """Read and drop the rest of a refused body (`remaining` bytes, or to its end), within DRAIN_BYTES
    and DRAIN_SECONDS."""
    deadline = time.monotonic() + DRAIN_SECONDS
    budget = DRAIN_BYTES if remaining is None else min(remaining, DRAIN_BYTES)
    while budget > 0 and time.monotonic() < deadline:
        try:
            chunk = stream.read(min(READ_CHUNK, budget))
        except OSError:   # the client went away
            return
        if not chunk:
            return
        budget -= len(chunk)


def _media_type() -> str:
    # parsed here rather than with request.mimetype, which caches what it saw
    return parse_options_header(request.headers.get("Content-Type", ""))[0].lower()


def _is_json(media_type: str) -> bool:
    return media_type in JSON_TYPES or (media_type.startswith("application/") and media_type.endswith("+json"))


def take_trigger_body() -> None:
    """Before flask-openapi3 validates a trigger: read the body (at most MAX_TRIGGER_BYTES) and answer
    what the model cannot tell apart (it gets None for all of them): a body that is not JSON (415), not
    valid JSON or JSON but not an object (400). An empty body stays empty (the model reads it as {})."""
    raw = bytearray()
    read_body(MAX_TRIGGER_BYTES, raw.extend)
    if raw:
        media_type = _media_type()
        if not _is_json(media_type):
            raise ApiError(415, f"the body must be JSON (Content-Type: application/json), not "
                                f"{media_type or 'without a Content-Type'}")
        try:
            parsed = json.loads(raw)
        except RecursionError:
            raise ApiError(400, "the request body is not usable JSON: nested too deeply") from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ApiError(400, "the request body must be a JSON object with optional keys "
                                f"{', '.join(TRIGGER_KEYS)}; got {_shown(parsed)}")
    environ = request.environ
    environ["wsgi.input"] = io.BytesIO(bytes(raw))
    environ["CONTENT_LENGTH"] = str(len(raw))
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    environ.pop("wsgi.input_terminated", None)


class Spool:
    """An upload as it arrives: in memory up to SPOOL_BYTES, then in a temporary file (deleted on close)."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.memory = bytearray()
        self.file = None

    def write(self, chunk: bytes) -> None:
        if self.file is None and len(self.memory) + len(chunk) > SPOOL_BYTES:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.file = tempfile.NamedTemporaryFile(dir=self.directory, prefix=UPLOAD_FILE_PREFIX, suffix=".part")
            self.file.write(self.memory)
            self.memory = bytearray()
        if self.file is None:
            self.memory += chunk
        else:
            self.file.write(chunk)

    def source(self):
        """A path the loader streams, or the bytes of a small body."""
        if self.file is None:
            return io.BytesIO(bytes(self.memory))
        self.file.flush()
        return Path(self.file.name)

    def read(self) -> bytes:
        if self.file is None:
            return bytes(self.memory)
        self.file.flush()
        self.file.seek(0)
        return self.file.read()

    def __enter__(self) -> "Spool":
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()


class _UploadTurn:
    """The process's upload slot: wait for it up to UPLOAD_WAIT_SECONDS, else 429 with Retry-After."""

    def __init__(self, slots: threading.BoundedSemaphore):
        self.slots = slots

    def __enter__(self):
        if not self.slots.acquire(timeout=UPLOAD_WAIT_SECONDS):
            raise ApiError(429, f"other uploads are being loaded; retry in {UPLOAD_RETRY_AFTER} s",
                           {"Retry-After": str(UPLOAD_RETRY_AFTER)})
        return self

    def __exit__(self, *exc) -> None:
        self.slots.release()


def _upload(table: str, keys: tuple[str, ...], adapter, ingest) -> Response:
    """The body (CSV, or a JSON list of objects with `keys`) loaded in one transaction; the answer is its
    load summary (`database.TableSummary.to_dict`)."""
    media_type = _media_type()
    as_json = _is_json(media_type)
    if not as_json and media_type not in CSV_TYPES:
        raise ApiError(415, f"unsupported Content-Type {media_type or '(none)'}; send text/csv or application/json")
    shape = "{" + ", ".join(keys) + "}"
    with Spool(uploads_dir(settings())) as spool:
        try:
            received = read_body(MAX_UPLOAD_BYTES, spool.write)
            source = None if as_json else spool.source()   # flushes a spooled file
        except OSError as exc:  # the spool folder is full or read-only: the operator's problem, said so
            raise ApiError(507, f"the server has no room to receive this upload ({exc.strerror}); nothing "
                                "was loaded; please tell the operator") from None
        if received == 0:
            raise ApiError(400, f"the request body is empty; send CSV (Content-Type: text/csv) with a header "
                                f"line {','.join(keys)}, or a JSON list of objects {shape}")
        with _UploadTurn(current_app.extensions[UPLOADS_EXTENSION]):
            try:
                if as_json:
                    try:
                        items = adapter.validate_json(spool.read())
                    except ValidationError as exc:
                        raise ApiError(400, describe_validation_error(exc, items=keys)) from None
                    frame = pd.DataFrame.from_records(items, columns=list(keys))
                    del items
                    for key in keys:   # an absent or null time is empty, as in a CSV
                        if frame[key].isna().any():
                            frame[key] = frame[key].astype(object).where(frame[key].notna(), "")
                    summary = ingest(db(), frame, source="<request>")
                else:
                    [summary] = database.load_tables(db(), {table: source}, name="<request>")
            except database.LoadError as exc:
                raise ApiError(400, str(exc)) from None
    return jsonify(summary.to_dict())


# --- answers ----------------------------------------------------------------------------------------

def as_of_utc(text: str) -> str:
    """An `as_of` the schema admitted (api_models.AS_OF_PATTERN) as UTC text `...Z`."""
    from datetime import datetime, timezone

    if text.endswith("UTC"):
        text = text[:-3].rstrip()
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return iso_utc(moment.astimezone(timezone.utc))


def wants_csv() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", "text/csv"])
    return best == "text/csv" and request.accept_mimetypes["text/csv"] > request.accept_mimetypes["application/json"]


def send_report(job: dict):
    # The name comes from the jobs table (written as "<uuid>.csv" by jobs.py); still refuse anything
    # that is not a plain file name inside the reports directory (report_file_path). A report made by a
    # Celery worker (cluster mode, any host) is taken from the database when this folder lacks it.
    name = job.get("file")
    if not name or Path(name).name != name:
        raise ApiError(404, "the report file is not available")
    try:
        path = service.report_file_path(settings(), job)
    except service.NotFound:
        raise ApiError(404, "the report file is no longer available; trigger a new report") from None
    return send_file(path, mimetype="text/csv", as_attachment=True,
                     download_name=f"{job['report_id']}.csv", max_age=0)


def report_entry(job: dict) -> dict:
    params = job.get("params") or {}
    store_ids = params.get("store_ids")
    return {
        "report_id": job["report_id"], "status": job["status"], "created_at": job["created_at"],
        "started_at": job["started_at"], "finished_at": job["finished_at"],
        "progress": round(float(job["progress"] or 0.0), 4), "attempts": job["attempts"],
        "parameters": {"as_of": params.get("as_of"), "stores_requested": len(store_ids) if store_ids else None,
                       "columns": params.get("columns") or "standard",
                       "reach_minutes": params.get("reach_minutes", settings().poll_reach_minutes)},
        "as_of": job["as_of"], "rows": job["rows"], "seconds": job["seconds"], "error": job["error"],
        "download_url": f"/reports/{job['report_id']}.csv" if job["status"] == "Complete" else None,
    }


def check_database() -> str:
    """'ok' if this process can start a write transaction and write (rolled back at once), else why not.
    A write held by someone else (a load) for more than a second is fine: the database is writable."""
    conn = None
    try:
        conn = database.connect(settings().database)
        database.check_writable(conn)
        return "ok"
    except Exception as exc:  # any failure is the answer
        log.warning("health check: the database cannot be written: %s", exc)
        return f"cannot be written: {exc}"
    finally:
        if conn is not None:
            conn.close()


def check_reports_dir() -> str:
    """'ok' if a file can be created, written and removed in the reports folder, else why not."""
    folder = Path(settings().reports_dir)
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".health-", suffix=".tmp") as probe:
            probe.write(b"ok\n")
            probe.flush()
            os.fsync(probe.fileno())
        return "ok"
    except OSError as exc:
        log.warning("health check: the reports folder %s cannot be written: %s", folder, exc)
        return f"cannot be written: {exc.strerror or exc}"


# --- the blueprint ----------------------------------------------------------------------------------

ERROR = {"description": "", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _error(description: str, headers: dict | None = None) -> dict:
    answer = {**ERROR, "description": description}
    if headers:
        answer["headers"] = headers
    return answer


RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}


def _upload_body(item_schema: str, csv_pattern: str, header: str) -> dict:
    return {"requestBody": {"required": True, "description": "CSV with a header line, or a JSON list; at most "
                                                             f"{MAX_UPLOAD_BYTES // 2**20} MiB", "content": {
        "text/csv": {"schema": {"type": "string", "pattern": csv_pattern,
                                "description": f"Starts with the header line `{header}`"}},
        "application/json": {"schema": {"type": "array",
                                        "items": {"$ref": f"#/components/schemas/{item_schema}"}}}}}}


def _operation_id(*, name: str, path: str, method: str) -> str:
    return name   # the view function's name: trigger_report, get_report, ...


def build_api() -> APIBlueprint:
    api = APIBlueprint(API, __name__, operation_id_callback=_operation_id)
    reports_tag, stores_tag, data_tag, ops_tag = (Tag(name="reports"), Tag(name="stores"), Tag(name="data"),
                                                  Tag(name="operations"))

    @api.errorhandler(service.ServiceError)
    def service_error(exc: service.ServiceError):
        return error_response(exc.status, exc.message)

    @api.before_request
    def read_trigger_body():
        if request.endpoint == f"{API}.trigger_report":
            take_trigger_body()

    @api.post("/trigger_report", tags=[reports_tag], responses={
        202: m.TriggerAccepted,
        400: _error("Body not a JSON object, unknown key, or a value outside its rule"),
        413: _error(f"Body over {MAX_TRIGGER_BYTES // 2**20} MiB"),
        415: _error("A body that is not JSON"),
        429: _error("The queue already holds SM_QUEUE_LIMIT waiting reports", RETRY_AFTER),
        503: _error("Cluster mode: the report broker cannot be reached (the job is recorded as Failed)")})
    def trigger_report(body: m.TriggerRequest):
        """Start a report job"""
        params = {
            "as_of": as_of_utc(body.as_of) if body.as_of is not None else None,
            # stored ids are trimmed (the loader trims them), so the report looks them up trimmed too
            "store_ids": list(dict.fromkeys(item.strip() for item in body.store_ids)) if body.store_ids else None,
            "columns": body.columns or "standard",
            "reach_minutes": (body.reach_minutes if "reach_minutes" in body.model_fields_set
                              else settings().poll_reach_minutes),
        }
        try:
            report_id = jobs().submit(params, conn=db())
        except QueueFull as exc:
            return error_response(429, str(exc), {"Retry-After": str(exc.retry_after)})
        except BrokerUnavailable as exc:
            return error_response(503, f"{exc.message} (report {exc.report_id})", {"Retry-After": "30"})
        response = jsonify({"report_id": report_id})
        response.status_code = 202
        response.headers["Location"] = f"/get_report?report_id={report_id}"
        return response

    @api.get("/get_report", tags=[reports_tag], responses={
        200: m.ReportStatus, 400: _error("report_id missing or not a UUID"),
        404: _error("No report with this id (or, asked as CSV, its file is gone)")})
    def get_report(query: m.ReportQuery):
        """Status of a report job, or the CSV itself once complete with Accept: text/csv"""
        report_id = query.report_id.lower()
        job = database.get_report_job(db(), report_id)
        if job is None:
            raise ApiError(404, f"no report with id {report_id}")
        status = job["status"]
        if status in ("Queued", "Running"):
            return jsonify({"status": "Running", "progress": round(float(job["progress"] or 0.0), 4)})
        if status == "Failed":
            return jsonify({"status": "Failed", "error": job["error"] or "the report failed"})
        if wants_csv():
            return send_report(job)
        meta = dict(job["meta"] or {})
        warnings = meta.pop("warnings", [])
        meta.pop("reach_minutes", None)  # the job's parameter below is the one the engine was given
        return jsonify({
            "status": "Complete",
            "file": job["file"],  # the original project's answer: the report's name in reports/
            "download_url": f"/reports/{report_id}.csv",
            "rows": job["rows"],
            "as_of": job["as_of"],
            "reach_minutes": (job["params"] or {}).get("reach_minutes", settings().poll_reach_minutes),
            "warnings": warnings,
            "seconds": job["seconds"],
            "timings": job["timings"] or {},
            "meta": meta,
        })

    @api.get("/reports", tags=[reports_tag], responses={200: m.ReportList, 400: _error("limit or offset out of range")})
    def list_reports(query: m.ReportListQuery):
        """Report jobs, newest first, a page at a time, with how many there are"""
        page, total = database.list_report_jobs(db(), limit=query.limit, offset=query.offset)
        return jsonify({"reports": [report_entry(job) for job in page], "total": total,
                        "limit": query.limit, "offset": query.offset})

    @api.get("/reports/<uuid:report_id>.csv", tags=[reports_tag], responses={
        200: {"description": "The report as a CSV attachment", "content": {"text/csv": {"schema": {"type": "string"}}}},
        404: _error("No completed report with this id")})
    def download_report(path: m.ReportPath):
        """Download a completed report"""
        job = database.get_report_job(db(), str(path.report_id))
        if job is None or job["status"] != "Complete":
            raise ApiError(404, f"no completed report with id {path.report_id}")
        return send_report(job)

    @api.delete("/reports/<uuid:report_id>", tags=[reports_tag], responses={
        204: None, 404: _error("No report with this id")})
    def delete_report(path: m.ReportPath):
        """Delete a report job and its file (a run still going on is discarded)"""
        if not jobs().delete(str(path.report_id), conn=db()):
            raise ApiError(404, f"no report with id {path.report_id}")
        return Response(status=204)

    @api.get("/reports/<uuid:report_id>/rows", tags=[reports_tag], responses={
        200: m.ReportRows, 400: _error("A parameter outside its rule"),
        404: _error("No completed report with this id (or its file is gone)"),
        409: _error("An unknown_* column asked of a standard report")})
    def report_rows(path: m.ReportPath, query: m.ReportRowsQuery):
        """A page of a completed report's rows, sorted by any column and filtered by store id, with the total"""
        return jsonify(service.report_rows(settings(), str(path.report_id), sort=query.sort, order=query.order,
                                           limit=query.limit, offset=query.offset, q=query.q))

    @api.get("/stores/<store_id>/timeline", tags=[stores_tag], responses={
        200: m.StoreTimeline, 400: _error("A parameter outside its rule"),
        404: _error("No store with a poll at or before as_of")})
    def store_timeline(path: m.StorePath, query: m.TimelineQuery):
        """Why a store's report row says what it says: business intervals, polls, up/down/unknown segments

        `totals` equal the store's row of an extended report made with the same as_of and reach."""
        # reach: left out = the service's default; none/unbounded/empty = None (unbounded); else minutes
        reach = query.reach_minutes if "reach_minutes" in query.model_fields_set else service.DEFAULT
        return jsonify(service.store_timeline(settings(), path.store_id, as_of=query.as_of, reach_minutes=reach,
                                              days=query.days))

    @api.get("/stores", tags=[stores_tag], responses={
        200: m.StoreSearch, 400: _error("q longer than a store id, or limit out of range")})
    def find_stores(query: m.StoreSearchQuery):
        """Find polled stores by a part of their id"""
        return jsonify(service.find_stores(settings(), query.q, query.limit))

    @api.get("/data/summary", tags=[data_tag], responses={200: m.DataSummary})
    def data_summary():
        """What the database holds: stores, polls, first and last poll, stores without hours or time zone, loads"""
        return jsonify(service.data_summary(settings()))

    upload_answers = {
        200: m.LoadSummary,
        400: _error("Empty body, JSON that is not a list of such objects, a CSV without the columns"),
        413: _error(f"Body over {MAX_UPLOAD_BYTES // 2**20} MiB (load bigger files with `make load`)"),
        415: _error("A Content-Type other than text/csv or application/json"),
        507: _error("The server has no room to receive the upload (disk full or read-only); nothing loaded"),
        429: _error(f"Other uploads kept this process busy for {UPLOAD_WAIT_SECONDS:g} s", RETRY_AFTER)}

    @api.post("/store_status", tags=[data_tag], responses=upload_answers,
              openapi_extensions=_upload_body("Poll", m.STATUS_CSV_PATTERN, "store_id,status,timestamp_utc"))
    def store_status():
        """Append polls in one transaction; rows that cannot be read are rejected and counted"""
        return _upload("store_status", POLL_KEYS, m.POLLS, database.ingest_store_status)

    @api.post("/special_hours", tags=[data_tag], responses=upload_answers,
              openapi_extensions=_upload_body("SpecialHours", m.SPECIAL_HOURS_CSV_PATTERN,
                                              "store_id,date,start_time_local,end_time_local"))
    def special_hours():
        """Load special hours (holidays, closures, one-day hours) in one transaction

        They replace the stored rows of each (store, date) in the body; other dates are kept."""
        return _upload("special_hours", SPECIAL_KEYS, m.SPECIAL_HOURS, database.ingest_special_hours)

    @api.get("/health", tags=[ops_tag], openapi_extensions={"security": []},   # open without a token
             responses={200: m.Health, 503: {"description": "Unhealthy; `reason` says why",
                                             "content": {"application/json": {"schema": {
                                                 "$ref": "#/components/schemas/Health"}}}}})
    def health():
        """Database and reports folder writable, report workers alive (no token needed)"""
        pool = jobs()
        body = {"status": "ok", "database": check_database(), "reports": check_reports_dir(),
                "workers": {"alive": pool.alive(), "configured": pool.workers},
                "queue": {"depth": None, "limit": pool.queue_limit}}
        reasons = []
        if body["database"] == "ok":
            try:
                body["queue"]["depth"] = pool.depth(db())  # Queued jobs of every process: read from the table
            except Exception as exc:
                log.exception("health check: database unreachable")
                body["database"] = f"unreachable: {exc}"
        if body["database"] != "ok":
            reasons.append(f"the database {body['database']}")
        if body["reports"] != "ok":
            reasons.append(f"the reports folder {body['reports']}")
        broker = pool.broker_status()   # cluster mode only: the Celery broker answers
        if broker is not None:
            body["broker"] = broker
            if broker != "ok":
                reasons.append(f"the report broker is {broker}")
        if not pool.running:
            reasons.append("the report workers are not running")
        elif pool.alive() < pool.workers:
            reasons.append(f"only {pool.alive()} of {pool.workers} report workers are alive")
        if reasons:
            body["status"], body["reason"] = "unhealthy", "; ".join(reasons)
        response = jsonify(body)
        response.status_code = 200 if not reasons else 503
        return response

    @api.get("/metrics", tags=[ops_tag], responses={200: {
        "description": "Prometheus text format: report jobs by status, queue depth, report seconds, rows ingested",
        "content": {"text/plain": {"schema": {"type": "string"}}}}})
    def metrics_text():
        """Prometheus metrics, read from the database (every process answers the same)"""
        path = settings().database
        return Response(metrics.render(lambda: database.connect(path)), content_type=metrics.CONTENT_TYPE)

    return api


def new_upload_slots() -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(UPLOAD_SLOTS)

