"""Report jobs: worker threads that claim jobs from the `reports` table and run `generate_report`.

The `reports` table (see `database.py`) is the queue, shared by every process serving the database. A
job's life: `submit()` inserts a Queued row (refused with `QueueFull` while `queue_limit` jobs are Queued,
counted in the table, so the limit holds for all processes together; in cluster mode Queued and Running
ones count) and wakes this process's workers. A worker claims the oldest waiting job with one UPDATE
inside BEGIN IMMEDIATE (`database.claim_report_job`), so exactly one thread of one process gets it: the
job becomes Running, owned by this pool, under a lease of `job_lease_seconds`, and its `attempts` grows
by one. A heartbeat thread renews the leases of the jobs this pool is running every third of the lease.
The report is written to a file of its own attempt; recording the end checks that this pool still holds
the job and renames the file to `reports_dir/<id>.csv` in the same transaction, so a run that lost its
lease (its job was taken over) changes nothing. On PostgreSQL (web processes on several hosts, each with
its own reports folder) that transaction also keeps the CSV in the database (`database.store_report_file`),
from which any host serves it (`reports_service.report_file_path`).

Workers poll the table every `POLL_INTERVAL` seconds (a submission in the same process wakes them at once),
so a job triggered through one process may run in another.

Durability: a job whose process died stays Running until its lease runs out; then any live process claims
it again, at most once more: a job whose attempts already reached `MAX_ATTEMPTS` was re-run once after an
interruption and interrupted again, so it is marked Failed (`INTERRUPTED_ERROR`) instead of being retried
forever. No process takes a job whose lease is live, at start-up or later. Each claim is logged in the
`report_attempts` table (who ran it, how it ended).

Errors: a `report_generator.ReportError` is a data problem with a message written for users; it is
stored as the job's error. Anything else is a bug or an environment problem: the traceback goes to the
server log and the job gets a generic message naming the report id (never a stack trace).

Cluster mode (`settings.broker_url`, SM_BROKER_URL): the reports run in Celery workers (cluster.py), on
any number of hosts. `submit()` inserts the Queued row as above, then sends the job's first task to the
broker; when the broker cannot be reached the job is marked Failed and `BrokerUnavailable` is raised (the
API answers 503). The limit counts the unfinished jobs, Queued and Running: a start task makes its job
Running within moments, so counting the Queued ones alone would let a burst of triggers in at about twice
the limit. `start()` starts no worker threads: web processes in cluster mode never claim a job, so embedded
lease takeover never touches a Celery-run job (whose row carries a lease that never runs out, see
cluster.py); the sweep of old reports and stray files still runs, and so does `fail_lost_jobs`, which fails
the jobs whose tasks the broker lost (Redis restarted without persistence): Queued, or Running without any
progress, for more than twice SM_BROKER_VISIBILITY_TIMEOUT.

Threads: reports run in the worker threads themselves. The engine spends most of its time in SQLite
and NumPy, which release the GIL, so requests stay responsive while a report runs. Each worker and the
heartbeat have their own SQLite connection. `stop_taking()` makes the workers take no further job (a
SIGTERM handler calls it); `close()` does the same, lets running reports finish (up to a timeout) and joins
the threads. A job no worker had started stays Queued for any process.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import secrets
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import pandas as pd

import database
import report_generator
import storage

log = logging.getLogger("store_monitoring.jobs")

MAX_ATTEMPTS = 2                # a job is run at most twice: once, and once more after an interruption
PROGRESS_MIN_STEP = 0.01        # progress writes are throttled: at least this much change ...
PROGRESS_MIN_INTERVAL = 0.25    # ... or this many seconds since the last write
POLL_INTERVAL = 0.5             # an idle worker looks for a job in the table this often (seconds)
SWEEP_INTERVAL = 3600           # old reports and stray files are removed at start and this often (seconds)
# Files a report leaves in reports_dir: the report, a run's own file, the engine's temporary file of it.
REPORT_FILE_RE = re.compile(r"(?P<id>[0-9a-f-]{36})\.csv")
ATTEMPT_FILE_RE = re.compile(r"\.{1,2}(?P<id>[0-9a-f-]{36})\.attempt-(?P<attempt>\d+)\.csv(\..*\.tmp)?")
# A run that fails for want of disk space or permission says so (the operator can act on it).
DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
               errno.EROFS: "the reports folder is on a read-only file system",
               errno.EACCES: "the service may not write to the reports folder",
               errno.EPERM: "the service may not write to the reports folder"}

INTERRUPTED_ERROR = ("The report was interrupted twice (the service stopped while it was running) "
                     "and was not retried again; please trigger a new report.")
# Cluster mode: a job no worker moved for twice the broker's visibility timeout (see fail_lost_jobs).
LOST_TASK_ERROR = "The report did not finish: the broker lost this report's tasks; trigger it again."
CLUSTER_OWNER_PREFIX = "celery:"   # the owner of a job a Celery worker runs (cluster.py)


class BrokerUnavailable(Exception):
    """Cluster mode: the report broker could not be reached; the job was recorded as Failed."""

    def __init__(self, report_id: str, message: str):
        super().__init__(message)
        self.report_id = report_id
        self.message = message


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
    """Worker pool for report jobs: `settings.workers` threads claiming jobs from the shared job table.

    `generate` defaults to `report_generator.generate_report` (looked up when each job runs, so tests
    can monkeypatch it); it is called as `generate(database, out_path, as_of=..., store_ids=...,
    extended=..., reach_minutes=..., default_timezone=..., progress=...)` (plus any other parameter stored
    with the job, by its name) and returns an outcome with `rows`, `as_of`, `seconds`, `timings`, `meta`.
    """

    def __init__(self, settings, *, generate: Callable | None = None, logger: logging.Logger | None = None):
        self.settings = settings
        self.database = settings.database
        self.reports_dir = Path(settings.reports_dir)
        # Cluster mode: the reports run in Celery workers (cluster.py); this pool only queues and sweeps.
        self.cluster = bool(getattr(settings, "broker_url", None))
        self.workers = 0 if self.cluster else int(settings.workers)
        self._sender = None                  # cluster mode: the Celery app that sends tasks (made lazily)
        self.queue_limit = int(settings.queue_limit)
        self.lease_seconds = float(settings.job_lease_seconds)
        self.poll_interval = POLL_INTERVAL
        self.owner: str | None = None  # "host:pid:token", set by start() (in the process that runs the jobs)
        self._generate = generate
        self.log = logger or log
        self._wake = threading.Event()       # set by submit() and close(): look at the table now
        self._stop = threading.Event()       # take no further job
        self._heartbeat_stop = threading.Event()
        self._lock = threading.Lock()
        self._active: set[str] = set()       # jobs this pool is running (their leases are renewed)
        self._threads: list[threading.Thread] = []
        self._heartbeat: threading.Thread | None = None
        self._started = False
        self._recovered = False
        self._last_sweep = time.monotonic()
        # Cluster mode: the unfinished jobs as fail_lost_jobs last saw them, {id: (what it saw, since when)}.
        self._lost_lock = threading.Lock()
        self._lost_watch: dict[str, tuple[tuple, float]] = {}
        self._lost_window = 2 * float(getattr(settings, "broker_visibility_timeout", 300))
        self._lost_interval = min(SWEEP_INTERVAL, max(1.0, self._lost_window / 4))
        self._last_lost_check = time.monotonic()

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "ReportJobs":
        """Sweep the table once (`recover()`, unless it already ran), then start the worker threads and
        the lease heartbeat."""
        if self._started:
            return self
        self.reports_dir.mkdir(parents=True, exist_ok=True)
        if not self._recovered:
            self.recover()
        self.sweep()
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._stop.clear()
        self._heartbeat_stop.clear()
        for n in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"report-worker-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._heartbeat = threading.Thread(target=self._renew_leases, name="report-worker-lease", daemon=True)
        self._heartbeat.start()
        if self._generate is None and self.workers > 0:
            report_generator.warm_pool(self.settings.report_processes)  # shard processes, once per process
        self._started = True
        if self.cluster:
            self.log.info("cluster mode: reports are queued to Celery workers (SM_BROKER_URL); no report threads "
                          "in this process (%s)", self.owner)
        else:
            self.log.info("report workers started: %d threads as %s (lease %g s)", self.workers, self.owner,
                          self.lease_seconds)
        return self

    def stop_taking(self) -> None:
        """Take no further job (running reports go on). Safe to call from a signal handler."""
        self._stop.set()
        self._wake.set()

    def close(self, timeout: float | None = 30.0) -> None:
        """Take no further job, let running reports finish for up to `timeout` seconds, join the threads.

        A report still running then keeps its row Running; its lease is no longer renewed, so once it runs
        out another process takes the job over. Idempotent."""
        self.stop_taking()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)
            if thread.is_alive():
                self.log.warning("worker %s did not stop within %s s", thread.name, timeout)
        with self._lock:
            unfinished = sorted(self._active)
        if unfinished:
            self.log.warning("reports still running at stop: %s; their leases run out in %g s, then another "
                             "process takes them over", ", ".join(unfinished), self.lease_seconds)
        self._heartbeat_stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(10)
            self._heartbeat = None
        if self._started:
            self.log.info("report workers stopped (%s)", self.owner)
        self._threads = [t for t in self._threads if t.is_alive()]
        self._started = False
        if self._sender is not None:   # cluster mode: the broker connections
            self._sender.close()
            self._sender = None

    def recover(self) -> dict[str, list[str]]:
        """Sweep the job table: fail the jobs a dead process left after their last allowed attempt.

        Returns the ids of the jobs waiting for a worker ("requeued": Queued, or Running under a lease that
        ran out, so any worker of any process will claim them) and of those marked Failed ("failed"). Jobs
        Running under a live lease belong to a live process and are left alone. Nothing is held in memory:
        the workers find the waiting jobs in the table (and fail exhausted ones the same way later on).
        """
        self._recovered = True
        requeued, failed = [], []
        conn = database.connect(self.database)
        try:
            with database.transaction(conn):
                for job in database.waiting_report_jobs(conn):
                    if job["status"] == "Running" and job["attempts"] >= MAX_ATTEMPTS:
                        database.mark_report_failed(conn, job["report_id"], INTERRUPTED_ERROR)
                        failed.append(job["report_id"])
                    else:
                        requeued.append(job["report_id"])
        finally:
            conn.close()
        if requeued or failed:
            self.log.info("report jobs waiting for a worker: %d; %d failed after a second interruption",
                          len(requeued), len(failed))
        return {"requeued": requeued, "failed": failed}

    def sweep(self) -> dict[str, int]:
        """Delete the reports that finished more than `report_retention_days` ago (rows and files), and
        the files no job needs: a run's files left by a killed process, reports whose job is gone.
        Files of runs going on under a live lease, in any process, are kept. In cluster mode, also fail
        the jobs whose tasks the broker lost (`fail_lost_jobs`). Returns what was removed or failed."""
        lost = len(self.fail_lost_jobs()) if self.cluster else 0
        cutoff = pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=self.settings.report_retention_days)
        conn = database.connect(self.database)
        try:
            expired = database.finished_report_jobs_before(conn, iso_utc(cutoff))
            for report_id in expired:
                self.delete(report_id, conn=conn)
            live = database.live_report_attempts(conn)
            known = {row[0] for row in conn.execute("SELECT report_id FROM reports")}
        finally:
            conn.close()
        stray = 0
        for path in self.reports_dir.iterdir():
            report = REPORT_FILE_RE.fullmatch(path.name)
            attempt = ATTEMPT_FILE_RE.fullmatch(path.name)
            if (report and report["id"] not in known) or (
                    attempt and (attempt["id"], int(attempt["attempt"])) not in live):
                path.unlink(missing_ok=True)
                stray += 1
        if expired or stray:
            self.log.info("sweep: %d reports older than %g days deleted, %d stray files removed", len(expired),
                          self.settings.report_retention_days, stray)
        self._last_sweep = time.monotonic()
        return {"expired": len(expired), "stray_files": stray, "lost": lost}

    def fail_lost_jobs(self, conn=None) -> list[str]:
        """Cluster mode: mark Failed (LOST_TASK_ERROR) the jobs whose tasks the broker lost (a Redis
        restarted without persistence), which would otherwise stay unfinished forever and hold a place in
        the queue limit; returns their ids.

        A job is lost when the broker holds no message of the service at all (`cluster.broker_pending`:
        none queued, none taken and unacknowledged; a live report always has one of its tasks there) and
        nothing about the job has moved for longer than twice SM_BROKER_VISIBILITY_TIMEOUT, and it entered
        the queue longer ago than that. "Moved": its status, progress (each stored shard moves it),
        attempts or owner, as seen by this process's calls (the sweep, and the lease heartbeat every
        quarter of the window); the job table keeps no time of the last progress, so the clock is this
        process's own (a restarted process waits one more window). While the broker holds messages (a
        backlog, or no worker running) or cannot be asked, nothing is failed: those jobs' tasks are still
        there. A Running job is failed only while the owner seen still holds it; its shard results go with it.
        """
        if not self.cluster:
            return []
        pending = self.broker_pending()   # asked first: a task sent after this is in a job seen as new
        own = conn is None
        conn = database.connect(self.database) if own else conn
        failed: list[str] = []
        try:
            with self._lost_lock, database.transaction(conn):   # the check and the writes: one step
                now, wall = time.monotonic(), time.time()
                queued = [job for job in database.waiting_report_jobs(conn) if job["status"] == "Queued"]
                running = [job for job in (database.get_report_job(conn, report_id)
                                           for report_id, _ in sorted(database.live_report_attempts(conn)))
                           if job is not None and job["status"] == "Running"
                           and str(job["owner"] or "").startswith(CLUSTER_OWNER_PREFIX)]
                watch: dict[str, tuple[tuple, float]] = {}
                for job in queued + running:
                    report_id = job["report_id"]
                    entered = _epoch(job["started_at"] if job["status"] == "Running" else job["created_at"], wall)
                    seen = (job["status"], job["progress"], job["attempts"], job["owner"])
                    before = self._lost_watch.get(report_id)
                    since = before[1] if before is not None and before[0] == seen else now
                    if pending == 0 and now - since > self._lost_window and wall - entered > self._lost_window:
                        owner = job["owner"] if job["status"] == "Running" else None
                        if database.mark_report_failed(conn, report_id, LOST_TASK_ERROR, owner=owner):
                            database.delete_report_parts(conn, report_id)
                            failed.append(report_id)
                            continue
                    watch[report_id] = (seen, since)
                self._lost_watch = watch
                self._last_lost_check = time.monotonic()
        finally:
            if own:
                conn.close()
        if failed:
            self.log.warning("%d reports failed: the broker holds none of their tasks and nothing moved for %g s "
                             "(twice SM_BROKER_VISIBILITY_TIMEOUT): %s", len(failed), self._lost_window,
                             ", ".join(failed))
        return failed

    def delete(self, report_id: str, conn=None) -> bool:
        """Remove a job and its report file; False if there was no such job."""
        own = conn is None
        conn = database.connect(self.database) if own else conn
        try:
            job = database.delete_report_job(conn, report_id)
        finally:
            if own:
                conn.close()
        if job is None:
            return False
        (self.reports_dir / report_file_name(report_id)).unlink(missing_ok=True)
        self.log.info("report %s deleted (%s)", report_id, job["status"])
        return True

    # --- API used by the HTTP layer -------------------------------------------------------------

    def submit(self, params: dict, conn=None) -> str:
        """Record a new Queued job and wake the workers (cluster mode: send its first task to the broker);
        returns its id. Raises `QueueFull`, and in cluster mode `BrokerUnavailable` (the job is then Failed)."""
        report_id = str(uuid.uuid4())
        own = conn is None
        conn = database.connect(self.database) if own else conn
        try:
            with database.transaction(conn):  # the count and the insert are one step for all processes
                if self._count_limited(conn) >= self.queue_limit:
                    raise QueueFull(self.queue_limit)
                database.create_report_job(conn, report_id, params)
            if self.cluster:
                self._enqueue(conn, report_id)
        finally:
            if own:
                conn.close()
        self._wake.set()
        return report_id

    def sender(self):
        """Cluster mode: this process's Celery app for sending tasks (cluster.client), made once."""
        with self._lock:
            if self._sender is None:
                import cluster  # only cluster mode needs Celery

                self._sender = cluster.client(self.settings)
            return self._sender

    def _enqueue(self, conn, report_id: str) -> None:
        """Send the job's first task; if the broker cannot be reached, fail the job, raise BrokerUnavailable."""
        import cluster

        try:
            cluster.enqueue(self.sender(), report_id)
        except cluster.BROKER_ERRORS as exc:
            self.log.error("report %s: the broker cannot be reached (%s: %s); the job is marked Failed",
                           report_id, type(exc).__name__, exc)
            database.mark_report_failed(conn, report_id, cluster.BROKER_ERROR)
            raise BrokerUnavailable(report_id, cluster.BROKER_ERROR) from None

    def broker_status(self) -> str | None:
        """Cluster mode: 'ok' or why the broker cannot be reached; None in embedded mode."""
        if not self.cluster:
            return None
        import cluster

        return cluster.broker_status(self.sender())

    def broker_pending(self) -> int | None:
        """Cluster mode: the broker's messages of the service, queued or unacknowledged
        (cluster.broker_pending); None when it cannot be asked."""
        import cluster

        return cluster.broker_pending(self.sender())

    def depth(self, conn=None) -> int:
        """The jobs the queue limit counts, in every process on this database: those waiting for their first
        run (Queued); in cluster mode the Running ones too."""
        own = conn is None
        conn = database.connect(self.database) if own else conn
        try:
            return self._count_limited(conn)
        finally:
            if own:
                conn.close()

    def _count_limited(self, conn) -> int:
        """What `queue_limit` bounds. Embedded mode: the Queued jobs (a worker thread that takes one frees
        its place). Cluster mode: the unfinished jobs, Queued and Running (every Running job holds a live
        lease there, see cluster.CLUSTER_LEASE_UNTIL); a start task makes its job Running at once, so
        counting Queued alone would let about twice the limit in."""
        queued = database.count_queued_report_jobs(conn)
        if not self.cluster:
            return queued
        return queued + len(database.live_report_attempts(conn))

    def alive(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    @property
    def running(self) -> bool:
        heartbeat = self._heartbeat is not None and self._heartbeat.is_alive()
        return self._started and not self._stop.is_set() and heartbeat

    # --- worker ---------------------------------------------------------------------------------

    def _work(self) -> None:
        conn = database.connect(self.database)
        try:
            while not self._stop.is_set():
                try:
                    job = database.claim_report_job(conn, self.owner, self.lease_seconds,
                                                    max_attempts=MAX_ATTEMPTS, exhausted_error=INTERRUPTED_ERROR)
                except Exception:  # e.g. the database stayed locked past the busy timeout: try again later
                    self.log.warning("could not look for report jobs; trying again", exc_info=True)
                    job = None
                if job is None:
                    self._wake.wait(self.poll_interval)
                    self._wake.clear()
                    continue
                try:
                    self._run(conn, job)
                except Exception:  # never let a worker die: log, and keep serving the queue
                    self.log.exception("report worker failed while handling report %s", job["report_id"])
        finally:
            conn.close()

    def _run(self, conn, job: dict) -> None:
        report_id, attempt = job["report_id"], job["attempts"]
        part = self.reports_dir / f".{report_id}.attempt-{attempt}.csv"
        with self._lock:
            self._active.add(report_id)
        self.log.info("report %s started: attempt %d in %s", report_id, attempt, self.owner)
        # From here on every way out records an end: a job must never stay Running while its lease is renewed.
        try:
            try:
                held = self._generate_and_record(conn, report_id, job["params"] or {}, part)
            except Exception as exc:
                if isinstance(exc, report_generator.ReportError):
                    message = str(exc) or "the report could not be generated from the current data"
                    self.log.info("report %s failed: %s", report_id, message)
                elif isinstance(exc, OSError) and exc.errno in DISK_ERRORS:
                    message = (f"The report could not be written: {DISK_ERRORS[exc.errno]} "
                               f"({os.strerror(exc.errno)}); please tell the operator.")
                    self.log.error("report %s failed: %s: %s", report_id, message, exc)
                else:
                    self.log.exception("report %s failed with an unexpected error", report_id)
                    message = internal_error_message(report_id)
                held = database.mark_report_failed(conn, report_id, message, owner=self.owner)
            if not held:
                self.log.warning("report %s: attempt %d lost its lease (another process took the job over); "
                                 "its result was discarded", report_id, attempt)
        finally:
            with self._lock:
                self._active.discard(report_id)
            part.unlink(missing_ok=True)

    def _generate_and_record(self, conn, report_id: str, params: dict, part: Path) -> bool:
        """Run the report into `part`, then record it and move the file into place in one transaction.
        Returns False (and changes nothing) when this pool no longer holds the job."""
        file_name = report_file_name(report_id)
        generate = self._generate or report_generator.generate_report
        outcome = generate(self.database, part, **self._engine_arguments(params),
                           default_timezone=self.settings.default_timezone,
                           progress=_ProgressWriter(conn, report_id, self.log, owner=self.owner))
        record = dict(file=file_name, rows=int(outcome.rows), as_of=iso_utc(outcome.as_of),
                      seconds=round(float(outcome.seconds), 6),
                      timings={k: round(float(v), 6) for k, v in (outcome.timings or {}).items()},
                      meta=outcome.meta)
        # PostgreSQL: web processes on other hosts, with reports folders of their own, serve this report
        # too; they find the CSV in the database (reports_service.report_file_path).
        body = part.read_bytes() if storage.is_postgresql(self.database) else None
        with database.transaction(conn):
            if not database.mark_report_complete(conn, report_id, owner=self.owner, **record):
                return False
            if body is not None:
                database.store_report_file(conn, report_id, body)
            os.replace(part, self.reports_dir / file_name)  # the file appears with the row that names it
        self.log.info("report %s complete: %d rows in %.2f s", report_id, outcome.rows, outcome.seconds)
        return True

    def _engine_arguments(self, params: dict) -> dict:
        """The engine's keyword arguments from a job's stored parameters (`engine_arguments`), with the
        engine's own knobs from the settings."""
        arguments = engine_arguments(self.settings, params)
        if self._generate is None:  # the engine's own knobs (a test's stand-in does not take them)
            arguments.update(shard_stores=self.settings.shard_stores, shard_polls=self.settings.shard_polls,
                             processes=self.settings.report_processes)
        return arguments

    def _renew_leases(self) -> None:
        """Heartbeat: every third of the lease, extend the leases of the jobs this pool is running."""
        conn = database.connect(self.database)
        try:
            while not self._heartbeat_stop.wait(self.lease_seconds / 3):
                if time.monotonic() - self._last_sweep > SWEEP_INTERVAL:
                    try:
                        self.sweep()
                    except Exception:  # the next interval tries again
                        self.log.warning("could not sweep old reports", exc_info=True)
                if self.cluster and time.monotonic() - self._last_lost_check > self._lost_interval:
                    try:
                        self.fail_lost_jobs()
                    except Exception:  # the next interval tries again
                        self.log.warning("could not look for lost report jobs", exc_info=True)
                with self._lock:
                    active = sorted(self._active)
                if not active:
                    continue
                try:
                    held = database.renew_report_leases(conn, self.owner, active, self.lease_seconds)
                except Exception:  # the next beat tries again; the lease has two more beats to run
                    self.log.warning("could not renew the leases of reports %s", ", ".join(active), exc_info=True)
                    continue
                if held < len(active):
                    self.log.warning("%d of the reports %s are no longer held by this process (lease lost)",
                                     len(active) - held, ", ".join(active))
        finally:
            conn.close()


def engine_arguments(settings, params: dict) -> dict:
    """The engine's keyword arguments from a job's stored parameters: `as_of` as a UTC Timestamp,
    `columns` as `extended`; every other parameter is passed on under its own name. Used by the worker
    threads here and by the Celery workers (cluster.py)."""
    arguments = {key: value for key, value in params.items() if key not in ("as_of", "columns")}
    arguments["as_of"] = _as_timestamp(params.get("as_of"))
    arguments.setdefault("store_ids", None)
    arguments["extended"] = params.get("columns") == "extended"
    # Resolved when the job was triggered; jobs stored before reach existed use the setting.
    arguments.setdefault("reach_minutes", settings.poll_reach_minutes)
    return arguments


class _ProgressWriter:
    """The `progress` callback: clamps to 0..1 and throttles writes to the job row."""

    def __init__(self, conn, report_id: str, logger: logging.Logger, owner: str | None = None):
        self.conn, self.report_id, self.log, self.owner = conn, report_id, logger, owner
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
            database.set_report_progress(self.conn, self.report_id, value, owner=self.owner)
        except Exception:  # progress is advisory; a busy database must not fail the report
            self.log.warning("could not record progress of report %s", self.report_id, exc_info=True)
            return
        self.last_value, self.last_time = value, now


def _epoch(stamp: str | None, default: float) -> float:
    """Unix seconds of a job table stamp (ISO 8601 UTC); `default` for none."""
    return default if not stamp else _as_timestamp(stamp).timestamp()


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
