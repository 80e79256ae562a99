"""gunicorn settings: the production server of store-monitoring (`make run`).

`make run` is `python -m gunicorn --config gunicorn.conf.py`. Everything comes from the SM_* settings
(`config.py`, the README's configuration table): SM_HOST and SM_PORT are the address, SM_WEB_WORKERS the
worker processes, SM_WEB_THREADS the request threads of each. Every worker process also runs SM_WORKERS
report threads (`jobs.py`), which claim jobs from the job table shared by all processes; in cluster mode
(SM_BROKER_URL set) none: the workers send report jobs to Celery workers instead (`cluster.py`). gunicorn's own
options can still be given on its command line or in GUNICORN_CMD_ARGS (e.g. `--graceful-timeout 60`).

Start-up (master process): gunicorn binds the port first, so a second server started on a taken port
stops there, having touched nothing. Then `when_ready` runs `python app.py --prepare` (schema, and on a
first start the data load) in a child process, so the master stays small and forks no half-used
libraries; only then are the workers forked, and they start taking jobs.

SIGTERM (SIGINT and SIGQUIT alike): the master passes it to the workers. Each stops taking jobs at once,
lets its running reports finish for up to `graceful_timeout` seconds, then exits; jobs not started stay
Queued for any other process. A report still running when the master's timeout ends is killed with its
process: its lease runs out and another process takes it over.
"""
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(PROJECT_DIR))

from config import Settings, describe_database  # noqa: E402

try:
    _settings = Settings.from_env()
except ValueError as _exc:
    print(f"configuration error: {_exc}", file=sys.stderr)
    sys.exit(2)

wsgi_app = "app:create_app()"   # each worker process builds the app and starts its report workers
chdir = str(PROJECT_DIR)
bind = [f"[{_settings.host}]:{_settings.port}" if ":" in _settings.host else f"{_settings.host}:{_settings.port}"]
workers = _settings.web_workers
worker_class = "gthread"
threads = _settings.web_threads
graceful_timeout = 30           # seconds running reports get to finish after SIGTERM
proc_name = "store-monitoring"
control_socket_disable = True   # its default path is one per user: two servers would share it
loglevel = "info"

# The service's own log lines (store_monitoring.*) in the same form as gunicorn's; the workers inherit it.
logging.basicConfig(level=logging.INFO,
                    format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
                    datefmt="%Y-%m-%d %H:%M:%S %z")


def when_ready(server):
    """The port is bound and no worker is forked yet: prepare the database, once, in a child process."""
    prepared = subprocess.run([sys.executable, str(PROJECT_DIR / "app.py"), "--prepare"], cwd=PROJECT_DIR)
    if prepared.returncode != 0:
        server.log.error("the database could not be prepared (see above); not serving")
        sys.exit(prepared.returncode)
    # (app is not imported here: the master forks the workers and should hold no NumPy or SQLite state)
    if _settings.broker_url:
        server.log.info("serving on http://%s:%d with gunicorn (%d processes x %d threads; database %s; cluster "
                        "mode: reports run in Celery workers (SM_BROKER_URL), queue limit %d)", _settings.host,
                        _settings.port, workers, threads, describe_database(_settings.database), _settings.queue_limit)
        return
    server.log.info("serving on http://%s:%d with gunicorn (%d processes x %d threads; database %s, %d report "
                    "workers per process, queue limit %d, job lease %d s)", _settings.host, _settings.port,
                    workers, threads, describe_database(_settings.database), _settings.workers, _settings.queue_limit,
                    _settings.job_lease_seconds)


def post_worker_init(worker):
    """SIGTERM, SIGINT, SIGQUIT: first stop taking report jobs, then gunicorn's own handling."""
    import app

    jobs = worker.wsgi.extensions[app.EXTENSION]
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
        _chain(signum, jobs, worker)


def _chain(signum, jobs, worker):
    handler = signal.getsignal(signum)

    def stop_taking_jobs(number, frame):
        if getattr(worker, "sm_stopping_since", None) is None:
            worker.sm_stopping_since = time.monotonic()
        jobs.stop_taking()
        if getattr(worker, "sm_exiting", False):
            # Already leaving (Ctrl-C reaches the workers and, through the master, again as SIGQUIT): a
            # second exit would cut short the wait for running reports in worker_exit.
            return
        if number != signal.SIGTERM:
            worker.sm_exiting = True  # gunicorn's SIGINT/SIGQUIT handler exits the worker right away
        if callable(handler):
            handler(number, frame)

    signal.signal(signum, stop_taking_jobs)


def worker_exit(server, worker):
    """Let running reports finish within the master's graceful timeout (counted from the signal)."""
    import app

    worker.sm_exiting = True
    flask_app = getattr(worker, "wsgi", None)
    if flask_app is None or app.EXTENSION not in getattr(flask_app, "extensions", {}):
        return  # the worker never got as far as starting the app
    since = getattr(worker, "sm_stopping_since", None) or time.monotonic()
    remaining = worker.cfg.graceful_timeout - (time.monotonic() - since) - 1.0
    app.shutdown(flask_app, timeout=max(0.5, remaining))
