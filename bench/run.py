#!/usr/bin/env python
"""End-to-end benchmark at real size: generate -> ingest -> report through the HTTP API.

    python bench/run.py                 # real size: 14,000 stores, 8 days of hourly polls (~1.85M polls)
    python bench/run.py --scale 10      # the same stores with a 10x longer poll history (~21M polls)
    python bench/run.py --hours ../shared/data/loop-sample/menu_hours.csv \\
                        --timezones ../shared/data/loop-sample/timezones.csv

Steps (each heavy step runs in its own child process, so its peak memory is its own):
1. generate seeded data with `sample_data.generate_dataset` (or take real hours/timezone files; the
   generated polls then use those files' store ids);
2. load it into a fresh SQLite database with `database.load_files`, one table at a time (or with the
   `python database.py load` CLI, `--ingest cli`): seconds and rows/s per table, peak RSS;
3. start the app (`app.create_app`) in a real HTTP server on 127.0.0.1 (a free port), POST
   /trigger_report, poll GET /get_report until Complete, download the CSV: wall seconds trigger->Complete,
   the job's own load/compute/write split, peak RSS of the serving process;
4. run `report_generator.generate_report` directly `--runs` times in a fresh process: median seconds.

Temporary files and child processes are removed at the end, also on failure (`--keep DIR` keeps files).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
if str(PROJECT) not in sys.path:
    sys.path.insert(0, str(PROJECT))

RESULT_PREFIX = "BENCH_RESULT "
TABLES = ("store_status", "business_hours", "timezones", "special_hours")
TARGETS = {"ingest_s": 15.0, "report_s": 1.5, "memory_mb": 1024.0}
POLL_INTERVAL_S = 0.025


class BenchError(RuntimeError):
    pass


# --- child-process workers (python bench/run.py _worker ...) ----------------------------------------

def _emit(result) -> None:
    """The worker's result as one line, with its own peak RSS. VmHWM of /proc/self is reset by exec, so
    unlike wait4's ru_maxrss it never includes the parent's pages that a fork/vfork briefly shared."""
    result = {**result, "self_peak_rss_mb": peak_rss_mb(os.getpid())}
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)


def worker_generate(args) -> int:
    """Generate the data set in this child process (the parent stays small, see _emit)."""
    import sample_data

    store_ids, id_style = None, args.id_style
    if args.hours or args.timezones:
        store_ids = store_ids_of(*[Path(p) for p in (args.hours, args.timezones) if p])
        if store_ids and "-" in store_ids[0] and len(store_ids[0]) == 36:
            id_style = "uuid"
    start = time.perf_counter()
    history = args.scale_mode == "history"
    paths = sample_data.generate_dataset(Path(args.out), stores=args.stores, days=args.days, seed=args.seed,
                                         id_style=id_style, store_ids=store_ids,
                                         poll_scale=args.scale if history else 1,
                                         polls_per_hour=1 if history else args.scale)
    _emit({"seconds": time.perf_counter() - start, "paths": {k: str(v) for k, v in paths.items()},
           "id_style": id_style})
    return 0


def worker_ingest(args) -> int:
    """Load the three files into args.db with database.load_files, one table per call, timed."""
    t_import = time.perf_counter()
    import database

    import_s = time.perf_counter() - t_import
    conn = database.connect(args.db)
    files = {"store_status": args.status, "business_hours": args.hours, "timezones": args.timezones,
             "special_hours": args.special_hours}
    seconds, summaries = {}, {}
    for table in (t for t in TABLES if files[t]):
        start = time.perf_counter()
        summaries[table] = [s.to_dict() for s in database.load_tables(conn, {table: files[table]})]
        seconds[table] = time.perf_counter() - start
    counts = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
    conn.close()
    _emit({"seconds": seconds, "import_s": import_s, "counts": counts,
           "summaries": summaries})
    return 0


def worker_serve(args) -> int:
    """The app in a werkzeug server on 127.0.0.1, free port; prints the port, stops on SIGTERM."""
    import logging
    import threading

    from werkzeug.serving import make_server

    import app as app_module
    from config import Settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log: we poll often
    import storage

    settings = Settings.from_env(environ={}, dotenv=False,
                                 database=args.db if storage.is_postgresql(args.db) else Path(args.db),
                                 reports_dir=Path(args.reports), data_dir=Path(args.data_dir),
                                 host="127.0.0.1", port=5000, broker_url=args.broker)
    application = app_module.create_app(settings, load_data=False)
    server = make_server("127.0.0.1", 0, application, threaded=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    _emit({"port": server.server_port, "pid": os.getpid()})
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        app_module.shutdown(application)
    return 0


def worker_engine(args) -> int:
    """generate_report on args.db, args.runs times, in this fresh process."""
    import report_generator

    runs = []
    for i in range(args.runs):
        out = Path(args.out) / f"engine-{i}.csv"
        start = time.perf_counter()
        outcome = report_generator.generate_report(Path(args.db), out)
        wall = time.perf_counter() - start
        runs.append({"wall": wall, "seconds": float(outcome.seconds), "rows": int(outcome.rows),
                     "as_of": str(outcome.as_of), "timings": {k: float(v) for k, v in (outcome.timings or {}).items()}})
        out.unlink(missing_ok=True)
    child_mb = [mb for mb in map(peak_rss_mb, descendants(os.getpid())) if mb is not None]
    _emit({"runs": runs, "child_peak_rss_mb": child_mb})
    return 0


# --- helpers for the parent -------------------------------------------------------------------------

class Child:
    """A child process whose stdout/stderr go to files; `wait()` returns its own peak RSS (wait4)."""

    def __init__(self, cmd: list[str], log_dir: Path, name: str, env: dict | None = None):
        self.name = name
        self.stdout_path = log_dir / f"{name}.out"
        self.stderr_path = log_dir / f"{name}.err"
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, cwd=PROJECT, stdout=self._out, stderr=self._err, env=env)
        self.wall = None
        self.maxrss_mb = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.returncode is None and self.proc.poll() is None

    def wait(self) -> int:
        if self.proc.returncode is None:
            _, status, usage = os.wait4(self.proc.pid, 0)
            self.proc.returncode = os.waitstatus_to_exitcode(status)
            self.maxrss_mb = usage.ru_maxrss / 1024  # KiB on Linux
        if self.wall is None:
            self.wall = time.perf_counter() - self.started
        self._out.close()
        self._err.close()
        return self.proc.returncode

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; reaps the process."""
        if self.proc.returncode is not None:
            return
        try:
            self.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while self.proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        except ProcessLookupError:
            pass
        if self.proc.returncode is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        self._err.close()

    def output(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def errors(self, tail: int = 3000) -> str:
        return self.stderr_path.read_text(errors="replace")[-tail:]

    def result(self):
        for line in reversed(self.output().splitlines()):
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX):])
        return None


def _proc_status_mb(pid: int, field: str) -> float | None:
    """A memory field of /proc/<pid>/status (e.g. VmHWM, VmRSS) of a live process, MiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_mb(pid: int) -> float | None:
    """Resident high-water mark (VmHWM)."""
    return _proc_status_mb(pid, "VmHWM")


def descendants(pid: int) -> list[int]:
    """The process ids below `pid` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rss_mb(pid: int) -> float | None:
    return _proc_status_mb(pid, "VmRSS")


def store_ids_of(*paths: Path) -> list[str]:
    """store_id column of CSV files, in file order, deduplicated."""
    import pandas as pd

    ids: dict[str, None] = {}
    for path in paths:
        frame = pd.read_csv(path, dtype=str, usecols=lambda c: c.strip().lstrip("\ufeff") == "store_id",
                            encoding="utf-8-sig")
        ids.update(dict.fromkeys(frame.iloc[:, 0].dropna().str.strip()))
    return list(ids)


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 60):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def wait_for_result(child: Child, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = child.result()
        if result is not None:
            return result
        if not child.running():
            raise BenchError(f"{child.name} exited ({child.proc.returncode}) before it was ready:\n{child.errors()}")
        time.sleep(0.05)
    raise BenchError(f"{child.name} not ready after {timeout} s:\n{child.errors()}")


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# --- the benchmark ----------------------------------------------------------------------------------

def run(args, work: Path, children: list[Child]) -> dict:
    py = sys.executable
    me = str(Path(__file__).resolve())
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data_dir = work / "data"
    db_path = work / "bench.sqlite3"
    reports = work / "reports"
    for stale in (db_path, Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        stale.unlink(missing_ok=True)  # always a fresh database, also with --keep
    res: dict = {"scale": args.scale, "scale_mode": args.scale_mode, "stores": args.stores, "days": args.days,
                 "seed": args.seed, "load_average_before": os.getloadavg(),
                 "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                 "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"}

    # 1. data, generated in a child process
    cmd = [py, me, "_worker", "generate", "--out", str(data_dir), "--stores", str(args.stores), "--days",
           str(args.days), "--seed", str(args.seed), "--id-style", args.id_style, "--scale", str(args.scale),
           "--scale-mode", args.scale_mode]
    for option in ("hours", "timezones"):
        if getattr(args, option):
            cmd += [f"--{option}", str(Path(getattr(args, option)).resolve())]
    child = Child(cmd, logs, "generate")
    children.append(child)
    if child.wait() != 0:
        raise BenchError(f"data generation failed (exit {child.proc.returncode}):\n{child.errors()}")
    generated = child.result()
    paths = {k: Path(v) for k, v in generated["paths"].items()}
    res["generate_s"] = generated["seconds"]
    res["generate_peak_rss_mb"] = generated["self_peak_rss_mb"]
    files = {"store_status": paths["store_status"],
             "business_hours": Path(args.hours).resolve() if args.hours else paths["business_hours"],
             "timezones": Path(args.timezones).resolve() if args.timezones else paths["timezones"]}
    if not args.no_special_hours:
        files["special_hours"] = paths["special_hours"]
    res["tables"] = list(files)
    res["sources"] = {t: ("generated" if files[t] == paths.get(t) else str(files[t])) for t in files}
    from sample_data import count_rows  # the parent's own memory is not measured; the children's is

    res["csv_rows"] = {t: count_rows(files[t]) for t in files}
    res["csv_mb"] = {t: files[t].stat().st_size / 2**20 for t in files}
    print(f"generated {res['csv_rows']['store_status']:,} polls for {args.stores:,} stores "
          f"({_span(res)}) in {res['generate_s']:.1f} s", flush=True)

    # 2. ingest into a fresh database
    options = ["--status", str(files["store_status"]), "--hours", str(files["business_hours"]),
               "--timezones", str(files["timezones"])]
    if "special_hours" in files:
        options += ["--special-hours", str(files["special_hours"])]
    if args.ingest == "cli":
        cmd = [py, str(PROJECT / "database.py"), "load", "--db", str(db_path), *options]
    else:
        cmd = [py, me, "_worker", "ingest", "--db", str(db_path), *options]
    child = Child(cmd, logs, "ingest")
    children.append(child)
    if child.wait() != 0:
        raise BenchError(f"ingest failed (exit {child.proc.returncode}):\n{child.errors()}")
    ingest = child.result() or {}
    if args.ingest == "cli":
        with sqlite3.connect(db_path) as conn:
            ingest["counts"] = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in files}
        ingest["cli_output"] = child.output()[-3000:]
        timed = re.search(r" in ([0-9.]+) s", ingest["cli_output"].strip().splitlines()[-1] if ingest["cli_output"].strip() else "")
        if timed:  # the CLI's own figure: connect + read + load, without interpreter start-up
            ingest["seconds"] = {"all (CLI's own figure)": float(timed.group(1))}
    # The worker's own VmHWM; for the CLI only wait4's figure exists (it may include the parent's RSS).
    res["ingest"] = {"process_wall_s": child.wall, "wait4_maxrss_mb": child.maxrss_mb,
                     "peak_rss_mb": ingest.get("self_peak_rss_mb") or child.maxrss_mb, **ingest}
    res["db_mb"] = db_path.stat().st_size / 2**20
    print(f"ingested in {child.wall:.1f} s (process wall), database {res['db_mb']:.0f} MB", flush=True)

    # 3. report through the HTTP API
    server = Child([py, me, "_worker", "serve", "--db", str(db_path), "--reports", str(reports),
                    "--data-dir", str(work / "no-data")], logs, "server")
    children.append(server)
    ready = wait_for_result(server, 120)
    base = f"http://127.0.0.1:{ready['port']}"
    res["api"] = {"server_rss_before_mb": rss_mb(server.pid), "runs": []}
    for _ in range(args.api_runs):
        t0 = time.perf_counter()
        status, body, _ = http("POST", f"{base}/trigger_report", b"{}", {"Content-Type": "application/json"})
        if status != 202:
            raise BenchError(f"POST /trigger_report answered {status}: {body[:500]!r}")
        report_id = json.loads(body)["report_id"]
        polls = 0
        while True:
            status, body, _ = http("GET", f"{base}/get_report?report_id={report_id}")
            polls += 1
            job = json.loads(body) if body else {}
            if status != 200:
                raise BenchError(f"GET /get_report answered {status}: {body[:500]!r}")
            if job.get("status") == "Complete":
                wall = time.perf_counter() - t0
                break
            if job.get("status") == "Failed":
                raise BenchError(f"report {report_id} failed: {job.get('error')}\n{server.errors()}")
            if time.perf_counter() - t0 > args.timeout:
                raise BenchError(f"report {report_id} not Complete after {args.timeout:g} s:\n{server.errors()}")
            if polls % 40 == 0 and f"handling report {report_id}" in server.errors(100_000):
                # jobs.py logged a worker crash outside the job's own error handling: the job stays
                # Running forever, so stop waiting.
                raise BenchError(f"report {report_id}: the worker crashed, job left Running:\n{server.errors()}")
            time.sleep(args.poll_interval)
        t1 = time.perf_counter()
        status, csv_bytes, headers = http("GET", base + job.get("download_url", f"/reports/{report_id}.csv"))
        download_s = time.perf_counter() - t1
        if status != 200:
            raise BenchError(f"download answered {status}: {csv_bytes[:300]!r}")
        lines = csv_bytes.decode().splitlines()
        res["api"]["runs"].append({
            "report_id": report_id, "trigger_to_complete_s": wall, "job_seconds": job.get("seconds"),
            "timings": job.get("timings") or {}, "rows": job.get("rows"), "as_of": job.get("as_of"),
            "status_polls": polls, "download_s": download_s, "csv_bytes": len(csv_bytes),
            "csv_rows": len(lines) - 1, "csv_header": lines[0] if lines else ""})
        print(f"report via API: {wall:.2f} s trigger->Complete, {len(lines) - 1:,} rows", flush=True)
    res["api"]["server_peak_rss_mb"] = peak_rss_mb(server.pid)
    # The report's shard processes (and their fork server) are the server's children.
    res["api"]["child_peak_rss_mb"] = [mb for mb in map(peak_rss_mb, descendants(server.pid)) if mb is not None]
    server.stop()

    # 4. the engine alone, a few times, in a fresh process
    if args.runs > 0:
        engine = Child([py, me, "_worker", "engine", "--db", str(db_path), "--out", str(reports),
                        "--runs", str(args.runs)], logs, "engine")
        children.append(engine)
        if engine.wait() != 0:
            raise BenchError(f"engine runs failed (exit {engine.proc.returncode}):\n{engine.errors()}")
        runs = (engine.result() or {}).get("runs", [])
        res["engine"] = {"runs": runs, "peak_rss_mb": (engine.result() or {}).get("self_peak_rss_mb"),
                         "child_peak_rss_mb": (engine.result() or {}).get("child_peak_rss_mb"),
                         "wait4_maxrss_mb": engine.maxrss_mb,
                         "median_s": median([r["seconds"] for r in runs]),
                         "median_timings": {k: median([r["timings"].get(k) for r in runs])
                                            for k in ("load", "compute", "write")}}
    return res


# --- the table --------------------------------------------------------------------------------------

def _f(value, fmt: str = "{:.2f}", missing: str = "-") -> str:
    return missing if value is None else fmt.format(value)


def _mark(value, target, label: str = "", scale: int = 1) -> str:
    """ok/MISSED against an issue-5 target; the targets are for real size (scale 1) only."""
    if value is None or scale != 1:
        return ""
    return ("ok" if value <= target else "MISSED") + (f" ({label})" if label else "")


def _span(res: dict) -> str:
    if res.get("scale_mode", "history") == "history":
        return f"{res['days'] * res['scale']:g} days of hourly polls"
    return f"{res['days']:g} days, {res['scale']} polls an hour"


def render(res: dict) -> str:
    out = []
    polls = res["csv_rows"]["store_status"]
    scale = res["scale"]
    load = " ".join(f"{v:.2f}" for v in res["load_average_before"])
    out.append(f"store-monitoring benchmark: {res['date']}; {res['machine']}; load average before: {load}")
    out.append(f"scale {scale} ({res['scale_mode']}, seed {res['seed']}): {res['stores']:,} stores, {_span(res)} "
               f"= {polls:,} polls; hours {res['sources']['business_hours']}, "
               f"timezones {res['sources']['timezones']}, special hours "
               f"{res['sources'].get('special_hours', 'none')}; data generated in {res['generate_s']:.1f} s")
    if scale != 1:
        out.append("(the ingest/report/memory targets are for scale 1; at this scale compare with the scale-1 table)")
    out.append("")
    ingest = res["ingest"]
    rows = [("step", "rows", "seconds", "rows/s", "peak RSS MB", "target")]
    rows.append(("generate data (sample_data)", f"{sum(res['csv_rows'].values()):,}", _f(res["generate_s"]), "",
                 _f(res.get("generate_peak_rss_mb"), "{:.0f}"), ""))
    seconds = ingest.get("seconds") or {}
    counts = ingest.get("counts") or {}
    for table in res.get("tables", TABLES[:3]):
        s = seconds.get(table)
        read = res["csv_rows"][table]
        rows.append((f"ingest {table}", f"{read:,} -> {counts.get(table, 0):,}", _f(s),
                     _f(read / s if s else None, "{:,.0f}"), "", ""))
    total = sum(seconds.values()) if seconds else None
    all_rows = sum(res["csv_rows"].values())
    rows.append(("ingest total (load calls)", f"{all_rows:,}", _f(total),
                 _f(all_rows / total if total else None, "{:,.0f}"), "", _mark(total, TARGETS["ingest_s"], "<= 15 s", scale)))
    rows.append(("ingest process (wall, incl. imports)", "", _f(ingest["process_wall_s"]), "",
                 _f(ingest["peak_rss_mb"], "{:.0f}"), _mark(ingest["peak_rss_mb"], TARGETS["memory_mb"], "< 1 GB", scale)))
    for i, run in enumerate(res["api"]["runs"]):
        t = run["timings"]
        rows.append((f"report via API #{i + 1} trigger->Complete", f"{run['csv_rows']:,}",
                     _f(run["trigger_to_complete_s"]), "", "", _mark(run["trigger_to_complete_s"], TARGETS["report_s"], "<= 1.5 s", scale)))
        rows.append(("  job: seconds / load / compute / write", "",
                     f"{_f(run['job_seconds'])} / {_f(t.get('load'))} / {_f(t.get('compute'))} / {_f(t.get('write'))}",
                     "", "", ""))
        rows.append(("  download CSV", f"{run['csv_bytes'] / 1024:,.0f} KiB", _f(run["download_s"], "{:.3f}"), "", "", ""))
    rows.append(("report server process (app + workers)", "", "", "", _f(res["api"]["server_peak_rss_mb"], "{:.0f}"),
                 _mark(res["api"]["server_peak_rss_mb"], TARGETS["memory_mb"], "< 1 GB", scale)))
    child_mb = res["api"].get("child_peak_rss_mb") or []
    if child_mb:
        rows.append((f"  its {len(child_mb)} child processes (shards, fork server): max / sum", "", "", "",
                     f"{max(child_mb):.0f} / {sum(child_mb):.0f}", ""))
    engine = res.get("engine")
    if engine:
        t = engine["median_timings"]
        rows.append((f"engine generate_report, median of {len(engine['runs'])}", f"{engine['runs'][0]['rows']:,}",
                     _f(engine["median_s"]), "", _f(engine["peak_rss_mb"], "{:.0f}"), _mark(engine["median_s"], TARGETS["report_s"], "<= 1.5 s", scale)))
        child_mb = (engine.get("child_peak_rss_mb") or [])
        if child_mb:
            rows.append((f"  its {len(child_mb)} child processes (shards, fork server): max / sum", "", "", "",
                         f"{max(child_mb):.0f} / {sum(child_mb):.0f}", ""))
        rows.append(("  load / compute / write (medians)", "",
                     f"{_f(t.get('load'))} / {_f(t.get('compute'))} / {_f(t.get('write'))}",
                     "", "", ""))
        rows.append(("  all runs (s)", "", ", ".join(_f(r["seconds"]) for r in engine["runs"]), "", "", ""))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for n, row in enumerate(rows):
        cells = [str(c).ljust(widths[i]) if i in (0, 5) else str(c).rjust(widths[i]) for i, c in enumerate(row)]
        out.append("  ".join(cells).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append("")
    out.append(f"database file {res['db_mb']:.0f} MB; status CSV {res['csv_mb']['store_status']:.0f} MB; "
               "ingest rows: read -> stored; peak RSS = the process's resident high-water mark (VmHWM / wait4)")
    return "\n".join(out)


# --- entry points -----------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description="End-to-end benchmark: generate, ingest, report via the API.")
    parser.add_argument("--scale", type=int, default=1, help="K: K times the polls (K times longer history)")
    parser.add_argument("--scale-mode", choices=("history", "density"), default="history",
                        help="history: K times longer history (default); density: K polls an hour")
    parser.add_argument("--stores", type=int, default=14_000)
    parser.add_argument("--days", type=float, default=8, help="days of polls at scale 1 (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--id-style", choices=("int64", "uuid"), default="int64")
    parser.add_argument("--hours", help="a real business-hours CSV to use instead of generated hours")
    parser.add_argument("--timezones", help="a real timezones CSV to use instead of generated timezones")
    parser.add_argument("--no-special-hours", action="store_true",
                        help="do not load the generated special_hours.csv (holidays for 20%% of the stores)")
    parser.add_argument("--ingest", choices=("load_files", "cli"), default="load_files",
                        help="load with database.load_files per table (default) or the `database.py load` CLI")
    parser.add_argument("--runs", type=int, default=3, help="direct engine runs for the median (0: skip)")
    parser.add_argument("--api-runs", type=int, default=2, help="reports triggered through the API")
    parser.add_argument("--poll-interval", type=float, default=POLL_INTERVAL_S,
                        help=f"seconds between GET /get_report polls (default {POLL_INTERVAL_S})")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for a report (default 900)")
    parser.add_argument("--keep", help="work in this directory and keep it (data, database, reports, logs)")
    parser.add_argument("--json", help="also write the raw results as JSON to this file")
    parser.add_argument("--cluster", action="store_true",
                        help="cluster mode instead (bench/cluster_bench.py): PostgreSQL, Redis and 1 then 2 Celery "
                             "workers, at real size and at --cluster-scale density")
    parser.add_argument("--cluster-scale", type=int, nargs="+", default=[1, 10],
                        help="with --cluster: polls an hour of each data set (default 1 10)")
    return parser.parse_args(argv)


def worker_main(argv) -> int:
    parser = argparse.ArgumentParser(prog="run.py _worker")
    parser.add_argument("kind", choices=("generate", "ingest", "serve", "engine"))
    parser.add_argument("--db")
    parser.add_argument("--stores", type=int)
    parser.add_argument("--days", type=float)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--id-style")
    parser.add_argument("--scale", type=int)
    parser.add_argument("--scale-mode")
    parser.add_argument("--status")
    parser.add_argument("--hours")
    parser.add_argument("--timezones")
    parser.add_argument("--special-hours")
    parser.add_argument("--reports")
    parser.add_argument("--data-dir")
    parser.add_argument("--out")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--broker", help="serve: SM_BROKER_URL (cluster mode)")
    args = parser.parse_args(argv)
    return {"generate": worker_generate, "ingest": worker_ingest, "serve": worker_serve,
            "engine": worker_engine}[args.kind](args)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_worker"]:
        return worker_main(argv[1:])
    args = parse_args(argv)
    if args.scale < 1 or args.stores < 1 or args.runs < 0 or args.api_runs < 1:
        print("error: --scale, --stores and --api-runs must be >= 1, --runs >= 0", file=sys.stderr)
        return 2
    for option in ("hours", "timezones"):
        path = getattr(args, option)
        if path and not Path(path).is_file():
            print(f"error: --{option} {path}: no such file", file=sys.stderr)
            return 2
    if args.keep:
        work = Path(args.keep).resolve()
        work.mkdir(parents=True, exist_ok=True)
    else:
        work = Path(tempfile.mkdtemp(prefix="sm-bench-"))
    children: list[Child] = []
    interrupted = False

    def on_term(*_):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        if args.cluster:
            import cluster_bench

            res = cluster_bench.run(args, work, children)
            print()
            print(cluster_bench.render(res))
        else:
            res = run(args, work, children)
            print()
            print(render(res))
        if args.json:
            Path(args.json).write_text(json.dumps(res, indent=2, default=str))
        return 0
    except BenchError as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        interrupted = True
        print("benchmark interrupted", file=sys.stderr)
        return 130
    finally:
        for child in children:
            try:
                child.stop(timeout=2 if interrupted else 20)
            except Exception:
                pass
        signal.signal(signal.SIGTERM, previous)
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
