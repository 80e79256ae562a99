"""Throw-away PostgreSQL and Redis servers on this machine, for the tests, `make cluster` and the benchmark.

Each runs from the distribution's binaries in a folder of its own, on a free loopback port, and is stopped
and deleted by `stop()`. Nothing here is for production: durability is switched off (fsync, snapshots),
because what these servers hold is thrown away.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

POSTGRESQL_BIN_DIRS = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin")
REDIS_SERVER = "redis-server"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.05):
    """predicate()'s first true value within `timeout` seconds, else TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


def postgresql_bin_dir() -> Path | None:
    """The folder of initdb and pg_ctl: from PATH (symlinks resolved), else Debian's versioned folders
    (newest first); None when PostgreSQL's server is not installed."""
    candidates = []
    if shutil.which("initdb"):
        candidates.append(Path(shutil.which("initdb")).resolve().parent)
    for pattern in POSTGRESQL_BIN_DIRS:
        found = sorted(Path("/").glob(pattern.lstrip("/")),
                       key=lambda path: [int(part) if part.isdigit() else 0 for part in path.parts], reverse=True)
        candidates.extend(found)
    return next((folder for folder in candidates if (folder / "initdb").is_file() and (folder / "pg_ctl").is_file()),
                None)


class ServerUnavailable(RuntimeError):
    """The server cannot run here (not installed, no user to run it as): the message says why, in a line."""


class PostgreSQLServer:
    """initdb into a folder and pg_ctl start on a free loopback port; `url(name)`, `create_database()`.

    initdb refuses to run as root: as root, the server runs as the `postgres` system user (which Debian's
    package creates), in a folder owned by it.
    """

    def __init__(self, folder: Path | None = None):
        self.bin_dir = postgresql_bin_dir()
        if self.bin_dir is None:
            raise ServerUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found; "
                                    "apt-get install postgresql")
        self.as_user: list[str] = []
        # A short folder: the socket's path must fit in 107 bytes.
        self.folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="sm-pg-"))
        self.data, self.port = self.folder / "data", None
        if os.geteuid() == 0:
            import pwd

            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerUnavailable("running as root and there is no `postgres` user to run PostgreSQL as") from None
            self.folder.mkdir(parents=True, exist_ok=True)
            os.chown(self.folder, account.pw_uid, account.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]

    def _run(self, *command: str) -> None:
        subprocess.run([*self.as_user, str(self.bin_dir / command[0]), *command[1:]], cwd=self.folder, check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)

    def start(self) -> "PostgreSQLServer":
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale",
                      "--no-sync")
            for attempt in range(3):   # the free port may be taken before the server binds it
                self.port = free_port()
                options = (f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off "
                           "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
                try:
                    self._run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w",
                              "-t", "60", "-o", options, "start")
                    return self
                except subprocess.CalledProcessError:
                    if attempt == 2:
                        raise
        except (subprocess.SubprocessError, OSError) as exc:
            log = self.folder / "server.log"
            detail = log.read_text(errors="replace")[-2000:] if log.exists() else getattr(exc, "stdout", b"")
            shutil.rmtree(self.folder, ignore_errors=True)
            raise RuntimeError(f"could not start a PostgreSQL server: {exc}\n{detail}") from None
        return self

    def stop(self) -> None:
        try:
            if self.port is not None:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, statement: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(statement)

    def create_database(self) -> str:
        """A new, empty database (the schema is made by the first storage connect); its URL."""
        name = f"sm_{uuid.uuid4().hex[:16]}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def drop_database(self, url: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[1]}" WITH (FORCE)')


class RedisServer:
    """redis-server on a free loopback port, keeping nothing on disk; `url` + '/<database number>'."""

    def __init__(self, folder: Path):
        binary = shutil.which(REDIS_SERVER) or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists()
                                                else None)
        if binary is None:
            raise ServerUnavailable("redis-server is not installed (Debian: apt-get install redis-server)")
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log_path = self.folder / "redis.log"
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(self.folder)],
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.url = f"redis://127.0.0.1:{self.port}"
        try:
            wait_until(self._answers, 10, "redis-server to answer PING")
        except BaseException:
            self.stop()
            raise

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {self.log_path.read_text(errors='replace')[-1000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._log.close()
