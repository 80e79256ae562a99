"""HTTP API: trigger and poll report jobs, download reports, append polls and special hours, health, OpenAPI.

Served by gunicorn with `make run` (`gunicorn.conf.py`: several worker processes, each with its report
worker threads); `python app.py --dev` runs Flask's development server in one process, for debugging only.
Settings come from the environment or `.env` (see `config.py`). Every error answer is JSON
`{"error": "..."}`; stack traces only go to the server log.

Concurrency: each request opens its own short-lived SQLite connection (WAL mode, so reads never wait
for a writer); report workers have their own connections (`jobs.py`). An ingestion request is one
transaction and a report reads its inputs in one read transaction, so a report sees either none or all
of one request's polls. Report jobs are shared by every process on the database (see `jobs.py`).
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import os
import io
import json
import logging
import re
import sqlite3
import sys
from datetime import datetime, timezone
from pathlib import Path

import click
from flask import Flask, Response, g, jsonify, request, send_file
from werkzeug.exceptions import HTTPException

import database
from config import MAX_REACH_MINUTES, Settings
from jobs import QueueFull, ReportJobs, iso_utc

log = logging.getLogger("store_monitoring.app")

# Largest request body accepted (POST /store_status appends polls; a trigger body is tiny). 32 MiB is
# roughly 700k polls as CSV; bigger loads belong to `python database.py load`.
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_STORE_IDS = 100_000
TRIGGER_KEYS = {"as_of", "store_ids", "columns", "reach_minutes"}
COLUMN_SETS = ("standard", "extended")
POLL_KEYS = ("store_id", "status", "timestamp_utc")
SPECIAL_KEYS = ("store_id", "date", "start_time_local", "end_time_local")
UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
CSV_TYPES = {"text/csv", "application/csv", "text/plain"}
EXTENSION = "store_monitoring"


class ApiError(Exception):
    """A client error answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


# --- application factory ----------------------------------------------------------------------------

def create_app(settings: Settings | None = None, *, start_workers: bool = True, load_data: bool = False,
               generate=None) -> Flask:
    """The Flask app. `start_workers=False` gives an app whose jobs stay Queued (no worker threads).

    `load_data=True` (used by `python app.py`) loads `data_dir`'s CSVs, or a generated demo set, into an
    empty database. `generate` replaces `report_generator.generate_report` (tests).
    Call `shutdown(app)` (or `app.extensions["store_monitoring"].close()`) to stop the workers.
    """
    settings = settings or Settings.from_env()
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False

    if load_data:
        log.info("%s", prepare_database(settings))
    else:
        database.connect(settings.database_path).close()  # creates the schema before anything else runs
    Path(settings.reports_dir).mkdir(parents=True, exist_ok=True)

    jobs = ReportJobs(settings, generate=generate, logger=log)
    if start_workers:
        jobs.start()
    app.extensions[EXTENSION] = jobs
    app.config["SM_SETTINGS"] = settings

    app.teardown_appcontext(_close_connection)
    _register_error_handlers(app)
    _register_routes(app)
    _register_cli(app)
    return app


def prepare_database(settings: Settings) -> str:
    """Create the schema and, on a first start (no polls), load `data_dir`'s CSVs or a generated demo set.

    Runs once per start of the service, before any worker takes a job; an exclusive lock on a file beside
    the database makes processes that start together on one database take turns, so the data is loaded
    once. Returns the line for the log; raises `database.LoadError` or `sqlite3.Error`.
    """
    lock_path = Path(f"{settings.database_path}-startup.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed
        conn = database.connect(settings.database_path)
        try:
            return database.ensure_loaded(conn, settings.data_dir)
        finally:
            conn.close()


def cli_app() -> Flask:
    """The app for `flask --app app:cli_app COMMAND`: no report workers, so a command such as `load`
    never picks up (and re-runs) report jobs a stopped service left behind."""
    return create_app(start_workers=False)


def _register_cli(app: Flask) -> None:
    """`flask --app app:cli_app load [--status P] [--hours P] [--timezones P]`: the loader of
    `database.py`, pointed at this app's database."""

    @app.cli.command("load", context_settings={"ignore_unknown_options": True, "help_option_names": []})
    @click.argument("options", nargs=-1, type=click.UNPROCESSED)
    def load(options) -> None:
        """Load CSV files into the service's database (same options as `python database.py load`)."""
        settings = app.config["SM_SETTINGS"]
        raise SystemExit(database.main(["load", "--db", str(settings.database_path), *options]))


def shutdown(app: Flask, timeout: float | None = 30.0) -> None:
    """Stop the app's report workers (they finish their current job) and join them."""
    app.extensions[EXTENSION].close(timeout)


def _settings() -> Settings:
    from flask import current_app

    return current_app.config["SM_SETTINGS"]


def _jobs() -> ReportJobs:
    from flask import current_app

    return current_app.extensions[EXTENSION]


def db():
    """This request's connection, opened on first use and closed at teardown."""
    if "db" not in g:
        g.db = database.connect(_settings().database_path)
    return g.db


def _close_connection(_exc=None) -> None:
    conn = g.pop("db", None)
    if conn is not None:
        conn.close()


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        messages = {
            404: "not found",
            405: f"method {request.method} is not allowed for {request.path}",
            413: f"request body is too large (limit {app.config['MAX_CONTENT_LENGTH']} bytes)",
        }
        message = messages.get(exc.code) or exc.description or exc.name
        headers = {k: v for k, v in exc.get_headers() if k.lower() == "allow"}
        return error_response(exc.code or 500, message, headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal server error; the details are in the server log")


# --- request parsing --------------------------------------------------------------------------------

def parse_as_of(value) -> str:
    """ISO 8601 instant -> normalized UTC text (`...Z`). An explicit offset is converted to UTC; a time
    without offset is taken as UTC. Also accepts the data's own form `2023-01-22 12:09:39.388884 UTC`."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError(400, "as_of must be an ISO 8601 date-time string, e.g. \"2023-01-25T18:13:22Z\"")
    text = value.strip()
    if text.endswith(" UTC"):
        text = text[:-4]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ApiError(400, f"as_of is not a valid ISO 8601 date-time: {value!r} "
                            "(expected e.g. \"2023-01-25T18:13:22Z\")") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    try:
        moment = moment.astimezone(timezone.utc)
    except OverflowError:
        raise ApiError(400, f"as_of is out of range: {value!r}") from None
    if not 1970 <= moment.year <= 2200:
        raise ApiError(400, f"as_of must lie between the years 1970 and 2200: {value!r}")
    return iso_utc(moment)


def parse_json(raw: bytes):
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:  # nesting deeper than the parser can follow
        raise ApiError(400, "request body is not usable JSON: nested too deeply") from None


def parse_trigger_body() -> dict:
    raw = request.get_data(cache=False)
    if not raw.strip():
        body = {}
    else:
        body = parse_json(raw)
    if body is None:
        body = {}
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object with optional keys as_of, store_ids, columns")
    unknown = sorted(set(body) - TRIGGER_KEYS)
    if unknown:
        raise ApiError(400, f"unknown key(s) {', '.join(map(repr, unknown))}; "
                            "allowed: as_of, store_ids, columns, reach_minutes")

    params = {"as_of": None, "store_ids": None, "columns": "standard",
              "reach_minutes": _settings().poll_reach_minutes}
    if "reach_minutes" in body:  # null is a value here: unbounded reach
        reach = body["reach_minutes"]
        if reach is not None and (isinstance(reach, bool) or not isinstance(reach, int)
                                  or not 1 <= reach <= MAX_REACH_MINUTES):
            raise ApiError(400, f"reach_minutes must be an integer from 1 to {MAX_REACH_MINUTES}, or null for "
                                f"unbounded reach; got {json.dumps(reach)}")
        params["reach_minutes"] = reach
    if body.get("as_of") is not None:
        params["as_of"] = parse_as_of(body["as_of"])
    if body.get("store_ids") is not None:
        store_ids = body["store_ids"]
        if not isinstance(store_ids, list):
            raise ApiError(400, "store_ids must be a list of strings")
        if not store_ids:
            raise ApiError(400, "store_ids must not be empty; leave it out to report on every store")
        if len(store_ids) > MAX_STORE_IDS:
            raise ApiError(400, f"store_ids has {len(store_ids)} entries; the limit is {MAX_STORE_IDS}")
        for index, item in enumerate(store_ids):
            if not isinstance(item, str) or not item.strip():
                raise ApiError(400, f"store_ids[{index}] must be a non-empty string, got {json.dumps(item)}")
        # Stored ids are trimmed (the loader trims them), so the report must look them up trimmed too.
        params["store_ids"] = list(dict.fromkeys(item.strip() for item in store_ids))
    if body.get("columns") is not None:
        columns = body["columns"]
        if columns not in COLUMN_SETS:
            raise ApiError(400, f"columns must be \"standard\" or \"extended\", got {json.dumps(columns)}")
        params["columns"] = columns
    return params


def parse_report_id(value: str | None) -> str:
    if value is None or not value.strip():
        raise ApiError(400, "the report_id query parameter is required")
    if not UUID_RE.match(value.strip()):
        raise ApiError(400, f"report_id must be a UUID such as the one /trigger_report returned, got {value!r}")
    return value.strip().lower()


def polls_from_json(raw: bytes) -> io.BytesIO:
    """A JSON list of {store_id, status, timestamp_utc} -> the same rows as CSV for the loader."""
    return rows_from_json(raw, POLL_KEYS)


def rows_from_json(raw: bytes, keys: tuple[str, ...]) -> io.BytesIO:
    """A JSON list of objects with `keys` (a null or absent value is empty) -> the same rows as CSV."""
    shape = "{" + ", ".join(keys) + "}"
    items = parse_json(raw)
    if not isinstance(items, list):
        raise ApiError(400, f"a JSON body must be a list of objects {shape}")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(keys)
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(400, f"item {index} is not an object {shape}")
        unknown = sorted(set(item) - set(keys))
        if unknown:
            raise ApiError(400, f"item {index} has unknown key(s) {', '.join(map(repr, unknown))}; "
                                f"allowed: {', '.join(keys)}")
        row = []
        for key in keys:
            value = item.get(key)
            if value is None:
                value = ""
            elif isinstance(value, bool) or not isinstance(value, (str, int)):
                raise ApiError(400, f"item {index}: {key} must be a string, got {json.dumps(value)}")
            row.append(str(value))
        writer.writerow(row)
    try:
        return io.BytesIO(text.getvalue().encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate such as "\ud800" is valid JSON but not text
        raise ApiError(400, "the JSON body contains a string that is not valid Unicode text") from None


def wants_csv() -> bool:
    best = request.accept_mimetypes.best_match(["application/json", "text/csv"])
    return best == "text/csv" and request.accept_mimetypes["text/csv"] > request.accept_mimetypes["application/json"]


# --- routes -----------------------------------------------------------------------------------------

def _register_routes(app: Flask) -> None:
    @app.post("/trigger_report")
    def trigger_report():
        params = parse_trigger_body()
        try:
            report_id = _jobs().submit(params, conn=db())
        except QueueFull as exc:
            return error_response(429, str(exc), {"Retry-After": str(exc.retry_after)})
        response = jsonify({"report_id": report_id})
        response.status_code = 202
        response.headers["Location"] = f"/get_report?report_id={report_id}"
        return response

    @app.get("/get_report")
    def get_report():
        report_id = parse_report_id(request.args.get("report_id"))
        job = database.get_report_job(db(), report_id)
        if job is None:
            raise ApiError(404, f"no report with id {report_id}")
        status = job["status"]
        if status in ("Queued", "Running"):
            return jsonify({"status": "Running", "progress": round(float(job["progress"] or 0.0), 4)})
        if status == "Failed":
            return jsonify({"status": "Failed", "error": job["error"] or "the report failed"})
        if wants_csv():
            return _send_report(job)
        meta = dict(job["meta"] or {})
        warnings = meta.pop("warnings", [])
        meta.pop("reach_minutes", None)  # the job's parameter below is the one the engine was given
        return jsonify({
            "status": "Complete",
            "file": job["file"],  # the original project's answer: the report's name in reports/
            "download_url": f"/reports/{report_id}.csv",
            "rows": job["rows"],
            "as_of": job["as_of"],
            "reach_minutes": (job["params"] or {}).get("reach_minutes", _settings().poll_reach_minutes),
            "warnings": warnings,
            "seconds": job["seconds"],
            "timings": job["timings"] or {},
            "meta": meta,
        })

    @app.get("/reports/<uuid:report_id>.csv")
    def download_report(report_id):
        job = database.get_report_job(db(), str(report_id))
        if job is None or job["status"] != "Complete":
            raise ApiError(404, f"no completed report with id {report_id}")
        return _send_report(job)

    @app.post("/store_status")
    def store_status():
        return _ingest_upload("store_status", POLL_KEYS, database.ingest_store_status)

    @app.post("/special_hours")
    def special_hours():
        return _ingest_upload("special_hours", SPECIAL_KEYS, database.ingest_special_hours)

    @app.get("/health")
    def health():
        jobs = _jobs()
        body = {"status": "ok", "database": "ok",
                "workers": {"alive": jobs.alive(), "configured": jobs.workers},
                "queue": {"depth": None, "limit": jobs.queue_limit}}
        try:
            body["queue"]["depth"] = jobs.depth(db())  # Queued jobs of every process: read from the table
        except Exception:
            log.exception("health check: database unreachable")
            body["database"] = "unreachable"
            body["status"] = "unhealthy"
        if not jobs.running or jobs.alive() < jobs.workers:
            body["status"] = "unhealthy"
        response = jsonify(body)
        response.status_code = 200 if body["status"] == "ok" else 503
        return response

    @app.get("/openapi.json")
    def openapi():
        return jsonify(openapi_document())


def _ingest_upload(table: str, keys: tuple[str, ...], ingest) -> Response:
    """The request body (CSV, or a JSON list of objects with `keys`) loaded by `ingest` in one
    transaction; the answer is its load summary (`database.TableSummary.to_dict`)."""
    raw = request.get_data(cache=False)
    if not raw.strip():
        raise ApiError(400, "the request body is empty; send CSV (Content-Type: text/csv) "
                            "or a JSON list of {" + ", ".join(keys) + "}")
    mimetype = request.mimetype
    if not mimetype:
        mimetype = "application/json" if raw.lstrip()[:1] in (b"[", b"{") else "text/csv"
    if mimetype == "application/json" or mimetype.endswith("+json"):
        source = rows_from_json(raw, keys)
    elif mimetype in CSV_TYPES:
        source = io.BytesIO(raw)
    else:
        raise ApiError(415, f"unsupported Content-Type {mimetype!r}; use text/csv or application/json")
    try:
        frame = database.read_table_csv(source, table)
    except database.LoadError as exc:
        raise ApiError(400, str(exc)) from None
    try:
        summary = ingest(db(), frame, source="<request>")
    except database.LoadError as exc:
        raise ApiError(400, str(exc)) from None
    return jsonify(summary.to_dict())


def _send_report(job: dict):
    name = job.get("file")
    reports_dir = Path(_settings().reports_dir).resolve()
    # The name comes from the jobs table (written as "<uuid>.csv" by jobs.py); still refuse anything
    # that is not a plain file name inside the reports directory.
    if not name or Path(name).name != name:
        raise ApiError(404, "the report file is not available")
    path = reports_dir / name
    if not path.is_file():
        raise ApiError(404, "the report file is no longer available; trigger a new report")
    return send_file(path, mimetype="text/csv", as_attachment=True,
                     download_name=f"{job['report_id']}.csv", max_age=0)


# --- OpenAPI ----------------------------------------------------------------------------------------

def _error(description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def openapi_document() -> dict:
    """OpenAPI 3.0 description of every route; tests check it against `app.url_map` and real answers."""
    report_id_path = {"name": "report_id", "in": "path", "required": True,
                      "schema": {"type": "string", "format": "uuid"}}
    csv_file = {"text/csv": {"schema": {"type": "string"}}}
    document = {
        "openapi": "3.0.3",
        "info": {
            "title": "store-monitoring",
            "version": "1.0.0",
            "description": "Uptime/downtime of stores within business hours over the last hour, day and "
                           "week, computed from hourly polls. Reports run as background jobs: trigger, "
                           "poll, download. Every error answer is JSON {\"error\": \"...\"}.",
        },
        "paths": {
            "/trigger_report": {"post": {
                "summary": "Start a report job",
                "requestBody": {"required": False, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/TriggerRequest"}}}},
                "responses": {
                    "202": {"description": "Job accepted; poll /get_report with the id",
                            "headers": {"Location": {"schema": {"type": "string"}}},
                            "content": {"application/json": {"schema": {
                                "type": "object", "required": ["report_id"],
                                "properties": {"report_id": {"type": "string", "format": "uuid"}}}}}},
                    "400": _error("Malformed body: invalid JSON, not an object, unknown key, bad as_of, "
                                  "store_ids not a non-empty list of non-empty strings, unknown columns"),
                    "413": _error("Body too large"),
                    "429": {**_error("Queue full; retry after the given seconds"),
                            "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
                },
            }},
            "/get_report": {"get": {
                "summary": "Status of a report job (or the CSV itself once complete, with Accept: text/csv)",
                "parameters": [{"name": "report_id", "in": "query", "required": True,
                                "schema": {"type": "string", "format": "uuid"}}],
                "responses": {
                    "200": {"description": "Job status; with `Accept: text/csv` and a complete job, the CSV",
                            "content": {"application/json": {"schema": {"oneOf": [
                                {"$ref": "#/components/schemas/ReportRunning"},
                                {"$ref": "#/components/schemas/ReportComplete"},
                                {"$ref": "#/components/schemas/ReportFailed"}]}},
                                **csv_file}},
                    "400": _error("report_id missing or not a UUID"),
                    "404": _error("No report with this id (or its file is gone)"),
                },
            }},
            "/reports/{report_id}.csv": {"get": {
                "summary": "Download a completed report as a CSV attachment",
                "parameters": [report_id_path],
                "responses": {
                    "200": {"description": "The report", "content": csv_file},
                    "404": _error("No completed report with this id"),
                },
            }},
            "/store_status": {"post": {
                "summary": "Append polls (one transaction); rows that cannot be read are rejected and counted",
                "requestBody": {"required": True, "content": {
                    "text/csv": {"schema": {"type": "string",
                                            "description": "Header store_id,status,timestamp_utc"}},
                    "application/json": {"schema": {"type": "array",
                                                    "items": {"$ref": "#/components/schemas/Poll"}}}}},
                "responses": {
                    "200": {"description": "Load summary: what each row read did (new, already stored, "
                                           "changed, conflicting, duplicate, rejected by reason with examples)",
                            "content": {"application/json": {"schema": {
                                "$ref": "#/components/schemas/LoadSummary"}}}},
                    "400": _error("Unusable body: empty, invalid JSON, not a list of objects, missing columns"),
                    "413": _error("Body too large"),
                    "415": _error("Content-Type is neither CSV nor JSON"),
                },
            }},
            "/special_hours": {"post": {
                "summary": "Load special hours (holidays, closures, one-day hours) in one transaction: they "
                           "replace the stored rows of each (store, date) in the body; other dates are kept",
                "requestBody": {"required": True, "content": {
                    "text/csv": {"schema": {"type": "string", "description": (
                        "Header store_id,date,start_time_local,end_time_local; both times empty = closed")}},
                    "application/json": {"schema": {"type": "array",
                                                    "items": {"$ref": "#/components/schemas/SpecialHours"}}}}},
                "responses": {
                    "200": {"description": "Load summary: new, already stored, duplicates, rejected by reason "
                                           "(empty store_id, bad date, one time empty, time outside "
                                           "00:00:00..23:59:59) with examples, and the stored rows removed",
                            "content": {"application/json": {"schema": {
                                "$ref": "#/components/schemas/LoadSummary"}}}},
                    "400": _error("Unusable body: empty, invalid JSON, not a list of objects, missing columns"),
                    "413": _error("Body too large"),
                    "415": _error("Content-Type is neither CSV nor JSON"),
                },
            }},
            "/health": {"get": {
                "summary": "Database reachable and report workers alive",
                "responses": {
                    "200": {"description": "Healthy", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Health"}}}},
                    "503": {"description": "Unhealthy", "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/Health"}}}},
                },
            }},
            "/openapi.json": {"get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.0 document",
                                      "content": {"application/json": {"schema": {"type": "object"}}}}},
            }},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
            "TriggerRequest": {"type": "object", "additionalProperties": False, "properties": {
                "as_of": {"type": "string", "format": "date-time",
                          "description": "The report's `now`, ISO 8601. Without an offset it is UTC; an "
                                         "explicit offset is converted to UTC. Default: the latest poll."},
                "store_ids": {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1},
                              "description": "Only these stores (default: all)"},
                "columns": {"type": "string", "enum": list(COLUMN_SETS), "default": "standard"},
                "reach_minutes": {"type": "integer", "minimum": 1, "maximum": MAX_REACH_MINUTES, "nullable": True,
                                  "description": "How far a poll speaks on either side of it, in minutes; "
                                                 "null = unbounded (classic nearest poll). Default: the "
                                                 "service's SM_POLL_REACH_MINUTES (120)."},
            }},
            "ReportRunning": {"type": "object", "required": ["status", "progress"], "properties": {
                "status": {"type": "string", "enum": ["Running"]},
                "progress": {"type": "number", "minimum": 0, "maximum": 1}}},
            "ReportComplete": {"type": "object",
                               "required": ["status", "file", "download_url", "rows", "as_of", "reach_minutes",
                                            "warnings", "seconds"],
                               "properties": {
                                   "status": {"type": "string", "enum": ["Complete"]},
                                   "file": {"type": "string", "description": "The report's file name"},
                                   "reach_minutes": {"type": "integer", "nullable": True,
                                                     "description": "The reach used; null = unbounded"},
                                   "warnings": {"type": "array", "items": {
                                       "type": "object", "required": ["code", "message"],
                                       "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                                                      "count": {"type": "integer"},
                                                      "examples": {"type": "array", "items": {"type": "string"}},
                                                      "first_poll": {"type": "string"}}}},
                                   "download_url": {"type": "string", "example": "/reports/<id>.csv"},
                                   "rows": {"type": "integer"},
                                   "as_of": {"type": "string", "format": "date-time"},
                                   "seconds": {"type": "number"},
                                   "timings": {"type": "object",
                                               "additionalProperties": {"type": "number"},
                                               "description": "Seconds spent in load, compute, write"},
                                   "meta": {"type": "object", "description": (
                                       "stores (rows), stores_without_timezone and "
                                       "stores_with_unknown_timezone (both reported in default_timezone)"),
                                       "properties": {
                                           "stores": {"type": "integer"},
                                           "stores_without_timezone": {"type": "integer"},
                                           "stores_with_unknown_timezone": {"type": "integer"},
                                           "stores_without_polls_this_week": {"type": "integer"},
                                           "default_timezone": {"type": "string"}}}}},
            "ReportFailed": {"type": "object", "required": ["status", "error"], "properties": {
                "status": {"type": "string", "enum": ["Failed"]}, "error": {"type": "string"}}},
            "Poll": {"type": "object", "required": ["store_id", "status", "timestamp_utc"],
                     "additionalProperties": False, "properties": {
                         "store_id": {"type": "string"},
                         "status": {"type": "string", "enum": ["active", "inactive"]},
                         "timestamp_utc": {"type": "string", "example": "2023-01-22 12:09:39.388884 UTC"}}},
            "SpecialHours": {"type": "object", "required": ["store_id", "date"],
                             "additionalProperties": False, "properties": {
                                 "store_id": {"type": "string"},
                                 "date": {"type": "string", "format": "date", "example": "2023-12-25",
                                          "description": "The store's local calendar date"},
                                 "start_time_local": {"type": "string", "nullable": True, "example": "12:00:00",
                                                      "description": "Null or absent with end_time_local: closed"},
                                 "end_time_local": {"type": "string", "nullable": True, "example": "14:00:00"}}},
            "LoadSummary": {
                "type": "object",
                "description": "Every row read lands in exactly one of new, already_stored, changed, conflicting, "
                               "duplicates and rejected (their counts add up to read). removed is not a row "
                               "read: stored rows the body replaced and does not have. loaded (for older "
                               "clients) = read - rejected - duplicates.",
                "properties": {
                    "table": {"type": "string"}, "source": {"type": "string"},
                    "read": {"type": "integer", "description": "Data rows read"},
                    "new": {"type": "integer", "description": "Rows the database did not have"},
                    "already_stored": {"type": "integer", "description": "Identical to a stored row"},
                    "changed": {"type": "integer", "description": (
                        "store_status: stored active polls made inactive (inactive wins); timezones: stores "
                        "whose zone changed")},
                    "conflicting": {"type": "integer", "description": (
                        "store_status: active rows at an instant that is inactive (stored, or in the body); "
                        "inactive wins, so they change nothing")},
                    "duplicates": {"type": "integer", "description": "Repeats of an earlier row of the body"},
                    "rejected": {"type": "object", "additionalProperties": {"type": "integer"},
                                 "description": "Reason -> count"},
                    "examples": {"type": "object", "additionalProperties": {"type": "string"},
                                 "description": "Reason -> one rejected row with its line (or row) number"},
                    "removed": {"type": "integer", "description": (
                        "special_hours / business_hours: stored rows of the body's (store, date) pairs / "
                        "stores that the body replaced")},
                    "loaded": {"type": "integer", "description": "read - rejected - duplicates (older clients)"},
                    "seconds": {"type": "number"}}},
            "Health": {"type": "object", "properties": {
                "status": {"type": "string", "enum": ["ok", "unhealthy"]},
                "database": {"type": "string"},
                "workers": {"type": "object", "properties": {"alive": {"type": "integer"},
                                                             "configured": {"type": "integer"}}},
                "queue": {"type": "object", "properties": {"depth": {"type": "integer", "nullable": True},
                                                           "limit": {"type": "integer"}}}}},
        }},
    }
    for item in document["paths"].values():
        for operation in item.values():
            operation["responses"]["500"] = _error("Unexpected server error (details only in the server log)")
    return document


# --- entry point ------------------------------------------------------------------------------------

LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def serving_message(settings: Settings, server: str) -> str:
    return (f"serving on http://{settings.host}:{settings.port} with {server} (database {settings.database_path}, "
            f"{settings.workers} report workers per process, queue limit {settings.queue_limit}, "
            f"job lease {settings.job_lease_seconds} s)")


def main(argv: list[str] | None = None) -> int:
    """`python app.py`: the production server, as `make run` (gunicorn with `gunicorn.conf.py`).
    `--dev`: Flask's development server in this one process, for debugging only.
    `--prepare`: create the schema and load the first-start data, then exit (gunicorn's master runs it
    before it starts its workers)."""
    parser = argparse.ArgumentParser(prog="app.py", description="store-monitoring HTTP service")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dev", action="store_true",
                      help="Flask's development server in this one process (debugging only)")
    mode.add_argument("--prepare", action="store_true",
                      help="create the schema and load the first-start data, then exit")
    args = parser.parse_args(argv)
    if not (args.dev or args.prepare):
        config = Path(__file__).resolve().parent / "gunicorn.conf.py"
        os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "--config", str(config)])
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.prepare:
        try:
            log.info("%s", prepare_database(settings))
        except sqlite3.Error as exc:
            print(f"cannot use the database {settings.database_path} (SM_DATABASE): {exc}", file=sys.stderr)
            return 2
        except database.LoadError as exc:
            print(f"cannot load the data in {settings.data_dir} (SM_DATA_DIR): {exc}", file=sys.stderr)
            return 2
        return 0
    return _serve_dev(settings)


def _serve_dev(settings: Settings) -> int:
    """Flask's development server. The port is bound first: if it is taken, nothing else happens (no
    data load, no report worker that could take jobs from the server already running)."""
    import signal

    from werkzeug.serving import make_server

    try:
        server = make_server(settings.host, settings.port, _not_ready, threaded=True)
    except SystemExit:  # werkzeug has printed why (e.g. the port is in use)
        print(f"cannot serve on {settings.host}:{settings.port} (SM_HOST, SM_PORT); nothing was started",
              file=sys.stderr)
        return 2
    try:
        app = create_app(settings, load_data=True)
    except (sqlite3.Error, database.LoadError) as exc:
        server.server_close()
        where = "use the database" if isinstance(exc, sqlite3.Error) else "load the data"
        print(f"cannot {where} ({settings.database_path}, {settings.data_dir}): {exc}", file=sys.stderr)
        return 2
    server.app = app

    def stop(signum, frame):  # SIGTERM as Ctrl-C: stop serving, let running reports finish
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    log.info("%s", serving_message(settings, "Flask's development server (debugging only)"))
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        shutdown(app)
    return 0


def _not_ready(environ, start_response):  # replaced by the app before the server serves anything
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting\n"]


if __name__ == "__main__":
    sys.exit(main())
