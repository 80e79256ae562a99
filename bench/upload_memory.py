"""Peak memory of a real server under concurrent uploads (issue 9, finding 5), loopback only, bounded.

    python bench/upload_memory.py                     # 7 concurrent uploads of ~29 MiB CSV to `make run`
    python bench/upload_memory.py --uploads 3 --mb 10
    python bench/upload_memory.py --project /tmp/old  # the same against another checkout (before/after)

Generates one polls CSV per upload (`sample_data`, different stores each, about `--mb` MiB), starts the
project's production server (gunicorn with `gunicorn.conf.py`, SM_WEB_WORKERS=2, on a free loopback port,
on a fresh database with a 300-store demo set), sends every upload at once (`Content-Type: text/csv`, or
a JSON list with `--json`; one thread each), and samples the memory of the server's processes every 20 ms until all answered.
Prints each answer (status, seconds), the peak of the summed RSS of all server processes, and each
process's own peak (VmHWM, read from the kernel before the server stops). Stops the server (SIGTERM,
then SIGKILL after 30 s) and deletes its work directory unless `--keep`.
"""
from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import closing
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT))

import sample_data  # noqa: E402

BYTES_PER_STORE_DAY = 24 * 40   # measured: ~hourly polls (some missed), ~57 bytes each


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == pgid:
                    pids.append(int(entry))
            except ProcessLookupError:
                pass
    return pids


def status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--project", type=Path, default=PROJECT, help="the checkout whose server to measure")
    parser.add_argument("--uploads", type=int, default=7)
    parser.add_argument("--mb", type=float, default=29.0, help="size of each upload in MiB (about)")
    parser.add_argument("--json", action="store_true", help="send the polls as a JSON list instead of CSV")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="upload-memory-"))
    stores = max(1, int(args.mb * 2**20 / (8 * BYTES_PER_STORE_DAY)))
    bodies = []
    for k in range(args.uploads):
        paths = sample_data.generate_dataset(work / f"upload-{k}", stores=stores, seed=100 + k)
        body = Path(paths["store_status"]).read_bytes()
        if args.json:
            import csv
            import io
            import json
            rows = csv.DictReader(io.StringIO(body.decode()))
            body = json.dumps([{"store_id": r["store_id"], "status": r["status"],
                                "timestamp_utc": r["timestamp_utc"]} for r in rows]).encode()
            body = body[:int(args.mb * 2**20)].rsplit(b"}, {", 1)[0] + b"}]"   # about --mb
        bodies.append(body)
    print(f"{args.uploads} uploads of {sum(map(len, bodies)) / len(bodies) / 2**20:.1f} MiB "
          f"of {'JSON' if args.json else 'CSV'} ({stores} stores x 8 days of polls each, or less)")
    content_type = "application/json" if args.json else "text/csv"

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "GUNICORN_"))}
    env.update(SM_DATABASE=str(work / "db.sqlite3"), SM_REPORTS_DIR=str(work / "reports"),
               SM_DATA_DIR=str(work / "no-data"), SM_HOST="127.0.0.1", SM_PORT=str(port), SM_WEB_WORKERS="2",
               PYTHONUNBUFFERED="1")
    log = open(work / "server.log", "wb")
    server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"],
                              cwd=args.project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if server.poll() is not None or time.monotonic() > deadline:
                print((work / "server.log").read_text()[-3000:])
                return 1
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.2)
        time.sleep(1.0)   # both workers up
        baseline = sum(status_kb(pid, "VmRSS") for pid in group_pids(server.pid))

        results: list = [None] * len(bodies)

        def upload(k: int) -> None:
            started = time.monotonic()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            try:
                conn.request("POST", "/store_status", body=bodies[k], headers={"Content-Type": content_type})
                answer = conn.getresponse()
                answer.read()
                results[k] = (answer.status, time.monotonic() - started)
            except OSError as exc:
                results[k] = (f"{type(exc).__name__}", time.monotonic() - started)
            finally:
                conn.close()

        threads = [threading.Thread(target=upload, args=(k,)) for k in range(len(bodies))]
        peak_sum = 0
        for thread in threads:
            thread.start()
        while any(thread.is_alive() for thread in threads):
            peak_sum = max(peak_sum, sum(status_kb(pid, "VmRSS") for pid in group_pids(server.pid)))
            time.sleep(0.02)
        hwm = {pid: status_kb(pid, "VmHWM") for pid in group_pids(server.pid)}
        for k, (status, seconds) in enumerate(results):
            print(f"upload {k + 1}: {status} in {seconds:.1f} s")
        print(f"server RSS before the uploads: {baseline / 1024:.0f} MB (all processes)")
        print(f"peak RSS during the uploads, all server processes together: {peak_sum / 1024:.0f} MB")
        print("peak RSS of each process (VmHWM): " + ", ".join(f"{kb / 1024:.0f} MB" for kb in sorted(hwm.values())))
        return 0 if all(status == 200 for status, _ in results) else 1
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(10)
        log.close()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
