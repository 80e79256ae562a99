"""Real servers (`make run`'s gunicorn command) on one SQLite file: jobs shared by processes.

Each test starts whole servers on free loopback ports, with the real engine on a small generated data set,
and counts the runs of every job three ways: its `attempts`, its rows in `report_attempts`, and the
"report <id> started" lines in the servers' logs (one per engine run). Marked `multiprocess` (about 40 s
in all); `pytest -m "not multiprocess"` leaves them out.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import datetime
from pathlib import Path

import pytest

import database
import sample_data
from local_servers import wait_until

pytestmark = pytest.mark.multiprocess

PROJECT = Path(__file__).resolve().parent.parent
SERVE = [sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py"]  # what `make run` runs
STARTED_RE = re.compile(r"report (\S+) started: attempt (\d+) in (\S+)")
OWNER_RE = re.compile(r"report workers started: \d+ threads as (\S+)")


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One service (gunicorn master and its workers) in its own process group; logs to a file."""

    def __init__(self, name: str, workdir: Path, db_path: Path, *, port: int | None = None, command=SERVE,
                 **env):
        self.name, self.port = name, port or free_port()
        self.log_path = workdir / f"{name}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("SM_", "GUNICORN_"))}
        environ.update({"SM_DATABASE": str(db_path), "SM_REPORTS_DIR": str(workdir / "reports"),
                        "SM_DATA_DIR": str(workdir / "no-data"), "SM_HOST": "127.0.0.1", "SM_PORT": str(self.port),
                        "SM_WEB_WORKERS": "2", "SM_WORKERS": "2", "SM_QUEUE_LIMIT": "1000",
                        "SM_JOB_LEASE_SECONDS": "10", "PYTHONUNBUFFERED": "1"})
        environ.update({key: str(value) for key, value in env.items()})
        self.web_workers = int(environ["SM_WEB_WORKERS"]) if command == SERVE else 1
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(command, cwd=PROJECT, env=environ, stdout=self.log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 60.0) -> "Server":
        """Until /health answers 200 and every worker process has started its report workers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"{self.name} exited with {self.proc.returncode}:\n{self.log()}"
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200 and len(self.owners()) == self.web_workers:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready after {timeout} s:\n{self.log()}")

    def owners(self) -> set[str]:
        """The job owners (one per worker process) this server's log names."""
        return set(OWNER_RE.findall(self.log()))

    def trigger(self, body: dict | None = None) -> str:
        request = urllib.request.Request(f"{self.url}/trigger_report", method="POST",
                                         data=json.dumps(body or {}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 202
            return json.loads(answer.read())["report_id"]

    def signal(self, signum: int) -> None:
        """To the master only (as a service manager would)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def kill_all(self) -> None:
        """kill -9 of the whole server: master and workers at once (its process group)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                pass
        self.kill_all()  # whatever is left of the group
        self.log_file.close()


@pytest.fixture
def servers(tmp_path):
    """`servers(name, db_path, **env)` starts a Server; every one is stopped at the end."""
    started = []

    def start(name, db_path, **kwargs):
        server = Server(name, tmp_path, db_path, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


def loaded_database(tmp_path_factory, stores: int) -> Path:
    """A database with a generated data set of `stores` stores (8 days of polls); made once per module."""
    work = tmp_path_factory.mktemp(f"data-{stores}")
    files = sample_data.generate_dataset(work / "csv", stores=stores, seed=7)
    conn = database.connect(work / "template.sqlite3")
    database.load_files(conn, status=files["store_status"], hours=files["business_hours"],
                        timezones=files["timezones"])
    conn.close()
    assert not (work / "template.sqlite3-wal").exists()
    return work / "template.sqlite3"


@pytest.fixture(scope="module")
def small_template(tmp_path_factory) -> Path:
    return loaded_database(tmp_path_factory, 200)     # reports of ~0.03 s: many of them


@pytest.fixture(scope="module")
def large_template(tmp_path_factory) -> Path:
    return loaded_database(tmp_path_factory, 4000)    # reports of ~0.15-0.4 s: long enough to interrupt


def copy_of(template: Path, tmp_path: Path) -> Path:
    db_path = tmp_path / "service.sqlite3"
    shutil.copyfile(template, db_path)
    return db_path


def jobs_table(db_path: Path) -> dict[str, dict]:
    return database.inspect_report_jobs(db_path)[0]


def attempts_table(db_path: Path) -> dict[str, list[dict]]:
    return database.inspect_report_jobs(db_path)[1]


def engine_runs(*servers: Server) -> dict[str, list[tuple[int, str]]]:
    """report id -> [(attempt, owner)] for every engine run the servers' logs show."""
    runs: dict[str, list[tuple[int, str]]] = {}
    for server in servers:
        for report_id, attempt, owner in STARTED_RE.findall(server.log()):
            runs.setdefault(report_id, []).append((int(attempt), owner))
    return runs


def all_finished(db_path: Path, ids) -> bool:
    table = jobs_table(db_path)
    return all(table[i]["status"] in ("Complete", "Failed") for i in ids)


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def test_two_servers_run_each_of_200_jobs_exactly_once(servers, small_template, tmp_path):
    db_path = copy_of(small_template, tmp_path)
    first = servers("first", db_path)
    second = servers("second", db_path)
    first.wait_ready(), second.wait_ready()
    bodies = [{}, {"columns": "extended"}, {"as_of": "2023-01-24T12:00:00Z"}]
    with ThreadPoolExecutor(8) as pool:  # 200 triggers, spread over both servers, 8 at a time
        ids = list(pool.map(lambda n: (first, second)[n % 2].trigger(bodies[n % 3]), range(200)))
    assert len(set(ids)) == 200
    wait_until(lambda: all_finished(db_path, ids), 120, "all 200 reports finished")

    table, attempts, runs = jobs_table(db_path), attempts_table(db_path), engine_runs(first, second)
    owners = first.owners() | second.owners()
    assert len(owners) == 4                                        # 2 servers x 2 worker processes
    for report_id in ids:
        job = table[report_id]
        assert (job["status"], job["attempts"], job["error"]) == ("Complete", 1, None), job
        assert [(a["attempt"], a["owner"], a["outcome"]) for a in attempts[report_id]] == \
            [(1, job["owner"], "Complete")]
        assert runs[report_id] == [(1, job["owner"])]              # the engine ran it once, in its owner
        lines = (tmp_path / "reports" / f"{report_id}.csv").read_text().splitlines()
        assert len(lines) == job["rows"] + 1 and job["rows"] > 0
    assert set(runs) == set(ids)
    assert {job["owner"] for job in table.values()} & first.owners()   # both servers ran reports
    assert {job["owner"] for job in table.values()} & second.owners()
    assert not [p for p in (tmp_path / "reports").iterdir() if p.name.startswith(".")]  # no attempt files left


def test_a_report_of_a_killed_server_completes_in_the_other_within_the_lease(servers, large_template, tmp_path):
    lease = 4
    db_path = copy_of(large_template, tmp_path)
    victim = servers("victim", db_path, SM_JOB_LEASE_SECONDS=lease)
    other = servers("other", db_path, SM_JOB_LEASE_SECONDS=lease)
    victim.wait_ready(), other.wait_ready()
    victim_owners = victim.owners()

    ids, interrupted = [], {}
    for round_ in range(5):  # until the kill lands while the victim runs a report (almost always the first time)
        ids += [victim.trigger() for _ in range(6)]

        def victim_is_running():
            return [j for j in jobs_table(db_path).values() if j["status"] == "Running" and j["owner"] in victim_owners]

        wait_until(victim_is_running, 30, "a report running in the victim", interval=0.005)
        victim.kill_all()
        killed_at = time.time()
        interrupted = {j["report_id"]: j for j in victim_is_running()}  # still Running, owned by the dead
        if interrupted:
            break
        victim = servers(f"victim-{round_ + 1}", db_path, SM_JOB_LEASE_SECONDS=lease).wait_ready()
        victim_owners = victim.owners()
    assert interrupted, "the kill never landed during a report"

    def recovered():
        table = jobs_table(db_path)
        return all(table[i]["status"] == "Complete" for i in interrupted) and table
    table = wait_until(recovered, lease + 10, "the interrupted reports complete in the other server")
    recovered_in = max(epoch(table[i]["finished_at"]) for i in interrupted) - killed_at
    attempts = attempts_table(db_path)
    taken_over_in = max(epoch(attempts[i][1]["started_at"]) for i in interrupted) - killed_at
    for report_id, at_kill in interrupted.items():
        job = table[report_id]
        assert job["attempts"] == 2 and job["owner"] in other.owners(), job
        first, second = attempts[report_id]
        assert (first["owner"], first["outcome"]) == (at_kill["owner"], "lease expired")
        assert (second["owner"], second["outcome"]) == (job["owner"], "Complete")
        # taken over only once the dead process's lease had run out, never while it was live
        assert epoch(second["started_at"]) >= at_kill["lease_until"] - 0.002
    # the lease runs out at most `lease` s after the kill; a worker of the other server polls every 0.5 s
    # (and may first finish the report it is running); the report itself takes well under a second
    assert taken_over_in <= lease + 2.5, f"taken over {taken_over_in:.1f} s after the kill (lease {lease} s)"
    assert recovered_in <= lease + 4, f"completed {recovered_in:.1f} s after the kill (lease {lease} s)"

    wait_until(lambda: all_finished(db_path, ids), 60, "every report finished")
    table = jobs_table(db_path)
    for report_id in ids:
        assert table[report_id]["status"] == "Complete", table[report_id]
        assert table[report_id]["attempts"] == (2 if report_id in interrupted else 1)
        assert len(attempts_table(db_path)[report_id]) == table[report_id]["attempts"]
    print(f"\nkill -9: {len(interrupted)} interrupted report(s) taken over {taken_over_in:.2f} s and complete "
          f"{recovered_in:.2f} s after the kill (lease {lease} s)")


@pytest.mark.parametrize("how", ["SIGTERM to the master", "Ctrl-C (SIGINT to the process group)"])
def test_sigterm_finishes_running_reports_and_leaves_the_rest_queued(servers, large_template, tmp_path, how):
    db_path = copy_of(large_template, tmp_path)
    server = servers("server", db_path, SM_WEB_WORKERS=1, SM_WORKERS=1).wait_ready(timeout=60)
    server_owners = server.owners()
    ids = [server.trigger() for _ in range(12)]

    def running():
        return [j["report_id"] for j in jobs_table(db_path).values() if j["status"] == "Running"]
    running_at_signal = wait_until(running, 30, "a running report", interval=0.005)
    if how.startswith("SIGTERM"):
        server.signal(signal.SIGTERM)
    else:  # the terminal signals master and workers at once; the master then sends SIGQUIT too
        os.killpg(server.proc.pid, signal.SIGINT)
    started = time.monotonic()
    assert server.wait(40) == 0
    stopped_in = time.monotonic() - started
    assert "serving on" in server.log() and "Shutting down" in server.log()
    assert "report workers stopped" in server.log()

    table = jobs_table(db_path)
    for report_id in running_at_signal:                 # it was let finish
        assert (table[report_id]["status"], table[report_id]["attempts"]) == ("Complete", 1)
    statuses = {table[i]["status"] for i in ids}
    assert statuses <= {"Complete", "Queued"}            # nothing left Running, nothing Failed
    queued = [i for i in ids if table[i]["status"] == "Queued"]
    assert queued and all(table[i]["attempts"] == 0 for i in queued)

    successor = servers("successor", db_path, SM_WEB_WORKERS=1, SM_WORKERS=1).wait_ready(timeout=60)
    wait_until(lambda: all_finished(db_path, ids), 60, "the queued reports finished by the next server")
    table = jobs_table(db_path)
    for report_id in ids:
        assert (table[report_id]["status"], table[report_id]["attempts"]) == ("Complete", 1)
    assert {table[i]["owner"] for i in queued} <= successor.owners()
    assert {table[i]["owner"] for i in ids if i not in queued} <= server_owners
    print(f"\n{how}: stopped in {stopped_in:.2f} s; {len(ids) - len(queued)} reports done, {len(queued)} left "
          f"Queued and run by the next server")


def test_a_second_server_on_a_taken_port_steals_nothing(servers, large_template, tmp_path):
    db_path = copy_of(large_template, tmp_path)
    live = servers("live", db_path, SM_WEB_WORKERS=1, SM_WORKERS=1).wait_ready()
    ids = [live.trigger() for _ in range(15)]          # a queue that lasts a few seconds
    mistaken = servers("mistaken", db_path, port=live.port, SM_WEB_WORKERS=1, SM_WORKERS=1)
    assert mistaken.wait(30) != 0
    dev = servers("mistaken-dev", db_path, port=live.port,
                  command=[sys.executable, "app.py", "--dev"])   # the development server, by mistake too
    assert dev.wait(30) != 0
    for server in (mistaken, dev):
        assert "serving on" not in server.log() and "report workers started" not in server.log()
    assert "Address already in use" in mistaken.log() and "in use" in dev.log()

    wait_until(lambda: all_finished(db_path, ids), 90, "the live server's reports finished")
    table, attempts = jobs_table(db_path), attempts_table(db_path)
    for report_id in ids:
        assert (table[report_id]["status"], table[report_id]["attempts"]) == ("Complete", 1)
        assert [a["owner"] for a in attempts[report_id]] == [table[report_id]["owner"]]
        assert table[report_id]["owner"] in live.owners()
    assert engine_runs(live, mistaken, dev) == {i: [(1, table[i]["owner"])] for i in ids}
