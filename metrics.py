"""`/metrics` in the Prometheus text format, read from the database at scrape time.

Every figure is a fact the database already keeps (the job table, the load log), so all web processes
of one deployment answer the same numbers and nothing is lost when a process restarts; no in-process
counters, which under several gunicorn workers would each count only their own requests.
"""
from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

import database

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JOB_STATUSES = ("Queued", "Running", "Complete", "Failed")
# Report durations: from a handful of stores (tens of ms) to a 10x fleet (tens of seconds).
REPORT_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class DatabaseCollector:
    """A prometheus_client collector over one database; `connect` opens a short-lived connection."""

    def __init__(self, connect: Callable):
        self.connect = connect

    def collect(self) -> Iterable:
        conn = self.connect()
        try:
            facts = database.metrics_facts(conn, REPORT_SECONDS_BUCKETS)
        finally:
            conn.close()

        jobs = GaugeMetricFamily("store_monitoring_report_jobs", "Report jobs in the job table by status",
                                 labels=["status"])
        for status in JOB_STATUSES:
            jobs.add_metric([status], facts["jobs_by_status"].get(status, 0))
        yield jobs
        yield GaugeMetricFamily("store_monitoring_queue_depth", "Report jobs waiting for a worker",
                                value=facts["jobs_by_status"].get("Queued", 0))
        seconds = facts["report_seconds"]
        yield HistogramMetricFamily(
            "store_monitoring_report_seconds", "Seconds per completed report (every report, deleted ones included)",
            buckets=[(str(bound), count) for bound, count in seconds["buckets"]] + [("+Inf", seconds["count"])],
            sum_value=seconds["sum"])
        rows = CounterMetricFamily("store_monitoring_rows_ingested", "Rows loaded, by table and outcome",
                                   labels=["table", "outcome"])
        for (table, outcome), count in sorted(facts["rows_ingested"].items()):
            rows.add_metric([table, outcome], count)
        yield rows


def render(connect: Callable) -> bytes:
    """The exposition text for the database `connect` opens."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DatabaseCollector(connect))
    return generate_latest(registry)
