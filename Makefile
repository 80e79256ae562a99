# Two commands set everything up on a fresh machine: `make run` and `make test`.
# Both create the virtual environment and install the pinned requirements first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test bench load clean

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

run: $(VENV)/.installed
	$(PY) app.py

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) bench/run.py $(ARGS)

load: $(VENV)/.installed
	$(PY) database.py load $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
