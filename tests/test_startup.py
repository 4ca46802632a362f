"""Starting ``parley serve`` as a person does: a port in use is found before the
model loads (a one-line error naming it), and once serving parley says so in
a ready line of its own: the URL and the models with their context."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import RULES, Server, start_server, stop_server, wait_for


def test_a_busy_port_fails_before_the_model_loads(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # The embedded model's default start: only --port (and a data dir of the test's).
        command = [sys.executable, "-m", "parley", "serve", "--port", str(port)]
        env = {**os.environ, "PARLEY_DATA_DIR": str(tmp_path / "data")}
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        try:
            output, _ = process.communicate(timeout=60)  # a guard against a hang, not a limit
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 1, output
    errors = [line for line in output.splitlines() if line.strip()]
    assert len(errors) == 1, output
    assert f"cannot listen on 127.0.0.1:{port}" in errors[0]
    assert "in use" in errors[0]
    assert not (tmp_path / "data").exists()  # it stopped before preparing anything


def test_the_ready_line_names_the_url_and_the_models(
    server_factory: Callable[..., Server],
) -> None:
    server = server_factory("--engine", "scripted", "--script", str(RULES))
    line = wait_for(
        lambda: next((x for x in server.log().splitlines() if " parley: ready " in x), None),
        "the ready line",
    )
    assert f"url={server.url}" in line
    assert 'models="scripted (' in line and ' tokens)"' in line


def test_a_native_crash_leaves_its_stack_in_the_log(tmp_path: Path) -> None:
    """A segfault in native code (llama.cpp) kills the process without Python's
    say; faulthandler writes every thread's stack to the log first."""
    server = start_server(["--engine", "scripted", "--script", str(RULES)], tmp_path)
    try:
        os.kill(server.process.pid, signal.SIGSEGV)
        assert server.process.wait(timeout=60) == -signal.SIGSEGV
    finally:
        stop_server(server)
    log = server.log()
    assert "Fatal Python error: Segmentation fault" in log, log[-2000:]
    assert "Current thread" in log and 'File "' in log, log[-2000:]
