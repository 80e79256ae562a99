"""Cluster mode: report jobs computed by Celery workers over a Redis broker, on any number of hosts.

    SM_BROKER_URL=redis://host:6379/0 SM_DATABASE=postgresql://... celery -A cluster worker -n w1@%h
    SM_BROKER_URL=redis://host:6379/0 SM_DATABASE=postgresql://... make run      # the web processes
    python cluster.py up        # `make cluster`: PostgreSQL, Redis, two workers and the web server here

With `SM_BROKER_URL` set (config.Settings.broker_url) the web processes run no report threads. A trigger
still inserts the Queued row in the `reports` table (the queue depth and the 429 come from the table, as in
embedded mode, but count the Running jobs too: see jobs.ReportJobs._count_limited), then sends one
`start_report` task (`enqueue`); if the broker cannot be reached the job is
marked Failed and the client gets a 503 (`jobs.BrokerUnavailable`). Every host's workers and web processes
use the same database: PostgreSQL for several hosts (SQLite only works with everything on one machine).

A report's tasks (JSON messages, nothing pickled):

1. `start_report(report_id)` sets the job Running, owned by `celery:<worker node>:<pid>`, records the
   attempt in `report_attempts`, and plans the shards at one `now` (`report_generator.plan_report`). The
   plan is kept in Redis (SET NX) before anything is sent, so a start task delivered again (its worker died)
   sends the same plan, never a second one with another `now`. It then sends a chord: a group of
   `compute_shard` tasks and the `merge_report` task, with `report_failed` as the error callback.
2. `compute_shard(report_id, shard, shards, work)` computes one shard (`report_generator._report_shard`),
   and keeps its frame, attrs and read/compute seconds in the database as Arrow IPC
   (`database.store_report_part`, which also moves the job's progress), replacing an earlier copy. Its
   message holds only its own store_key range and the plan's few shared values (`shard_work`); the
   store_ids a report asked for are read from the job's row, so no message grows with the shard count.
3. `merge_report(results, report_id, plan)` reads the parts (`database.report_parts`), merges them with
   `report_generator._merge_shards`, makes the CSV with `report_generator.csv_bytes` and the metadata with
   `report_meta` / `report_timings` (the code the embedded path uses), and in one transaction marks the job
   Complete and, only if that succeeded (the job was still Running: not failed, not deleted meanwhile),
   keeps the CSV (`database.store_report_file`); the parts are deleted either way. Web processes serve the
   CSV from their reports folder or, if absent, from the database (`reports_service.report_file_path`).

Delivery: `task_acks_late` and `task_reject_on_worker_lost`: a task is acknowledged when it ends, so a task
whose worker was killed (kill -9, a lost host) is delivered again: when only the pool process died, as soon
as the worker notices (WorkerLostError, a few seconds), else once Redis's `visibility_timeout`
(SM_BROKER_VISIBILITY_TIMEOUT) has passed. That timeout must exceed the longest task (its database retries,
up to DB_RETRIES * DB_RETRY_SECONDS more, included), or a task still running is given to a second worker
too. A Running job with no shard stored for twice that long, while the broker holds none of the service's
messages, is taken for lost by the web processes' sweep (see below). `worker_prefetch_multiplier=1`:
a worker holds no more tasks than it runs. Everything is idempotent: a shard run twice stores the same part
once; a merge finds the job Complete (or Failed, or deleted) and does nothing but drop leftover parts; a
merge that finds parts missing (a shard counted twice by the chord) waits for them, then fails the job.

Errors: a shard or merge that raises `ReportError` marks the job Failed with its message; another error is
logged with its traceback on the worker and the job gets the generic message naming the report id. A
database error is first retried DB_RETRIES times, DB_RETRY_SECONDS apart, inside the same task run (never
with Celery's `retry`: a start task re-sent that way would count as a new attempt, and the merge's retry
counter is kept for its waits for missing parts). `report_failed` (the chord's error callback) fails a job
still Running for any other cause.

The job row of a Celery-run job: Running, owner `celery:...`, and a lease that never runs out
(CLUSTER_LEASE_UNTIL). Embedded-mode lease takeover does not apply to it: web processes in cluster mode
claim nothing (no report threads), and even an embedded process on the same database (do not mix the modes)
neither takes it over nor fails it in its recovery. A start task delivered a third time (its workers died
twice) fails the job, as embedded mode does after two interruptions. A job whose messages the broker lost
(Redis restarted without persistence) is failed by the web processes' sweep (`jobs.ReportJobs.fail_lost_jobs`):
Queued, or Running without progress, for more than twice SM_BROKER_VISIBILITY_TIMEOUT while the broker holds
none of the service's messages (`broker_pending`). Jobs waiting behind a backlog, or for workers that are
all down, are not lost: their messages are still in the broker.

One Redis database per deployment: a worker takes every task of the queue, so a second deployment (another
SM_DATABASE) needs another Redis server or database number (redis://host:6379/1), else its workers would
take the first one's tasks and find no such job.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pyarrow as pa
from celery import Celery, chord, group
from celery.exceptions import MaxRetriesExceededError
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import RedisError

import database
import jobs
import report_generator
import local_servers
import storage
from config import PROJECT_DIR, Settings, describe_database

log = logging.getLogger("store_monitoring.cluster")

QUEUE = "store-monitoring-reports"       # the Celery queue (a Redis list) of the service's tasks
START_TASK = "store_monitoring.start_report"
SHARD_TASK = "store_monitoring.compute_shard"
MERGE_TASK = "store_monitoring.merge_report"
FAILED_TASK = "store_monitoring.report_failed"
PLAN_KEY = "store-monitoring:plan:{}"    # a report's plan in Redis (see start_report)
PLAN_SECONDS = 7 * 86400                 # how long Redis keeps a plan (a report takes seconds to minutes)
# A Celery-run job's lease (Unix seconds, year 9999): it never runs out, so embedded-mode workers never take
# the job over; Celery's redelivery, not the lease, recovers from a dead worker.
CLUSTER_LEASE_UNTIL = 253402300799.0
PART_KEY = b"store_monitoring"           # the Arrow schema metadata key of a part's attrs and seconds
DB_RETRIES = 3                           # a task retries a database error this often, DB_RETRY_SECONDS apart
DB_RETRY_SECONDS = 2
MERGE_WAIT_SECONDS = 2                   # a merge that finds parts missing looks again this much later
LOST_SHARDS_ERROR = ("The report could not be completed: {missing} of its {shards} shards never finished; "
                     "please trigger a new report.")
BROKER_ERROR = ("The report could not be queued: the report broker (SM_BROKER_URL) cannot be reached; "
                "please try again later.")
# TEST HOOK, set only by tests/test_cluster.py (never in production): a folder where `<worker>.delay` makes
# that worker's shards sleep the seconds it holds, and `<worker>.hold` makes them wait while it exists (each
# writes the pid of the process computing it into `<worker>.holding.<report>.<shard>` first). Read once, when
# the worker imports this module: unset, a shard pays one `if` on a constant (see _test_hook_hold_shard).
TEST_HOLD_ENV = "SM_CLUSTER_TEST_HOLD"
_TEST_HOLD_FOLDER = os.environ.get(TEST_HOLD_ENV) or None

DATABASE_ERRORS = database.errors()


# --- configuration ------------------------------------------------------------------------------------

def celery_config(settings: Settings, *, worker: bool = True) -> dict:
    """Celery's configuration for `settings`: the workers' (`worker=True`) or a web process's (it only
    sends: no result backend, and it gives up on an unreachable broker within a few seconds)."""
    if not settings.broker_url:
        raise ValueError("SM_BROKER_URL is not set: cluster mode needs a Redis URL, e.g. redis://127.0.0.1:6379/0")
    visibility = int(settings.broker_visibility_timeout)
    transport = {
        "visibility_timeout": visibility,
        # kombu looks for unacknowledged tasks to deliver again every interval * throttle seconds (default
        # 10 * 10); look about four times per visibility timeout, at most every 10 s.
        "unacked_restore_interval": max(1, min(10, visibility // 4)),
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": 5,
        # A Redis that accepts connections but does not answer (frozen, overloaded) must not hang a web
        # request or /health: every command gives up after this long (a web process only sends and asks;
        # a worker's BRPOP polls every second).
        "socket_timeout": 10 if worker else 3,
    }
    config = {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": QUEUE,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "enable_utc": True,
    }
    if worker:
        config.update({
            "result_backend": settings.broker_url,   # chords need one; Redis holds their counters
            "result_backend_transport_options": {"visibility_timeout": visibility},
            "redis_socket_timeout": 10,
            "redis_socket_connect_timeout": 5,
            "result_expires": 86400,
            "worker_send_task_events": False,
        })
    else:
        config.update({
            "result_backend": None,
            "broker_connection_timeout": 3,
            "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.5,
                                          "interval_max": 1},
        })
    return config


_settings: Settings | None = None


def worker_settings() -> Settings:
    """The workers' settings, from the environment (SM_DATABASE, SM_BROKER_URL, ...), read once."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


# The workers' app (`celery -A cluster worker`). Configured lazily from the environment, so importing this
# module (the web processes, the tests) needs no broker.
app = Celery("store_monitoring", set_as_current=False)
app.add_defaults(lambda: celery_config(worker_settings()))


def client(settings: Settings) -> Celery:
    """A web process's Celery app: it only sends `start_report` tasks (by name) to the broker."""
    sender = Celery("store_monitoring_web", set_as_current=False)
    sender.conf.update(celery_config(settings, worker=False))
    return sender


def enqueue(sender: Celery, report_id: str) -> None:
    """Send a job's first task. Raises kombu's OperationalError (or OSError) when the broker is unreachable."""
    sender.send_task(START_TASK, args=[report_id], ignore_result=True, queue=QUEUE)


def broker_status(sender: Celery, timeout: float = 2.0) -> str:
    """'ok' if the broker answers a PING, else why not (for /health): the connection within `timeout`
    seconds, the answer within the web side's socket timeout (3 s). A connection alone proves little: a
    frozen Redis still accepts them (the kernel does)."""
    try:
        with sender.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0.2, interval_step=0.2, timeout=timeout)
            connection.default_channel.client.ping()   # gives up after the socket timeout (3 s)
        return "ok"
    except Exception as exc:  # any failure to reach it is the answer
        return f"unreachable: {type(exc).__name__}: {exc}"


def broker_pending(sender: Celery) -> int | None:
    """Messages in the broker for this service: waiting in its queue or taken by a worker and not yet
    acknowledged (acks_late: a running task's message stays unacknowledged; so does a retry waiting for
    its countdown). None when the broker cannot be asked. While a report is unfinished and alive, at
    least one of its tasks is in one of the two: an idle broker means its tasks were lost."""
    try:
        with sender.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, interval_start=0.2, interval_step=0.2, timeout=2)
            channel = connection.default_channel
            client = channel.client
            # kombu keeps a queue as one Redis list per priority step (channel._q_for_pri names them).
            lists = {channel._q_for_pri(QUEUE, step) for step in channel.priority_steps}
            return sum(int(client.llen(name)) for name in lists) + int(client.hlen(channel.unacked_key))
    except BROKER_ERRORS:
        return None


# What sending to an unreachable broker raises (kombu wraps most of it in its OperationalError).
BROKER_ERRORS = (KombuOperationalError, RedisError, OSError)


# --- parts: a shard's result as bytes -------------------------------------------------------------------

def encode_part(frame, attrs: dict, read_s: float, compute_s: float, worker: str = "") -> bytes:
    """A shard's result (report_generator._report_shard) as Arrow IPC: the frame's columns with their
    pandas types, and in the schema metadata its attrs (`now` as UTC microseconds), the read and compute
    seconds and the worker that computed it."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    attrs = dict(attrs)
    now = attrs.pop("now", None)
    info = {"attrs": attrs, "now_us": None if now is None else int(now.as_unit("us").asm8.astype("int64")),
            "read_s": float(read_s), "compute_s": float(compute_s), "worker": worker}
    metadata = dict(table.schema.metadata or {})
    metadata[PART_KEY] = json.dumps(info, default=_json_scalar).encode("utf-8")
    table = table.replace_schema_metadata(metadata)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_part(body: bytes):
    """(frame, attrs, read_s, compute_s, worker) from `encode_part`'s bytes: the first four as
    `_report_shard` returned them, for `_merge_shards`."""
    import pandas as pd

    table = pa.ipc.open_stream(pa.py_buffer(body)).read_all()
    info = json.loads(table.schema.metadata[PART_KEY])
    frame = table.to_pandas()
    attrs = dict(info["attrs"])
    if info["now_us"] is not None:
        attrs["now"] = pd.Timestamp(info["now_us"], unit="us", tz="UTC")
    return frame, attrs, info["read_s"], info["compute_s"], info.get("worker", "")


def _json_scalar(value):
    """NumPy scalars in attrs as plain numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {value!r}")


# --- the job row ---------------------------------------------------------------------------------------

def begin_attempt(conn, report_id: str, owner: str) -> dict | None:
    """Set the job Running for a start task (owned by `owner`, under CLUSTER_LEASE_UNTIL) and record the
    attempt (`database.start_report_attempt`). None when there is nothing to start (no such job, it ended,
    or an embedded worker runs it); a job interrupted jobs.MAX_ATTEMPTS times is Failed instead."""
    return database.start_report_attempt(conn, report_id, owner, lease_until=CLUSTER_LEASE_UNTIL,
                                         max_attempts=jobs.MAX_ATTEMPTS, exhausted_error=jobs.INTERRUPTED_ERROR,
                                         owner_prefix="celery:")


def _begin(conn, report_id: str, owner: str, *, again: bool) -> dict | None:
    """`begin_attempt` for one delivery of a start task, in one transaction. `again`: an earlier try of this
    same delivery raised a database error; if its transaction committed all the same (the error came with
    the commit's answer), the job is Running under this very owner, and that attempt is this delivery's:
    it is not counted a second time."""
    with database.transaction(conn):
        if again:
            job = database.get_report_job(conn, report_id)
            if job is not None and job["status"] == "Running" and job["owner"] == owner:
                return job
        return begin_attempt(conn, report_id, owner)


def _fail(report_id: str, message: str) -> bool:
    """Mark the job Failed unless it already ended (or is gone): the check and the write in one transaction.
    Returns whether it did."""
    with closing(database.connect(worker_settings().database)) as conn:
        with database.transaction(conn):
            job = database.get_report_job(conn, report_id)
            if job is None or job["status"] not in ("Queued", "Running"):
                return False
            return database.mark_report_failed(conn, report_id, message)


def _failure_message(report_id: str, exc: BaseException) -> str:
    """What the job says about an error: a ReportError's own message, a disk problem, the database being
    away (after the task's retries), or the generic one."""
    if isinstance(exc, report_generator.ReportError):
        return str(exc) or "the report could not be generated from the current data"
    if isinstance(exc, OSError) and exc.errno in jobs.DISK_ERRORS:
        return (f"The report could not be written: {jobs.DISK_ERRORS[exc.errno]} "
                f"({os.strerror(exc.errno)}); please tell the operator.")
    if isinstance(exc, database.unavailable_errors()):
        return "The report failed: the database was not available while it ran; trigger it again."
    return jobs.internal_error_message(report_id)


def _run_step(task, report_id: str, step):
    """Run one piece of a task's work and return what it returns.

    A database error is retried right here, DB_RETRIES times DB_RETRY_SECONDS apart (the step runs again:
    each step opens its own connection and is idempotent). Not with Celery's `task.retry`: a start task
    sent again would count as a new attempt of the job, and `task.request.retries` is the merge's count of
    its waits for missing parts. Any other error, or the last database error, fails the job (message as in
    embedded mode) and is raised, which stops the chord. Celery's own exceptions (Retry) pass through."""
    for retry in range(DB_RETRIES + 1):
        try:
            return step()
        except DATABASE_ERRORS as exc:
            if retry < DB_RETRIES:
                log.warning("report %s: database error in %s, retry %d of %d in %d s: %s", report_id, task.name,
                            retry + 1, DB_RETRIES, DB_RETRY_SECONDS, exc)
                time.sleep(DB_RETRY_SECONDS)
                continue
            log.exception("report %s: %s failed with a database error", report_id, task.name)
            _fail_quietly(report_id, jobs.internal_error_message(report_id))
            raise
        except report_generator.ReportError as exc:
            log.info("report %s failed: %s", report_id, _failure_message(report_id, exc))
            _fail_quietly(report_id, _failure_message(report_id, exc))
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("celery."):   # Retry and its kind: not an error of the report
                raise
            log.exception("report %s: %s failed with an unexpected error", report_id, task.name)
            _fail_quietly(report_id, _failure_message(report_id, exc))
            raise


def _fail_quietly(report_id: str, message: str) -> None:
    try:
        _fail(report_id, message)
    except Exception:  # the database is what failed: the chord's error callback tries again
        log.warning("report %s: could not record the failure", report_id, exc_info=True)


def _owner(task) -> str:
    return f"celery:{task.request.hostname or socket.gethostname()}:{os.getpid()}"


# --- the messages --------------------------------------------------------------------------------------

SHARED_PLAN_KEYS = ("now_us", "reach_minutes", "default_timezone", "extended")   # what every shard needs


def shard_work(plan: dict, shard: int) -> dict:
    """What one shard's message carries: its own store_key range (None: every chosen store) and the few
    values of the plan every shard shares. Neither the other shards' ranges nor the store_ids (the shard
    reads them from the job's row): a message's size does not grow with the number of shards."""
    work = {key: plan[key] for key in SHARED_PLAN_KEYS}
    work["key_range"] = plan["shards"][shard]
    return work


def report_chord(report_id: str, plan: dict):
    """The chord of a report: its header (one compute_shard per shard) and its body (merge_report, with
    report_failed as the error callback)."""
    shards = len(plan["shards"])
    header = group(compute_shard.si(report_id, index, shards, shard_work(plan, index)) for index in range(shards))
    body = merge_report.s(report_id, plan).on_error(report_failed.s(report_id))
    return header, body


# --- the tasks -------------------------------------------------------------------------------------------

@app.task(name=START_TASK, bind=True, ignore_result=True)
def start_report(self, report_id: str) -> None:
    """A job's first task: Running, the plan (one `now`, the shards), then the chord of shards and merge.
    Each delivery of the task counts one attempt; its own database retries do not (see `_run_step`)."""
    settings = worker_settings()
    owner = _owner(self)
    tries = 0

    def begin():
        nonlocal tries
        tries += 1
        with closing(database.connect(settings.database)) as conn:
            return _begin(conn, report_id, owner, again=tries > 1)

    job = _run_step(self, report_id, begin)
    if job is None or job["status"] != "Running":
        log.info("report %s: nothing to start (%s)", report_id, "no such job" if job is None else job["status"])
        return

    def launch():   # the attempt is counted: a database error while planning retries only this
        plan = _plan(settings, job)
        header, body = report_chord(report_id, plan)
        chord(header)(body)
        return plan

    plan = _run_step(self, report_id, launch)
    log.info("report %s started by %s (attempt %d): %d shards at %s", report_id, self.request.hostname,
             job["attempts"], len(plan["shards"]), jobs.iso_utc(plan["now_us"] * 1000))


def _plan(settings: Settings, job: dict) -> dict:
    """The report's plan, made once: kept in Redis with SET NX, so a start task delivered again (or twice)
    sends the very plan the first one made, never a second with another `now` or other shards."""
    key = PLAN_KEY.format(job["report_id"])
    redis = app.backend.client
    kept = redis.get(key)
    if kept is not None:
        return json.loads(kept)
    started = time.time()
    arguments = jobs.engine_arguments(settings, job["params"] or {})
    now_us, shards = report_generator.plan_report(settings.database, shard_stores=settings.shard_stores,
                                                  shard_polls=settings.shard_polls, as_of=arguments["as_of"],
                                                  store_ids=arguments["store_ids"])
    plan = {"now_us": int(now_us), "shards": [None if s is None else [int(s[0]), int(s[1])] for s in shards],
            "requested_as_of": None if arguments["as_of"] is None else jobs.iso_utc(arguments["as_of"]),
            "store_ids": arguments["store_ids"], "extended": bool(arguments["extended"]),
            "reach_minutes": arguments["reach_minutes"], "default_timezone": settings.default_timezone,
            "started": started, "planned": time.time()}
    if not redis.set(key, json.dumps(plan), nx=True, ex=PLAN_SECONDS):
        return json.loads(redis.get(key))   # another delivery of the start task planned first
    return plan


@app.task(name=SHARD_TASK, bind=True)
def compute_shard(self, report_id: str, shard: int, shards: int, work: dict) -> dict:
    """One shard: computed and kept as a part in the database. Skipped when the job has ended or is gone.
    `work` is `shard_work`'s; the store_ids come from the job's row (as the start task planned with them)."""
    def step():
        settings = worker_settings()
        with closing(database.connect(settings.database)) as conn:
            job = database.get_report_job(conn, report_id)
            if job is None or job["status"] != "Running":
                return {"shard": shard, "worker": self.request.hostname, "skipped": True}
            if _TEST_HOLD_FOLDER:   # a test hook (TEST_HOLD_ENV); None in production
                _test_hook_hold_shard(self.request.hostname, report_id, shard)
            if "key_range" in work:
                key_range = work["key_range"]
                store_ids = jobs.engine_arguments(settings, job["params"] or {})["store_ids"]
            else:   # a message sent before shard_work existed carries the whole plan
                key_range, store_ids = work["shards"][shard], work["store_ids"]
            frame, attrs, read_s, compute_s = report_generator._report_shard(
                str(settings.database), work["now_us"], None if key_range is None else tuple(key_range),
                store_ids, work["reach_minutes"], work["default_timezone"], work["extended"])
            body = encode_part(frame, attrs, read_s, compute_s, self.request.hostname or "")
            database.store_report_part(conn, report_id, shard, shards, body)   # nothing once the job ended
        log.info("report %s: shard %d of %d computed by %s (%d rows, %d bytes)", report_id, shard + 1, shards,
                 self.request.hostname, len(frame), len(body))
        return {"shard": shard, "worker": self.request.hostname, "rows": len(frame)}

    return _run_step(self, report_id, step)


@app.task(name=MERGE_TASK, bind=True, max_retries=None)
def merge_report(self, results, report_id: str, plan: dict) -> dict | None:
    """The chord's body: merge the parts into the CSV, complete the job and keep the CSV in the database."""
    def step():
        settings = worker_settings()
        merge_started = time.time()
        with closing(database.connect(settings.database)) as conn:
            with database.transaction(conn):
                job = database.get_report_job(conn, report_id)
                if job is None or job["status"] != "Running":   # done (or failed, or deleted) already
                    database.delete_report_parts(conn, report_id)
                    return None
            parts = database.report_parts(conn, report_id)
            shards = len(plan["shards"])
            if len(parts) < shards:
                return _wait_for_parts(self, report_id, shards - len(parts), shards, settings)
            decoded = [decode_part(body) for body in parts]
            shard_results = [part[:4] for part in decoded]
            frame = report_generator._merge_shards(shard_results)
            body = report_generator.csv_bytes(frame)
            meta = report_generator.report_meta(settings.database, frame, plan["store_ids"],
                                                plan["requested_as_of"])
            written = time.time()
            record = dict(file=jobs.report_file_name(report_id), rows=len(frame),
                          as_of=jobs.iso_utc(plan["now_us"] * 1000), seconds=round(written - plan["started"], 6),
                          timings=report_generator.report_timings(plan["planned"] - plan["started"],
                                                                  merge_started - plan["planned"],
                                                                  written - merge_started, shard_results),
                          meta=meta)
            with database.transaction(conn):
                # The file only with the row that names it: a job failed or deleted meanwhile (the sweep, a
                # DELETE, another merge) is not completed, and no file row is left without its job.
                job = database.get_report_job(conn, report_id)
                completed = (job is not None and job["status"] == "Running"
                             and database.mark_report_complete(conn, report_id, **record))
                if completed:
                    database.store_report_file(conn, report_id, body)
                database.delete_report_parts(conn, report_id)
        if not completed:
            log.info("report %s ended while it was merged (%s); the merge is discarded", report_id,
                     "deleted" if job is None else job["status"])
            return None
        workers = sorted({part[4] for part in decoded})
        log.info("report %s complete: %d rows from %d shards (computed by %s), merged by %s; %.2f s since its start",
                 report_id, len(frame), shards, ", ".join(workers), self.request.hostname, record["seconds"])
        try:
            app.backend.client.delete(PLAN_KEY.format(report_id))
        except Exception:  # it expires anyway
            pass
        return {"rows": len(frame), "workers": workers}

    return _run_step(self, report_id, step)


def _wait_for_parts(task, report_id: str, missing: int, shards: int, settings: Settings):
    """Parts are missing: the chord counted a shard twice (it ran twice) before another one finished.
    Look again a little later, for at most about two visibility timeouts; then fail the job. (Celery's
    retry count is this wait's alone: database errors are retried inside the task, see `_run_step`.)"""
    limit = max(3, int((2 * settings.broker_visibility_timeout + 60) / MERGE_WAIT_SECONDS))
    log.info("report %s: %d of %d parts not stored yet; merging again in %d s", report_id, missing, shards,
             MERGE_WAIT_SECONDS)
    try:
        raise task.retry(countdown=MERGE_WAIT_SECONDS, max_retries=limit)
    except MaxRetriesExceededError:
        _fail(report_id, LOST_SHARDS_ERROR.format(missing=missing, shards=shards))
        return None


@app.task(name=FAILED_TASK, ignore_result=True)
def report_failed(request, exc, traceback, report_id: str) -> None:
    """The chord's error callback: a job still Running when a shard or the merge failed is marked Failed.
    (The failing task has usually recorded its own, more precise message already.)"""
    log.warning("report %s: task %s failed: %r", report_id, getattr(request, "id", "?"), exc)
    _fail(report_id, _failure_message(report_id, exc if isinstance(exc, BaseException) else Exception(exc)))


def _test_hook_hold_shard(worker: str | None, report_id: str, shard: int) -> None:
    """TEST HOOK (TEST_HOLD_ENV, tests/test_cluster.py's kill -9 tests): make this worker's shards slow, or
    hold them. Called only when the variable was set as the worker started; never in production."""
    folder = Path(_TEST_HOLD_FOLDER)
    name = (worker or "").split("@")[0]
    delay, hold = folder / f"{name}.delay", folder / f"{name}.hold"
    if delay.exists():
        time.sleep(float(delay.read_text().strip() or 0))
    if hold.exists():
        (folder / f"{name}.holding.{report_id}.{shard}").write_text(str(os.getpid()))
        deadline = time.monotonic() + 120
        while hold.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


# --- `python cluster.py up`: everything on this machine ---------------------------------------------------

CLUSTER_DIR = PROJECT_DIR / ".cluster"


def _wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited with status {process.returncode} (see {CLUSTER_DIR / 'logs'})")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on port {port} within {timeout:g} s")


def worker_command(name: str, concurrency: int = 1, *, standalone: bool = False) -> list[str]:
    """The command of one Celery worker of this service (node `name@<host>`, `concurrency` prefork
    processes). `standalone`: skip the start-up exchange with other workers (mingle, gossip), which
    workers that are started one at a time by a test or the benchmark do not need."""
    command = [sys.executable, "-m", "celery", "-A", "cluster", "worker", "--loglevel=info",
               f"--concurrency={concurrency}", "--pool=prefork", "-n", f"{name}@%h"]
    return command + (["--without-mingle", "--without-gossip"] if standalone else [])


def throwaway_postgres(sqlite: bool, database_env: str | None) -> bool:
    """Whether `cluster.py up` starts its own PostgreSQL: yes, unless SM_DATABASE already names a
    PostgreSQL database (postgresql://...) or `--sqlite` asks for SM_DATABASE's SQLite file."""
    return not sqlite and not storage.is_postgresql(database_env)


def up(argv: list[str] | None = None) -> int:
    """PostgreSQL, Redis, `--workers` Celery workers and the web server (gunicorn), all on this machine,
    until Ctrl-C. PostgreSQL is a throw-away server under .cluster/pg, unless SM_DATABASE is a
    postgresql:// URL (that database is used) or --sqlite is given (SM_DATABASE's SQLite file is used);
    Redis is started unless SM_BROKER_URL is set."""
    parser = argparse.ArgumentParser(prog="cluster.py up", description=up.__doc__)
    parser.add_argument("--workers", type=int, default=2, help="Celery workers to start (default 2)")
    parser.add_argument("--concurrency", type=int, default=1, help="processes per worker (default 1)")
    parser.add_argument("--sqlite", action="store_true",
                        help="use SM_DATABASE's SQLite file instead of a throw-away PostgreSQL (one machine only)")
    parser.add_argument("--postgres", action="store_true", help=argparse.SUPPRESS)   # the default now; accepted
    args = parser.parse_args(argv)
    if args.sqlite and args.postgres:
        parser.error("--sqlite and --postgres exclude each other")
    settings = Settings.from_env()
    logs = CLUSTER_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    processes: list[tuple[str, subprocess.Popen]] = []
    servers: list = []    # PostgreSQL and Redis, when started here

    def start(name: str, command: list[str], **options) -> subprocess.Popen:
        out = open(logs / f"{name}.log", "ab")
        process = subprocess.Popen(command, cwd=PROJECT_DIR, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True, **options)   # Ctrl-C is ours to pass on, in order
        processes.append((name, process))
        print(f"started {name} (pid {process.pid}), log {logs / f'{name}.log'}", flush=True)
        return process

    interrupted = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, frame: interrupted.append(number))
    try:
        if throwaway_postgres(args.sqlite, os.environ.get("SM_DATABASE")):
            if os.environ.get("SM_DATABASE"):
                print(f"SM_DATABASE ({describe_database(os.environ['SM_DATABASE'])}) is not PostgreSQL: it is "
                      "not used (--sqlite uses it)", flush=True)
            shutil.rmtree(CLUSTER_DIR / "pg", ignore_errors=True)
            try:
                postgres = local_servers.PostgreSQLServer(CLUSTER_DIR / "pg").start()
            except RuntimeError as exc:   # ServerUnavailable (not installed) or a failed start
                raise local_servers.ServerUnavailable(f"{exc}; or run with --sqlite (make cluster ARGS=--sqlite) "
                                                      "to use SM_DATABASE's SQLite file on this machine") from None
            servers.append(postgres)
            env["SM_DATABASE"] = postgres.url()
            print(f"started PostgreSQL: {describe_database(env['SM_DATABASE'])}", flush=True)
        database_location = env.get("SM_DATABASE") or str(settings.database)
        if storage.is_postgresql(database_location):
            print(f"database: {describe_database(database_location)}", flush=True)
        else:
            print(f"database: SQLite {database_location}: fine on one machine; workers on other hosts need "
                  "PostgreSQL (SM_DATABASE=postgresql://..., or leave out --sqlite)", flush=True)
        if settings.broker_url:
            env["SM_BROKER_URL"] = settings.broker_url
            print("broker: SM_BROKER_URL from the environment (no Redis started)", flush=True)
        else:
            redis = local_servers.RedisServer(CLUSTER_DIR / "redis")
            servers.append(redis)
            print(f"started Redis on port {redis.port}, log {redis.log_path}", flush=True)
            env["SM_BROKER_URL"] = f"{redis.url}/0"
        # The schema and a first start's data, before any worker reads the database.
        subprocess.run([sys.executable, str(PROJECT_DIR / "app.py"), "--prepare"], cwd=PROJECT_DIR, env=env,
                       check=True)
        for n in range(1, args.workers + 1):
            start(f"worker-w{n}", worker_command(f"w{n}", args.concurrency))
        web = start("web", [sys.executable, "-m", "gunicorn", "--config", str(PROJECT_DIR / "gunicorn.conf.py")])
        _wait_for_port(settings.port, web, "the web server")
        print(f"cluster up: http://{settings.host}:{settings.port} (broker "
              f"{describe_database(env['SM_BROKER_URL'])}, {args.workers} workers); Ctrl-C stops everything",
              flush=True)
        while not interrupted:
            for name, process in processes:
                if process.poll() is not None:
                    print(f"{name} exited with status {process.returncode}; stopping the cluster", flush=True)
                    interrupted.append(0)
                    break
            time.sleep(0.5)
    finally:
        print("stopping: web, workers (their running tasks finish or go back to the queue), Redis, PostgreSQL",
              flush=True)
        for name, process in reversed(processes):   # the web first, Redis last
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in 40 s: killed", flush=True)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        for server in reversed(servers):   # Redis, then PostgreSQL
            server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] != "up":
        print("usage: python cluster.py up [--workers N] [--concurrency N] [--sqlite]\n"
              "  starts a throw-away PostgreSQL (unless SM_DATABASE is a postgresql:// URL, or --sqlite: "
              "SM_DATABASE's SQLite file),\n"
              "  Redis (unless SM_BROKER_URL is set), N Celery workers and the web server\n"
              "workers: celery -A cluster worker (with SM_BROKER_URL and SM_DATABASE set)", file=sys.stderr)
        return 2
    try:
        return up(argv[1:])
    except local_servers.ServerUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
