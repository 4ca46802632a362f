"""The official TypeScript SDK (``@anthropic-ai/sdk`` from npm) against parley.

``tests/ts/sdk_test.mjs`` runs the checks with Node; this test installs the
SDK from the lock file when needed, starts the servers and runs it.
``tests/ts/sdk_fields.mjs`` reads the SDK's request types with the TypeScript
compiler, so that a field the TypeScript SDK sends and the Python SDK (whose
fields ``tests/test_sdk_fields.py`` holds parley to) lacks fails here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MODEL, RULES, Server
from tests.test_sdk_fields import (
    _sdk_dicts,
    _unwrap,
    sdk_batch_params,
    sdk_beta_batch_params,
    sdk_beta_count_params,
    sdk_beta_params,
    sdk_count_params,
    sdk_params,
)

TS = Path(__file__).parent / "ts"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("Node.js and npm are needed for the TypeScript SDK tests")
    if not installed_as_locked():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=TS, check=True, timeout=600)
    newest = newest_sdk(npm)
    if installed_version(SDK) != newest:
        # The newest release within the major, as a user installing ^1 gets it,
        # whatever the lock file says (it keeps the other packages steady).
        install = [npm, "install", "--no-package-lock", "--no-save", "--no-audit", "--no-fund"]
        subprocess.run([*install, f"{SDK}@{newest}"], cwd=TS, check=True, timeout=600)
    return node


SDK = "@anthropic-ai/sdk"


def newest_sdk(npm: str) -> str:
    """npm's newest release of the SDK within the major version package.json asks for."""
    wanted = json.loads((TS / "package.json").read_text())["dependencies"][SDK]
    major = wanted.lstrip("^~").split(".")[0]
    asked = subprocess.run(
        [npm, "view", f"{SDK}@^{major}", "version", "--json"],
        cwd=TS,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if asked.returncode != 0:
        pytest.fail(f"npm could not name {SDK}'s newest {major}.x release:\n{asked.stderr}")
    versions = json.loads(asked.stdout)
    versions = versions if isinstance(versions, list) else [versions]
    return str(max(versions, key=lambda v: tuple(int(x) for x in v.split("-")[0].split("."))))


def installed_version(package: str) -> str | None:
    manifest = TS / "node_modules" / package / "package.json"
    return json.loads(manifest.read_text())["version"] if manifest.exists() else None


def installed_as_locked() -> bool:
    """Whether ``tests/ts/node_modules`` holds each package at the lock file's version
    (an older install, made before the lock moved on, is replaced)."""
    lock = json.loads((TS / "package-lock.json").read_text())
    for where, entry in lock["packages"].items():
        if not where or where == f"node_modules/{SDK}":  # the SDK: npm's newest, below
            continue
        manifest = TS / where / "package.json"
        if not manifest.exists() or json.loads(manifest.read_text())["version"] != entry["version"]:
            return False
    return True


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


# Fields of the TypeScript SDK that the Python SDK no longer has, each with why
# parley may lack it. Empty this when parley models them.
TS_ONLY = {
    # Deprecated beta spelling of output_config.format, kept by the TypeScript
    # SDK only; left to the structured-outputs work on output_config.
    "output_format",
    "output_format.schema",
    "output_format.type",
}


def _paths(sdk: Any, prefix: str, stack: tuple[Any, ...], out: set[str]) -> None:
    """Every field path under a Python SDK TypedDict, as ``sdk_fields.mjs`` walks."""
    if sdk in stack or len(stack) >= 8:  # the script's MAX_DEPTH
        return
    for name, annotation in typing.get_type_hints(sdk).items():
        where = f"{prefix}.{name}" if prefix else name
        out.add(where)
        for inner in _sdk_dicts(_unwrap(annotation)):
            _paths(inner, where, (*stack, sdk), out)


PYTHON_ROOTS = {
    "messages": sdk_params.MessageCreateParamsNonStreaming,
    "count_tokens": sdk_count_params.MessageCountTokensParams,
    "batches": sdk_batch_params.BatchCreateParams,
    "beta.messages": sdk_beta_params.MessageCreateParamsNonStreaming,
    "beta.count_tokens": sdk_beta_count_params.MessageCountTokensParams,
    "beta.batches": sdk_beta_batch_params.BatchCreateParams,
}


def test_typescript_sdk_request_fields_are_the_python_sdks(node: str) -> None:
    done = subprocess.run(
        [node, str(TS / "sdk_fields.mjs")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    typescript = json.loads(done.stdout)
    assert set(typescript) == set(PYTHON_ROOTS)
    extra: list[str] = []
    for root, params in PYTHON_ROOTS.items():
        python: set[str] = set()
        _paths(params, "", (), python)
        assert len(typescript[root]) > 300  # the script reached the nested types
        allowed = {p for t in TS_ONLY for p in (t, f"requests.params.{t}")}
        extra += [f"{root}: {p}" for p in sorted(set(typescript[root]) - python - allowed)]
    assert not extra, "TypeScript SDK request fields the Python SDK lacks:\n" + "\n".join(extra)
