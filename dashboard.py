"""The pages: a dashboard, report tables and store timelines, rendered on the server (Jinja, `templates/`).

A plain Flask blueprint, `pages`, registered by `app.create_app`. Every figure comes from the reports
service (`reports_service.py`), the same functions the JSON API answers from. The pages work without
JavaScript (sorting, filtering and paging are links and GET forms); `static/app.js` adds what needs it:
triggering a report through the JSON API (`POST /trigger_report`) and following its progress
(`GET /get_report`). Errors raised by a page are HTML pages (templates `400.html`, `404.html`,
`500.html`), never JSON.

With an API token configured (`settings.api_token`, `SM_API_TOKEN`), every page asks for it once
(`/login`): it is kept in an HttpOnly cookie that the pages check on the server, and in the tab's
sessionStorage, from which the page's script sends it as `Authorization: Bearer` to the JSON API.
`Authorization: Bearer` also opens the pages (for scripts).

Routes: `/` (dashboard), `/reports/<id>/view` (a report), `/stores/<store_id>` (a store's timeline),
`/search?q=` (find a store), `/login`, `/logout`, `/static/...`.
"""
from __future__ import annotations

import hmac
import logging
from datetime import datetime, timezone
from urllib.parse import urlencode

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from markupsafe import Markup, escape
from werkzeug.exceptions import HTTPException

import database
import reports_service as service
import timeline_chart

log = logging.getLogger("store_monitoring.pages")

TOKEN_COOKIE = "sm_token"
PAGE_SIZES = (25, 50, 100, 200)
STATUS_NAMES = {"up": "Up", "down": "Down", "unknown": "Unknown"}

pages = Blueprint("pages", __name__, template_folder="templates", static_folder="static",
                  static_url_path="/static")


def create_pages_blueprint() -> Blueprint:
    """The pages blueprint (one per process: Flask blueprints can be registered on several apps)."""
    return pages


def _settings():
    return current_app.config["SM_SETTINGS"]


def _api_token() -> str | None:
    return getattr(_settings(), "api_token", None) or None


# --- access -------------------------------------------------------------------------------------------

def _presented_token() -> str:
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.cookies.get(TOKEN_COOKIE, "")


def _token_ok(token: str | None) -> bool:
    expected = _api_token()
    return expected is None or (bool(token) and hmac.compare_digest(token.encode(), expected.encode()))


@pages.before_request
def _require_token():
    if _api_token() is None or request.endpoint in ("pages.login", "pages.static"):
        return None
    if _token_ok(_presented_token()):
        return None
    return redirect(url_for("pages.login", next=request.full_path.rstrip("?")))


def _safe_next(target: str | None) -> str:
    """Only a path of this site (no scheme, no host, no `//`) is followed after the login."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return url_for("pages.dashboard")
    return target


@pages.route("/login", methods=["GET", "POST"])
def login():
    next_url = _safe_next(request.values.get("next"))
    if _api_token() is None:
        return redirect(next_url)
    if request.method == "GET":
        return render_template("login.html", next_url=next_url, error=None)
    token = (request.form.get("token") or "").strip()
    if not _token_ok(token):
        return render_template("login.html", next_url=next_url, error="That is not the service's token."), 401
    response = redirect(next_url)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict", secure=request.is_secure,
                        path="/", max_age=12 * 3600)
    return response


@pages.post("/logout")
def logout():
    response = redirect(url_for("pages.login") if _api_token() else url_for("pages.dashboard"))
    response.delete_cookie(TOKEN_COOKIE, path="/")
    return response


# --- errors: HTML pages ---------------------------------------------------------------------------------

def _error_page(status: int, message: str) -> tuple[str, int]:
    template = f"{status}.html" if status in (400, 404, 500) else "error.html"
    return render_template(template, status=status, message=message), status


@pages.errorhandler(service.ServiceError)
def _service_error(exc: service.ServiceError):
    return _error_page(exc.status, exc.message)


@pages.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    if exc.code and exc.code < 400:
        return exc
    return _error_page(exc.code or 500, exc.description or exc.name)


@pages.errorhandler(Exception)
def _unexpected(exc: Exception):
    if isinstance(exc, database.unavailable_errors()):
        log.error("%s %s: the database cannot be reached: %s", request.method, request.path, exc)
        return _error_page(503, "The database is not available at the moment; please try again in a little while.")
    log.exception("unhandled error in %s %s", request.method, request.path)
    return _error_page(500, "Something went wrong on our side; the details are in the server log.")


# --- template helpers -----------------------------------------------------------------------------------

@pages.app_template_filter("num")
def _num(value, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{float(value):,.{digits}f}"


@pages.app_template_filter("count")
def _count(value) -> str:
    return "–" if value is None else f"{int(value):,}"


@pages.app_template_filter("pct")
def _pct(value, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * float(value):.{digits}f} %"


@pages.app_template_filter("when")
def _when(value) -> str:
    """ISO UTC text -> '2023-01-25 18:13:22 UTC'."""
    if not value:
        return "–"
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return str(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


@pages.app_template_filter("wbr")
def _wbr(value) -> Markup:
    """A long column name that may break after its underscores."""
    return Markup(str(escape(str(value))).replace("_", "_<wbr>"))


@pages.app_template_filter("reach")
def _reach(value) -> str:
    return "unbounded" if value is None else f"{int(value)} min"


def _query(**changes) -> str:
    """This request's query string with `changes` (None removes a key)."""
    args = {key: value for key, value in request.args.items()}
    for key, value in changes.items():
        if value is None:
            args.pop(key, None)
        else:
            args[key] = str(value)
    return ("?" + urlencode(args)) if args else ""


@pages.app_context_processor
def _template_globals():
    return {"auth_required": _api_token() is not None, "query": _query, "service": service}


# --- pages ----------------------------------------------------------------------------------------------

def _table_link(base: str, rows: dict, **changes) -> str:
    """A link to the report page with the table's state (sort, order, limit, q, offset) and `changes`."""
    state = {"sort": rows["sort"], "order": rows["order"], "q": rows["q"], "limit": rows["limit"],
             "offset": rows["offset"]}
    state.update(changes)
    if state["sort"] == service.DEFAULT_SORT and state["order"] == service.DEFAULT_ORDER:
        del state["sort"], state["order"]
    if not state.get("q"):
        state.pop("q", None)
    if state.get("limit") == service.DEFAULT_LIMIT:
        state.pop("limit")
    if not state.get("offset"):
        state.pop("offset", None)
    return base + ("?" + urlencode(state) if state else "")


def _table(report: dict, args) -> dict:
    """The report table's page, its figures and the links it needs, from the request's arguments."""
    report_id = report["report_id"]
    rows = service.report_rows(_settings(), report_id, sort=args.get("sort"), order=args.get("order"),
                               limit=args.get("limit"), offset=args.get("offset"), q=args.get("q"))
    figures = service.fleet_figures(_settings(), report_id)
    limit, offset, total = rows["limit"], rows["offset"], rows["total"]
    last_offset = max((total - 1) // limit * limit, 0)
    base = url_for("pages.report_view", report_id=report_id)

    def sort_link(column: str) -> str:
        if column == rows["sort"]:
            order = "asc" if rows["order"] == "desc" else "desc"
        else:
            order = "asc" if column == "store_id" else "desc"
        return _table_link(base, rows, sort=column, order=order, offset=0)

    return {
        "base": base,
        "link": lambda **changes: _table_link(base, rows, **changes),
        "sort_link": sort_link,
        "store_link": lambda store_id: url_for("pages.store_page", store_id=store_id, report=report_id),
        "rows": rows,
        "figures": figures,
        "page_sizes": PAGE_SIZES,
        "first_shown": offset + 1 if total else 0,
        "last_shown": min(offset + limit, total),
        "prev_offset": max(offset - limit, 0) if offset > 0 else None,
        "next_offset": offset + limit if offset + limit < total else None,
        "last_offset": last_offset,
    }


@pages.get("/")
def dashboard():
    settings = _settings()
    summary = service.data_summary(settings)
    recent = service.recent_reports(settings, limit=10)
    latest = service.latest_complete_report(settings)
    table = None
    if latest:
        try:
            table = _table(latest, request.args)
        except service.NotFound:  # its file went away (deleted with an expired report): show the rest
            latest = None
    return render_template("dashboard.html", summary=summary, recent=recent, report=latest, table=table,
                           default_reach=settings.poll_reach_minutes, max_reach=service.MAX_REACH_MINUTES)


@pages.get("/reports/<uuid:report_id>/view")
def report_view(report_id):
    settings = _settings()
    report = service.report_job(settings, str(report_id))
    table = _table(report, request.args) if report["status"] == "Complete" else None
    return render_template("report.html", report=report, table=table)


@pages.get("/search")
def search():
    q = (request.args.get("q") or "").strip()
    found = service.find_stores(_settings(), q, limit=request.args.get("limit") or 50)
    exact = [store for store in found["stores"] if store["store_id"] == q]
    if q and exact and found["total"] == 1:
        return redirect(url_for("pages.store_page", store_id=q))
    return render_template("search.html", q=q, found=found)


@pages.get("/stores/<store_id>")
def store_page(store_id):
    settings = _settings()
    args = request.args
    report_id = (args.get("report") or "").strip() or None
    report = None
    if report_id:
        report = service.report_parameters(settings, report_id)
        report["report_id"] = service.check_report_id(report_id)
    # The timeline is drawn like the report it came from unless the form asks otherwise.
    as_of = args.get("as_of") or (report["as_of"] if report else None)
    if "unbounded" in args:
        reach = None
    elif args.get("reach_minutes"):
        reach = args.get("reach_minutes")
    elif report:
        reach = report["reach_minutes"]
    else:
        reach = service.DEFAULT
    hours = service.store_hours(settings, store_id)
    timeline = service.store_timeline(settings, store_id, as_of=as_of, reach_minutes=reach, days=7)
    now_us = timeline_chart.us_of(timeline["now"])
    from_us = timeline_chart.us_of(timeline["from"])
    day_begin = max(now_us - timeline_chart.US_PER_DAY, from_us)
    charts = [
        {"id": "chart-day", "window": "day", "title": "Last day",
         "svg": timeline_chart.timeline_svg(timeline, day_begin, now_us, chart_id="chart-day",
                                            title=f"Store {store_id}: the last day", step_hours=3)},
        {"id": "chart-week", "window": "week", "title": "Last week",
         "svg": timeline_chart.timeline_svg(timeline, from_us, now_us, chart_id="chart-week",
                                            title=f"Store {store_id}: the last week", step_hours=6,
                                            day_labels=True, poll_size=2.6)},
    ]
    row = None
    same_parameters = False
    if report:
        row = service.report_row(settings, report["report_id"], store_id)
        same_parameters = (service.parse_instant(as_of) == report["as_of"]
                           and timeline.get("reach_minutes") == report["reach_minutes"])
    segments = timeline_chart.segment_rows(timeline, from_us, now_us)
    return render_template(
        "store.html", store_id=store_id, hours=hours, timeline=timeline, charts=charts, report=report,
        row=row, same_parameters=same_parameters, segments=segments,
        polls_in_week=sum(1 for p in timeline.get("polls", [])
                          if from_us <= timeline_chart.us_of(p["at"]) <= now_us),
        form_as_of=(service.parse_instant(as_of) or "") if as_of else "",
        form_reach=timeline.get("reach_minutes"), max_reach=service.MAX_REACH_MINUTES,
        windows=service.WINDOWS, units=service.WINDOW_UNITS)
