#!/usr/bin/env python
"""Take the README's screenshots: docs/dashboard.png and docs/store.png.

    .venv/bin/python docs/screenshots.py

Generates 300 stores whose last week holds the spring-forward night of 2023-03-12 and special dates
(`sample_data`, seed 3), serves the app with its pages on 127.0.0.1, runs a report from the dashboard's
form in Debian's Chromium (/usr/bin/chromium, driven by Playwright), and photographs the dashboard and the
page of a store that shows what a timeline can hold: business hours that close, a special date, the
DST change, downtime and unknown time.
"""
from __future__ import annotations

import re
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
for path in (PROJECT, PROJECT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from playwright.sync_api import sync_playwright  # noqa: E402

import reports_service as service  # noqa: E402
from pages_support import close, load_generated, pages_app, serve, settings_for  # noqa: E402

END = datetime(2023, 3, 14, 18, 0, 0, tzinfo=timezone.utc)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars"]


def showcase_store(settings, report_id: str) -> str:
    """A store with closing hours, a special date and a DST change in its week, downtime and unknown time."""
    for row in service.report_rows(settings, report_id, limit=1000)["rows"]:
        hours = service.store_hours(settings, row["store_id"])
        if (hours["special"] and len(hours["special"]) > 1 and hours["weekly"]
                and all(h["kind"] == "" and h["start"] != "00:00" for h in hours["weekly"])
                and row["downtime_last_day"] > 0.5 and row["unknown_last_week"] > 1
                and hours["timezone_used"] in ("America/New_York", "America/Chicago", "America/Los_Angeles")):
            return row["store_id"]
    return service.report_rows(settings, report_id, limit=1)["rows"][0]["store_id"]


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="screenshots-") as tmp, sync_playwright() as playwright:
        tmp = Path(tmp)
        settings = settings_for(tmp)
        load_generated(settings.database, tmp / "data", stores=300, seed=3, end=END)
        app = pages_app(settings)
        try:
            with serve(app) as base:
                context = playwright.chromium.launch_persistent_context(
                    str(tmp / "profile"), executable_path="/usr/bin/chromium", args=ARGS, headless=True,
                    viewport={"width": 1280, "height": 900}, device_scale_factor=1)
                page = context.new_page()
                page.goto(base + "/")
                page.get_by_label("Extended: add the unknown_* columns").check()
                page.get_by_role("button", name="Run the report").click()
                page.wait_for_url(re.compile(r"/reports/[0-9a-f-]{36}/view$"))
                report_id = page.url.rsplit("/", 2)[-2]
                page.goto(base + "/")
                page.screenshot(path=str(PROJECT / "docs" / "dashboard.png"), full_page=True,
                                clip={"x": 0, "y": 0, "width": 1280, "height": 1560})
                store_id = showcase_store(settings, report_id)
                page.goto(f"{base}/stores/{store_id}?report={report_id}")
                page.screenshot(path=str(PROJECT / "docs" / "store.png"), full_page=True)
                context.close()
                print(f"docs/dashboard.png and docs/store.png (store {store_id}, report {report_id})")
        finally:
            close(app)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
