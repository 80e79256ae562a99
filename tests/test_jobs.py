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
    return Settings(database_path=tmp_path / "db.sqlite3", reports_dir=tmp_path / "reports",
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

    def __call__(self, database_path, out_path, *, as_of=None, store_ids=None, extended=False,
                 default_timezone="America/Chicago", progress=None):
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
    conn = database.connect(settings.database_path)
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


def test_progress_is_recorded_while_running(settings, pools):
    release = threading.Event()
    pool = pools(settings, generate=FakeEngine(block=release)).start()
    conn = database.connect(settings.database_path)
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
    conn = database.connect(settings.database_path)
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
    conn = database.connect(settings.database_path)
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
    conn = database.connect(settings.database_path)
    job = wait_for(conn, pool.submit({}))
    assert job["status"] == "Failed"
    assert job["error"] == "there are no polls in the database; load store_status first"


def test_worker_survives_a_failing_job(settings, pools):
    engine = FakeEngine(error=RuntimeError("boom"))
    pool = pools(settings, generate=engine).start()
    conn = database.connect(settings.database_path)
    assert wait_for(conn, pool.submit({}))["status"] == "Failed"
    engine.error = None
    assert wait_for(conn, pool.submit({}))["status"] == "Complete"
    assert pool.alive() == settings.workers


def test_a_failure_outside_the_engine_still_ends_the_job(settings, pools):
    # A stored as_of that cannot be read, and an outcome that cannot be recorded: both end Failed,
    # never Running until the next restart.
    pool = pools(settings, generate=FakeEngine()).start()
    conn = database.connect(settings.database_path)
    assert wait_for(conn, pool.submit({"as_of": "not a time"}))["status"] == "Failed"
    pool._generate = lambda *args, **kwargs: SimpleNamespace(rows="many")
    job = wait_for(conn, pool.submit({}))
    assert job["status"] == "Failed" and "internal error" in job["error"]


def insert_job(conn, report_id, status, attempts):
    database.create_report_job(conn, report_id, {"as_of": None, "store_ids": None, "columns": "standard"})
    conn.execute("UPDATE reports SET status = ?, attempts = ? WHERE report_id = ?", (status, attempts, report_id))


def test_recovery_reruns_interrupted_jobs_once(settings, pools):
    conn = database.connect(settings.database_path)
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
    conn = database.connect(settings.database_path)
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
