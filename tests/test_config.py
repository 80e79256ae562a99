"""Configuration from the environment (the README's table of SM_* keys)."""
from pathlib import Path

import pytest

import storage
from config import Settings


def test_defaults_run_on_one_machine():
    settings = Settings.from_env({})
    assert (settings.host, settings.port) == ("127.0.0.1", 5000)
    assert settings.default_timezone == "America/Chicago"
    assert settings.database.name.endswith(".sqlite3")
    assert settings.workers >= 1 and settings.queue_limit >= 1


def test_environment_keys_are_read_and_overrides_win(tmp_path):
    env = {"SM_DATABASE": str(tmp_path / "x.sqlite3"), "SM_REPORTS_DIR": str(tmp_path / "r"),
           "SM_DATA_DIR": " ", "SM_DEFAULT_TIMEZONE": "America/New_York", "SM_HOST": "0.0.0.0",
           "SM_PORT": "8080", "SM_WORKERS": "3", "SM_QUEUE_LIMIT": "5", "SM_API_TOKEN": " t0ken "}
    settings = Settings.from_env(env, workers=1)
    assert settings.api_token == "t0ken" and "t0ken" not in repr(settings)
    assert settings.database == tmp_path / "x.sqlite3"
    assert settings.reports_dir == tmp_path / "r"
    assert settings.data_dir == Settings().data_dir  # blank means default
    assert (settings.default_timezone, settings.host, settings.port) == ("America/New_York", "0.0.0.0", 8080)
    assert (settings.workers, settings.queue_limit) == (1, 5)
    assert isinstance(settings.database, Path)


@pytest.mark.parametrize("key, value, message", [
    ("SM_PORT", "http", "SM_PORT must be an integer"),
    ("SM_PORT", "70000", "SM_PORT is out of range"),
    ("SM_WORKERS", "0", "SM_WORKERS is out of range"),
    ("SM_DEFAULT_TIMEZONE", "Mars/Olympus", "not a tz database zone"),
])
def test_bad_values_name_the_key(key, value, message):
    with pytest.raises(ValueError, match=message):
        Settings.from_env({key: value})


@pytest.mark.parametrize("value, reach", [("90", 90), ("none", None), (" None ", None), ("10080", 10080)])
def test_poll_reach_setting(value, reach):
    assert Settings.from_env({"SM_POLL_REACH_MINUTES": value}).poll_reach_minutes == reach
    assert Settings.from_env({}).poll_reach_minutes == 120


@pytest.mark.parametrize("value", ["0", "10081", "-1", "2h", "1.5"])
def test_bad_poll_reach_names_the_key(value):
    with pytest.raises(ValueError, match="SM_POLL_REACH_MINUTES"):
        Settings.from_env({"SM_POLL_REACH_MINUTES": value})


def test_serving_and_job_lease_settings():
    defaults = Settings.from_env({})
    assert (defaults.web_workers, defaults.web_threads, defaults.job_lease_seconds) == (2, 4, 30)
    settings = Settings.from_env({"SM_WEB_WORKERS": "3", "SM_WEB_THREADS": "8", "SM_JOB_LEASE_SECONDS": "5"})
    assert (settings.web_workers, settings.web_threads, settings.job_lease_seconds) == (3, 8, 5)
    for key in ("SM_WEB_WORKERS", "SM_WEB_THREADS", "SM_JOB_LEASE_SECONDS"):
        with pytest.raises(ValueError, match=key):
            Settings.from_env({key: "0"})


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.0.1", "localhost", "::1", "[::1]"])
def test_loopback_needs_no_token(host):
    assert Settings.from_env({"SM_HOST": host}).api_token is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.com"])
def test_other_addresses_need_a_token(host):
    with pytest.raises(ValueError, match=r"SM_HOST=.* SM_API_TOKEN is not set"):
        Settings.from_env({"SM_HOST": host})
    with pytest.raises(ValueError, match="SM_API_TOKEN"):
        Settings.from_env({"SM_HOST": host, "SM_API_TOKEN": "  "})   # blank is not a token
    assert Settings.from_env({"SM_HOST": host, "SM_API_TOKEN": "t"}).api_token == "t"


def test_shard_settings():
    settings = Settings.from_env({"SM_SHARD_STORES": "500", "SM_REPORT_PROCESSES": "0"})
    assert (settings.shard_stores, settings.report_processes) == (500, 0)
    for key, value in (("SM_SHARD_STORES", "0"), ("SM_REPORT_PROCESSES", "-1"), ("SM_REPORT_PROCESSES", "two")):
        with pytest.raises(ValueError, match=key):
            Settings.from_env({key: value})


def test_database_locations_and_what_logs_show():
    from config import describe_database

    settings = Settings.from_env({"SM_DATABASE": "postgresql://svc:s3cret@db.internal:5432/monitoring"})
    assert settings.database == "postgresql://svc:s3cret@db.internal:5432/monitoring"
    assert "s3cret" not in repr(settings)
    assert describe_database(settings.database) == "postgresql://svc:***@db.internal:5432/monitoring"
    assert describe_database("postgresql://svc@db/x") == "postgresql://svc@db/x"
    # A SQLite URL stays text (a Path would fold its slashes); sqlite:////abs is an absolute path.
    settings = Settings.from_env({"SM_DATABASE": "sqlite:////var/lib/sm/x.sqlite3"})
    assert settings.database == "sqlite:////var/lib/sm/x.sqlite3"
    assert str(storage.sqlite_path(settings.database)) == "/var/lib/sm/x.sqlite3"
    assert describe_database(Path("/tmp/a.sqlite3")) == "/tmp/a.sqlite3"
