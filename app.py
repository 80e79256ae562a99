"""HTTP API: trigger and poll report jobs, download reports, append polls, health, OpenAPI.

Run with `python app.py` (or `make run`); settings come from the environment or `.env` (see
`config.py`). Every error answer is JSON `{"error": "..."}`; stack traces only go to the server log.

Concurrency: each request opens its own short-lived SQLite connection (WAL mode, so reads never wait
for a writer); report workers have their own connections (`jobs.py`). An ingestion request is one
transaction and a report reads its inputs in one read transaction, so a report sees either none or all
of one request's polls.
"""
from __future__ import annotations

import csv
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
from config import Settings
from jobs import QueueFull, ReportJobs, iso_utc

log = logging.getLogger("store_monitoring.app")

# Largest request body accepted (POST /store_status appends polls; a trigger body is tiny). 32 MiB is
# roughly 700k polls as CSV; bigger loads belong to `python database.py load`.
MAX_BODY_BYTES = 32 * 1024 * 1024
MAX_STORE_IDS = 100_000
TRIGGER_KEYS = {"as_of", "store_ids", "columns"}
COLUMN_SETS = ("standard", "extended")
POLL_KEYS = ("store_id", "status", "timestamp_utc")
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

    conn = database.connect(settings.database_path)  # creates the schema before anything else runs
    try:
        if load_data:
            log.info("%s", database.ensure_loaded(conn, settings.data_dir))
    finally:
        conn.close()
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
        raise ApiError(400, f"unknown key(s) {', '.join(map(repr, unknown))}; allowed: as_of, store_ids, columns")

    params = {"as_of": None, "store_ids": None, "columns": "standard"}
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
    items = parse_json(raw)
    if not isinstance(items, list):
        raise ApiError(400, "a JSON body must be a list of objects {store_id, status, timestamp_utc}")
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(POLL_KEYS)
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ApiError(400, f"item {index} is not an object {{store_id, status, timestamp_utc}}")
        unknown = sorted(set(item) - set(POLL_KEYS))
        if unknown:
            raise ApiError(400, f"item {index} has unknown key(s) {', '.join(map(repr, unknown))}; "
                                "allowed: store_id, status, timestamp_utc")
        row = []
        for key in POLL_KEYS:
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
        return jsonify({
            "status": "Complete",
            "download_url": f"/reports/{report_id}.csv",
            "rows": job["rows"],
            "as_of": job["as_of"],
            "seconds": job["seconds"],
            "timings": job["timings"] or {},
            "meta": job["meta"] or {},
        })

    @app.get("/reports/<uuid:report_id>.csv")
    def download_report(report_id):
        job = database.get_report_job(db(), str(report_id))
        if job is None or job["status"] != "Complete":
            raise ApiError(404, f"no completed report with id {report_id}")
        return _send_report(job)

    @app.post("/store_status")
    def store_status():
        raw = request.get_data(cache=False)
        if not raw.strip():
            raise ApiError(400, "the request body is empty; send CSV (Content-Type: text/csv) "
                                "or a JSON list of {store_id, status, timestamp_utc}")
        mimetype = request.mimetype
        if not mimetype:
            mimetype = "application/json" if raw.lstrip()[:1] in (b"[", b"{") else "text/csv"
        if mimetype == "application/json" or mimetype.endswith("+json"):
            source = polls_from_json(raw)
        elif mimetype in CSV_TYPES:
            source = io.BytesIO(raw)
        else:
            raise ApiError(415, f"unsupported Content-Type {mimetype!r}; use text/csv or application/json")
        try:
            frame = database.read_table_csv(source, "store_status")
        except database.LoadError as exc:
            raise ApiError(400, str(exc)) from None
        try:
            summary = database.ingest_store_status(db(), frame, source="<request>")
        except database.LoadError as exc:
            raise ApiError(400, str(exc)) from None
        return jsonify(summary.to_dict())

    @app.get("/health")
    def health():
        jobs = _jobs()
        body = {"status": "ok", "database": "ok",
                "workers": {"alive": jobs.alive(), "configured": jobs.workers},
                "queue": {"depth": jobs.depth(), "limit": jobs.queue_limit}}
        try:
            db().execute("SELECT 1").fetchone()
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
                    "200": {"description": "Load summary: rows read, loaded, rejected by reason with examples",
                            "content": {"application/json": {"schema": {"type": "object",
                                                                        "additionalProperties": True}}}},
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
            }},
            "ReportRunning": {"type": "object", "required": ["status", "progress"], "properties": {
                "status": {"type": "string", "enum": ["Running"]},
                "progress": {"type": "number", "minimum": 0, "maximum": 1}}},
            "ReportComplete": {"type": "object",
                               "required": ["status", "download_url", "rows", "as_of", "seconds"],
                               "properties": {
                                   "status": {"type": "string", "enum": ["Complete"]},
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
                                           "default_timezone": {"type": "string"}}}}},
            "ReportFailed": {"type": "object", "required": ["status", "error"], "properties": {
                "status": {"type": "string", "enum": ["Failed"]}, "error": {"type": "string"}}},
            "Poll": {"type": "object", "required": ["store_id", "status", "timestamp_utc"],
                     "additionalProperties": False, "properties": {
                         "store_id": {"type": "string"},
                         "status": {"type": "string", "enum": ["active", "inactive"]},
                         "timestamp_utc": {"type": "string", "example": "2023-01-22 12:09:39.388884 UTC"}}},
            "Health": {"type": "object", "properties": {
                "status": {"type": "string", "enum": ["ok", "unhealthy"]},
                "database": {"type": "string"},
                "workers": {"type": "object", "properties": {"alive": {"type": "integer"},
                                                             "configured": {"type": "integer"}}},
                "queue": {"type": "object", "properties": {"depth": {"type": "integer"},
                                                           "limit": {"type": "integer"}}}}},
        }},
    }
    for item in document["paths"].values():
        for operation in item.values():
            operation["responses"]["500"] = _error("Unexpected server error (details only in the server log)")
    return document


# --- entry point ------------------------------------------------------------------------------------

def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    try:
        app = create_app(settings, load_data=True)
    except sqlite3.Error as exc:
        print(f"cannot use the database {settings.database_path} (SM_DATABASE): {exc}", file=sys.stderr)
        return 2
    except database.LoadError as exc:
        print(f"cannot load the data in {settings.data_dir} (SM_DATA_DIR): {exc}", file=sys.stderr)
        return 2
    log.info("serving on http://%s:%d (database %s, %d workers, queue limit %d)", settings.host,
             settings.port, settings.database_path, settings.workers, settings.queue_limit)
    try:
        app.run(host=settings.host, port=settings.port, threaded=True, use_reloader=False)
    finally:
        shutdown(app)
    return 0


if __name__ == "__main__":
    sys.exit(main())
