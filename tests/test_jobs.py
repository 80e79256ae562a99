"""The report worker pool (jobs.py) with a fake engine: lifecycle, errors, queue limit, recovery."""
from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pandas as pd
import pytest

import database
import jobs
from config import Settings


def worker_threads():
    return [t for t in threading.enumerate() if t.name.startswith(("report-worker-", "report-progress")) and t.is_alive()]


@pytest.fixture
def settings(tmp_path):
    return Settings(database=tmp_path / "db.sqlite3", reports_dir=tmp_path / "reports",
                    data_dir=tmp_path / "data", workers=2, queue_limit=3)


@pytest.fixture
def pools():
    """Factory for ReportJobs; every pool is closed at the end and no worker thread may survive."""
    created = []

    def make(settings, **kwargs):
        pool = jobs.ReportJobs(settings, **kwargs)
        created.append(pool)
        return pool

    yield make
    for pool in created:
        pool.close(timeout=10)
    assert worker_threads() == []


class FakeEngine:
    """Stands in for generate_report: writes a small CSV; can block on an event or raise."""

    def __init__(self, block: threading.Event | None = None, error: BaseException | None = None):
        self.block, self.error = block, error
        self.calls = []
        self.started = threading.Semaphore(0)

    def __call__(self, database, out_path, *, as_of=None, store_ids=None, extended=False,
                 reach_minutes=120, default_timezone="America/Chicago", progress=None):
        self.calls.append(dict(as_of=as_of, store_ids=store_ids, extended=extended,
                               default_timezone=default_timezone))
        self.started.release()
        if progress:
            progress(0.5)
        if self.block is not None:
            assert self.block.wait(10), "test never released the fake engine"
        if self.error is not None:
            raise self.error
        out_path.write_text("store_id,uptime_last_hour\ns1,60.0\n")
        return SimpleNamespace(rows=1, as_of=pd.Timestamp("2023-01-25 18:13:22.479220", tz="UTC"),
                               seconds=0.25, timings={"load": 0.1, "compute": 0.1, "write": 0.05}, meta={})


def wait_for(conn, report_id, statuses=("Complete", "Failed"), timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = database.get_report_job(conn, report_id)
        if job and job["status"] in statuses:
            return job
        time.sleep(0.01)
    raise AssertionError(f"report {report_id} did not reach {statuses}: {database.get_report_job(conn, report_id)}")


def test_submit_runs_job_to_complete(settings, pools):
    engine = FakeEngine()
    pool = pools(settings, generate=engine).start()
    conn = database.connect(settings.database)
    params = {"as_of": "2023-01-25T18:00:00Z", "store_ids": ["a", "b"], "columns": "extended"}
    report_id = pool.submit(params)
    job = wait_for(conn, report_id)
    assert job["status"] == "Complete"
    assert job["file"] == f"{report_id}.csv"
    assert (settings.reports_dir / job["file"]).read_text().startswith("store_id,")
    assert job["rows"] == 1 and job["attempts"] == 1 and job["progress"] == 1
    assert job["as_of"] == "2023-01-25T18:13:22.479220Z"
    assert job["timings"] == {"load": 0.1, "compute": 0.1, "write": 0.05}
    assert job["params"] == params
    call = engine.calls[0]
    assert call["as_of"] == pd.Timestamp("2023-01-25 18:00", tz="UTC")
    assert call["store_ids"] == ["a", "b"] and call["extended"] is True
    assert call["default_timezone"] == settings.default_timezone
    assert database.report_file(conn, report_id) is None   # SQLite: one host, the reports folder is enough


def test_progress_is_recorded_while_running(settings, pools):
    release = threading.Event()
    pool = pools(settings, generate=FakeEngine(block=release)).start()
    conn = database.connect(settings.database)
    report_id = pool.submit({})
    wait_for(conn, report_id, statuses=("Running",))
    deadline = time.monotonic() + 5
    while database.get_report_job(conn, report_id)["progress"] != 0.5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert database.get_report_job(conn, report_id)["progress"] == 0.5
    release.set()
    assert wait_for(conn, report_id)["status"] == "Complete"


def test_queue_limit_raises_queue_full(settings, pools):
    release = threading.Event()
    engine = FakeEngine(block=release)
    pool = pools(settings, generate=engine).start()
    conn = database.connect(settings.database)
    running = [pool.submit({}) for _ in range(settings.workers)]
    for _ in running:  # both workers hold a job, so the queue itself is empty
        assert engine.started.acquire(timeout=5)
    queued = [pool.submit({}) for _ in range(settings.queue_limit)]
    assert pool.depth() == settings.queue_limit
    with pytest.raises(jobs.QueueFull) as info:
        pool.submit({})
    assert info.value.retry_after > 0
    # the refused submission left no job row behind
    assert conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == len(running) + len(queued)
    release.set()
    for report_id in running + queued:
        assert wait_for(conn, report_id)["status"] == "Complete"
    assert pool.depth() == 0


def test_unexpected_error_is_logged_but_not_shown(settings, pools, caplog):
    pool = pools(settings, generate=FakeEngine(error=KeyError("secret internal detail"))).start()
    conn = database.connect(settings.database)
    with caplog.at_level(logging.ERROR, logger="store_monitoring.jobs"):
        report_id = pool.submit({})
        job = wait_for(conn, report_id)
    assert job["status"] == "Failed"
    assert "secret" not in job["error"] and "Traceback" not in job["error"]
    assert report_id in job["error"] and "internal error" in job["error"]
    assert any(r.exc_info and "secret internal detail" in str(r.exc_info[1]) for r in caplog.records)


def test_report_error_message_is_kept(settings, pools):
    import report_generator
    error = report_generator.ReportError("there are no polls in the database; load store_status first")
    pool = pools(settings, generate=FakeEngine(error=error)).start()
    conn = database.connect(settings.database)
    job = wait_for(conn, pool.submit({}))
    assert job["status"] == "Failed"
    assert job["error"] == "there are no polls in the database; load store_status first"


def test_worker_survives_a_failing_job(settings, pools):
    engine = FakeEngine(error=RuntimeError("boom"))
    pool = pools(settings, generate=engine).start()
    conn = database.connect(settings.database)
    assert wait_for(conn, pool.submit({}))["status"] == "Failed"
    engine.error = None
    assert wait_for(conn, pool.submit({}))["status"] == "Complete"
    assert pool.alive() == settings.workers


def test_a_failure_outside_the_engine_still_ends_the_job(settings, pools):
    # A stored as_of that cannot be read, and an outcome that cannot be recorded: both end Failed,
    # never Running until the next restart.
    pool = pools(settings, generate=FakeEngine()).start()
    conn = database.connect(settings.database)
    assert wait_for(conn, pool.submit({"as_of": "not a time"}))["status"] == "Failed"
    pool._generate = lambda *args, **kwargs: SimpleNamespace(rows="many")
    job = wait_for(conn, pool.submit({}))
    assert job["status"] == "Failed" and "internal error" in job["error"]


def insert_job(conn, report_id, status, attempts):
    database.create_report_job(conn, report_id, {"as_of": None, "store_ids": None, "columns": "standard"})
    conn.execute("UPDATE reports SET status = ?, attempts = ? WHERE report_id = ?", (status, attempts, report_id))


def test_recovery_reruns_interrupted_jobs_once(settings, pools):
    conn = database.connect(settings.database)
    insert_job(conn, "00000000-0000-4000-8000-000000000001", "Running", 1)   # crashed while running
    insert_job(conn, "00000000-0000-4000-8000-000000000002", "Queued", 0)    # never started
    insert_job(conn, "00000000-0000-4000-8000-000000000003", "Running", 2)   # crashed on its re-run too
    insert_job(conn, "00000000-0000-4000-8000-000000000004", "Complete", 1)  # finished: left alone
    pool = pools(settings, generate=FakeEngine())
    recovered = pool.recover()
    assert sorted(recovered["requeued"]) == ["00000000-0000-4000-8000-000000000001",
                                             "00000000-0000-4000-8000-000000000002"]
    assert recovered["failed"] == ["00000000-0000-4000-8000-000000000003"]
    pool.start()  # recovery already ran: start() must not enqueue the jobs a second time
    first = wait_for(conn, "00000000-0000-4000-8000-000000000001")
    second = wait_for(conn, "00000000-0000-4000-8000-000000000002")
    assert (first["status"], first["attempts"]) == ("Complete", 2)
    assert (second["status"], second["attempts"]) == ("Complete", 1)
    third = database.get_report_job(conn, "00000000-0000-4000-8000-000000000003")
    assert third["status"] == "Failed" and "interrupted twice" in third["error"]
    assert database.get_report_job(conn, "00000000-0000-4000-8000-000000000004")["status"] == "Complete"


def test_close_joins_workers_and_leaves_unstarted_jobs_queued(settings, tmp_path, pools):
    release = threading.Event()
    engine = FakeEngine(block=release)
    pool = pools(settings, generate=engine).start()
    conn = database.connect(settings.database)
    running = [pool.submit({}) for _ in range(settings.workers)]
    for _ in running:
        assert engine.started.acquire(timeout=5)
    waiting = pool.submit({})
    closer = threading.Thread(target=pool.close)
    closer.start()
    time.sleep(0.05)
    release.set()  # workers finish their current job, then stop
    closer.join(10)
    assert not closer.is_alive()
    assert worker_threads() == []
    for report_id in running:
        assert database.get_report_job(conn, report_id)["status"] == "Complete"
    assert database.get_report_job(conn, waiting)["status"] == "Queued"
    # the next start picks the waiting job up
    pool2 = pools(settings, generate=FakeEngine()).start()
    assert wait_for(conn, waiting)["status"] == "Complete"
    pool2.close()
    pool.close()  # idempotent


def test_iso_utc():
    assert jobs.iso_utc(pd.Timestamp("2023-01-25 18:13:22", tz="UTC")) == "2023-01-25T18:13:22Z"
    assert jobs.iso_utc(pd.Timestamp("2023-01-25 12:13:22.5-06:00")) == "2023-01-25T18:13:22.500000Z"
    assert jobs.iso_utc(pd.Timestamp("2023-01-25 18:13:22")) == "2023-01-25T18:13:22Z"


# --- jobs shared by several processes: claims and leases ----------------------------------------------
# Several pools on one database stand for several processes (each pool has its own owner id).

EXHAUSTED = dict(max_attempts=jobs.MAX_ATTEMPTS, exhausted_error=jobs.INTERRUPTED_ERROR)


def claim(conn, owner, lease=30.0):
    return database.claim_report_job(conn, owner, lease, **EXHAUSTED)


def queued_jobs(conn, count):
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(count)]
    for report_id in ids:
        database.create_report_job(conn, report_id, {"as_of": None, "store_ids": None, "columns": "standard"})
    return ids


def test_each_queued_job_is_claimed_by_exactly_one_claimer(settings):
    conn = database.connect(settings.database)
    ids = queued_jobs(conn, 60)
    claimed, errors = [], []
    barrier = threading.Barrier(8)

    def claimer(n):
        own = database.connect(settings.database)
        try:
            barrier.wait(5)
            while (job := claim(own, f"owner-{n}")) is not None:
                claimed.append((job["report_id"], job["owner"], job["attempts"]))
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            own.close()

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert sorted(report_id for report_id, _, _ in claimed) == ids  # every job once, none twice
    for report_id, owner, attempts in claimed:
        job = database.get_report_job(conn, report_id)
        assert (job["status"], job["owner"], job["attempts"]) == ("Running", owner, 1)
        assert job["lease_until"] > time.time() + 20
        assert [(a["attempt"], a["owner"], a["outcome"]) for a in database.report_attempts(conn, report_id)] == \
            [(1, owner, None)]


def test_a_live_lease_is_never_taken_an_expired_one_once_more(settings):
    conn = database.connect(settings.database)
    [report_id] = queued_jobs(conn, 1)
    assert claim(conn, "first")["attempts"] == 1
    assert claim(conn, "second") is None                       # its lease is live: nobody else takes it
    assert database.get_report_job(conn, report_id)["owner"] == "first"

    expire = "UPDATE reports SET lease_until = ? WHERE report_id = ?"
    conn.execute(expire, (time.time() - 1, report_id))           # "first" died: its lease ran out
    job = claim(conn, "second")
    assert (job["report_id"], job["owner"], job["attempts"], job["status"]) == (report_id, "second", 2, "Running")
    assert claim(conn, "third") is None

    conn.execute(expire, (time.time() - 1, report_id))           # ... and "second" died too
    assert claim(conn, "third") is None                          # not a third run: Failed
    job = database.get_report_job(conn, report_id)
    assert (job["status"], job["error"], job["attempts"]) == ("Failed", jobs.INTERRUPTED_ERROR, 2)
    assert [(a["attempt"], a["owner"], a["outcome"]) for a in database.report_attempts(conn, report_id)] == \
        [(1, "first", "lease expired"), (2, "second", "lease expired")]


def test_claims_take_the_oldest_waiting_job_first(settings):
    conn = database.connect(settings.database)
    ids = queued_jobs(conn, 3)
    conn.execute("UPDATE reports SET created_at = '2000-01-01T00:00:00.000Z' WHERE report_id = ?", (ids[2],))
    assert [claim(conn, "me")["report_id"] for _ in ids] == [ids[2], ids[0], ids[1]]


def test_a_job_running_under_a_live_lease_is_left_alone_at_start(settings, pools):
    conn = database.connect(settings.database)
    [report_id] = queued_jobs(conn, 1)
    claim(conn, "another-live-process")
    engine = FakeEngine()
    pool = pools(settings, generate=engine)
    pool.poll_interval = 0.05
    assert pool.recover() == {"requeued": [], "failed": []}
    pool.start()
    time.sleep(10 * pool.poll_interval)
    job = database.get_report_job(conn, report_id)
    assert (job["status"], job["owner"], job["attempts"]) == ("Running", "another-live-process", 1)
    assert engine.calls == []


def test_the_heartbeat_renews_the_lease_while_the_report_runs(settings, pools):
    from dataclasses import replace

    release = threading.Event()
    engine = FakeEngine(block=release)
    pool = pools(replace(settings, job_lease_seconds=1), generate=engine).start()
    conn = database.connect(settings.database)
    report_id = pool.submit({})
    assert engine.started.acquire(timeout=5)
    leases = []
    for _ in range(9):                  # over 2 s: twice the lease
        job = database.get_report_job(conn, report_id)
        leases.append(job["lease_until"])
        assert job["lease_until"] > time.time(), "the lease of a running report ran out"
        assert claim(conn, "a-live-rival", lease=1) is None
        time.sleep(0.25)
    assert len(set(leases)) >= 4        # renewed every third of a second
    release.set()
    job = wait_for(conn, report_id)
    assert (job["status"], job["attempts"], job["lease_until"]) == ("Complete", 1, None)
    assert [a["outcome"] for a in database.report_attempts(conn, report_id)] == ["Complete"]


def test_a_run_that_lost_its_lease_changes_nothing(settings, pools, caplog):
    release = threading.Event()
    engine = FakeEngine(block=release)
    pool = pools(settings, generate=engine).start()
    conn = database.connect(settings.database)
    report_id = pool.submit({})
    assert engine.started.acquire(timeout=5)
    # Meanwhile its lease ran out (say the machine stalled) and another process took the job over.
    conn.execute("UPDATE reports SET lease_until = ? WHERE report_id = ?", (time.time() - 1, report_id))
    taken = claim(conn, "rival")
    assert (taken["report_id"], taken["attempts"]) == (report_id, 2)
    with caplog.at_level(logging.WARNING, logger="store_monitoring.jobs"):
        release.set()
        deadline = time.monotonic() + 5
        while not any("lost its lease" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.02)
    assert any("lost its lease" in r.getMessage() for r in caplog.records)
    job = database.get_report_job(conn, report_id)
    assert (job["status"], job["owner"], job["file"]) == ("Running", "rival", None)  # the rival's run goes on
    assert list(settings.reports_dir.iterdir()) == []  # neither the report nor its attempt's file


def test_two_pools_on_one_database_run_each_job_once(settings, pools):
    from dataclasses import replace

    shared = replace(settings, queue_limit=100)
    engines = [FakeEngine(), FakeEngine()]
    first, second = (pools(shared, generate=engine).start() for engine in engines)
    assert first.owner != second.owner
    conn = database.connect(settings.database)
    ids = [(first if n % 2 else second).submit({"as_of": f"2023-01-25T{n % 24:02d}:00:00Z"}) for n in range(40)]
    for report_id in ids:
        job = wait_for(conn, report_id)
        assert (job["status"], job["attempts"]) == ("Complete", 1)
        assert job["owner"] in (first.owner, second.owner)
    assert len(engines[0].calls) + len(engines[1].calls) == len(ids)   # one engine run per job
    assert all(len(database.report_attempts(conn, report_id)) == 1 for report_id in ids)


def test_queue_depth_and_limit_count_the_jobs_of_every_process(settings, pools):
    first, second = pools(settings), pools(settings)   # not started: jobs stay Queued
    for _ in range(settings.queue_limit):
        first.submit({})
    assert second.depth() == first.depth() == settings.queue_limit
    with pytest.raises(jobs.QueueFull):
        second.submit({})


def test_stop_taking_leaves_new_jobs_queued(settings, pools):
    engine = FakeEngine()
    pool = pools(settings, generate=engine)
    pool.poll_interval = 0.05
    pool.start()
    conn = database.connect(settings.database)
    pool.stop_taking()
    report_id = pool.submit({})
    time.sleep(10 * pool.poll_interval)
    assert database.get_report_job(conn, report_id)["status"] == "Queued" and engine.calls == []


def test_job_parameters_reach_the_engine_by_name(settings, pools):
    pool = pools(settings)
    arguments = pool._engine_arguments({"as_of": "2023-01-25T18:00:00Z", "store_ids": ["a"], "columns": "extended",
                                        "reach_minutes": None, "new_option": 3})
    # The real engine also gets the service's shard settings.
    shards = {"shard_stores": settings.shard_stores, "shard_polls": settings.shard_polls,
              "processes": settings.report_processes}
    assert arguments == {"as_of": pd.Timestamp("2023-01-25 18:00", tz="UTC"), "store_ids": ["a"],
                         "extended": True, "reach_minutes": None, "new_option": 3, **shards}
    assert pool._engine_arguments({}) == {"as_of": None, "store_ids": None, "extended": False,
                                          "reach_minutes": settings.poll_reach_minutes, **shards}


def test_an_old_database_gets_the_lease_columns_and_its_jobs_run(settings, pools):
    import sqlite3

    old = sqlite3.connect(settings.database)
    old.executescript("""
        CREATE TABLE reports (report_id TEXT PRIMARY KEY, status TEXT NOT NULL, created_at TEXT NOT NULL,
            started_at TEXT, finished_at TEXT, params TEXT NOT NULL DEFAULT '{}', as_of TEXT, rows INTEGER,
            seconds REAL, timings TEXT, progress REAL NOT NULL DEFAULT 0, attempts INTEGER NOT NULL DEFAULT 0,
            error TEXT, file TEXT);
        INSERT INTO reports (report_id, status, created_at, attempts)
            VALUES ('00000000-0000-4000-8000-000000000001', 'Running', '2023-01-25T00:00:00.000Z', 1);
    """)
    old.close()
    pool = pools(settings, generate=FakeEngine()).start()   # a job Running without a lease: taken over
    conn = database.connect(settings.database)
    columns = {row["name"] for row in conn.execute("PRAGMA table_info(reports)")}
    assert {"meta", "owner", "lease_until"} <= columns
    job = wait_for(conn, "00000000-0000-4000-8000-000000000001")
    assert (job["status"], job["attempts"], job["owner"]) == ("Complete", 2, pool.owner)


# --- retention, stray files, disk errors ----------------------------------------------------------------

def test_sweep_deletes_old_reports_and_stray_files_but_not_live_runs(settings, pools):
    import uuid as uuid_module

    pool = pools(settings, generate=FakeEngine())
    pool.start()
    conn = database.connect(settings.database)
    old, recent = pool.submit({}), pool.submit({})
    for report_id in (old, recent):
        wait_for(conn, report_id)
    conn.execute("UPDATE reports SET finished_at = '2000-01-01T00:00:00.000Z' WHERE report_id = ?", (old,))
    pool.close()
    live = pool.submit({})
    assert database.claim_report_job(conn, "another:1:x", 60, max_attempts=2, exhausted_error="x")["report_id"] == live
    dead, orphan = str(uuid_module.uuid4()), str(uuid_module.uuid4())
    files = {
        f".{live}.attempt-1.csv": True, f"..{live}.attempt-1.csv.k2j3.tmp": True,   # in use by a live run
        f".{dead}.attempt-1.csv": False, f"..{dead}.attempt-2.csv.ab12.tmp": False,  # left by a killed run
        f"{orphan}.csv": False,                                                      # its job is gone
        ".gitkeep": True, "notes.txt": True,                                         # not ours
    }
    for name in files:
        (settings.reports_dir / name).write_text("x")
    assert pool.sweep() == {"expired": 1, "stray_files": 3, "lost": 0}
    assert database.get_report_job(conn, old) is None and not (settings.reports_dir / f"{old}.csv").exists()
    assert database.report_attempts(conn, old) == []
    assert (settings.reports_dir / f"{recent}.csv").exists()
    for name, kept in files.items():
        assert (settings.reports_dir / name).exists() == kept, name
    conn.close()


def test_retention_setting_reaches_the_sweep(settings, pools):
    from dataclasses import replace

    pool = pools(replace(settings, report_retention_days=0.00001), generate=FakeEngine())
    pool.start()
    conn = database.connect(settings.database)
    report_id = pool.submit({})
    wait_for(conn, report_id)
    time.sleep(1)  # 0.00001 days is 0.86 s
    assert pool.sweep()["expired"] == 1 and database.get_report_job(conn, report_id) is None
    conn.close()


def test_delete_removes_the_job_and_its_file(settings, pools):
    pool = pools(settings, generate=FakeEngine()).start()
    conn = database.connect(settings.database)
    report_id = pool.submit({})
    wait_for(conn, report_id)
    assert (settings.reports_dir / f"{report_id}.csv").exists()
    assert pool.delete(report_id) is True
    assert database.get_report_job(conn, report_id) is None
    assert not (settings.reports_dir / f"{report_id}.csv").exists()
    assert pool.delete(report_id) is False
    conn.close()


@pytest.fixture
def small_filesystem(tmp_path):
    """A 64 KiB tmpfs of its own (real ENOSPC and EROFS); needs root, as on the CI machines."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)]).returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_named_in_the_jobs_error(settings, pools, small_filesystem):
    from dataclasses import replace

    reports = small_filesystem / "reports"
    reports.mkdir()
    import os

    filler = os.open(small_filesystem / "filler", os.O_WRONLY | os.O_CREAT)
    try:  # fill the file system up
        while os.write(filler, b"x" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(filler)
    pool = pools(replace(settings, reports_dir=reports), generate=FakeEngine()).start()
    conn = database.connect(settings.database)
    job = wait_for(conn, pool.submit({}))
    assert job["status"] == "Failed" and "the disk is full" in job["error"], job["error"]
    conn.close()


def test_a_read_only_reports_folder_is_named_in_the_jobs_error(settings, pools, small_filesystem):
    import subprocess
    from dataclasses import replace

    reports = small_filesystem / "reports"
    reports.mkdir()
    subprocess.run(["mount", "-o", "remount,ro", str(small_filesystem)], check=True)
    pool = pools(replace(settings, reports_dir=reports), generate=FakeEngine()).start()
    conn = database.connect(settings.database)
    job = wait_for(conn, pool.submit({}))
    assert job["status"] == "Failed" and "read-only" in job["error"], job["error"]
    conn.close()


# --- PostgreSQL: several hosts, each with its own reports folder ----------------------------------------------

def test_on_postgresql_a_report_made_on_one_host_downloads_from_another(postgresql_url, tmp_path):
    """Embedded mode, two hosts on one PostgreSQL (`make run` on each): host A runs the report, host B (no
    report threads, an empty reports folder of its own) sends the CSV all the same, from the database."""
    import app as app_module

    host_a = Settings(database=postgresql_url, reports_dir=tmp_path / "host-a", data_dir=tmp_path / "data",
                      workers=1, queue_limit=3)
    host_b = Settings(database=postgresql_url, reports_dir=tmp_path / "host-b", data_dir=tmp_path / "data",
                      workers=1, queue_limit=3)
    runner = app_module.create_app(host_a, generate=FakeEngine())
    other = app_module.create_app(host_b, start_workers=False)
    try:
        client = other.test_client()
        answer = client.post("/trigger_report", json={})
        assert answer.status_code == 202, answer.get_data(as_text=True)
        report_id = answer.get_json()["report_id"]
        conn = database.connect(postgresql_url)
        job = wait_for(conn, report_id)
        assert job["status"] == "Complete", job["error"]
        made = (host_a.reports_dir / f"{report_id}.csv").read_bytes()
        assert database.report_file(conn, report_id) == made   # kept with the row that says Complete
        assert not (host_b.reports_dir / f"{report_id}.csv").exists()
        answer = client.get(f"/reports/{report_id}.csv")
        assert answer.status_code == 200 and answer.data == made
        assert (host_b.reports_dir / f"{report_id}.csv").read_bytes() == made   # cached on host B now
        # deleting the report removes the kept copy too
        assert client.delete(f"/reports/{report_id}").status_code in (200, 204)
        assert database.report_file(conn, report_id) is None
    finally:
        app_module.shutdown(runner, timeout=5)
        app_module.shutdown(other, timeout=5)


# --- cluster mode (no broker needed: the tasks are never sent here) --------------------------------------------

CELERY_LEASE = 253402300799.0   # cluster.CLUSTER_LEASE_UNTIL (not imported: no Celery needed here)


@pytest.fixture
def cluster_settings(tmp_path, redis_url):
    """Cluster mode on a real Redis (an empty database of the session's server) with no worker running."""
    (tmp_path / "reports").mkdir()
    return Settings(database=tmp_path / "db.sqlite3", reports_dir=tmp_path / "reports", data_dir=tmp_path / "data",
                    workers=2, queue_limit=3, broker_url=redis_url, broker_visibility_timeout=60)


def start_celery_job(conn, report_id: str, worker: str = "w1") -> dict:
    """What a start task does to the job row (cluster.begin_attempt)."""
    return database.start_report_attempt(conn, report_id, f"celery:{worker}@host:1", lease_until=CELERY_LEASE,
                                         max_attempts=jobs.MAX_ATTEMPTS, exhausted_error=jobs.INTERRUPTED_ERROR,
                                         owner_prefix="celery:")


def test_in_cluster_mode_the_queue_limit_counts_running_jobs_too(cluster_settings, pools, monkeypatch):
    """A start task makes its job Running at once: a burst of triggers must still stop at the limit."""
    pool = pools(cluster_settings)
    sent = []
    monkeypatch.setattr(pool, "_enqueue", lambda conn, report_id: sent.append(report_id))
    conn = database.connect(cluster_settings.database)
    first = [pool.submit({}) for _ in range(2)]
    for report_id in first:   # the workers took them
        assert start_celery_job(conn, report_id)["status"] == "Running"
    pool.submit({})
    assert pool.depth() == 3 == cluster_settings.queue_limit
    with pytest.raises(jobs.QueueFull):
        pool.submit({})
    assert len(sent) == 3 and conn.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 3
    database.mark_report_complete(conn, first[0], file="x.csv", rows=0, as_of="2023-01-25T18:00:00Z", seconds=1)
    assert pool.depth() == 2
    pool.submit({})   # a finished job frees its place
    with pytest.raises(jobs.QueueFull):
        pool.submit({})


class Clock:
    """jobs.time for a test: the real clocks plus an offset the test moves forward."""

    def __init__(self):
        self.offset = 0.0

    def time(self):
        return time.time() + self.offset

    def monotonic(self):
        return time.monotonic() + self.offset

    def sleep(self, seconds):
        time.sleep(seconds)


def test_the_sweep_fails_cluster_jobs_whose_tasks_the_broker_lost(cluster_settings, pools, monkeypatch):
    """Redis restarted without persistence: a Queued job's start task, or a Running job's shards, are gone.
    While the (real) broker holds a message of the service, nothing is failed: a backlog, or no worker
    running. Once it holds none, jobs that have not moved for twice the visibility timeout are failed;
    jobs that move, embedded jobs and finished jobs are left alone."""
    import cluster
    import redis
    from dataclasses import replace

    settings = replace(cluster_settings, broker_visibility_timeout=1)   # the window: 2 s
    clock = Clock()
    monkeypatch.setattr(jobs, "time", clock)
    pool = pools(settings)
    conn = database.connect(settings.database)
    ids = {name: f"00000000-0000-4000-8000-00000000000{n}" for n, name in
           enumerate(["queued", "stalled", "moving", "embedded", "done"], 1)}
    for name, report_id in ids.items():
        database.create_report_job(conn, report_id, {})
        if name in ("stalled", "moving", "done"):
            start_celery_job(conn, report_id)
    database.mark_report_complete(conn, ids["done"], file="x.csv", rows=0, as_of="2023-01-25T18:00:00Z", seconds=1)
    conn.execute("UPDATE reports SET status = 'Running', owner = 'host:1:abc', lease_until = ? "
                 "WHERE report_id = ?", (time.time() + 3600, ids["embedded"]))

    def status(name):
        return database.get_report_job(conn, ids[name])["status"]

    # A backlog: a real task message waits in the queue (no worker runs in this test).
    cluster.enqueue(pool.sender(), "00000000-0000-4000-8000-0000000000ff")
    assert pool.broker_pending() == 1
    assert pool.sweep()["lost"] == 0            # the first look: nothing is known to have stood still yet
    clock.offset += 3
    database.store_report_part(conn, ids["moving"], 0, 4, b"part")
    assert pool.fail_lost_jobs() == []          # 3 s without a move, but the broker holds a message
    redis.Redis.from_url(settings.broker_url).flushdb()   # the broker restarted empty
    assert pool.broker_pending() == 0
    clock.offset += 1
    database.store_report_part(conn, ids["moving"], 1, 4, b"part")
    assert sorted(pool.fail_lost_jobs()) == sorted([ids["queued"], ids["stalled"]])   # 4 s without a move
    for name in ("queued", "stalled"):
        job = database.get_report_job(conn, ids[name])
        assert job["status"] == "Failed" and job["error"] == jobs.LOST_TASK_ERROR
        assert "the broker lost this report's tasks" in job["error"] and "trigger it again" in job["error"]
    assert database.report_attempts(conn, ids["stalled"])[-1]["outcome"] == "Failed"
    assert [status(name) for name in ("moving", "embedded", "done")] == ["Running", "Running", "Complete"]
    clock.offset += 2.5
    assert pool.fail_lost_jobs() == [ids["moving"]]   # it stopped moving too
    assert database.report_parts(conn, ids["moving"]) == []
    assert status("embedded") == "Running"      # an embedded job's lease is the embedded pools' business
    assert pool.sweep()["lost"] == 0


def test_nothing_is_failed_as_lost_while_the_broker_cannot_be_asked(cluster_settings, pools, monkeypatch):
    from dataclasses import replace

    clock = Clock()
    monkeypatch.setattr(jobs, "time", clock)
    pool = pools(replace(cluster_settings, broker_visibility_timeout=1, broker_url="redis://127.0.0.1:9/0"))
    conn = database.connect(cluster_settings.database)
    database.create_report_job(conn, "00000000-0000-4000-8000-000000000001", {})
    assert pool.broker_pending() is None
    assert pool.fail_lost_jobs() == []
    clock.offset += 10
    assert pool.fail_lost_jobs() == []


def test_a_lost_job_is_not_failed_when_it_moves_or_in_embedded_mode(cluster_settings, settings, pools, monkeypatch):
    from dataclasses import replace

    clock = Clock()
    monkeypatch.setattr(jobs, "time", clock)
    pool = pools(replace(cluster_settings, broker_visibility_timeout=1))
    embedded = pools(replace(settings, database=cluster_settings.database))
    conn = database.connect(cluster_settings.database)
    report_id = "00000000-0000-4000-8000-000000000001"
    database.create_report_job(conn, report_id, {})
    assert pool.fail_lost_jobs() == [] and embedded.fail_lost_jobs() == []
    clock.offset += 1.5
    start_celery_job(conn, report_id)           # its start task ran (late): Running now
    assert pool.fail_lost_jobs() == []
    clock.offset += 1.5
    start_celery_job(conn, report_id, "w2")     # delivered again (its worker died): it moved
    assert pool.fail_lost_jobs() == [] and embedded.fail_lost_jobs() == []
    clock.offset += 2.5
    assert embedded.fail_lost_jobs() == [] and embedded.sweep()["lost"] == 0
    assert pool.fail_lost_jobs() == [report_id]
