"""A real PostgreSQL for the tests: a cluster in a temporary dir, started once.

``initdb`` and ``pg_ctl`` refuse to run as root, so as root they run as the
``postgres`` user (``runuser``), in a dir of theirs under the system temp dir
(pytest's own temp dirs are private to root). The cluster listens on
127.0.0.1 at a free port, without fsync; ``fresh_database`` gives each test
a database of its own. ``scripts/install test`` installs PostgreSQL where
``pg_config`` is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg


def bindir() -> Path:
    """The server's binaries: ``pg_config --bindir``, else Debian's newest server."""
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        if (Path(out.stdout.strip()) / "initdb").exists():
            return Path(out.stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    if not found:
        raise RuntimeError("PostgreSQL is not installed: run scripts/install test")
    return found[-1].parent


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class Cluster:
    folder: Path
    port: int

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def fresh_database(self) -> str:
        """The URL of a new, empty database."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def pg_ctl(self, *args: str) -> None:
        command = [str(bindir() / "pg_ctl"), "-D", str(self.folder / "data"), *args]
        subprocess.run(_as_postgres(command), check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off"
        options += " -c max_connections=200 -c full_page_writes=off -c synchronous_commit=off"
        log = str(self.folder / "postgres.log")
        self.pg_ctl("-w", "-l", log, "-o", options, "start")

    def stop(self) -> None:
        self.pg_ctl("-w", "-m", "fast", "stop")


def start_cluster(port: int) -> Cluster:
    folder = Path(tempfile.mkdtemp(prefix="parley-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    initdb = [str(bindir() / "initdb"), "-D", str(folder / "data"), "-A", "trust"]
    initdb += ["-U", "postgres", "--no-sync", "-E", "UTF8"]
    subprocess.run(_as_postgres(initdb), check=True, capture_output=True, timeout=120)
    cluster = Cluster(folder, port)
    cluster.start()
    return cluster


def remove_cluster(cluster: Cluster) -> None:
    try:
        if (cluster.folder / "data" / "postmaster.pid").exists():  # (else stopped already)
            cluster.stop()
    finally:
        shutil.rmtree(cluster.folder, ignore_errors=True)
