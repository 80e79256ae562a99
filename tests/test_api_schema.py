"""The OpenAPI document against the real server: schemathesis, bounded and repeatable.

A real server (`make run`'s gunicorn, two worker processes with their report workers) on a small generated
data set, with SM_API_TOKEN set. Schemathesis reads `/openapi.json` and runs every phase (examples,
coverage, fuzzing, stateful: trigger -> get_report / download / rows / delete and stores -> a store's
timeline, through the document's links) with every check: no 5xx, every status and header and body as documented, schema-valid requests accepted
and invalid ones refused, 401 without the token, 405 for other methods. At most 100 examples per
operation, a fixed seed, one worker, no example database: the same requests every run (about 25 s).
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from test_processes import copy_of, loaded_database, servers  # noqa: F401 (a fixture)

pytestmark = pytest.mark.multiprocess

TOKEN = "schemathesis-token"
SEED = 20261128


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return loaded_database(tmp_path_factory, 40)


def test_schemathesis_finds_nothing(servers, template, tmp_path):
    db_path = copy_of(template, tmp_path)
    server = servers("server", db_path, SM_API_TOKEN=TOKEN, SM_QUEUE_LIMIT=16).wait_ready()
    command = [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json",
               "--checks", "all", "--max-examples", "100", "--seed", str(SEED), "--workers", "1",
               "--generation-database", "none", "--no-color", "--request-timeout", "30",
               "--header", f"Authorization: Bearer {TOKEN}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    print(output[-1500:])
    assert done.returncode == 0, output[-8000:]
    assert "No issues found" in output and "13 selected / 13 total" in output
    for phase in ("Coverage", "Fuzzing", "Stateful"):
        assert f"✅  {phase}" in output, phase
    assert "Traceback" not in server.log()
