"""`bench/run.py --cluster` (`make bench ARGS="--cluster"`): reports through the cluster, with 1 and 2 workers.

For each data set (`--cluster-scale`: polls an hour; default real size and 10x density, 14,000 stores,
8 days), on this machine:
1. generate the data (`sample_data`, in a child process) and load it into a new database on a throw-away
   PostgreSQL server (`local_servers`), as `make cluster ARGS=--postgres` runs;
2. the embedded engine on that database (`report_generator.generate_report`, shard processes as in
   embedded mode), once, in a child process: the figure to compare with;
3. for 1 and then 2 Celery workers (`celery -A cluster worker --concurrency=1`: one process computing
   shards each) on a throw-away Redis, a web server in cluster mode: `--api-runs` reports triggered
   through the HTTP API, trigger -> Complete; the first CSV is compared byte for byte with the embedded
   engine's at the same as_of; each worker's peak RSS (its main process and its pool process).
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from run import (PROJECT, RESULT_PREFIX, BenchError, Child, descendants, http, peak_rss_mb,  # noqa: F401
                 wait_for_result)

WORKER_COUNTS = (1, 2)


def _generate(args, work: Path, logs: Path, children: list, scale: int) -> dict:
    me = str(Path(__file__).resolve().parent / "run.py")
    child = Child([sys.executable, me, "_worker", "generate", "--out", str(work / f"data-{scale}"), "--stores",
                   str(args.stores), "--days", str(args.days), "--seed", str(args.seed), "--id-style", args.id_style,
                   "--scale", str(scale), "--scale-mode", "density"], logs, f"generate-{scale}")
    children.append(child)
    if child.wait() != 0:
        raise BenchError(f"data generation failed:\n{child.errors()}")
    return {k: Path(v) for k, v in child.result()["paths"].items()}


def _ingest(url: str, paths: dict, logs: Path, children: list, scale: int) -> dict:
    me = str(Path(__file__).resolve().parent / "run.py")
    cmd = [sys.executable, me, "_worker", "ingest", "--db", url, "--status", str(paths["store_status"]),
           "--hours", str(paths["business_hours"]), "--timezones", str(paths["timezones"]),
           "--special-hours", str(paths["special_hours"])]
    child = Child(cmd, logs, f"ingest-{scale}")
    children.append(child)
    if child.wait() != 0:
        raise BenchError(f"ingest failed:\n{child.errors()}")
    return {"wall_s": child.wall, **(child.result() or {})}


def _embedded(url: str, out: Path, logs: Path, children: list, name: str, as_of: str | None = None) -> dict:
    cmd = [sys.executable, __file__, "_embedded", url, str(out)] + ([as_of] if as_of else [])
    child = Child(cmd, logs, name)
    children.append(child)
    if child.wait() != 0:
        raise BenchError(f"embedded report failed:\n{child.errors()}")
    return child.result()


def _start_workers(count: int, env: dict, logs: Path, children: list, tag: str) -> list[Child]:
    import cluster

    workers = []
    for n in range(1, count + 1):
        worker = Child(cluster.worker_command(f"w{n}", standalone=True), logs, f"worker-{tag}-w{n}", env=env)
        children.append(worker)
        workers.append(worker)
    deadline = time.monotonic() + 60
    for n, worker in enumerate(workers, 1):
        while not re.search(rf"w{n}@\S+ ready", worker.stderr_path.read_text(errors="replace")):
            if not worker.running() or time.monotonic() > deadline:
                raise BenchError(f"worker w{n} did not start:\n{worker.errors()}")
            time.sleep(0.1)
    return workers


def _report(base: str, args) -> dict:
    t0 = time.perf_counter()
    status, body, _ = http("POST", f"{base}/trigger_report", b"{}", {"Content-Type": "application/json"})
    if status != 202:
        raise BenchError(f"POST /trigger_report answered {status}: {body[:300]!r}")
    report_id = json.loads(body)["report_id"]
    while True:
        status, body, _ = http("GET", f"{base}/get_report?report_id={report_id}")
        job = json.loads(body) if body else {}
        if job.get("status") == "Complete":
            wall = time.perf_counter() - t0
            break
        if job.get("status") == "Failed" or status != 200:
            raise BenchError(f"report {report_id}: {status} {job}")
        if time.perf_counter() - t0 > args.timeout:
            raise BenchError(f"report {report_id} not Complete after {args.timeout:g} s")
        time.sleep(args.poll_interval)
    status, csv_bytes, _ = http("GET", base + job["download_url"])
    if status != 200:
        raise BenchError(f"download answered {status}")
    return {"report_id": report_id, "trigger_to_complete_s": wall, "as_of": job["as_of"], "rows": job["rows"],
            "csv": csv_bytes}


def run(args, work: Path, children: list) -> dict:
    import platform

    import local_servers

    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "stores": args.stores, "days": args.days,
           "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}",
           "load_average_before": os.getloadavg(), "sets": []}
    postgres = local_servers.PostgreSQLServer().start()
    redis = local_servers.RedisServer(work / "redis")
    try:
        for scale in args.cluster_scale:
            paths = _generate(args, work, logs, children, scale)
            url = postgres.create_database()
            ingest = _ingest(url, paths, logs, children, scale)
            polls = ingest.get("counts", {}).get("store_status")
            print(f"{scale} polls/h: {polls:,} polls loaded into PostgreSQL in {ingest['wall_s']:.1f} s", flush=True)
            embedded = _embedded(url, work / f"embedded-{scale}.csv", logs, children, f"embedded-{scale}")
            print(f"  embedded engine on PostgreSQL: {embedded['seconds']:.2f} s", flush=True)
            entry = {"scale": scale, "polls": polls, "ingest_s": ingest["wall_s"], "embedded": embedded, "cluster": []}
            for count in WORKER_COUNTS:
                env = {k: v for k, v in os.environ.items() if not k.startswith("SM_")}
                env.update(SM_DATABASE=url, SM_BROKER_URL=f"{redis.url}/{count}", PYTHONUNBUFFERED="1",
                           SM_REPORTS_DIR=str(work / "worker-reports"), SM_DATA_DIR=str(work / "no-data"))
                tag = f"{scale}-{count}"
                workers = _start_workers(count, env, logs, children, tag)
                server = Child([sys.executable, str(Path(__file__).resolve().parent / "run.py"), "_worker", "serve",
                                "--db", url, "--reports", str(work / f"web-reports-{tag}"), "--data-dir",
                                str(work / "no-data"), "--broker", f"{redis.url}/{count}"], logs, f"web-{tag}")
                children.append(server)
                base = f"http://127.0.0.1:{wait_for_result(server, 120)['port']}"
                runs = [_report(base, args) for _ in range(args.api_runs)]
                first = runs[0]
                same = _embedded(url, work / f"same-{tag}.csv", logs, children, f"same-{tag}", first["as_of"])
                identical = (work / f"same-{tag}.csv").read_bytes() == first["csv"]
                memory = []
                for worker in workers:
                    memory.append({"main": peak_rss_mb(worker.pid),
                                   "pool": max([peak_rss_mb(pid) or 0 for pid in descendants(worker.pid)] or [0])})
                seconds = [r["trigger_to_complete_s"] for r in runs]
                print(f"  {count} worker(s): " + ", ".join(f"{s:.2f}" for s in seconds) + " s trigger->Complete; "
                      f"CSV {'identical to' if identical else 'DIFFERENT from'} the embedded engine's "
                      f"({same['rows']:,} rows); worker pool peak "
                      + ", ".join(f"{m['pool']:.0f}" for m in memory) + " MB", flush=True)
                entry["cluster"].append({"workers": count, "seconds": seconds, "identical": identical,
                                         "memory_mb": memory, "rows": first["rows"]})
                server.stop()
                for worker in workers:
                    worker.stop(timeout=30)
            res["sets"].append(entry)
            postgres.drop_database(url)
    finally:
        redis.stop()
        postgres.stop()
    return res


def render(res: dict) -> str:
    load = " ".join(f"{v:.2f}" for v in res["load_average_before"])
    out = [f"store-monitoring cluster benchmark: {res['date']}; {res['machine']}; load average before: {load}",
           f"{res['stores']:,} stores, {res['days']:g} days; PostgreSQL and Redis on this machine; each worker "
           "`celery -A cluster worker --concurrency=1`", "",
           "| polls an hour | polls | embedded on PostgreSQL | 1 worker: trigger->Complete | 2 workers | "
           "worker pool peak RSS (1 / 2 workers) | CSV = embedded |",
           "| ---: | ---: | ---: | --- | --- | --- | --- |"]
    for entry in res["sets"]:
        by = {c["workers"]: c for c in entry["cluster"]}
        cells = []
        for count in WORKER_COUNTS:
            c = by.get(count)
            cells.append(", ".join(f"{s:.2f}" for s in c["seconds"]) + " s" if c else "-")
        mem = " / ".join(", ".join(f"{m['pool']:.0f}" for m in by[c]["memory_mb"]) for c in WORKER_COUNTS if c in by)
        same = all(c["identical"] for c in entry["cluster"])
        out.append(f"| {entry['scale']} | {entry['polls']:,} | {entry['embedded']['seconds']:.2f} s | {cells[0]} | "
                   f"{cells[1]} | {mem} MB | {'yes' if same else 'NO'} |")
    return "\n".join(out)


def worker_embedded(argv: list[str]) -> int:
    """_embedded URL OUT [AS_OF]: the embedded engine's report, once, in this fresh process."""
    import report_generator

    url, out = argv[0], Path(argv[1])
    as_of = argv[2] if len(argv) > 2 else None
    started = time.perf_counter()
    outcome = report_generator.generate_report(url, out, as_of=as_of)
    print(RESULT_PREFIX + json.dumps({"seconds": time.perf_counter() - started, "rows": int(outcome.rows),
                                      "as_of": str(outcome.as_of)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT))
    if sys.argv[1:2] == ["_embedded"]:
        sys.exit(worker_embedded(sys.argv[2:]))
    sys.exit("run it through bench/run.py --cluster")
