"""Cluster mode with real components: Debian's redis-server, `celery -A cluster worker` processes, gunicorn.

A Redis server on a free loopback port (no persistence, in a temporary folder) and two Celery workers
(w1, w2; one prefork process each) on a SQLite file holding a small generated data set, with
SM_SHARD_STORES small so that a report has several shards. Reports are triggered through a real gunicorn
server or the Flask test client in cluster mode (SM_BROKER_URL) and compared byte for byte with the same
report made by the embedded engine (`report_generator.generate_report`). No eager mode, no fake broker.

The workers see SM_CLUSTER_TEST_HOLD (cluster.TEST_HOLD_ENV): the tests slow down or hold one worker's
shards by creating files there. Marked `cluster`; skipped when /usr/bin/redis-server is missing.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

import pytest

import database
import jobs
import report_generator
import sample_data
from config import Settings
from local_servers import free_port, wait_until

if shutil.which("redis-server") is None and not os.path.exists("/usr/bin/redis-server"):
    pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)", allow_module_level=True)

import cluster  # noqa: E402  (celery: only where the tests run)

pytestmark = pytest.mark.cluster

PROJECT = Path(__file__).resolve().parent.parent
STORES = 90
SHARD_STORES = 12                 # 90 stores: 8 shards
VISIBILITY_SECONDS = 4            # a killed worker's task is delivered again this long after it was taken
REACH = Settings().poll_reach_minutes
SHARD_RE = r"report {}: shard (\d+) of (\d+) computed by (\w+)@"


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    try:
        return wait_until(predicate, timeout, what, interval)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


def clean_environ(**extra) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "GUNICORN_"))}
    environ.update({k: str(v) for k, v in extra.items()})
    return environ


# --- the components --------------------------------------------------------------------------------------

class Worker:
    """`celery -A cluster worker` in its own process group (kill -9 takes the pool process with it)."""

    def __init__(self, name: str, folder: Path, environ: dict):
        self.name = name
        self.log_path = folder / f"worker-{name}.log"
        self.log_file = open(self.log_path, "ab")
        self.log_start = self.log_file.tell()   # a restarted worker appends: its readiness is in what follows
        self.proc = subprocess.Popen(cluster.worker_command(name, standalone=True), cwd=PROJECT, env=environ,
                                     stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> None:
        def ready():
            assert self.proc.poll() is None, f"worker {self.name} exited:\n{self.log()}"
            fresh = self.log_path.read_bytes()[self.log_start:].decode(errors="replace")
            return re.search(rf"{self.name}@\S+ ready", fresh)

        wait_for(ready, timeout, f"worker {self.name} to be ready", interval=0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.log_file.close()


class Cluster:
    """Redis and the workers on one database; `settings(...)` for web processes pointed at them."""

    def __init__(self, folder: Path, location, broker_url: str):
        self.folder, self.location, self.broker_url = folder, location, broker_url
        self.hold = folder / "hold"
        self.hold.mkdir(parents=True, exist_ok=True)
        self.environ = clean_environ(SM_DATABASE=location, SM_BROKER_URL=broker_url, SM_SHARD_STORES=SHARD_STORES,
                                     SM_BROKER_VISIBILITY_TIMEOUT=VISIBILITY_SECONDS,
                                     SM_REPORTS_DIR=folder / "worker-reports", SM_DATA_DIR=folder / "no-data",
                                     **{cluster.TEST_HOLD_ENV: self.hold}, PYTHONUNBUFFERED=1)
        self.workers: dict[str, Worker] = {}

    def start_workers(self, *names: str) -> None:
        started = [Worker(name, self.folder, self.environ) for name in names]
        for worker in started:
            self.workers[worker.name] = worker
        for worker in started:
            worker.wait_ready()

    def settings(self, reports_dir: Path, **overrides) -> Settings:
        reports_dir.mkdir(parents=True, exist_ok=True)
        values = dict(database=self.location, reports_dir=reports_dir, data_dir=self.folder / "no-data",
                      broker_url=self.broker_url, shard_stores=SHARD_STORES, queue_limit=100)
        values.update(overrides)
        return Settings.from_env({}, **values)

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()


def load_data(location, folder: Path) -> None:
    paths = sample_data.generate_dataset(folder / "data", stores=STORES, seed=7)
    files = {table: Path(path) if path else None for table, path in paths.items() if table in database.TABLE_COLUMNS}
    with closing(database.connect(location)) as conn:
        database.load_tables(conn, files)


def embedded_report(location, folder: Path, *, extended: bool = False) -> bytes:
    """The same report made by the embedded engine in this process."""
    out = folder / f"embedded-{'extended' if extended else 'standard'}.csv"
    report_generator.generate_report(location, out, shard_stores=SHARD_STORES, processes=0, extended=extended,
                                     reach_minutes=REACH)
    return out.read_bytes()


@pytest.fixture(scope="module")
def redis(redis_server):
    """The session's Redis (tests/conftest.py); these tests use its databases 0 and 1."""
    return redis_server


@pytest.fixture(scope="module")
def sqlite_cluster(tmp_path_factory, redis):
    folder = tmp_path_factory.mktemp("cluster")
    location = folder / "cluster.sqlite3"
    load_data(location, folder)
    running = Cluster(folder, location, f"{redis.url}/0")
    running.start_workers("w1", "w2")
    running.expected = {extended: embedded_report(location, folder, extended=extended) for extended in (False, True)}
    yield running
    running.stop()


@pytest.fixture
def web(sqlite_cluster, tmp_path):
    """A Flask app in cluster mode (test client) whose reports folder is empty."""
    import app as app_module

    flask_app = app_module.create_app(sqlite_cluster.settings(tmp_path / "web-reports"))
    yield flask_app
    app_module.shutdown(flask_app, timeout=5)


def trigger(client, **body) -> str:
    answer = client.post("/trigger_report", json=body)
    assert answer.status_code == 202, answer.get_data(as_text=True)
    return answer.get_json()["report_id"]


def wait_done(location, report_id: str, timeout: float = 45) -> dict:
    def done():
        with closing(database.connect(location)) as conn:
            job = database.get_report_job(conn, report_id)
        return job if job["status"] in ("Complete", "Failed") else None

    job = wait_for(done, timeout, f"report {report_id}")
    assert job["status"] == "Complete", job["error"]
    return job


def shard_workers(running: Cluster, report_id: str) -> dict[int, set[str]]:
    """Which workers computed (and stored) each shard of the report, from the workers' logs."""
    found: dict[int, set[str]] = {}
    for worker in running.workers.values():
        for shard, _, name in re.findall(SHARD_RE.format(report_id), worker.log()):
            found.setdefault(int(shard), set()).add(name)
    return found


# --- the tests ------------------------------------------------------------------------------------------

def test_a_report_through_gunicorn_and_the_workers_equals_the_embedded_one(sqlite_cluster, tmp_path):
    """The real server in cluster mode: trigger, progress, download from an empty reports folder."""
    port = free_port()
    reports = tmp_path / "gunicorn-reports"
    environ = dict(sqlite_cluster.environ, SM_PORT=port, SM_HOST="127.0.0.1", SM_REPORTS_DIR=reports,
                   SM_WEB_WORKERS=1, SM_WEB_THREADS=2)
    environ.pop(cluster.TEST_HOLD_ENV)
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"], cwd=PROJECT,
                                  env=clean_environ(**{k: v for k, v in environ.items() if k.startswith("SM_")}),
                                  stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def healthy():
            assert server.poll() is None, log_path.read_text()
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                    return json.load(answer)
            except OSError:
                return None

        health = wait_for(healthy, 30, "gunicorn to answer /health", interval=0.1)
        assert health["broker"] == "ok" and health["workers"] == {"alive": 0, "configured": 0}
        request = urllib.request.Request(f"{url}/trigger_report", data=b"{}", method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 202
            report_id = json.load(answer)["report_id"]
        job = wait_done(sqlite_cluster.location, report_id)
        with urllib.request.urlopen(f"{url}/get_report?report_id={report_id}", timeout=10) as answer:
            status = json.load(answer)
        assert status["status"] == "Complete" and status["rows"] == STORES
        assert not any(reports.iterdir())   # nothing was written here: the worker kept the CSV in the database
        with urllib.request.urlopen(f"{url}/reports/{report_id}.csv", timeout=10) as answer:
            body = answer.read()
        assert body == sqlite_cluster.expected[False]
        assert (reports / f"{report_id}.csv").read_bytes() == body   # cached for the next download
        assert "Traceback" not in log_path.read_text()
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
    with closing(database.connect(sqlite_cluster.location)) as conn:
        attempts = database.report_attempts(conn, report_id)
        assert database.report_parts(conn, report_id) == []   # the merge deleted them
        assert database.report_file(conn, report_id) == body
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "Complete")]
    assert attempts[0]["owner"].startswith("celery:w") and job["owner"] == attempts[0]["owner"]
    assert job["as_of"] and job["meta"]["stores"] == STORES and set(job["timings"]) == {"load", "compute", "write"}
    assert len(shard_workers(sqlite_cluster, report_id)) == -(-STORES // SHARD_STORES)


def test_two_workers_both_take_shards_and_progress_is_per_shard(sqlite_cluster, web):
    for name in ("w1", "w2"):   # each shard takes a moment, so both workers get some
        (sqlite_cluster.hold / f"{name}.delay").write_text("0.3")
    try:
        client = web.test_client()
        report_id = trigger(client, columns="extended")
        seen = set()

        def finished():
            answer = client.get(f"/get_report?report_id={report_id}").get_json()
            if answer["status"] == "Running":
                seen.add(answer["progress"])
            return answer["status"] != "Running"

        wait_for(finished, 45, f"report {report_id}", interval=0.02)
    finally:
        for name in ("w1", "w2"):
            (sqlite_cluster.hold / f"{name}.delay").unlink()
    wait_done(sqlite_cluster.location, report_id)
    answer = client.get(f"/reports/{report_id}.csv")
    assert answer.status_code == 200 and answer.data == sqlite_cluster.expected[True]
    by_shard = shard_workers(sqlite_cluster, report_id)
    assert sorted(by_shard) == list(range(1, 9))
    assert set().union(*by_shard.values()) == {"w1", "w2"}
    steps = {round(0.9 * n / 8, 4) for n in range(1, 8)}
    assert seen & steps, f"no per-shard progress seen: {sorted(seen)}"
    rows = client.get(f"/reports/{report_id}/rows?limit=5").get_json()   # the rows API reads the cached file
    assert rows["total"] == STORES and len(rows["rows"]) == 5


def test_a_worker_killed_mid_shard_loses_nothing(sqlite_cluster, web):
    """kill -9 of a whole worker (main and pool process) while it computes a shard: after the visibility
    timeout Redis gives the shard to the other worker, and the report still equals the embedded one."""
    hold = sqlite_cluster.hold / "w1.hold"
    hold.touch()
    (sqlite_cluster.hold / "w2.delay").write_text("0.2")   # so that w1 surely gets a shard
    try:
        report_id = trigger(web.test_client())
        holding = wait_for(lambda: sorted(sqlite_cluster.hold.glob(f"w1.holding.{report_id}.*")), 30,
                           "w1 to hold a shard")
        sqlite_cluster.workers["w1"].kill()
        killed_at = time.monotonic()
        held_shard = int(holding[0].name.rsplit(".", 1)[1])
        job = wait_done(sqlite_cluster.location, report_id, timeout=60)
        assert time.monotonic() - killed_at < 40
    finally:
        hold.unlink(missing_ok=True)
        (sqlite_cluster.hold / "w2.delay").unlink(missing_ok=True)
        if sqlite_cluster.workers["w1"].proc.poll() is not None:
            sqlite_cluster.start_workers("w1")   # for the tests after this one
    answer = web.test_client().get(f"/reports/{report_id}.csv")
    assert answer.status_code == 200 and answer.data == sqlite_cluster.expected[False]
    by_shard = shard_workers(sqlite_cluster, report_id)
    assert by_shard[held_shard + 1] == {"w2"}, by_shard      # the held shard was done again, by w2
    assert job["rows"] == STORES


def test_a_pool_process_killed_mid_shard_gives_its_shard_back(sqlite_cluster, web):
    """kill -9 of the pool process only (the worker lives on): task_reject_on_worker_lost puts the shard
    back on the queue once the worker has seen its process die (WorkerLostError), and it is done again."""
    hold = sqlite_cluster.hold / "w1.hold"
    hold.touch()
    (sqlite_cluster.hold / "w2.delay").write_text("0.2")
    w1 = sqlite_cluster.workers["w1"]
    log_before = len(w1.log())
    try:
        report_id = trigger(web.test_client())
        holding = wait_for(lambda: sorted(sqlite_cluster.hold.glob(f"w1.holding.{report_id}.*")), 30,
                           "w1 to hold a shard")
        pid = int(wait_for(lambda: holding[0].read_text(), 5, "the holding pid"))
        held_shard = int(holding[0].name.rsplit(".", 1)[1])
        assert pid != w1.proc.pid
        os.kill(pid, signal.SIGKILL)   # while it holds the shard: it cannot have finished it
        wait_for(lambda: "WorkerLostError" in w1.log()[log_before:], 30, "w1 to see its pool process die")
        hold.unlink()   # the shard may come back to w1's new pool process: let it through then
        job = wait_done(sqlite_cluster.location, report_id, timeout=60)
    finally:
        hold.unlink(missing_ok=True)
        (sqlite_cluster.hold / "w2.delay").unlink(missing_ok=True)
    assert w1.proc.poll() is None   # the worker itself lives on
    assert shard_workers(sqlite_cluster, report_id)[held_shard + 1]   # done again, by w1 or w2
    assert web.test_client().get(f"/reports/{report_id}.csv").data == sqlite_cluster.expected[False]
    assert job["rows"] == STORES


def test_broker_unreachable_gives_503_and_a_failed_job(sqlite_cluster, tmp_path):
    import app as app_module

    settings = sqlite_cluster.settings(tmp_path / "reports", broker_url=f"redis://127.0.0.1:{free_port()}/0")
    flask_app = app_module.create_app(settings)
    try:
        client = flask_app.test_client()
        started = time.monotonic()
        answer = client.post("/trigger_report", json={})
        assert time.monotonic() - started < 15
        assert answer.status_code == 503 and answer.is_json
        error = answer.get_json()["error"]
        assert "broker" in error and "Traceback" not in error
        report_id = re.search(r"report ([0-9a-f-]{36})", error)[1]
        with closing(database.connect(sqlite_cluster.location)) as conn:
            job = database.get_report_job(conn, report_id)
        assert job["status"] == "Failed" and job["error"] == cluster.BROKER_ERROR
        status = client.get(f"/get_report?report_id={report_id}").get_json()
        assert status == {"status": "Failed", "error": cluster.BROKER_ERROR}
        health = client.get("/health")
        assert health.status_code == 503 and health.get_json()["broker"].startswith("unreachable")
    finally:
        app_module.shutdown(flask_app, timeout=5)


def test_a_report_made_elsewhere_downloads_from_any_web_process(sqlite_cluster, web, tmp_path):
    """Two web processes with empty reports folders of their own: both send the CSV (from the database)."""
    import app as app_module

    report_id = trigger(web.test_client())
    wait_done(sqlite_cluster.location, report_id)
    other = app_module.create_app(sqlite_cluster.settings(tmp_path / "other-reports"))
    try:
        for flask_app in (other, web):
            folder = Path(flask_app.config["SM_SETTINGS"].reports_dir)
            assert not (folder / f"{report_id}.csv").exists()
            answer = flask_app.test_client().get(f"/reports/{report_id}.csv")
            assert answer.status_code == 200 and answer.data == sqlite_cluster.expected[False]
            assert (folder / f"{report_id}.csv").read_bytes() == answer.data
            assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
    finally:
        app_module.shutdown(other, timeout=5)


def test_tasks_run_again_change_nothing(sqlite_cluster, monkeypatch):
    """Redelivery: a shard stored twice is kept once, a merge of a Complete job does nothing, a start task
    delivered again sends the plan the first one made. (The task functions called here directly, in this
    process, on the cluster's database and Redis.)"""
    settings = sqlite_cluster.settings(sqlite_cluster.folder / "direct-reports")
    monkeypatch.setattr(cluster, "_settings", settings)   # what the workers read from their environment
    with closing(database.connect(settings.database)) as conn:
        report_id = "00000000-0000-4000-8000-000000000001"
        database.create_report_job(conn, report_id, {"columns": "standard", "reach_minutes": REACH})
        job = cluster.begin_attempt(conn, report_id, "celery:test@here:1")
        assert (job["status"], job["attempts"], job["owner"]) == ("Running", 1, "celery:test@here:1")
        plan = cluster._plan(settings, job)
        assert cluster._plan(settings, job) == plan   # kept in Redis: the same plan again
        shards = len(plan["shards"])
        for shard in range(shards):
            cluster.compute_shard.run(report_id, shard, shards, cluster.shard_work(plan, shard))
        cluster.compute_shard.run(report_id, 0, shards, cluster.shard_work(plan, 0))   # delivered twice
        assert len(database.report_parts(conn, report_id)) == shards
        assert database.get_report_job(conn, report_id)["progress"] == pytest.approx(0.9)
        cluster.merge_report.run([], report_id, plan)
        done = database.get_report_job(conn, report_id)
        assert done["status"] == "Complete" and database.report_parts(conn, report_id) == []
        assert database.report_file(conn, report_id) == sqlite_cluster.expected[False]
        cluster.compute_shard.run(report_id, 1, shards, cluster.shard_work(plan, 1))   # late: skipped, job done
        cluster.merge_report.run([], report_id, plan)           # and the merge again: nothing changes
        assert database.get_report_job(conn, report_id) == done
        assert database.report_parts(conn, report_id) == []


def test_a_report_error_fails_the_job_with_its_message(sqlite_cluster, tmp_path, monkeypatch):
    """No polls at all: the start task marks the job Failed with the engine's message for users."""
    empty = tmp_path / "empty.sqlite3"
    database.connect(empty).close()
    monkeypatch.setattr(cluster, "_settings", sqlite_cluster.settings(tmp_path / "reports", database=empty))
    with closing(database.connect(empty)) as conn:
        report_id = "00000000-0000-4000-8000-000000000005"
        database.create_report_job(conn, report_id, {})
        with pytest.raises(report_generator.ReportError):
            cluster.start_report.run(report_id)
        job = database.get_report_job(conn, report_id)
    assert job["status"] == "Failed" and job["error"].startswith("no polls have been loaded yet")


def test_a_start_task_delivered_again_is_a_second_attempt(storage_location):
    """On each backend: the start task's job row and attempts (cluster.begin_attempt)."""
    import jobs

    with closing(database.connect(storage_location)) as conn:
        report_id = "00000000-0000-4000-8000-000000000002"
        database.create_report_job(conn, report_id, {})
        first = cluster.begin_attempt(conn, report_id, "celery:a@here:1")
        assert (first["status"], first["attempts"], first["owner"]) == ("Running", 1, "celery:a@here:1")
        assert first["lease_until"] == cluster.CLUSTER_LEASE_UNTIL
        again = cluster.begin_attempt(conn, report_id, "celery:b@here:2")   # its worker died: delivered again
        assert (again["attempts"], again["owner"]) == (2, "celery:b@here:2")
        assert [(a["attempt"], a["owner"], a["outcome"]) for a in database.report_attempts(conn, report_id)] == [
            (1, "celery:a@here:1", "worker lost"), (2, "celery:b@here:2", None)]
        third = cluster.begin_attempt(conn, report_id, "celery:c@here:3")   # interrupted twice: Failed
        assert third["status"] == "Failed" and third["error"] == jobs.INTERRUPTED_ERROR
        assert database.report_attempts(conn, report_id)[-1]["outcome"] == "Failed"
        assert cluster.begin_attempt(conn, report_id, "celery:d@here:4") is None
        assert cluster.begin_attempt(conn, "00000000-0000-4000-8000-00000000dead", "celery:e@here:5") is None
        # a job an embedded-mode worker claimed is left to it
        other = "00000000-0000-4000-8000-000000000004"
        database.create_report_job(conn, other, {})
        assert database.claim_report_job(conn, "host:1:abc", 30, max_attempts=jobs.MAX_ATTEMPTS,
                                         exhausted_error="x")["report_id"] == other
        assert cluster.begin_attempt(conn, other, "celery:f@here:6") is None


def test_embedded_workers_never_take_over_a_cluster_job(sqlite_cluster, tmp_path):
    """A Running Celery job's lease never runs out: an embedded pool on the same database neither claims
    it nor fails it in its sweep (and web processes in cluster mode claim nothing at all)."""
    import jobs

    with closing(database.connect(sqlite_cluster.location)) as conn:
        report_id = "00000000-0000-4000-8000-000000000003"
        database.create_report_job(conn, report_id, {})
        cluster.begin_attempt(conn, report_id, "celery:w9@elsewhere:1")
        embedded = jobs.ReportJobs(Settings.from_env({}, database=sqlite_cluster.location, reports_dir=tmp_path))
        assert report_id not in embedded.recover()["failed"]
        assert database.claim_report_job(conn, "embedded:1", 30, max_attempts=jobs.MAX_ATTEMPTS,
                                         exhausted_error="x") is None
        assert database.get_report_job(conn, report_id)["owner"] == "celery:w9@elsewhere:1"
        database.delete_report_job(conn, report_id)
    assert jobs.ReportJobs(sqlite_cluster.settings(tmp_path / "r")).workers == 0


def test_parts_are_arrow_and_round_trip_exactly(sqlite_cluster):
    now_us, shards = report_generator.plan_report(sqlite_cluster.location, shard_stores=SHARD_STORES)
    result = report_generator._report_shard(str(sqlite_cluster.location), now_us, tuple(shards[0]), None, REACH,
                                            Settings().default_timezone, True)
    body = cluster.encode_part(*result, worker="w7@host")
    assert body[:4] != b"\x80\x04"  # not a pickle; an Arrow IPC stream
    import pyarrow as pa

    assert pa.ipc.open_stream(pa.py_buffer(body)).read_all().num_rows == len(result[0])
    frame, attrs, read_s, compute_s, worker = cluster.decode_part(body)
    import pandas as pd

    pd.testing.assert_frame_equal(frame, result[0])
    assert (attrs, read_s, compute_s, worker) == (result[1], result[2], result[3], "w7@host")


def test_the_broker_url_setting():
    assert Settings.from_env({}).broker_url is None
    settings = Settings.from_env({"SM_BROKER_URL": "redis://:secret@10.0.0.5:6379/2",
                                  "SM_BROKER_VISIBILITY_TIMEOUT": "120"})
    assert settings.broker_url == "redis://:secret@10.0.0.5:6379/2" and "secret" not in repr(settings)
    assert settings.broker_visibility_timeout == 120
    with pytest.raises(ValueError, match="SM_BROKER_URL must be a Redis URL"):
        Settings.from_env({"SM_BROKER_URL": "amqp://guest@localhost//"})
    config = cluster.celery_config(settings)
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]
    assert config["worker_prefetch_multiplier"] == 1 and config["task_serializer"] == "json"
    assert config["broker_transport_options"]["visibility_timeout"] == 120
    assert config["result_backend"] == settings.broker_url


def test_against_postgresql_too(request, redis, tmp_path_factory):
    """The byte-for-byte comparison on PostgreSQL, when tests/conftest.py provides a server."""
    try:
        url = request.getfixturevalue("postgresql_url")
    except pytest.FixtureLookupError:
        pytest.skip("tests/conftest.py has no postgresql_url fixture (yet)")
    folder = tmp_path_factory.mktemp("pg-cluster")
    load_data(url, folder)
    # Redis database 1: a queue of its own (workers on another database must not take these tasks)
    running = Cluster(folder, url, f"{redis.url}/1")
    try:
        running.start_workers("p1")
        expected = embedded_report(url, folder)
        import app as app_module

        flask_app = app_module.create_app(running.settings(folder / "web-reports"))
        try:
            client = flask_app.test_client()
            report_id = trigger(client)
            wait_done(url, report_id)
            answer = client.get(f"/reports/{report_id}.csv")
            assert answer.status_code == 200 and answer.data == expected
            with closing(database.connect(url)) as conn:
                assert [a["outcome"] for a in database.report_attempts(conn, report_id)] == ["Complete"]
        finally:
            app_module.shutdown(flask_app, timeout=5)
    finally:
        running.stop()


# --- database retries, the merge's end, the messages ------------------------------------------------------

def test_database_errors_while_planning_count_one_attempt(sqlite_cluster, monkeypatch):
    """Two transient database errors while the start task plans: retried inside the task, so the job has
    one attempt (not 'interrupted twice'), and the real workers complete it."""
    settings = sqlite_cluster.settings(sqlite_cluster.folder / "direct-reports")
    monkeypatch.setattr(cluster, "_settings", settings)
    monkeypatch.setattr(cluster, "DB_RETRY_SECONDS", 0)
    plan_report, calls = report_generator.plan_report, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return plan_report(*args, **kwargs)

    monkeypatch.setattr(report_generator, "plan_report", flaky)
    report_id = "00000000-0000-4000-8000-000000000006"
    with closing(database.connect(settings.database)) as conn:
        database.create_report_job(conn, report_id, {"columns": "standard", "reach_minutes": REACH})
    cluster.start_report.run(report_id)   # sends the chord to the cluster's workers
    assert len(calls) == 3
    job = wait_done(settings.database, report_id)
    assert job["attempts"] == 1
    with closing(database.connect(settings.database)) as conn:
        assert [a["outcome"] for a in database.report_attempts(conn, report_id)] == ["Complete"]
        assert database.report_file(conn, report_id) == sqlite_cluster.expected[False]


def test_a_start_step_retried_after_its_commit_went_through_counts_once(storage_location):
    """A database error that came with the commit's answer: the retry of the same delivery finds the job
    Running under its own owner and takes that attempt as its own."""
    with closing(database.connect(storage_location)) as conn:
        report_id = "00000000-0000-4000-8000-000000000007"
        database.create_report_job(conn, report_id, {})
        first = cluster._begin(conn, report_id, "celery:a@here:1", again=False)
        again = cluster._begin(conn, report_id, "celery:a@here:1", again=True)
        assert first["attempts"] == again["attempts"] == 1
        redelivered = cluster._begin(conn, report_id, "celery:b@here:2", again=True)   # another delivery
        assert redelivered["attempts"] == 2
        assert len(database.report_attempts(conn, report_id)) == 2


class FakeTask:
    """What _run_step reads of a bound task."""
    name = "store_monitoring.merge_report"

    def __init__(self, retries: int):
        self.request = SimpleNamespace(retries=retries)


def test_database_retries_are_counted_apart_from_the_merges_waits(sqlite_cluster, tmp_path, monkeypatch):
    """A merge that already waited for missing parts (Celery's retry count 5) still gets its database retries;
    a database error that persists fails the job after DB_RETRIES retries."""
    location = tmp_path / "retries.sqlite3"
    monkeypatch.setattr(cluster, "_settings", sqlite_cluster.settings(tmp_path / "reports", database=location))
    monkeypatch.setattr(cluster, "DB_RETRY_SECONDS", 0)
    report_id = "00000000-0000-4000-8000-000000000008"
    with closing(database.connect(location)) as conn:
        database.create_report_job(conn, report_id, {})
        cluster.begin_attempt(conn, report_id, "celery:a@here:1")
    calls = []

    def flaky(failures):
        def step():
            calls.append(1)
            if len(calls) <= failures:
                raise sqlite3.OperationalError("database is locked")
            return "merged"
        return step

    assert cluster._run_step(FakeTask(retries=5), report_id, flaky(cluster.DB_RETRIES)) == "merged"
    assert len(calls) == cluster.DB_RETRIES + 1
    with closing(database.connect(location)) as conn:
        assert database.get_report_job(conn, report_id)["status"] == "Running"
    calls.clear()
    with pytest.raises(sqlite3.OperationalError):
        cluster._run_step(FakeTask(retries=0), report_id, flaky(cluster.DB_RETRIES + 1))
    assert len(calls) == cluster.DB_RETRIES + 1
    with closing(database.connect(location)) as conn:
        job = database.get_report_job(conn, report_id)
    assert job["status"] == "Failed" and job["error"] == jobs.internal_error_message(report_id)


@pytest.mark.parametrize("meanwhile", ["deleted", "failed"])
def test_a_merge_of_a_job_that_ended_meanwhile_keeps_no_file(sqlite_cluster, monkeypatch, meanwhile):
    """The job is deleted (DELETE /reports/<id>) or failed (the sweep) while its merge runs: the merge
    completes nothing and keeps no CSV (no file row without its job)."""
    settings = sqlite_cluster.settings(sqlite_cluster.folder / "direct-reports")
    monkeypatch.setattr(cluster, "_settings", settings)
    report_id = {"deleted": "00000000-0000-4000-8000-000000000009",
                 "failed": "00000000-0000-4000-8000-00000000000a"}[meanwhile]
    with closing(database.connect(settings.database)) as conn:
        database.create_report_job(conn, report_id, {"columns": "standard", "reach_minutes": REACH})
        job = cluster.begin_attempt(conn, report_id, "celery:test@here:1")
        plan = cluster._plan(settings, job)
        shards = len(plan["shards"])
        for shard in range(shards):
            cluster.compute_shard.run(report_id, shard, shards, cluster.shard_work(plan, shard))
        csv_bytes = report_generator.csv_bytes

        def end_it_meanwhile(frame):
            with closing(database.connect(settings.database)) as other:
                if meanwhile == "deleted":
                    database.delete_report_job(other, report_id)
                else:
                    database.mark_report_failed(other, report_id, jobs.LOST_TASK_ERROR)
            return csv_bytes(frame)

        monkeypatch.setattr(report_generator, "csv_bytes", end_it_meanwhile)
        assert cluster.merge_report.run([], report_id, plan) is None
        assert database.report_file(conn, report_id) is None
        assert database.report_parts(conn, report_id) == []
        job = database.get_report_job(conn, report_id)
    if meanwhile == "deleted":
        assert job is None
    else:
        assert job["status"] == "Failed" and job["error"] == jobs.LOST_TASK_ERROR


def test_a_shard_message_carries_only_its_own_range():
    """The chord's messages: each shard gets its store_key range and the plan's shared values, never the
    other shards' ranges or the store_ids, so a message does not grow with the number of shards."""
    store_ids = [f"store-{n:05d}" for n in range(2000)]

    def plan(shards):
        return {"now_us": 1_674_670_402_479_220, "shards": [[n * 10, n * 10 + 9] for n in range(shards)],
                "requested_as_of": None, "store_ids": store_ids, "extended": False, "reach_minutes": 120,
                "default_timezone": "America/Chicago", "started": 0.0, "planned": 0.0}

    sizes = {}
    for shards in (4, 400):
        header, body = cluster.report_chord("00000000-0000-4000-8000-00000000000b", plan(shards))
        messages = [json.dumps(list(signature.args)) for signature in header.tasks]
        assert len(messages) == shards
        sizes[shards] = max(len(message) for message in messages)
        last = header.tasks[-1].args
        assert last[1:3] == (shards - 1, shards) and last[3]["key_range"] == [(shards - 1) * 10, (shards - 1) * 10 + 9]
        assert "store_ids" not in last[3] and "shards" not in last[3]
        assert body.args[1]["shards"] == plan(shards)["shards"]   # the merge: one message with the whole plan
    assert sizes[400] < sizes[4] + 10 and sizes[400] < 300


def test_make_cluster_starts_postgresql_unless_told_otherwise():
    assert cluster.throwaway_postgres(False, None)
    assert cluster.throwaway_postgres(False, "/tmp/store.sqlite3")             # SQLite only with --sqlite
    assert not cluster.throwaway_postgres(False, "postgresql://u@db.example:5432/sm")
    assert not cluster.throwaway_postgres(True, None)
    assert not cluster.throwaway_postgres(True, "/tmp/store.sqlite3")
    assert cluster.main([]) == 2
    with pytest.raises(SystemExit):
        cluster.up(["--sqlite", "--postgres"])


def test_the_test_hook_is_off_unless_its_variable_was_set():
    """The kill -9 tests' hold (cluster._test_hook_hold_shard) is read once at import: this process never
    set SM_CLUSTER_TEST_HOLD, so a shard here pays nothing for it."""
    assert cluster.TEST_HOLD_ENV not in os.environ and cluster._TEST_HOLD_FOLDER is None


def test_a_frozen_broker_gives_an_answer_in_seconds_not_a_hang(tmp_path):
    """A Redis that accepts connections but never answers (SIGSTOP): /health's broker check and the lost-job
    sweep's question give up within seconds instead of holding a request thread until Redis wakes up."""
    from jobs import ReportJobs
    from local_servers import RedisServer

    frozen = RedisServer(tmp_path / "redis")
    settings = Settings.from_env({}, database=tmp_path / "db.sqlite3", reports_dir=tmp_path / "reports",
                                 data_dir=tmp_path / "data", broker_url=f"{frozen.url}/0")
    pool = ReportJobs(settings)
    try:
        assert pool.broker_status() == "ok" and pool.broker_pending() == 0
        os.kill(frozen.proc.pid, signal.SIGSTOP)
        started = time.monotonic()
        status = pool.broker_status()
        assert status.startswith("unreachable") and time.monotonic() - started < 8, status
        started = time.monotonic()
        assert pool.broker_pending() is None and time.monotonic() - started < 8
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
        pool.close()
        frozen.stop()
