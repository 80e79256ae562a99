"""Service configuration: environment variables, optionally from a `.env` file.

Every key has a default that runs the service on one machine with an embedded SQLite database,
so `make run` needs no configuration at all.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import pytz
from dotenv import load_dotenv

PROJECT_DIR = Path(__file__).resolve().parent

# Used for stores whose timezone is missing, empty or unknown to the tz database (semantics page).
DEFAULT_TIMEZONE = "America/Chicago"


@dataclass(frozen=True)
class Settings:
    database_path: Path = PROJECT_DIR / "store_monitoring.sqlite3"
    reports_dir: Path = PROJECT_DIR / "reports"
    data_dir: Path = PROJECT_DIR / "data"
    default_timezone: str = DEFAULT_TIMEZONE
    host: str = "127.0.0.1"
    port: int = 5000
    workers: int = 2
    queue_limit: int = 16

    # Environment variable for each field; documented in the README's configuration table.
    ENV_KEYS = {
        "database_path": "SM_DATABASE",
        "reports_dir": "SM_REPORTS_DIR",
        "data_dir": "SM_DATA_DIR",
        "default_timezone": "SM_DEFAULT_TIMEZONE",
        "host": "SM_HOST",
        "port": "SM_PORT",
        "workers": "SM_WORKERS",
        "queue_limit": "SM_QUEUE_LIMIT",
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
            if field in ("port", "workers", "queue_limit"):
                try:
                    number = int(raw)
                except ValueError:
                    raise ValueError(f"{key} must be an integer, got {raw!r}") from None
                if number < 1 or (field == "port" and number > 65535):
                    raise ValueError(f"{key} is out of range: {number}")
                values[field] = number
            elif field.endswith(("_path", "_dir")):
                values[field] = Path(raw).expanduser()
            else:
                values[field] = raw
        settings = replace(cls(), **values)
        settings = replace(settings, **overrides) if overrides else settings
        if settings.default_timezone not in pytz.all_timezones_set:
            raise ValueError(f"SM_DEFAULT_TIMEZONE is not a tz database zone: {settings.default_timezone!r}")
        return settings
