"""The pages in a real browser: Playwright drives Debian's Chromium (/usr/bin/chromium) against a real
server (app.create_app served by werkzeug in a thread) on a generated data set.

Open the dashboard, run a report from its form, see it complete, sort by downtime, filter, open a store,
and check that the chart's up/down/unknown lengths (the segments' data attributes) equal the store's row
in the table. Also: the form works from the keyboard alone, and with SM_API_TOKEN the pages ask for the
token and the page's script sends it to the JSON API. About 10 s.
"""
from __future__ import annotations

import os
import re
import tempfile
from dataclasses import replace

import pytest

from pages_support import DST_END, US_PER_HOUR, as_report_value, close, load_generated, pages_app, serve, settings_for

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync"]

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - the requirements pin it
    sync_playwright = None

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install -r requirements.txt)"),
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
]

TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module, with a fresh user-data directory."""
    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True,
            viewport={"width": 1280, "height": 900})
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser):
    page = browser.new_page()
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.close()
    assert errors == [], f"JavaScript errors: {errors}"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real server on a generated data set of 40 stores (its week holds a DST change and special dates)."""
    tmp = tmp_path_factory.mktemp("browser")
    settings = settings_for(tmp)
    load_generated(settings.database, tmp / "generated", stores=40, seed=11, end=DST_END)
    app = pages_app(settings)
    try:
        with serve(app) as base:
            yield base
    finally:
        close(app)


def column_values(page, column: str) -> list[float]:
    return [float(text.replace(",", "")) for text in
            page.locator(f'table.report td[data-column="{column}"]').all_inner_texts()]


def test_run_a_report_sort_filter_and_open_a_store(server, page):
    page.goto(server + "/")
    expect(page.locator("h1")).to_have_text("Dashboard")
    page.get_by_label("Extended: add the unknown_* columns").check()
    page.get_by_role("button", name="Run the report").click()
    page.wait_for_url(re.compile(r"/reports/[0-9a-f-]{36}/view$"))
    expect(page.locator("h1 .status")).to_have_text("Complete")
    expect(page.locator("table.report tbody tr")).to_have_count(40)
    week = column_values(page, "downtime_last_week")
    assert week == sorted(week, reverse=True)  # worst stores first

    # Sort by the last day's downtime: worst first, then again for the best first.
    page.locator('a[data-sort="downtime_last_day"]').click()
    expect(page.locator('th[aria-sort="descending"] a[data-sort="downtime_last_day"]')).to_be_visible()
    day = column_values(page, "downtime_last_day")
    assert day == sorted(day, reverse=True) and day[0] > 0
    page.locator('a[data-sort="downtime_last_day"]').click()
    expect(page.locator('th[aria-sort="ascending"] a[data-sort="downtime_last_day"]')).to_be_visible()
    assert column_values(page, "downtime_last_day") == sorted(day)

    # Filter by a part of a store id: only matching stores remain.
    store_id = page.locator("table.report tbody th a").nth(5).inner_text()
    part = store_id[3:9]
    page.get_by_label("Store id contains").fill(part)
    page.get_by_label("Store id contains").press("Enter")
    page.wait_for_url(re.compile(r"q=" + part))
    ids = page.locator("table.report tbody th a").all_inner_texts()
    assert store_id in ids and all(part in i for i in ids)

    # Open the store from its row and compare the charts with that row.
    row = page.locator("table.report tbody tr", has=page.get_by_role("link", name=store_id, exact=True))
    figures = {cell.get_attribute("data-column"): float(cell.inner_text().replace(",", ""))
               for cell in row.locator("td[data-column]").all()}
    row.get_by_role("link", name=store_id, exact=True).click()
    page.wait_for_url(re.compile(r"/stores/" + store_id))
    expect(page.locator("h1")).to_contain_text(store_id)
    lengths = page.evaluate("""() => {
        const out = {};
        for (const chart of document.querySelectorAll("svg.timeline")) {
            const totals = {up: 0, down: 0, unknown: 0};
            for (const segment of chart.querySelectorAll(".segment")) {
                totals[segment.dataset.status] += Number(segment.dataset.us);  // exact below 2**53
            }
            out[chart.id] = totals;
        }
        return out;
    }""")
    names = {"up": "uptime", "down": "downtime", "unknown": "unknown"}
    for chart, window in (("chart-day", "day"), ("chart-week", "week")):
        for status, us in lengths[chart].items():
            assert as_report_value(us, US_PER_HOUR) == figures[f"{names[status]}_last_{window}"], (chart, status)
    # The hour columns: the page's figures table shows them (minutes), from the same timeline.
    for prefix in ("uptime", "downtime", "unknown"):
        shown = page.locator(f'#timeline-figures td[data-column="{prefix}_last_hour"]').inner_text().split()[0]
        assert float(shown) == figures[f"{prefix}_last_hour"]
    expect(page.locator("#figures-match")).to_have_text("The timeline gives exactly the report’s row.")
    # Pointing at a segment names the poll it comes from (its <title>, which the browser shows on hover).
    for segment in page.locator("#chart-week .segment").all()[:20]:
        title = segment.locator("title").text_content()
        poll = segment.get_attribute("data-poll")
        assert ("from the poll at" in title) if poll else ("no poll speaks" in title), title


def test_the_form_works_from_the_keyboard(server, page):
    page.goto(server + "/search?q=")  # any store
    first = page.locator("table.stores tbody th a").first.inner_text()
    page.goto(server + "/")
    page.get_by_label("Only these stores").focus()
    page.keyboard.type(first)
    page.keyboard.press("Tab")           # to the "Extended" check box
    page.keyboard.press("Space")
    expect(page.locator("#extended")).to_be_checked()
    page.keyboard.press("Tab")           # to the button
    expect(page.get_by_role("button", name="Run the report")).to_be_focused()
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/reports/[0-9a-f-]{36}/view$"))
    expect(page.locator("table.report tbody tr")).to_have_count(1)
    expect(page.locator("dl.facts")).to_contain_text("extended")


def test_a_bad_request_is_explained_on_the_dashboard(server, page):
    page.goto(server + "/")
    page.get_by_label("Unbounded (the classic nearest poll)").uncheck()
    page.get_by_label("Reach of a poll, minutes").fill("")
    page.evaluate("document.getElementById('reach').removeAttribute('min')")
    page.get_by_label("Reach of a poll, minutes").fill("0")
    page.get_by_role("button", name="Run the report").click()
    expect(page.locator("#trigger-message")).to_contain_text("Not started")
    expect(page.locator("#trigger-message")).to_contain_text("reach_minutes")


def test_with_a_token_the_pages_and_their_script_use_it(tmp_path, page):
    settings = replace(settings_for(tmp_path), api_token="browser-token")
    load_generated(settings.database, tmp_path / "generated", stores=5, seed=2)
    app = pages_app(settings)
    try:
        with serve(app) as base:
            page.goto(base + "/")
            page.wait_for_url(re.compile(r"/login"))
            page.get_by_label("API token").fill("wrong")
            page.get_by_role("button", name="Sign in").click()
            expect(page.locator("#login-error")).to_be_visible()
            page.get_by_label("API token").fill("browser-token")
            page.get_by_role("button", name="Sign in").click()
            expect(page.locator("h1")).to_have_text("Dashboard")
            page.get_by_role("button", name="Run the report").click()  # POST /trigger_report with the bearer
            page.wait_for_url(re.compile(r"/reports/[0-9a-f-]{36}/view$"))
            expect(page.locator("table.report tbody tr")).to_have_count(5)
            page.get_by_role("button", name="Log out").click()
            page.wait_for_url(re.compile(r"/login"))
    finally:
        close(app)
