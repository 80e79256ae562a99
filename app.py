"""The HTTP service: the JSON API (`api.py`), its OpenAPI document and Swagger UI, access, logs, errors.

Served by gunicorn with `make run` (`gunicorn.conf.py`: several worker processes, each with its report
worker threads); `python app.py --dev` runs Flask's development server in one process, for debugging only.
Settings come from the environment or `.env` (see `config.py`).

The app is a flask-openapi3 `OpenAPI` app. The API is one `APIBlueprint` (`api.build_api`): its requests
and answers are pydantic models (`api_models.py`), which validate the requests and make the OpenAPI 3.1
document, served at `/openapi.json` (and `/docs/openapi.json`); `/docs` is Swagger UI from the pinned
flask-openapi3-swagger package's own files (nothing from another host). API errors are JSON
`{"error": "..."}` (so is a 404 for a path nothing serves); stack traces only go to the server log. The
pages (`dashboard.py`, blueprint `pages`: HTML, its own error pages and its own token check) sit beside
the API and call the same service functions.

Access: with `SM_API_TOKEN` set, every request but `/health` needs `Authorization: Bearer <token>`
(compared in constant time), else 401 with `WWW-Authenticate`; the document then declares the scheme.
Each request is one log line (`store_monitoring.access`): method, path, status, seconds, client address.

Concurrency: each request opens its own short-lived SQLite connection (WAL mode, so reads never wait
for a writer); report workers have their own connections (`jobs.py`). An ingestion request is one
transaction and each shard of a report reads its stores in one read transaction, so a store's figures
see either none or all of one request's polls. Report jobs are shared by every process on the database (see `jobs.py`);
with SM_BROKER_URL set (cluster mode) they run in Celery workers on any host instead (see `cluster.py`).
"""
from __future__ import annotations

import argparse
import hmac
import logging
import os
import sys
import time
from pathlib import Path

import click
from flask import Flask, g, redirect, request, url_for
from flask_openapi3 import Info, OpenAPI
from flask_openapi3.models import OPENAPI3_REF_TEMPLATE
from werkzeug.exceptions import HTTPException

import api
import api_models
import dashboard
import database
from api import API, EXTENSION, ApiError, error_response
from config import Settings, describe_database
from jobs import ReportJobs

log = logging.getLogger("store_monitoring.app")
access_log = logging.getLogger("store_monitoring.access")

PAGES = "pages"            # a blueprint of HTML pages checks the token and shows errors itself
DOC_ENDPOINTS = {"docs", "openapi_document"}   # /docs and /openapi.json (and the blueprints below)
# What a logged-in browser follows as a plain link, so it carries the pages' login cookie, no header:
# the documentation, and a report's CSV (the dashboard's download button).
COOKIE_ENDPOINTS = DOC_ENDPOINTS | {f"{API}.download_report"}
DOC_BLUEPRINTS = {"openapi", "swagger"}        # flask-openapi3's /docs/openapi.json, Swagger UI and its files
DOCS_PREFIX = "/docs"
API_VERSION = "2.0.0"
MAX_BODY_BYTES = api.MAX_UPLOAD_BYTES   # werkzeug's own limit for anything read through Flask
BEARER = "bearer"
UNEXPECTED = "Unexpected server error (the details are only in the server log)"


class ServiceOpenAPI(OpenAPI):
    """flask-openapi3's app, with the document finished the way this service answers: every operation
    may answer 500 (and 401 when a token is required), the 400 that the library adds to operations
    without input is dropped, and the bearer scheme is declared when a token is configured."""

    token_required = False

    def generate_spec_json(self):
        super().generate_spec_json()
        document = self.spec_json
        for name, adapter in api_models.UPLOAD_ITEMS.items():   # the JSON items of the upload bodies
            document["components"]["schemas"][name] = adapter.json_schema(ref_template=OPENAPI3_REF_TEMPLATE)
        for path, item in document["paths"].items():
            for operation in item.values():
                responses = operation["responses"]
                schema = responses.get("400", {}).get("content", {}).get("application/json", {}).get("schema", {})
                if schema.get("type") == "array":   # the library's default validation answer: not ours
                    del responses["400"]
                responses.setdefault("500", {**api.ERROR, "description": UNEXPECTED})
                if self.token_required and operation.get("security") != []:
                    responses.setdefault("401", {
                        **api.ERROR, "description": "Missing or wrong `Authorization: Bearer <token>`",
                        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}}})
                elif not self.token_required:
                    operation.pop("security", None)
        if self.token_required:
            document["security"] = [{BEARER: []}]
        elif not document["components"].get("securitySchemes"):
            document["components"].pop("securitySchemes", None)   # (Swagger UI would offer to authorize)
        return document


# --- application factory ----------------------------------------------------------------------------

def create_app(settings: Settings | None = None, *, start_workers: bool = True, load_data: bool = False,
               generate=None) -> OpenAPI:
    """The Flask app. `start_workers=False` gives an app whose jobs stay Queued (no worker threads).

    `load_data=True` (used by `python app.py --dev`) loads `data_dir`'s CSVs, or a generated demo set, into
    an empty database. `generate` replaces `report_generator.generate_report` (tests).
    Call `shutdown(app)` (or `app.extensions["store_monitoring"].close()`) to stop the workers.
    """
    settings = settings or Settings.from_env()
    token_required = bool(settings.api_token)
    app = ServiceOpenAPI(
        __name__, static_folder=None,
        info=Info(title="store-monitoring", version=API_VERSION, description=(
            "Uptime and downtime of stores within their business hours over the last hour, day and week, "
            "computed from hourly polls. Reports run as background jobs: trigger, poll, download. Every error "
            "answer is JSON {\"error\": \"...\"}." + (" Every operation but /health needs "
                                                       "`Authorization: Bearer <token>`." if token_required else ""))),
        security_schemes={BEARER: {"type": "http", "scheme": "bearer"}} if token_required else {},
        validation_error_status=400, validation_error_model=api_models.Error,
        validation_error_callback=api.validation_error_response,
        doc_prefix=DOCS_PREFIX, doc_url="/openapi.json")
    app.token_required = token_required
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["SWAGGER_CONFIG"] = {"validatorUrl": None}   # Swagger UI would send the document to swagger.io
    app.json.sort_keys = False

    if load_data:
        log.info("%s", prepare_database(settings))
    else:
        database.connect(settings.database).close()  # creates the schema before anything else runs
    Path(settings.reports_dir).mkdir(parents=True, exist_ok=True)
    stale = api.remove_stale_uploads(api.uploads_dir(settings))
    if stale:
        log.info("removed %d upload files left by a stopped process", stale)

    jobs = ReportJobs(settings, generate=generate, logger=log)
    if start_workers:
        jobs.start()
    app.extensions[EXTENSION] = jobs
    app.extensions[api.UPLOADS_EXTENSION] = api.new_upload_slots()
    app.config["SM_SETTINGS"] = settings

    app.before_request(_start_timer)
    app.before_request(_require_token)
    app.after_request(_log_request)
    app.teardown_appcontext(api.close_connection)
    _register_error_handlers(app)
    app.register_api(api.build_api())
    app.register_blueprint(dashboard.create_pages_blueprint())   # the pages: HTML, beside the API
    _register_docs(app)
    _register_cli(app)
    return app


def prepare_database(settings: Settings) -> str:
    """Create the schema and, on a first start (no polls), load `data_dir`'s CSVs or a generated demo set.

    Runs once per start of the service, before any worker takes a job; `database.start_up_lock` makes
    processes that start together on one database take turns, so the data is loaded once. Returns the line
    for the log; raises `database.LoadError` or a database error (`database.errors()`).
    """
    with database.start_up_lock(settings.database):
        conn = database.connect(settings.database)
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
        raise SystemExit(database.main(["load", "--db", str(settings.database), *options]))


def shutdown(app: Flask, timeout: float | None = 30.0) -> None:
    """Stop the app's report workers (they finish their current job) and join them."""
    app.extensions[EXTENSION].close(timeout)


def _register_docs(app: OpenAPI) -> None:
    """`/openapi.json` (the document) and `/docs` (Swagger UI; its page and files come from the
    flask-openapi3-swagger package, under /docs/swagger)."""

    @app.get("/openapi.json", doc_ui=False)
    def openapi_document():
        return app.api_doc

    @app.get(DOCS_PREFIX, doc_ui=False)
    def docs():
        return redirect(url_for("swagger.swagger"))


# --- access and the request log ---------------------------------------------------------------------

def _start_timer() -> None:
    g.started = time.perf_counter()


def _require_token():
    """With SM_API_TOKEN set: `Authorization: Bearer <token>` on everything but /health. The pages check
    it themselves (from the header or their login cookie); the documentation (/docs, /openapi.json) and
    the CSV download also take the pages' login cookie, so that a browser that logged in can follow
    those links (/docs sends one that did not to the login page). The rest of the API takes the header
    only."""
    expected = request_settings().api_token
    if not expected or request.endpoint == f"{API}.health" or PAGES in request.blueprints:
        return None
    by_link = request.endpoint in COOKIE_ENDPOINTS or (request.blueprint or "") in DOC_BLUEPRINTS
    if by_link and _same_token(request.cookies.get(dashboard.TOKEN_COOKIE, ""), expected):
        return None
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    challenge = 'Bearer realm="store-monitoring"'
    if scheme.lower() != "bearer" or not presented.strip():
        if request.endpoint == "docs":
            return redirect(url_for("pages.login", next=request.path))
        return error_response(401, "this service needs the header `Authorization: Bearer <token>` "
                                   "(the token is SM_API_TOKEN)", {"WWW-Authenticate": challenge})
    if not _same_token(presented.strip(), expected):
        return error_response(401, "the bearer token is not the service's token",
                              {"WWW-Authenticate": f'{challenge}, error="invalid_token"'})
    return None


def _same_token(presented: str, expected: str) -> bool:
    """Constant-time comparison of what the client sent with the configured token."""
    if not presented:
        return False
    try:
        given = presented.encode("latin-1")   # a header's bytes as the client sent them
    except UnicodeEncodeError:
        given = presented.encode("utf-8")
    return hmac.compare_digest(given, expected.encode("utf-8"))


def _log_request(response):
    """One line per request: method, path (never the query or the headers), status, seconds, client."""
    started = g.get("started")
    seconds = time.perf_counter() - started if started is not None else 0.0
    access_log.info("%s %s %d %.3f s %s", request.method, request.path, response.status_code, seconds,
                    request.remote_addr or "-")
    return response


def request_settings() -> Settings:
    return api.settings()


# --- errors -----------------------------------------------------------------------------------------

DATABASE_RETRY_AFTER = 10   # seconds a client is asked to wait when the database cannot be reached


def _json_errors() -> bool:
    """API errors are JSON; the pages answer their own errors in HTML (their blueprint's handlers)."""
    return PAGES not in request.blueprints


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error_response(exc.status, exc.message, exc.headers)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.response is not None:   # a ready answer (flask-openapi3 aborts with its validation error)
            return exc.response
        if not _json_errors() or (exc.code or 500) < 400:
            return exc
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
        if isinstance(exc, database.unavailable_errors()):
            # The database is down, unreachable or locked too long (not a bug of this request): say so,
            # and when to try again.
            log.error("%s %s: the database cannot be reached: %s", request.method, request.path, exc)
            return error_response(503, "the database is not available at the moment; please try again later",
                                  {"Retry-After": str(DATABASE_RETRY_AFTER)})
        log.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal server error; the details are in the server log")


# --- entry point ------------------------------------------------------------------------------------

LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def serving_message(settings: Settings, server: str) -> str:
    where = describe_database(settings.database)   # a PostgreSQL URL without its password
    if settings.broker_url:
        return (f"serving on http://{settings.host}:{settings.port} with {server} (database {where}; cluster mode: "
                f"reports run in Celery workers (SM_BROKER_URL), queue limit {settings.queue_limit})")
    return (f"serving on http://{settings.host}:{settings.port} with {server} (database {where}, "
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
        except database.errors() as exc:
            print(f"cannot use the database {describe_database(settings.database)} (SM_DATABASE): {exc}",
                  file=sys.stderr)
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

    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # the app logs each request itself
    try:
        server = make_server(settings.host, settings.port, _not_ready, threaded=True)
    except SystemExit:  # werkzeug has printed why (e.g. the port is in use)
        print(f"cannot serve on {settings.host}:{settings.port} (SM_HOST, SM_PORT); nothing was started",
              file=sys.stderr)
        return 2
    try:
        app = create_app(settings, load_data=True)
    except (*database.errors(), database.LoadError) as exc:
        server.server_close()
        where = "load the data" if isinstance(exc, database.LoadError) else "use the database"
        print(f"cannot {where} ({describe_database(settings.database)}, {settings.data_dir}): {exc}", file=sys.stderr)
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
