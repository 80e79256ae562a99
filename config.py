"""Service configuration: environment variables, optionally from a `.env` file.

Every key has a default that runs the service on one machine with an embedded SQLite database,
so `make run` needs no configuration at all.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field as dataclass_field, replace
from pathlib import Path

import pytz
from dotenv import load_dotenv

PROJECT_DIR = Path(__file__).resolve().parent

# Used for stores whose timezone is missing, empty or unknown to the tz database (semantics page).
DEFAULT_TIMEZONE = "America/Chicago"
# How far a poll speaks on either side of it (semantics page, "Reach"); None is unbounded.
DEFAULT_REACH_MINUTES = 120
MAX_REACH_MINUTES = 7 * 24 * 60
BROKER_SCHEMES = ("redis://", "rediss://")   # SM_BROKER_URL: Celery over Redis (cluster.py)


@dataclass(frozen=True)
class Settings:
    # A SQLite file (the embedded default) or a postgresql:// URL (storage/__init__.py). Out of the repr: a
    # URL may hold a password (logs show describe_database(database)).
    database: Path | str = dataclass_field(default=PROJECT_DIR / "store_monitoring.sqlite3", repr=False)
    reports_dir: Path = PROJECT_DIR / "reports"
    data_dir: Path = PROJECT_DIR / "data"
    default_timezone: str = DEFAULT_TIMEZONE
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 2
    queue_limit: int = 16
    poll_reach_minutes: int | None = DEFAULT_REACH_MINUTES  # a report's reach unless it asks; None = unbounded
    report_retention_days: float = 7.0  # finished reports (rows and files) older than this are deleted
    shard_stores: int = 10_000    # stores per shard of a report, at most (report_generator.SHARD_STORES)
    shard_polls: int = 2_000_000  # polls in the week per shard, about (report_generator.SHARD_POLLS)
    report_processes: int = min(2, os.cpu_count() or 1)  # shard processes per server process; 0: none
    web_workers: int = 2          # gunicorn worker processes (`make run`); each runs `workers` report threads
    web_threads: int = 4          # request threads per web worker process
    job_lease_seconds: int = 30   # a running job's claim; renewed every third of it, taken over once expired
    # When set, every endpoint but /health requires `Authorization: Bearer <api_token>` (app.py). Kept out
    # of the dataclass's repr so that printing the settings never shows it.
    api_token: str | None = dataclass_field(default=None, repr=False)
    # Cluster mode (cluster.py): a redis:// URL of the Celery broker (also its result backend). None, the
    # default, is embedded mode: the web processes run the reports in their own threads (jobs.py). Out of
    # the repr: the URL may hold a password.
    broker_url: str | None = dataclass_field(default=None, repr=False)
    # Seconds after which Redis hands a task that a worker took and never acknowledged (the worker was
    # killed) to another worker. Must exceed the longest shard or merge: a task still running then is
    # given to a second worker too (harmless, the tasks are idempotent, but wasted work).
    broker_visibility_timeout: int = 300

    # Environment variable for each field; documented in the README's configuration table.
    ENV_KEYS = {
        "database": "SM_DATABASE",
        "reports_dir": "SM_REPORTS_DIR",
        "data_dir": "SM_DATA_DIR",
        "default_timezone": "SM_DEFAULT_TIMEZONE",
        "host": "SM_HOST",
        "port": "SM_PORT",
        "workers": "SM_WORKERS",
        "queue_limit": "SM_QUEUE_LIMIT",
        "poll_reach_minutes": "SM_POLL_REACH_MINUTES",
        "report_retention_days": "SM_REPORT_RETENTION_DAYS",
        "shard_stores": "SM_SHARD_STORES",
        "shard_polls": "SM_SHARD_POLLS",
        "report_processes": "SM_REPORT_PROCESSES",
        "web_workers": "SM_WEB_WORKERS",
        "web_threads": "SM_WEB_THREADS",
        "job_lease_seconds": "SM_JOB_LEASE_SECONDS",
        "api_token": "SM_API_TOKEN",
        "broker_url": "SM_BROKER_URL",
        "broker_visibility_timeout": "SM_BROKER_VISIBILITY_TIMEOUT",
    }

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, dotenv: bool = True, **overrides) -> "Settings":
        """Settings from `environ` (default: os.environ, after reading `.env` if present).

        Keyword overrides win over the environment; tests use them to point at temporary paths.
        Raises ValueError with the offending key when a value cannot be used.
        """
        if environ is None:
            if dotenv:
                load_dotenv(PROJECT_DIR / ".env", override=False)
            environ = dict(os.environ)
        values = {}
        for field, key in cls.ENV_KEYS.items():
            raw = environ.get(key)
            if raw is None or raw.strip() == "":
                continue
            raw = raw.strip()
            if field in ("port", "workers", "queue_limit", "web_workers", "web_threads", "job_lease_seconds",
                         "shard_stores", "shard_polls", "broker_visibility_timeout"):
                try:
                    number = int(raw)
                except ValueError:
                    raise ValueError(f"{key} must be an integer, got {raw!r}") from None
                if number < 1 or (field == "port" and number > 65535):
                    raise ValueError(f"{key} is out of range: {number}")
                values[field] = number
            elif field == "report_processes":  # 0 is a value here: compute in the serving process
                if not raw.isdigit():
                    raise ValueError(f"{key} must be a whole number of processes (0: none), got {raw!r}")
                values[field] = int(raw)
            elif field == "poll_reach_minutes":
                values[field] = parse_reach(raw, key)
            elif field == "report_retention_days":
                try:
                    values[field] = float(raw)
                except ValueError:
                    raise ValueError(f"{key} must be a number of days, got {raw!r}") from None
                if not values[field] > 0:
                    raise ValueError(f"{key} must be more than 0 days, got {raw!r}")
            elif field == "database":
                # A URL stays text (Path would fold sqlite:/// into sqlite:/); a plain path is a Path.
                values[field] = raw if "://" in raw else Path(raw).expanduser()
            elif field == "broker_url":
                if not raw.startswith(BROKER_SCHEMES):
                    raise ValueError(f"{key} must be a Redis URL ({' or '.join(BROKER_SCHEMES)}...), "
                                     f"got one starting {raw.split(':', 1)[0]!r}")
                values[field] = raw
            elif field.endswith(("_path", "_dir")):
                values[field] = Path(raw).expanduser()
            else:
                values[field] = raw
        settings = replace(cls(), **values)
        settings = replace(settings, **overrides) if overrides else settings
        if settings.default_timezone not in pytz.all_timezones_set:
            raise ValueError(f"SM_DEFAULT_TIMEZONE is not a tz database zone: {settings.default_timezone!r}")
        if not settings.api_token and not is_loopback(settings.host):
            raise ValueError(f"SM_HOST={settings.host} is reachable from other machines, and SM_API_TOKEN is not "
                             "set: set SM_API_TOKEN (clients then send 'Authorization: Bearer <token>') or serve "
                             "on 127.0.0.1")
        return settings


def describe_database(location) -> str:
    """SM_DATABASE as logs and messages show it: a SQLite path as is, a URL without its password."""
    text = str(location)
    if "://" not in text:
        return text
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(text)
    if parts.password is None:
        return text
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine: `localhost` or a loopback address
    (127.0.0.0/8, ::1). Anything else, `0.0.0.0` and `::` included, is reachable from outside."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def parse_reach(raw: str, key: str) -> int | None:
    """SM_POLL_REACH_MINUTES: minutes from 1 to MAX_REACH_MINUTES, or `none` for unbounded."""
    if raw.lower() == "none":
        return None
    try:
        number = int(raw)
    except ValueError:
        raise ValueError(f"{key} must be a whole number of minutes or 'none', got {raw!r}") from None
    if not 1 <= number <= MAX_REACH_MINUTES:
        raise ValueError(f"{key} must be from 1 to {MAX_REACH_MINUTES} minutes (or 'none'), got {number}")
    return number
