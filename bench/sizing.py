#!/usr/bin/env python
"""What one shard costs a worker: seconds and peak memory by stores per shard and polls per hour.

    python bench/sizing.py                          # densities 1, 4, 10 polls/hour; shards of 1000, 2000, 4000
    python bench/sizing.py --densities 1 20 --shards 2000
    python bench/sizing.py --densities 10 20 40 --shards 2000 --shard-polls 2000000   # the service's limits

A report is computed shard by shard (embedded: by the serving process's shard processes; cluster: by
Celery workers), and a worker holds one shard at a time, so a shard's seconds and peak memory are what
sizes a worker. For each density this generates `max(shards)` stores with 8 days of polls at that many
polls per hour (`sample_data.generate_dataset`, seed 0, special hours for 20% of the stores), loads them
into a fresh SQLite database, and computes the first shard of each size with the engine's own
`report_generator._report_shard` in a fresh child process: read seconds, compute seconds, and the
child's peak RSS (VmHWM), beside the RSS of the same child before the shard (imports alone). The table
it prints is the README's sizing table.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
for path in (PROJECT, PROJECT / "bench"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from run import RESULT_PREFIX, BenchError, Child, peak_rss_mb, rss_mb  # noqa: E402  (the benchmark's helpers)

DAYS = 8


def worker_shard(args) -> int:
    """The first shard of `args.shard` stores, computed once here (a fresh process)."""
    import report_generator

    before_mb = rss_mb(os.getpid())
    now_us, shards = report_generator.plan_report(args.db, shard_stores=args.shard, shard_polls=args.shard_polls)
    started = time.perf_counter()
    frame, attrs, read_s, compute_s = report_generator._report_shard(
        args.db, now_us, shards[0], None, report_generator.DEFAULT_REACH_MINUTES,
        report_generator.DEFAULT_TIMEZONE, False)
    result = {"stores": len(frame), "seconds": time.perf_counter() - started, "read_s": read_s,
              "compute_s": compute_s, "imports_rss_mb": before_mb, "peak_rss_mb": peak_rss_mb(os.getpid())}
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


def measure(args) -> list[dict]:
    import database
    import sample_data

    rows = []
    with tempfile.TemporaryDirectory(prefix="sm-sizing-") as work:
        work = Path(work)
        logs = work / "logs"
        logs.mkdir()
        for density in args.densities:
            data = work / f"data-{density}"
            paths = sample_data.generate_dataset(data, stores=max(args.shards), days=DAYS, seed=0,
                                                 polls_per_hour=density)
            db = work / f"density-{density}.sqlite3"
            conn = database.connect(db)
            summaries = database.load_tables(conn, paths)
            conn.close()
            polls = next(s.new for s in summaries if s.table == "store_status")
            for shard in args.shards:
                child = Child([sys.executable, __file__, "_shard", "--db", str(db), "--shard", str(shard),
                               "--shard-polls", str(args.shard_polls)], logs, f"shard-{density}-{shard}")
                if child.wait() != 0:
                    raise BenchError(f"shard run failed:\n{child.errors()}")
                result = child.result()
                result.update(density=density, shard=shard, shard_polls=args.shard_polls,
                              polls_per_store_week=round(polls / max(args.shards) * 7 / DAYS))
                rows.append(result)
                print(f"{density:>3} polls/h, at most {shard:>5} stores: {result['stores']:,} stores, "
                      f"{result['seconds']:.2f} s "
                      f"(read {result['read_s']:.2f} + compute {result['compute_s']:.2f}), "
                      f"peak {result['peak_rss_mb']:.0f} MB (imports {result['imports_rss_mb']:.0f} MB)", flush=True)
    return rows


def render(rows: list[dict]) -> str:
    lines = ["| polls per hour | polls per store and week | stores per shard: limit (first shard) "
             "| seconds per shard (read + compute) | worker peak memory |", "| ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['density']} | {r['polls_per_store_week']:,} | {r['shard']:,} ({r['stores']:,}) "
                     f"| {r['seconds']:.2f} "
                     f"({r['read_s']:.2f} + {r['compute_s']:.2f}) | {r['peak_rss_mb']:.0f} MB |")
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_shard":
        parser = argparse.ArgumentParser()
        parser.add_argument("--db", required=True)
        parser.add_argument("--shard", type=int, required=True)
        parser.add_argument("--shard-polls", type=int, required=True)
        return worker_shard(parser.parse_args(argv[1:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--densities", type=int, nargs="+", default=[1, 4, 10], help="polls per store and hour")
    parser.add_argument("--shards", type=int, nargs="+", default=[1000, 2000, 4000], help="stores per shard")
    parser.add_argument("--shard-polls", type=int, default=10**12,
                        help="polls per shard, at most (default: no limit; the service's is SM_SHARD_POLLS)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = measure(args)
    print(f"\n{os.cpu_count()} CPUs, {time.perf_counter() - started:.0f} s in all\n")
    print(render(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
