"""The data dir holds prompts and results in clear text: it is private (0700,
files 0600) after a real server start and a batch, whatever the umask.

Each test starts its own scripted server on a data dir it prepares, under
umask 022 (the usual default, which made every file 0644 before).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from tests.conftest import RULES, Server, start_server, stop_server

DB_FILES = ("parley.db", "parley.db-wal", "parley.db-shm")


@pytest.fixture(autouse=True)
def umask_022() -> Iterator[None]:
    """Servers started in the test inherit umask 022."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def serve(data: Path, tmp: Path) -> Server:
    return start_server(
        ["--engine", "scripted", "--script", str(RULES)], tmp, env={"PARLEY_DATA_DIR": str(data)}
    )


def run_batch(server: Server) -> None:
    client = server.client()
    params = {"model": "scripted", "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    batch = client.messages.batches.create(requests=[{"custom_id": "a", "params": params}])  # type: ignore[list-item]
    deadline = time.monotonic() + 60
    while client.messages.batches.retrieve(batch.id).processing_status != "ended":
        assert time.monotonic() < deadline, "the batch did not end"
        time.sleep(0.05)
    (item,) = list(client.messages.batches.results(batch.id))
    assert item.result.type == "succeeded"


def assert_private(data: Path) -> None:
    assert mode(data) == 0o700, oct(mode(data))
    for name in (*DB_FILES, "thinking.key"):
        assert mode(data / name) == 0o600, (name, oct(mode(data / name)))
    assert not [p for p in data.iterdir() if p.name.startswith(".")]  # no temp files left


def sign_something(server: Server) -> anthropic.types.Message:
    return server.client().messages.create(
        model="scripted",
        max_tokens=2000,
        thinking={"type": "enabled", "budget_tokens": 1024},
        messages=[{"role": "user", "content": "echo this"}],
    )


def test_a_new_data_dir_is_private(tmp_path: Path) -> None:
    data = tmp_path / "new" / "data"
    server = serve(data, tmp_path)
    try:
        run_batch(server)  # the database and its -wal and -shm files exist now
        assert_private(data)
        assert sign_something(server).content[0].type == "thinking"
    finally:
        stop_server(server)


def test_an_older_loose_data_dir_is_made_private(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = serve(data, tmp_path)
    try:
        run_batch(first)
        signed = sign_something(first)
    finally:
        stop_server(first)
    # As an older parley left it: a 0755 dir of 0644 files.
    os.chmod(data, 0o755)
    for path in data.iterdir():
        os.chmod(path, 0o644)
    second = serve(data, tmp_path)
    try:
        run_batch(second)
        assert_private(data)
        assert "data dir was open to other users; made it private" in second.log()
        # The key was kept: a signature from before the restart still verifies.
        history = [
            {"role": "user", "content": "echo this"},
            {"role": "assistant", "content": [b.model_dump() for b in signed.content]},
            {"role": "user", "content": "again"},
        ]
        counted = second.client().messages.count_tokens(
            model="scripted",
            messages=history,  # type: ignore[arg-type]
            thinking={"type": "enabled", "budget_tokens": 1024},
        )
        assert counted.input_tokens > 0
    finally:
        stop_server(second)


def test_a_shared_dir_is_left_as_it_is_with_a_warning(tmp_path: Path) -> None:
    data = tmp_path / "shared"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    (data / "notes.txt").write_text("the user's own file")
    server = serve(data, tmp_path)
    try:
        run_batch(server)
        assert mode(data) == 0o755  # not parley's alone: not changed behind the user's back
        for name in (*DB_FILES, "thinking.key"):
            assert mode(data / name) == 0o600, name
        assert "data dir is open to other users and holds other files" in server.log()
    finally:
        stop_server(server)
