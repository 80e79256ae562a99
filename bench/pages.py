#!/usr/bin/env python
"""The pages at real size: how long each takes to render and how many bytes it sends.

    python bench/pages.py                      # 14,000 generated stores (about 1 minute in all)
    python bench/pages.py --db store_monitoring.sqlite3 --reports-dir reports   # a database you have

Generates a data set with `sample_data` (unless `--db` names a loaded database), starts the app with
the pages (`app.create_app`) in a real HTTP server on 127.0.0.1 (werkzeug, a free port), runs one
extended report through the JSON API, then fetches each page `--repeat` times over HTTP and prints,
per page, the first (cold) and the median time to the last byte, and the bytes of the page and of
everything it loads (style sheet, script, icon). Targets: every page under 1 s and 500 KB.
"""
from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

TARGET_SECONDS = 1.0
TARGET_BYTES = 500_000


def fetch(url: str, data: bytes | None = None) -> tuple[float, bytes, int]:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        body = response.read()
        status = response.status
    return time.perf_counter() - started, body, status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stores", type=int, default=14_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", type=Path, help="a loaded database (default: generate one)")
    parser.add_argument("--reports-dir", type=Path, help="where reports go (default: beside the database)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--store-pages", type=int, default=5, help="random store pages besides the worst store")
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request

    import dashboard
    import database
    import sample_data
    from app import create_app, shutdown
    from config import Settings
    from werkzeug.serving import make_server

    with tempfile.TemporaryDirectory(prefix="bench-pages-") as tmp:
        tmp = Path(tmp)
        db_path = args.db
        if db_path is None:
            db_path = tmp / "db.sqlite3"
            started = time.perf_counter()
            paths = sample_data.generate_dataset(tmp / "data", stores=args.stores, seed=args.seed)
            conn = database.connect(db_path)
            try:
                database.load_tables(conn, paths, progress=False)
            finally:
                conn.close()
            print(f"generated and loaded {args.stores:,} stores in {time.perf_counter() - started:.1f} s")
        settings = Settings(database=db_path, reports_dir=args.reports_dir or tmp / "reports",
                            data_dir=tmp / "no-data")
        app = create_app(settings)
        if "pages" not in app.blueprints:
            app.register_blueprint(dashboard.pages)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        base = f"http://127.0.0.1:{server.server_port}"
        try:
            _, body, _ = fetch(base + "/trigger_report", json.dumps({"columns": "extended"}).encode())
            report_id = json.loads(body)["report_id"]
            while True:
                _, body, _ = fetch(f"{base}/get_report?report_id={report_id}")
                answer = json.loads(body)
                if answer["status"] != "Running":
                    break
                time.sleep(0.1)
            if answer["status"] != "Complete":
                print(f"the report did not complete: {answer}")
                return 1
            print(f"report {report_id}: {answer['rows']:,} rows in {answer['seconds']:.2f} s")
            # The first page after the report parses its CSV (then cached per process).
            seconds, body, _ = fetch(base + "/")
            print(f"first dashboard after the report (parses the report's CSV): {seconds:.3f} s, "
                  f"{len(body) / 1000:.1f} KB")
            # Store pages: the worst store, then random ones (each a cold timeline).
            _, body, _ = fetch(f"{base}/reports/{report_id}/view?limit=1000")
            store_ids = re.findall(r'/stores/([^?"]+)\?report=', body.decode())
            chosen = [store_ids[0]] + random.Random(args.seed).sample(store_ids[1:], args.store_pages)
            pages = [("dashboard", "/"),
                     ("report, worst first", f"/reports/{report_id}/view"),
                     ("report, by store id, last page",
                      f"/reports/{report_id}/view?sort=store_id&order=asc&offset={answer['rows'] - 50}"),
                     ("report, filtered", f"/reports/{report_id}/view?q=12&sort=uptime_last_day&order=asc"),
                     ("find a store", "/search?q=12")]
            pages += [(f"store {sid}" + (" (worst)" if n == 0 else ""), f"/stores/{sid}?report={report_id}")
                      for n, sid in enumerate(chosen)]
            assets = sum(len(fetch(base + path)[1]) for path in
                         ("/static/style.css", "/static/app.js", "/static/favicon.svg"))
            print(f"\n{'page':44} {'first s':>8} {'median s':>9} {'page KB':>8} {'with assets KB':>15}")
            worst_time, worst_bytes = 0.0, 0
            for name, path in pages:
                times, size = [], 0
                for _ in range(max(args.repeat, 1)):
                    seconds, body, status = fetch(base + path)
                    assert status == 200, (path, status)
                    times.append(seconds)
                    size = len(body)
                worst_time = max(worst_time, max(times))
                worst_bytes = max(worst_bytes, size + assets)
                print(f"{name:44} {times[0]:8.3f} {statistics.median(times):9.3f} {size / 1000:8.1f} "
                      f"{(size + assets) / 1000:15.1f}")
            ok = worst_time < TARGET_SECONDS and worst_bytes < TARGET_BYTES
            print(f"\nslowest request {worst_time:.3f} s (target < {TARGET_SECONDS} s), largest page with its assets "
                  f"{worst_bytes / 1000:.1f} KB (target < {TARGET_BYTES / 1000:.0f} KB): {'OK' if ok else 'MISSED'}")
            return 0 if ok else 1
        finally:
            server.shutdown()
            server.server_close()
            shutdown(app)


if __name__ == "__main__":
    raise SystemExit(main())
