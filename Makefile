# Two commands set everything up on a fresh machine: `make run` and `make test`.
# Both create the virtual environment and install the pinned requirements first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run dev test bench soak load cluster clean

$(VENV)/.installed: requirements.txt requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -c requirements.lock
	touch $@

# The production server: gunicorn, SM_WEB_WORKERS processes with their report workers (gunicorn.conf.py).
run: $(VENV)/.installed
	$(PY) -m gunicorn --config gunicorn.conf.py

# Cluster mode on this machine (cluster.py up): PostgreSQL, Redis, two Celery workers and the web server pointed
# at them. PostgreSQL is a throw-away server under .cluster/pg, unless SM_DATABASE is a postgresql:// URL (then
# that one); ARGS=--sqlite uses SM_DATABASE's SQLite file instead (one machine only). Redis is started unless
# SM_BROKER_URL is set. Ctrl-C stops everything.
cluster: $(VENV)/.installed
	$(PY) cluster.py up $(ARGS)

# Flask's development server in one process, for debugging only.
dev: $(VENV)/.installed
	$(PY) app.py --dev

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) bench/run.py $(ARGS)

# Fault-and-load soak: two real servers on 127.0.0.1, 200 triggers, concurrent uploads, kill -9 (bench/soak.py).
soak: $(VENV)/.installed
	$(PY) bench/soak.py $(ARGS)

load: $(VENV)/.installed
	$(PY) database.py load $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .cluster
