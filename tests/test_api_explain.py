"""The JSON endpoints behind the pages (issue 10): `GET /reports/<id>/rows`, `/stores/<store_id>/timeline`,
`/stores`, `/data/summary`. A real app (token set, report workers running) on a generated data set whose
last week holds the spring-forward night and special dates; reports made through `/trigger_report`.

The issue's requirement: for random stores, the timeline's `totals` equal the store's row of a report
made through the API with the same as_of and reach, exactly.
"""
from __future__ import annotations

import csv
import io
import random
import uuid
from datetime import datetime, timedelta

import pytest

import api_models as m
import report_generator
import reports_service as service
from pages_support import DST_END, close, load_generated, run_report, settings_for

TOKEN = "explain-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
STORES = 50
EXTENDED = report_generator.EXTENDED_COLUMNS
NUMBERS = EXTENDED[1:]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """(app, client, settings, extended report id, standard report id)."""
    tmp = tmp_path_factory.mktemp("explain")
    settings = settings_for(tmp, api_token=TOKEN)
    load_generated(settings.database, tmp / "generated", stores=STORES, seed=11, end=DST_END)
    service.clear_cache()
    from app import create_app

    app = create_app(settings)
    client = app.test_client()
    extended = run_report(client, {"columns": "extended"}, headers=AUTH)
    standard = run_report(client, {}, headers=AUTH)
    yield app, client, settings, extended, standard
    close(app)


def get(client, url, status=200, **kwargs):
    response = client.get(url, headers=AUTH, **kwargs)
    assert response.status_code == status, (url, response.status_code, response.get_data(as_text=True)[:500])
    assert response.mimetype == "application/json", url
    body = response.get_json()
    if status >= 400:
        assert set(body) == {"error"} and body["error"], body
    return body


def csv_rows(client, report_id) -> dict[str, dict[str, float]]:
    """The report as downloaded (/reports/<id>.csv): {store_id: {column: value}}."""
    response = client.get(f"/reports/{report_id}.csv", headers=AUTH)
    assert response.status_code == 200
    reader = csv.DictReader(io.StringIO(response.get_data(as_text=True)))
    return {row["store_id"]: {k: float(v) for k, v in row.items() if k != "store_id"} for row in reader}


def all_rows(client, report_id, **params) -> list[dict]:
    """Every row of the report through the rows endpoint, a page of 7 at a time."""
    rows, offset = [], 0
    while True:
        query = "&".join(f"{k}={v}" for k, v in {**params, "limit": 7, "offset": offset}.items())
        page = get(client, f"/reports/{report_id}/rows?{query}")
        rows += page["rows"]
        offset += 7
        if offset >= page["total"]:
            return rows


# --- the routes -------------------------------------------------------------------------------------

def test_the_models_follow_the_engine_and_the_service():
    assert list(m.REPORT_COLUMNS) == EXTENDED
    assert list(m.TimelineTotals.model_fields) == NUMBERS
    assert list(m.ReportRow.model_fields) == EXTENDED
    assert (m.MAX_ROWS_LIMIT, m.MAX_FIND_LIMIT, m.MAX_TIMELINE_DAYS) == (
        service.MAX_LIMIT, service.MAX_FIND_LIMIT, service.MAX_TIMELINE_DAYS)
    assert m.ReportRowsQuery.model_fields["sort"].default == service.DEFAULT_SORT
    assert m.ReportRowsQuery.model_fields["limit"].default == service.DEFAULT_LIMIT
    assert m.StoreSearchQuery.model_fields["limit"].default == service.FIND_LIMIT
    assert m.TimelineQuery.model_fields["days"].default == service.TIMELINE_DAYS


def test_the_new_routes_do_not_clash_with_the_pages_or_the_other_routes(env):
    app = env[0]
    rules = [(rule.rule, method) for rule in app.url_map.iter_rules() for method in rule.methods]
    assert len(rules) == len(set(rules))
    urls = app.url_map.bind("localhost")
    rid = str(uuid.uuid4())
    expected = {
        ("GET", f"/reports/{rid}/rows"): "api.report_rows",
        ("GET", f"/reports/{rid}/view"): "pages.report_view",
        ("GET", f"/reports/{rid}.csv"): "api.download_report",
        ("DELETE", f"/reports/{rid}"): "api.delete_report",
        ("GET", "/stores/123/timeline"): "api.store_timeline",
        ("GET", "/stores/timeline"): "pages.store_page",     # a store called "timeline" is a page
        ("GET", "/stores/123"): "pages.store_page",
        ("GET", "/stores"): "api.find_stores",
        ("GET", "/search"): "pages.search",
        ("GET", "/data/summary"): "api.data_summary",
    }
    for (method, path), endpoint in expected.items():
        assert urls.match(path, method)[0] == endpoint, path
    paths = app.api_doc["paths"]
    for path, model in (("/reports/{report_id}/rows", "ReportRows"), ("/stores/{store_id}/timeline", "StoreTimeline"),
                        ("/stores", "StoreSearch"), ("/data/summary", "DataSummary")):
        answer = paths[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer == {"$ref": f"#/components/schemas/{model}"}, path
        assert "401" in paths[path]["get"]["responses"]   # token-protected
    names = {p["name"] for p in paths["/reports/{report_id}/rows"]["get"]["parameters"]}
    assert names == {"report_id", "sort", "order", "limit", "offset", "q"}
    names = {p["name"] for p in paths["/stores/{store_id}/timeline"]["get"]["parameters"]}
    assert names == {"store_id", "as_of", "reach_minutes", "days"}
    assert "from" in app.api_doc["components"]["schemas"]["StoreTimeline"]["properties"]
    assert not any(path.endswith("/view") or path.startswith("/search") or path == "/stores/{store_id}"
                   for path in paths)   # the pages are not API operations


def test_every_new_endpoint_needs_the_token(env):
    _, client, _, extended, _ = env
    for url in (f"/reports/{extended}/rows", "/stores/1/timeline", "/stores", "/data/summary"):
        response = client.get(url)
        assert response.status_code == 401 and response.get_json().keys() == {"error"}, url
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_each_endpoint_is_one_call_into_the_service(env, monkeypatch):
    """The API computes nothing: it hands the validated parameters to reports_service and answers its dict."""
    _, client, settings, extended, _ = env
    calls = []

    def recording(name):
        real = getattr(service, name)

        def call(*args, **kwargs):
            calls.append((name, args[1:], kwargs))
            return real(*args, **kwargs)
        monkeypatch.setattr(service, name, call)

    for name in ("report_rows", "store_timeline", "find_stores", "data_summary"):
        recording(name)
    rows = get(client, f"/reports/{extended.upper()}/rows?sort=store_id&order=desc&limit=3&offset=2&q=1")
    assert calls.pop() == ("report_rows", (extended,), {"sort": "store_id", "order": "desc", "limit": 3,
                                                        "offset": 2, "q": "1"})
    assert rows == service.report_rows(settings, extended, sort="store_id", order="desc", limit=3, offset=2, q="1")
    calls.clear()
    get(client, f"/reports/{extended}/rows")
    assert calls.pop() == ("report_rows", (extended,), {"sort": "downtime_last_week", "order": None, "limit": 50,
                                                        "offset": 0, "q": ""})
    store = rows["rows"][0]["store_id"]
    for query, reach in (("", service.DEFAULT), ("reach_minutes=45", 45), ("reach_minutes=none", None),
                         ("reach_minutes=unbounded", None), ("reach_minutes=null", None), ("reach_minutes=", None)):
        get(client, f"/stores/{store}/timeline?days=2&{query}")
        assert calls.pop() == ("store_timeline", (store,), {"as_of": None, "reach_minutes": reach, "days": 2})
    get(client, f"/stores/{store}/timeline?as_of=2023-03-13 12:00 UTC")
    assert calls.pop() == ("store_timeline", (store,), {"as_of": "2023-03-13 12:00 UTC",
                                                        "reach_minutes": service.DEFAULT, "days": 7})
    found = get(client, "/stores?q=12&limit=4")
    assert calls.pop() == ("find_stores", ("12", 4), {})
    assert found == service.find_stores(settings, "12", 4)
    summary = get(client, "/data/summary")
    assert calls.pop()[0] == "data_summary" and summary == service.data_summary(settings)


# --- GET /reports/<id>/rows ----------------------------------------------------------------------------

def test_rows_are_the_report_worst_first_with_the_total(env):
    _, client, _, extended, standard = env
    page = get(client, f"/reports/{extended}/rows")
    m.ReportRows.model_validate(page)
    assert set(page) == {"report_id", "total", "rows", "columns", "sort", "order", "limit", "offset", "q"}
    assert page["report_id"] == extended and page["total"] == STORES and page["columns"] == EXTENDED
    assert (page["sort"], page["order"], page["limit"], page["offset"], page["q"]) == (
        "downtime_last_week", "desc", 50, 0, "")
    keys = [(-row["downtime_last_week"], row["store_id"]) for row in page["rows"]]
    assert keys == sorted(keys)   # worst first, ties by store id
    downloaded = csv_rows(client, extended)
    assert {row["store_id"]: {k: v for k, v in row.items() if k != "store_id"} for row in page["rows"]} == downloaded
    standard_page = get(client, f"/reports/{standard}/rows?limit=5")
    assert standard_page["columns"] == report_generator.STANDARD_COLUMNS
    assert all(set(row) == set(report_generator.STANDARD_COLUMNS) for row in standard_page["rows"])


def test_rows_page_and_sort_by_every_column(env):
    _, client, _, extended, _ = env
    downloaded = csv_rows(client, extended)
    for column in EXTENDED:
        for order in ("asc", "desc"):
            rows = all_rows(client, extended, sort=column, order=order)
            assert sorted(row["store_id"] for row in rows) == sorted(downloaded)   # each row once
            if column == "store_id":
                ids = [row["store_id"] for row in rows]
                assert ids == sorted(ids, reverse=order == "desc")
            else:
                sign = 1 if order == "asc" else -1
                keys = [(sign * row[column], row["store_id"]) for row in rows]
                assert keys == sorted(keys), (column, order)
    by_id = get(client, f"/reports/{extended}/rows?sort=store_id")
    assert by_id["order"] == "asc"
    page = get(client, f"/reports/{extended}/rows?limit=10&offset={STORES - 3}")
    assert len(page["rows"]) == 3 and page["total"] == STORES
    assert get(client, f"/reports/{extended}/rows?offset={STORES}")["rows"] == []


def test_rows_filter_by_store_id(env):
    _, client, _, extended, _ = env
    ids = sorted(csv_rows(client, extended))
    part = ids[3][2:5]
    page = get(client, f"/reports/{extended}/rows?q={part}&sort=store_id&limit=1000")
    assert [row["store_id"] for row in page["rows"]] == [i for i in ids if part in i]
    assert page["total"] == len(page["rows"]) and page["q"] == part
    one = get(client, f"/reports/{extended}/rows?q=%20{ids[0]}%20")
    assert one["total"] == 1 and one["rows"][0]["store_id"] == ids[0]
    assert get(client, f"/reports/{extended}/rows?q=no-such-store")["total"] == 0


@pytest.mark.parametrize("query, words", [
    ("sort=nope", "sort"), ("sort=STORE_ID", "sort"), ("order=up", "order"), ("order=DESC", "order"),
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=ten", "limit"), ("offset=-1", "offset"),
    ("limit=1.5", "limit"), ("q=" + "1" * 256, "q"),
])
def test_rows_refuse_parameters_outside_their_rule(env, query, words):
    _, client, _, extended, _ = env
    assert words in get(client, f"/reports/{extended}/rows?{query}", 400)["error"]


def test_rows_of_no_report_or_a_column_the_report_has_not(env):
    _, client, _, _, standard = env
    assert "no completed report" in get(client, f"/reports/{uuid.uuid4()}/rows", 404)["error"]
    get(client, "/reports/not-a-uuid/rows", 404)
    answer = get(client, f"/reports/{standard}/rows?sort=unknown_last_week", 409)
    assert "standard columns" in answer["error"] and "extended" in answer["error"]
    doomed = run_report(client, {}, headers=AUTH)
    assert client.delete(f"/reports/{doomed}", headers=AUTH).status_code == 204
    get(client, f"/reports/{doomed}/rows", 404)


# --- GET /stores/<store_id>/timeline -------------------------------------------------------------------

def check_timeline(timeline: dict) -> None:
    m.StoreTimeline.model_validate(timeline)
    assert set(timeline) >= {"store_id", "timezone", "timezone_source", "now", "from", "reach_minutes",
                             "business_intervals", "special_dates", "dst_changes", "polls", "segments", "totals"}
    assert sorted(timeline["totals"]) == sorted(NUMBERS)   # the report's column names
    for segment in timeline["segments"]:
        assert segment["status"] in ("up", "down", "unknown")
        assert (segment["poll"] is None) == (segment["status"] == "unknown")
        assert timeline["from"] <= segment["begin"] < segment["end"] <= timeline["now"]
    polls = {poll["at"]: poll for poll in timeline["polls"]}
    for segment in timeline["segments"]:
        if segment["poll"] is not None:   # each up/down segment names a poll of the list, of its status
            poll = polls[segment["poll"]]
            assert poll["evidence"] and (poll["status"] == "active") == (segment["status"] == "up")
    for interval in timeline["business_intervals"]:
        assert interval["begin"] < interval["end"]
        begin_local = datetime.fromisoformat(interval["begin_local"])
        assert begin_local.utcoffset() is not None
        assert begin_local == datetime.fromisoformat(interval["begin"].replace("Z", "+00:00"))


def test_a_timeline_explains_the_store(env):
    _, client, settings, extended, _ = env
    store = get(client, f"/reports/{extended}/rows?limit=1")["rows"][0]["store_id"]
    timeline = get(client, f"/stores/{store}/timeline")
    check_timeline(timeline)
    assert timeline["store_id"] == store and timeline["reach_minutes"] == settings.poll_reach_minutes
    now, start = (datetime.fromisoformat(timeline[k].replace("Z", "+00:00")) for k in ("now", "from"))
    assert now - start == timedelta(days=7)
    # the data set's week holds the spring-forward night (America/* zones) and special dates
    assert any(get(client, f"/stores/{sid}/timeline")["dst_changes"] for sid in
               [row["store_id"] for row in get(client, f"/reports/{extended}/rows?limit=10")["rows"]])
    special = get(client, "/stores?limit=200")["stores"]
    marked = [t for t in (get(client, f"/stores/{s['store_id']}/timeline") for s in special[:25])
              if any(i["special_date"] for i in t["business_intervals"]) or t["special_dates"]]
    assert marked, "no special date among 25 stores"
    one_day = get(client, f"/stores/{store}/timeline?days=1&reach_minutes=30")
    assert one_day["reach_minutes"] == 30
    assert (datetime.fromisoformat(one_day["now"].replace("Z", "+00:00"))
            - datetime.fromisoformat(one_day["from"].replace("Z", "+00:00"))) == timedelta(days=1)
    for word in ("none", "unbounded", "null", ""):
        assert get(client, f"/stores/{store}/timeline?days=1&reach_minutes={word}")["reach_minutes"] is None
    spaced = get(client, f"/stores/%20{store}%20/timeline?days=1")
    assert spaced["store_id"] == store


@pytest.mark.parametrize("reach_body, reach_query, as_of", [
    ("absent", "", None),                                       # the service's default reach, the latest poll
    (None, "reach_minutes=unbounded", "2023-03-13T15:20:00Z"),  # unbounded, the day after the clock change
    (30, "reach_minutes=30", "2023-03-12T09:07:30+01:00"),       # short reach, during the spring-forward night
])
def test_timeline_totals_equal_the_report_row_on_random_stores(env, reach_body, reach_query, as_of):
    """The issue's requirement: the timeline's totals are the store's row of a report made through
    /trigger_report (extended columns) with the same as_of and reach, exactly."""
    _, client, _, _, _ = env
    body = {"columns": "extended"}
    if reach_body != "absent":
        body["reach_minutes"] = reach_body
    if as_of:
        body["as_of"] = as_of
    report_id = run_report(client, body, headers=AUTH)
    downloaded = csv_rows(client, report_id)
    assert len(downloaded) == STORES
    query = "&".join(part for part in (reach_query, f"as_of={as_of.replace('+', '%2B')}" if as_of else "") if part)
    status = get(client, f"/get_report?report_id={report_id}")
    sampled = random.Random(f"{reach_body}{as_of}").sample(sorted(downloaded), 15)
    assert any(downloaded[s]["downtime_last_week"] > 0 for s in sampled)   # the figures are not all trivial
    assert any(downloaded[s]["unknown_last_week"] > 0 for s in sampled) or reach_body is None
    for store in sampled:
        timeline = get(client, f"/stores/{store}/timeline?{query}")
        check_timeline(timeline)
        assert timeline["now"] == status["as_of"] and timeline["reach_minutes"] == status["reach_minutes"]
        assert timeline["totals"] == downloaded[store], store           # exactly, every column
        row = get(client, f"/reports/{report_id}/rows?q={store}")["rows"]
        assert [r for r in row if r["store_id"] == store][0] == {"store_id": store, **timeline["totals"]}


@pytest.mark.parametrize("query, words", [
    ("days=0", "days"), ("days=8", "days"), ("days=two", "days"), ("reach_minutes=0", "reach_minutes"),
    ("reach_minutes=10081", "reach_minutes"), ("reach_minutes=abc", "reach_minutes"),
    ("reach_minutes=NONE", "reach_minutes"), ("reach_minutes=1.5", "reach_minutes"),
    ("as_of=yesterday", "as_of"), ("as_of=2023-02-30", "as_of"), ("as_of=1969-12-31", "as_of"),
    ("as_of=2023-01-25T25:00:00Z", "as_of"),
])
def test_timeline_refuses_parameters_outside_their_rule(env, query, words):
    _, client, _, extended, _ = env
    store = get(client, f"/reports/{extended}/rows?limit=1")["rows"][0]["store_id"]
    assert words in get(client, f"/stores/{store}/timeline?{query}", 400)["error"]


def test_timeline_of_no_store_is_404_and_a_blank_id_400(env):
    _, client, _, extended, _ = env
    assert "no polled store" in get(client, "/stores/no-such-store/timeline", 404)["error"]
    store = get(client, f"/reports/{extended}/rows?limit=1")["rows"][0]["store_id"]
    answer = get(client, f"/stores/{store}/timeline?as_of=2000-01-01", 404)   # before the first poll
    assert "at or before" in answer["error"]
    assert "store_id" in get(client, "/stores/%20%20/timeline", 400)["error"]
    assert "store_id" in get(client, f"/stores/{'9' * 256}/timeline", 400)["error"]
    page = client.get("/stores/no-such-store", headers=AUTH)   # the page of the same store is HTML
    assert page.status_code == 404 and page.mimetype == "text/html"


# --- GET /stores, GET /data/summary --------------------------------------------------------------------

def test_find_stores(env):
    _, client, _, extended, _ = env
    everything = get(client, "/stores?limit=200")
    m.StoreSearch.model_validate(everything)
    ids = [store["store_id"] for store in everything["stores"]]
    assert everything["total"] == STORES and sorted(ids) == ids == sorted(csv_rows(client, extended))
    assert set(everything["stores"][0]) == {"store_id", "has_hours", "timezone", "timezone_known"}
    assert get(client, "/stores")["stores"] == everything["stores"][:20]   # default limit 20
    part = ids[5][1:4]
    found = get(client, f"/stores?q={part}&limit=200")
    assert found["q"] == part and found["total"] == sum(part in i for i in ids) == len(found["stores"])
    starts = [s["store_id"].startswith(part) for s in found["stores"]]
    assert starts == sorted(starts, reverse=True)   # those starting with it first
    assert len(get(client, "/stores?limit=3")["stores"]) == 3
    assert get(client, f"/stores?q={ids[0]}")["stores"][0]["store_id"] == ids[0]
    for query in ("limit=0", "limit=201", "limit=x", "q=" + "1" * 256):
        get(client, f"/stores?{query}", 400)


def test_data_summary(env):
    _, client, settings, _, _ = env
    summary = get(client, "/data/summary")
    m.DataSummary.model_validate(summary)
    assert summary == service.data_summary(settings)
    assert summary["stores"] == STORES and summary["polls"] > 0
    assert summary["first_poll"] < summary["last_poll"] <= DST_END.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert summary["last_load"] == summary["loads"][0] and summary["last_load"]["finished_at"]
    assert {load["table"] for load in summary["loads"]} >= {"store_status", "business_hours", "timezones"}
    assert summary["default_timezone"] == settings.default_timezone
