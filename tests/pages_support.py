"""Helpers of the pages' tests (test_reports_service, test_pages, test_browser): an app with the pages
blueprint, a generated data set, a report run through the JSON API, a real server in a thread."""
from __future__ import annotations

import re
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

import database
import dashboard
import sample_data
from app import create_app, shutdown
from config import Settings

US_PER_HOUR = 3_600_000_000
US_PER_MINUTE = 60_000_000
# A generated data set whose last week holds the spring-forward night of 2023-03-12 and special dates.
DST_END = datetime(2023, 3, 14, 18, 0, 0, tzinfo=timezone.utc)


def settings_for(tmp_path: Path, **overrides) -> Settings:
    values = dict(database=tmp_path / "db.sqlite3", reports_dir=tmp_path / "reports",
                  data_dir=tmp_path / "data", workers=1, queue_limit=16)
    values.update(overrides)
    return Settings(**values)


def pages_app(settings: Settings, **kwargs):
    """`app.create_app` with the pages blueprint (registered here until app.py registers it itself)."""
    app = create_app(settings, **kwargs)
    if "pages" not in app.blueprints:
        app.register_blueprint(dashboard.pages)
    return app


def load_generated(db_path: Path, out_dir: Path, *, stores: int = 40, seed: int = 0, end: datetime | None = None,
                   id_style: str = "int64") -> dict[str, Path]:
    """Generate a data set (sample_data) into `out_dir` and load it into `db_path`."""
    paths = sample_data.generate_dataset(out_dir, stores=stores, seed=seed, end=end, id_style=id_style)
    conn = database.connect(db_path)
    try:
        database.load_tables(conn, paths, progress=False)
    finally:
        conn.close()
    return paths


def run_report(client, body: dict | None = None, headers: dict | None = None, timeout: float = 60) -> str:
    """Trigger a report through the JSON API and wait until it is Complete; returns its id."""
    response = client.post("/trigger_report", json=body or {}, headers=headers or {})
    assert response.status_code == 202, response.get_data(as_text=True)
    report_id = response.get_json()["report_id"]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answer = client.get(f"/get_report?report_id={report_id}", headers=headers or {}).get_json()
        if answer["status"] == "Complete":
            return report_id
        assert answer["status"] == "Running", answer
        time.sleep(0.05)
    raise AssertionError(f"report {report_id} did not complete in {timeout} s")


@contextmanager
def serve(app):
    """The app on a free port of 127.0.0.1, served by werkzeug in a thread; yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="pages-test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def close(app) -> None:
    shutdown(app, timeout=10)


SEGMENT_RE = re.compile(r'<rect class="segment[^"]*"[^>]*data-status="(\w+)"[^>]*data-us="(\d+)"')
CHART_RE = re.compile(r'<svg class="timeline" id="([\w-]+)".*?</svg>', re.S)


def chart_lengths(html: str) -> dict[str, dict[str, int]]:
    """{chart id: {status: microseconds}} summed from the data attributes of each chart's segments."""
    charts = {}
    for match in CHART_RE.finditer(html):
        totals = {"up": 0, "down": 0, "unknown": 0}
        for status, us in SEGMENT_RE.findall(match.group(0)):
            totals[status] += int(us)
        charts[match.group(1)] = totals
    return charts


def as_report_value(us: int, unit_us: int) -> float:
    """Microseconds in the report's unit (minutes or hours), rounded to 2 decimals half up, like the report."""
    return float((Decimal(us) / Decimal(unit_us)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def chart_figures(lengths: dict[str, dict[str, int]]) -> dict[str, float]:
    """The report's day and week columns from the two charts of a store page."""
    names = {"up": "uptime", "down": "downtime", "unknown": "unknown"}
    figures = {}
    for chart, window in (("chart-day", "day"), ("chart-week", "week")):
        for status, us in lengths[chart].items():
            figures[f"{names[status]}_last_{window}"] = as_report_value(us, US_PER_HOUR)
    return figures
