"""schemathesis against parley's own OpenAPI document, every endpoint (bounded).

No 5xx, every status documented, every response valid against its schema,
also in stateful sequences (create a batch, then get / cancel / delete it).
``scripts/fuzz`` runs the same with many more examples.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import RULES, Server

CHECKS = "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance"


def run_schemathesis(server: Server, examples: int) -> subprocess.CompletedProcess[str]:
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or "st"
    return subprocess.run(
        [
            st,
            "run",
            f"{server.url}/openapi.json",
            "--max-examples",
            str(examples),
            "--checks",
            CHECKS,
            "--header",
            "x-api-key: fuzz-key",
            "--seed",
            "20261122",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "SCHEMATHESIS_HOOKS": ""},
    )


def test_schemathesis_finds_no_5xx_and_no_schema_violation(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory("--engine", "scripted", "--script", str(RULES), "--api-key", "fuzz-key")
    done = run_schemathesis(server, examples=15)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "passed" in done.stdout
