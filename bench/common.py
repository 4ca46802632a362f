"""Shared benchmark plumbing: start a parley server, write RESULTS.md sections."""

from __future__ import annotations

import contextlib
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

RESULTS = Path(__file__).parent / "RESULTS.md"
HEADER = (
    "# Benchmark results\n\n"
    "Written by `bench/run` (one command). Every figure is a ratio or a difference "
    "against a baseline measured in the same run on the same machine.\n"
)


@dataclass
class Section:
    key: str
    title: str
    rows: list[tuple[str, ...]]
    verdicts: dict[str, bool]
    notes: str
    header: tuple[str, ...] = ("measure", "value", "target")

    def markdown(self) -> str:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines = [
            f"<!-- section:{self.key} -->",
            f"## {self.title}",
            "",
            f"Measured {stamp}. {self.notes}",
            "",
            "| " + " | ".join(self.header) + " |",
            "|" + " --- |" * len(self.header),
            *("| " + " | ".join(row) + " |" for row in self.rows),
            "",
            *(f"- {'met' if ok else 'NOT met'}: {name}" for name, ok in self.verdicts.items()),
            f"<!-- /section:{self.key} -->",
        ]
        return "\n".join(lines) + "\n"


def write_section(section: Section) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else HEADER
    block = section.markdown()
    pattern = re.compile(
        rf"<!-- section:{section.key} -->.*?<!-- /section:{section.key} -->\n", re.S
    )
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text + "\n" + block
    RESULTS.write_text(text)
    print(block)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def running(command: list[str], health_url: str) -> Iterator[int]:
    """A server subprocess, once ``health_url`` answers 200; stopped on exit."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited during start-up")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(health_url, timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{command[0]} did not start")
            time.sleep(0.1)
        yield process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


@contextlib.contextmanager
def serve(args: list[str]) -> Iterator[tuple[str, int]]:
    """A ``parley serve`` subprocess on a free loopback port: (url, pid)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "parley",
        "serve",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    with running([*command, *args], url + "/") as pid:
        yield url, pid
