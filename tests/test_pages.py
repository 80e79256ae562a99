"""The pages (dashboard.py, templates/, timeline_chart.py) through Flask's test client: what each page
shows, that the store chart adds up to the store's report row, HTML errors, the token, page sizes."""
from __future__ import annotations

import random
import re
import uuid
from dataclasses import replace
from html import unescape

import pytest

import reports_service as service
import timeline_chart
from pages_support import (DST_END, chart_figures, chart_lengths, close, load_generated, pages_app, run_report,
                           settings_for)

MAX_PAGE_BYTES = 500_000


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """A generated data set (60 stores; its last week holds the spring-forward night and special dates),
    an app with the pages, and one extended report made through the API."""
    tmp = tmp_path_factory.mktemp("pages")
    settings = settings_for(tmp)
    load_generated(settings.database, tmp / "generated", stores=60, seed=5, end=DST_END)
    service.clear_cache()
    app = pages_app(settings)
    client = app.test_client()
    report_id = run_report(client, {"columns": "extended"})
    yield app, client, report_id
    close(app)


def text_of(response) -> str:
    return response.get_data(as_text=True)


def report_ids_in(html: str) -> list[str]:
    return [unescape(s) for s in re.findall(r'<th scope="row"><a href="/stores/([^?"]+)\?report=', html)]


def test_dashboard_shows_the_data_the_form_the_reports_and_the_latest_report(loaded):
    app, client, report_id = loaded
    response = client.get("/")
    html = text_of(response)
    assert response.status_code == 200 and response.mimetype == "text/html"
    summary = service.data_summary(app.config["SM_SETTINGS"])
    assert f"{summary['polls']:,}" in html and "Stores polled" in html
    for field in ("as-of", "reach", "unbounded", "store-ids", "extended"):  # every control has its label
        assert re.search(rf'<label for="{field}"|<label class="check"><input id="{field}"', html), field
    assert 'id="trigger-form"' in html and "/static/app.js" in html
    assert f'/reports/{report_id}/view' in html and f'/reports/{report_id}.csv' in html
    rows = report_ids_in(html)
    assert len(rows) == 50
    expected = service.report_rows(app.config["SM_SETTINGS"], report_id)
    assert rows == [row["store_id"] for row in expected["rows"]]  # worst first
    assert "stores down in the last hour" in html and "of business time up" in html
    assert len(response.data) < MAX_PAGE_BYTES


def test_report_page_sorts_filters_and_pages_on_the_server(loaded):
    app, client, report_id = loaded
    settings = app.config["SM_SETTINGS"]
    base = f"/reports/{report_id}/view"
    html = text_of(client.get(base))
    assert 'aria-sort="descending"' in html and "Rows 1–50 of 60" in html
    assert f'href="{base}?offset=50" rel="next"' in html
    second = text_of(client.get(f"{base}?offset=50"))
    assert "Rows 51–60 of 60" in second and len(report_ids_in(second)) == 10
    # The header link of a column sorts by it, descending first; the same header again flips the order.
    link = re.search(r'<a href="([^"]+)" data-sort="downtime_last_day">', html).group(1)
    assert unescape(link) == f"{base}?sort=downtime_last_day&order=desc"
    by_day = text_of(client.get(unescape(link)))
    expected = service.report_rows(settings, report_id, sort="downtime_last_day", order="desc")
    assert report_ids_in(by_day) == [row["store_id"] for row in expected["rows"]]
    assert unescape(re.search(r'<a href="([^"]+)" data-sort="downtime_last_day">', by_day).group(1)).endswith(
        "sort=downtime_last_day&order=asc")
    store_id = expected["rows"][3]["store_id"]
    filtered = text_of(client.get(f"{base}?q={store_id[2:8]}&sort=store_id&order=asc&limit=25"))
    ids = report_ids_in(filtered)
    assert store_id in ids and all(store_id[2:8] in i for i in ids) and ids == sorted(ids)
    assert 'name="q" type="search" value="' + store_id[2:8] in filtered


def test_store_page_chart_adds_up_to_the_report_row(loaded):
    """For random stores of the report, the segments of the day and week charts sum (per status) to the
    store's row, and the timeline's figures are its row."""
    app, client, report_id = loaded
    settings = app.config["SM_SETTINGS"]
    rows = service.report_rows(settings, report_id, limit=1000)["rows"]
    for row in random.Random(7).sample(rows, 8):
        response = client.get(f"/stores/{row['store_id']}?report={report_id}")
        html = text_of(response)
        assert response.status_code == 200, html[:500]
        figures = chart_figures(chart_lengths(html))
        for column, value in figures.items():
            assert value == row[column], (row["store_id"], column, value, row[column])
        assert "The timeline gives exactly the report’s row." in html
        assert len(response.data) < MAX_PAGE_BYTES


def test_store_page_marks_special_dates_dst_and_names_the_poll_of_each_segment(loaded):
    app, client, report_id = loaded
    settings = app.config["SM_SETTINGS"]
    with_special = None
    for row in service.report_rows(settings, report_id, limit=1000)["rows"]:
        hours = service.store_hours(settings, row["store_id"])
        if hours["special"] and hours["timezone_used"] not in ("America/Phoenix", "Pacific/Honolulu", "Asia/Beirut"):
            with_special = row["store_id"]
            break
    assert with_special is not None
    html = text_of(client.get(f"/stores/{with_special}?report={report_id}"))
    week = re.search(r'<svg class="timeline" id="chart-week".*?</svg>', html, re.S).group(0)
    assert 'class="special-date"' in week and 'class="dst-change"' in week
    assert re.search(r"DST -0\d:00 → -0\d:00", week)
    titles = re.findall(r'<rect class="segment segment-(?:up|down)"[^>]*data-poll="([^"]+)"[^>]*><title>([^<]+)</title>',
                        week)
    assert titles and all("from the poll at" in title for _, title in titles)
    assert "Special dates" in html and "closed" in html


def test_store_page_without_a_report_and_with_another_reach(loaded):
    app, client, report_id = loaded
    store_id = service.report_rows(app.config["SM_SETTINGS"], report_id, limit=1)["rows"][0]["store_id"]
    html = text_of(client.get(f"/stores/{store_id}?unbounded=on"))
    assert "unbounded" in html and "In report" not in html
    html = text_of(client.get(f"/stores/{store_id}?report={report_id}&reach_minutes=30"))
    assert "drawn at another time or reach than the report" in html


def test_search_finds_stores_and_goes_straight_to_an_exact_match(loaded):
    app, client, report_id = loaded
    store_id = service.report_rows(app.config["SM_SETTINGS"], report_id, limit=1)["rows"][0]["store_id"]
    response = client.get(f"/search?q={store_id}")
    assert response.status_code == 302 and response.headers["Location"].endswith(f"/stores/{store_id}")
    html = text_of(client.get(f"/search?q={store_id[:3]}"))
    assert f'href="/stores/{store_id}"' in html or "polled stores" in html


@pytest.mark.parametrize("path, status, words", [
    (f"/reports/{uuid.uuid4()}/view", 404, "no report with id"),
    ("/stores/no-such-store", 404, "no store with id"),
    ("/stores/no-such-store?report=not-a-uuid", 400, "report_id must be a UUID"),
    ("/search?q=1&limit=0", 400, "limit must be from 1"),
])
def test_errors_are_html_pages(loaded, path, status, words):
    app, client, report_id = loaded
    response = client.get(path)
    assert response.status_code == status and response.mimetype == "text/html"
    assert words in unescape(text_of(response)) and "<h1>" in text_of(response)


def test_bad_table_parameters_are_a_400_page(loaded):
    app, client, report_id = loaded
    response = client.get(f"/reports/{report_id}/view?sort=nope")
    assert response.status_code == 400 and response.mimetype == "text/html"
    assert "Bad request" in text_of(response)


def test_an_unexpected_error_is_a_500_page_without_details(loaded, monkeypatch):
    app, client, report_id = loaded

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(service, "data_summary", broken)
    response = client.get("/")
    assert response.status_code == 500 and response.mimetype == "text/html"
    assert "secret detail" not in text_of(response) and "Server error" in text_of(response)


def test_a_running_report_shows_its_progress(tmp_path):
    settings = settings_for(tmp_path)
    app = pages_app(settings, start_workers=False)
    try:
        client = app.test_client()
        report_id = client.post("/trigger_report", json={}).get_json()["report_id"]
        html = text_of(client.get(f"/reports/{report_id}/view"))
        assert "data-report-progress" in html and "<progress" in html and "Queued" in html
        dashboard = text_of(client.get("/"))
        assert "No load recorded yet" in dashboard and "Queued" in dashboard and "Latest report" not in dashboard
    finally:
        close(app)


def test_with_a_token_the_pages_ask_for_it(tmp_path):
    settings = replace(settings_for(tmp_path), api_token="s3cret-token")
    app = pages_app(settings, start_workers=False)
    try:
        client = app.test_client()
        response = client.get("/stores/x?report=1")
        assert response.status_code == 302 and "/login?next=" in response.headers["Location"]
        assert client.get("/static/style.css").status_code == 200  # the login page needs its style
        login = text_of(client.get("/login"))
        assert '<label for="token">' in login and 'type="password"' in login
        wrong = client.post("/login", data={"token": "nope", "next": "/"})
        assert wrong.status_code == 401 and "not the service" in text_of(wrong)
        assert client.post("/login", data={"token": "s3cret-token", "next": "https://evil.example/"}
                           ).headers["Location"] == "/"  # only a path of this site is followed
        response = client.post("/login", data={"token": "s3cret-token", "next": "/?x=1"})
        assert response.status_code == 302 and response.headers["Location"] == "/?x=1"
        cookie = response.headers["Set-Cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert client.get("/").status_code == 200 and 'data-auth="required"' in text_of(client.get("/"))
        client.post("/logout")
        assert client.get("/").status_code == 302
        other = app.test_client()
        assert other.get("/", headers={"Authorization": "Bearer s3cret-token"}).status_code == 200
        assert other.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 302
    finally:
        close(app)


# --- the chart on its own ---------------------------------------------------------------------------------

TIMELINE = {
    "store_id": "s1", "timezone": "America/Chicago", "timezone_source": "store",
    "now": "2023-03-13T00:00:00Z", "from": "2023-03-12T00:00:00Z", "reach_minutes": 120,
    "business_intervals": [
        {"begin": "2023-03-12T06:00:00Z", "end": "2023-03-12T12:00:00Z", "begin_local": "2023-03-12T00:00:00-06:00",
         "end_local": "2023-03-12T07:00:00-05:00", "special_date": "2023-03-12"},
        {"begin": "2023-03-12T20:00:00Z", "end": "2023-03-13T00:00:00Z", "begin_local": "2023-03-12T15:00:00-05:00",
         "end_local": "2023-03-12T19:00:00-05:00", "special_date": None}],
    "special_dates": [{"date": "2023-03-12", "closed": False, "hours": [["00:00:00", "07:00:00"]]}],
    "dst_changes": [{"at": "2023-03-12T08:00:00Z", "offset_before": "-06:00", "offset_after": "-05:00"}],
    "polls": [{"at": "2023-03-12T07:00:00Z", "status": "active", "evidence": True},
              {"at": "2023-03-12T11:00:00Z", "status": "inactive", "evidence": True},
              {"at": "2023-03-12T16:00:00Z", "status": "active", "evidence": False}],
    "segments": [
        {"begin": "2023-03-12T06:00:00Z", "end": "2023-03-12T09:00:00Z", "status": "up", "poll": "2023-03-12T07:00:00Z"},
        {"begin": "2023-03-12T09:00:00Z", "end": "2023-03-12T12:00:00Z", "status": "down",
         "poll": "2023-03-12T11:00:00Z"},
        {"begin": "2023-03-12T20:00:00Z", "end": "2023-03-13T00:00:00Z", "status": "unknown", "poll": None}],
    "totals": {},
}


def test_chart_draws_every_part_with_titles_and_exact_lengths():
    begin, end = timeline_chart.us_of(TIMELINE["from"]), timeline_chart.us_of(TIMELINE["now"])
    svg = str(timeline_chart.timeline_svg(TIMELINE, begin, end, chart_id="chart-day", title="Last day"))
    assert chart_lengths(svg) == {"chart-day": {"up": 3 * 3600 * 10**6, "down": 3 * 3600 * 10**6,
                                                "unknown": 4 * 3600 * 10**6}}
    assert svg.count('class="business') == 2 and 'class="business special"' in svg
    assert 'data-date="2023-03-12"' in svg and "03-12 00:00–07:00" in svg
    assert 'class="dst-change"' in svg and "DST -06:00 → -05:00" in svg
    # Local time: the up segment runs from 00:00 CST to 04:00 CDT, three hours (02:00-03:00 does not exist).
    assert "Up Sun 12 Mar 00:00:00 – 04:00:00 local time (3 h), from the poll at Sun 12 Mar 01:00:00 local (active)" in svg
    assert "Unknown Sun 12 Mar 15:00:00 – 19:00:00 local time (4 h), no poll speaks for this time (reach 120 min)" in svg
    assert 'class="poll poll-active poll-outside"' in svg and "outside business hours, so not evidence" in svg
    assert svg.count('class="poll poll-inactive"') == 1
    # Local-time ticks every 3 hours, from 18:00 CST on the 11th (the window's start) to 18:00 CDT; the 03:00
    # tick is the moment clocks jump (08:00 UTC), 3 hours after midnight but only 2 hours of real time.
    ticks = re.findall(r'<line x1="([\d.]+)"[^>]*/><text[^>]*class="label tick[^"]*">([^<]+)</text>', svg)
    assert [label for _, label in ticks] == ["18:00", "21:00", "Sun 12", "03:00", "06:00", "09:00", "12:00", "15:00",
                                             "18:00"]
    x = {label: float(position) for position, label in ticks}
    assert x["03:00"] - x["Sun 12"] == pytest.approx((x["09:00"] - x["06:00"]) * 2 / 3, abs=0.02)
    # Half of the window: clipping keeps only the part inside.
    half = str(timeline_chart.timeline_svg(TIMELINE, begin + 10 * 3600 * 10**6, end, chart_id="c", title="t"))
    assert chart_lengths(half)["c"] == {"up": 0, "down": 2 * 3600 * 10**6, "unknown": 4 * 3600 * 10**6}


def test_chart_escapes_what_it_shows():
    timeline = dict(TIMELINE, timezone="America/Chicago", segments=[dict(TIMELINE["segments"][0], status="up")],
                    special_dates=[], dst_changes=[], store_id="<b>")
    svg = str(timeline_chart.timeline_svg(timeline, timeline_chart.us_of(TIMELINE["from"]),
                                          timeline_chart.us_of(TIMELINE["now"]), chart_id="x",
                                          title="Store <script>"))
    assert "<script>" not in svg and "Store &lt;script&gt;" in svg


def test_the_dashboard_survives_a_report_file_that_went_away(tmp_path):
    settings = settings_for(tmp_path)
    load_generated(settings.database, tmp_path / "generated", stores=3, seed=1)
    app = pages_app(settings)
    try:
        client = app.test_client()
        report_id = run_report(client)
        (settings.reports_dir / f"{report_id}.csv").unlink()
        response = client.get("/")
        assert response.status_code == 200 and "Latest report" not in text_of(response)
        assert client.get(f"/reports/{report_id}/view").status_code == 404
    finally:
        close(app)


def test_with_a_token_the_download_button_works_for_a_logged_in_browser(tmp_path):
    settings = replace(settings_for(tmp_path), api_token="s3cret-token")
    load_generated(settings.database, tmp_path / "data", stores=10)
    app = pages_app(settings)
    try:
        client = app.test_client()
        report_id = run_report(client, headers={"Authorization": "Bearer s3cret-token"})
        assert client.get(f"/reports/{report_id}.csv").status_code == 401   # no cookie, no header
        client.post("/login", data={"token": "s3cret-token", "next": "/"})
        download = client.get(f"/reports/{report_id}.csv")                  # the button: a plain link
        assert download.status_code == 200 and download.mimetype == "text/csv"
        # The cookie opens the links a browser follows, not the rest of the API.
        assert client.get("/reports").status_code == 401
    finally:
        close(app)
