"""The ``parley`` command line as a person meets it: help that says what each
option does, its default and environment variable (snapshots in
``tests/data/cli_help``; ``PARLEY_UPDATE_SNAPSHOTS=1`` rewrites them after a
deliberate change), "did you mean" for a mistyped flag, one-line errors for
bad values, and the ``parley batch`` verbs against a scripted server."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from parley import cli
from parley.serve_flags import FLAGS
from tests.conftest import RULES, Server

SNAPSHOTS = Path(__file__).parent / "data" / "cli_help"
UPDATE = os.environ.get("PARLEY_UPDATE_SNAPSHOTS") == "1"

COMMANDS = [
    (),
    ("serve",),
    ("batch",),
    ("batch", "submit"),
    ("batch", "results"),
    ("batch", "list"),
    ("batch", "delete"),
    ("db",),
    ("db", "status"),
]


def help_of(
    words: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> str:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal's width
    with pytest.raises(SystemExit) as done:
        cli.main([*words, "--help"])
    assert done.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("words", COMMANDS, ids=lambda w: "-".join(w) or "parley")
def test_help_matches_its_snapshot(
    words: tuple[str, ...], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of(words, monkeypatch, capsys)
    snapshot = SNAPSHOTS / f"{'-'.join(('parley', *words))}.txt"
    if UPDATE:
        snapshot.write_text(text)
    assert snapshot.exists(), f"no snapshot {snapshot.name}: run with PARLEY_UPDATE_SNAPSHOTS=1"
    assert text == snapshot.read_text(), (
        f"help of 'parley {' '.join(words)}' changed; if on purpose, rerun with "
        "PARLEY_UPDATE_SNAPSHOTS=1 and commit the snapshot"
    )


def test_help_is_for_people(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    top = help_of((), monkeypatch, capsys)
    assert "``" not in top and "Messages API" in top and "examples:" in top
    serve = help_of(("serve",), monkeypatch, capsys)
    for flag in FLAGS:
        assert flag.help, flag.flag
        if flag.setting is not None:
            assert f"PARLEY_{flag.setting.upper()}" in serve, flag.flag
            assert flag.shown_default() is not None, flag.flag


def parley(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "parley", *args]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})}
    )


def test_a_mistyped_flag_gets_a_did_you_mean() -> None:
    done = parley("serve", "--n-ctxx", "4096")
    assert done.returncode == 2
    assert "unrecognized arguments: --n-ctxx" in done.stderr
    assert "did you mean '--n-ctx'?" in done.stderr


@pytest.mark.parametrize(
    ("args", "env", "says"),
    [
        (("--log-level", "loud"), {}, "invalid choice: 'loud'"),
        ((), {"PARLEY_LOG_LEVEL": "loud"}, "setting 'log_level' must be one of"),
        (("--port", "eighty"), {}, "invalid int value: 'eighty'"),
        ((), {"PARLEY_PORT": "eighty"}, "setting 'port': cannot use 'eighty'"),
        ((), {"PARLEY_REDACT_THINKING": "maybe"}, "expected true or false"),
        (("--n-ctx", "10"), {}, "setting 'n_ctx' must be at least 256"),
    ],
)
def test_a_bad_value_is_a_one_line_error(
    args: tuple[str, ...], env: dict[str, str], says: str, tmp_path: Path
) -> None:
    done = parley("serve", "--data-dir", str(tmp_path), *args, env=env)
    assert done.returncode == 2
    assert says in done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith(("usage:", " "))]
    assert len(lines) == 1, done.stderr


@pytest.fixture(scope="module")
def batch_server(server_factory: Callable[..., Server]) -> Server:
    return server_factory("--engine", "scripted", "--script", str(RULES), "--api-key", "k")


def test_batch_verbs(batch_server: Server, tmp_path: Path) -> None:
    def batch(*args: str) -> subprocess.CompletedProcess[str]:
        # The connection options after the verb, as a person types them.
        return parley("batch", *args, "--base-url", batch_server.url, "--api-key", "k")

    empty = batch("list")
    assert empty.returncode == 0, empty.stderr
    assert empty.stdout.startswith("no batches yet")
    jsonl = tmp_path / "in.jsonl"
    lines = [
        {
            "custom_id": f"c{i}",
            "params": {
                "model": "scripted",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"say {i}"}],
            },
        }
        for i in range(2)
    ]
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out.jsonl"
    submitted = batch("submit", str(jsonl), "--wait", "-o", str(out))
    assert submitted.returncode == 0, submitted.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["custom_id"] for r in results) == ["c0", "c1"]
    assert all(r["result"]["type"] == "succeeded" for r in results)
    said = re.search(r"(msgbatch_\w+): 2 succeeded; results in ", submitted.stderr)
    assert said, submitted.stderr
    batch_id = said.group(1)
    listed = batch("list").stdout.splitlines()
    assert listed[0].split() == ["ID", "STATUS", "DONE", "CREATED"]
    assert listed[1].split()[:3] == [batch_id, "ended", "2/2"]
    deleted = batch("delete", batch_id)
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"deleted {batch_id}"
    assert batch("list").stdout.startswith("no batches yet")
    needs_wait = batch("submit", str(jsonl), "-o", str(out))
    assert needs_wait.returncode == 1 and "needs --wait" in needs_wait.stderr
