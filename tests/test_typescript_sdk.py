"""The official TypeScript SDK (``@anthropic-ai/sdk`` from npm) against parley.

``tests/ts/sdk_test.mjs`` runs the checks with Node; this test installs the
SDK from the lock file when needed, starts the servers and runs it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import MODEL, RULES, Server

TS = Path(__file__).parent / "ts"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("Node.js and npm are needed for the TypeScript SDK tests")
    if not (TS / "node_modules" / "@anthropic-ai" / "sdk").exists():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=TS, check=True, timeout=600)
    return node


def run_checks(node: str, server: Server, key: str, model: str, kind: str) -> None:
    done = subprocess.run(
        [node, str(TS / "sdk_test.mjs"), server.url, key, model, kind],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("ok - ") == 7, done.stdout


def test_typescript_sdk_on_the_scripted_engine(
    node: str, server_factory: Callable[..., Server]
) -> None:
    server = server_factory("--engine", "scripted", "--script", str(RULES), "--api-key", "ts-key")
    run_checks(node, server, "ts-key", "scripted", "scripted")


@pytest.mark.model
def test_typescript_sdk_on_the_embedded_model(
    node: str, server_factory: Callable[..., Server]
) -> None:
    server = server_factory("--api-key", "ts-key")
    run_checks(node, server, "ts-key", MODEL, "model")
