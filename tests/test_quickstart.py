"""The README's quickstart, as a user types it: ``scripts/serve``, the curl
example, the SDK example saved as ``hello.py``, then a batch from the shell.

The snippets are read from README.md itself, so an edit that breaks them
fails here. The one change made to them is the port: the server listens on a
free one (``scripts/serve --port P``), and ``ANTHROPIC_BASE_URL`` points the
batch CLI at it, as the README says. The examples bound every answer by
``max_tokens`` (64).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()
VENV_BIN = Path(sys.executable).parent


def blocks() -> Iterator[tuple[str, str]]:
    """The README's fenced blocks: (language, text)."""
    language: str | None = None
    body: list[str] = []
    for line in README.splitlines(keepends=True):
        if line.startswith("```"):
            if language is None:
                language, body = line[3:].strip(), []
            else:
                yield language, "".join(body)
                language = None
        elif language is not None:
            body.append(line)


def snippet(language: str, containing: str) -> str:
    """The first fenced ``language`` block of the README holding ``containing``."""
    for found, text in blocks():
        if found == language and containing in text:
            return text
    raise AssertionError(f"README has no {language or 'plain'} block with {containing!r}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``scripts/serve --port P``, once it printed its ready line."""
    port = free_port()
    env = {**os.environ, "PARLEY_DATA_DIR": str(tmp_path_factory.mktemp("quickstart"))}
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "serve"), "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    ready = threading.Event()
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "parley: ready" in line:
                ready.set()
        ready.set()  # ended: the wait below sees why

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # Bounded: the install step is a stamp check here, the load a few seconds.
        assert ready.wait(600), "scripts/serve printed no ready line"
        assert process.poll() is None, "".join(lines)
        ready_line = next(line for line in lines if "parley: ready" in line)
        assert f"http://127.0.0.1:{port}" in ready_line and "smollm2-135m-instruct" in ready_line
        yield f"127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=60)
        reader.join(timeout=60)  # the pipe ends with the process
        assert process.stdout is not None
        process.stdout.close()


def local(text: str, where: str) -> str:
    return text.replace("localhost:8000", where).replace("127.0.0.1:8000", where)


def test_the_curl_example(served: str) -> None:
    command = local(snippet("bash", "curl -s"), served)
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    message = json.loads(done.stdout)
    assert message["type"] == "message" and message["content"][0]["type"] == "text"


def test_the_sdk_example(served: str, tmp_path: Path) -> None:
    hello = tmp_path / "hello.py"
    hello.write_text(local(snippet("python", "import anthropic"), served))
    done = subprocess.run(
        [str(VENV_BIN / "python"), str(hello)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


def test_a_batch_from_the_shell(served: str, tmp_path: Path) -> None:
    line = snippet("", "parley batch submit requests.jsonl --wait -o results.jsonl").splitlines()[0]
    command = line.split("#")[0].split()
    assert command[:2] == ["parley", "batch"]
    params = {
        "model": "smollm2-135m-instruct",
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "Hello!"}],
    }
    (tmp_path / "requests.jsonl").write_text(
        "".join(json.dumps({"custom_id": f"r{i}", "params": params}) + "\n" for i in range(2))
    )
    env = {**os.environ, "ANTHROPIC_BASE_URL": f"http://{served}"}
    done = subprocess.run(
        [str(VENV_BIN / "parley"), *command[1:]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    results = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert sorted(r["custom_id"] for r in results) == ["r0", "r1"]
    assert all(r["result"]["type"] == "succeeded" for r in results)
    listed = subprocess.run(
        [str(VENV_BIN / "parley"), "batch", "list"], env=env, capture_output=True, text=True
    )
    assert listed.returncode == 0 and "ID" in listed.stdout
