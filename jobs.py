"""Report jobs: a bounded queue and a pool of worker threads that run `generate_report`.

The `reports` table (see `database.py`) is the source of truth; the in-memory queue only holds report
ids. A job's life: `submit()` inserts a Queued row and enqueues its id; a worker marks it Running
(`attempts + 1`), runs the report into `reports_dir/<id>.csv` and marks it Complete or Failed.

Durability: a job the process never finished (crash, kill, stop while queued) is still Queued or Running
in the table. `recover()` (called by `start()`) enqueues such jobs again, except a job whose attempts
already reached `MAX_ATTEMPTS`: it was re-run once after an interruption and interrupted again, so it is
marked Failed instead of being retried forever.

Errors: a `report_generator.ReportError` is a data problem with a message written for users; it is
stored as the job's error. Anything else is a bug or an environment problem: the traceback goes to the
server log and the job gets a generic message naming the report id (never a stack trace).

Threads: reports run in the worker threads themselves. The engine spends most of its time in SQLite
and NumPy, which release the GIL, so requests stay responsive while a report runs. Each worker has its
own SQLite connection. `close()` stops the workers (an event plus one
sentinel per worker) and joins them; a job a worker had not started stays Queued for the next start.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import pandas as pd

import database
import report_generator

log = logging.getLogger("store_monitoring.jobs")

MAX_ATTEMPTS = 2                # a job is run at most twice: once, and once more after an interruption
PROGRESS_MIN_STEP = 0.01        # progress writes are throttled: at least this much change ...
PROGRESS_MIN_INTERVAL = 0.25    # ... or this many seconds since the last write
_STOP = object()                # queue sentinel

INTERRUPTED_ERROR = ("The report was interrupted twice (the service stopped while it was running) "
                     "and was not retried again; please trigger a new report.")


class QueueFull(Exception):
    """The queue already holds `queue_limit` waiting jobs; the client should retry later."""

    def __init__(self, limit: int, retry_after: int = 5):
        super().__init__(f"the report queue is full ({limit} reports waiting); retry in {retry_after} s")
        self.limit = limit
        self.retry_after = retry_after


def internal_error_message(report_id: str) -> str:
    return (f"The report failed because of an internal error (report {report_id}); "
            "the details are in the server log.")


def report_file_name(report_id: str) -> str:
    return f"{report_id}.csv"


class ReportJobs:
    """Worker pool for report jobs.

    `generate` defaults to `report_generator.generate_report` (looked up when each job runs, so tests
    can monkeypatch it); it is called as `generate(database_path, out_path, as_of=..., store_ids=...,
    extended=..., default_timezone=..., progress=...)` and returns an outcome with `rows`, `as_of`,
    `seconds`, `timings`.
    """

    def __init__(self, settings, *, generate: Callable | None = None, logger: logging.Logger | None = None):
        self.settings = settings
        self.database_path = Path(settings.database_path)
        self.reports_dir = Path(settings.reports_dir)
        self.workers = int(settings.workers)
        self.queue_limit = int(settings.queue_limit)
        self._generate = generate
        self.log = logger or log
        # Unbounded on purpose: recovery may enqueue more than queue_limit old jobs, and sentinels must
        # never block. The limit applies to new submissions (checked under the lock in `submit`).
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = False
        self._recovered = False

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "ReportJobs":
        """Recover unfinished jobs (unless `recover()` already ran), then start the worker threads."""
        if self._started:
            return self
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        if not self._recovered:
            self.recover()
        self._stop.clear()
        for n in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"report-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._started = True
        return self

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop the workers after their current job and join them. Idempotent."""
        self._stop.set()
        for _ in self._threads:
            self._queue.put(_STOP)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
            if thread.is_alive():
                self.log.warning("worker %s did not stop within %s s", thread.name, timeout)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._started = False

    def recover(self) -> dict[str, list[str]]:
        """Re-enqueue jobs left Queued/Running; fail those already interrupted `MAX_ATTEMPTS - 1` times."""
        requeued, failed = [], []
        self._recovered = True
        conn = database.connect(self.database_path)
        try:
            for job in database.unfinished_report_jobs(conn):
                report_id = job["report_id"]
                if job["attempts"] >= MAX_ATTEMPTS:
                    database.mark_report_failed(conn, report_id, INTERRUPTED_ERROR)
                    failed.append(report_id)
                else:
                    self._queue.put(report_id)
                    requeued.append(report_id)
        finally:
            conn.close()
        if requeued or failed:
            self.log.info("recovered report jobs: %d re-queued, %d failed after a second interruption",
                          len(requeued), len(failed))
        return {"requeued": requeued, "failed": failed}

    # --- API used by the HTTP layer -------------------------------------------------------------

    def submit(self, params: dict, conn=None) -> str:
        """Record a new Queued job and enqueue it; returns its id. Raises `QueueFull`."""
        report_id = str(uuid.uuid4())
        with self._lock:
            if self._queue.qsize() >= self.queue_limit:
                raise QueueFull(self.queue_limit)
            own = conn is None
            conn = database.connect(self.database_path) if own else conn
            try:
                database.create_report_job(conn, report_id, params)
            finally:
                if own:
                    conn.close()
            self._queue.put(report_id)
        return report_id

    def depth(self) -> int:
        """Jobs waiting for a worker (not counting running ones)."""
        return self._queue.qsize()

    def alive(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    @property
    def running(self) -> bool:
        return self._started and not self._stop.is_set()

    # --- worker ---------------------------------------------------------------------------------

    def _work(self) -> None:
        conn = database.connect(self.database_path)
        try:
            while True:
                item = self._queue.get()
                if item is _STOP or self._stop.is_set():
                    # A job taken after stop stays Queued in the table; the next start re-queues it.
                    return
                try:
                    self._run(conn, item)
                except Exception:  # never let a worker die: log, and keep serving the queue
                    self.log.exception("report worker failed while handling report %s", item)
        finally:
            conn.close()

    def _run(self, conn, report_id: str) -> None:
        job = database.get_report_job(conn, report_id)
        if job is None or job["status"] not in ("Queued", "Running"):
            return
        database.mark_report_running(conn, report_id)
        # From here on every way out records an end: a job must never stay Running until a restart.
        try:
            self._generate_and_record(conn, report_id, job["params"] or {})
        except Exception as exc:
            if isinstance(exc, report_generator.ReportError):
                message = str(exc) or "the report could not be generated from the current data"
                self.log.info("report %s failed: %s", report_id, message)
            else:
                self.log.exception("report %s failed with an unexpected error", report_id)
                message = internal_error_message(report_id)
            database.mark_report_failed(conn, report_id, message)

    def _generate_and_record(self, conn, report_id: str, params: dict) -> None:
        file_name = report_file_name(report_id)
        generate = self._generate or report_generator.generate_report
        outcome = generate(self.database_path, self.reports_dir / file_name,
                           as_of=_as_timestamp(params.get("as_of")), store_ids=params.get("store_ids"),
                           extended=params.get("columns") == "extended",
                           default_timezone=self.settings.default_timezone,
                           progress=_ProgressWriter(conn, report_id, self.log))
        database.mark_report_complete(
            conn, report_id,
            file=file_name,
            rows=int(outcome.rows),
            as_of=iso_utc(outcome.as_of),
            seconds=round(float(outcome.seconds), 6),
            timings={k: round(float(v), 6) for k, v in (outcome.timings or {}).items()},
            meta=outcome.meta,
        )
        self.log.info("report %s complete: %d rows in %.2f s", report_id, outcome.rows, outcome.seconds)


class _ProgressWriter:
    """The `progress` callback: clamps to 0..1 and throttles writes to the job row."""

    def __init__(self, conn, report_id: str, logger: logging.Logger):
        self.conn, self.report_id, self.log = conn, report_id, logger
        self.last_value = 0.0
        self.last_time = 0.0

    def __call__(self, value) -> None:
        try:
            value = min(1.0, max(0.0, float(value)))
        except (TypeError, ValueError):
            return
        now = time.monotonic()
        if value - self.last_value < PROGRESS_MIN_STEP and now - self.last_time < PROGRESS_MIN_INTERVAL:
            return
        try:
            database.set_report_progress(self.conn, self.report_id, value)
        except Exception:  # progress is advisory; a busy database must not fail the report
            self.log.warning("could not record progress of report %s", self.report_id, exc_info=True)
            return
        self.last_value, self.last_time = value, now


def _as_timestamp(value) -> pd.Timestamp | None:
    """A UTC Timestamp (naive means UTC), or None."""
    if value is None:
        return None
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def iso_utc(value) -> str | None:
    """ISO 8601 in UTC with a `Z` suffix (microseconds only when present)."""
    if value is None:
        return None
    dt = _as_timestamp(value).to_pydatetime()
    return dt.replace(tzinfo=None).isoformat(timespec="microseconds" if dt.microsecond else "seconds") + "Z"
