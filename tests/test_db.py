"""The database layer: URLs, migrations under a lock, and ``parley db``."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from parley.batches.store import BatchStore
from parley.config import ConfigError, load_settings
from parley.db.database import Database, resolve_url
from parley.db.schema import MIGRATIONS, schema_version


def test_database_urls() -> None:
    assert resolve_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert resolve_url("postgresql://u:p@h:5433/db") == "postgresql+psycopg://u:p@h:5433/db"
    assert resolve_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(ConfigError, match="'mysql' is not a database parley uses"):
        load_settings({"database_url": "mysql://u@h/db"}, environ={})
    settings = load_settings(environ={"PARLEY_DATABASE_URL": "postgres://u@h/db"})
    assert settings.database_url == "postgres://u@h/db"


def test_replicas_starting_together_migrate_once(postgres: Any) -> None:
    url = postgres.fresh_database()
    start = threading.Barrier(4)
    opened: list[Database] = []
    errors: list[BaseException] = []

    def open_one() -> None:
        start.wait()
        try:
            opened.append(Database(url))
        except BaseException as exc:  # (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=open_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    try:
        assert not errors and len(opened) == 4
        with opened[0]._reading() as conn:
            versions = [r.version for r in conn.execute(sa.select(schema_version.c.version))]
        assert sorted(versions) == list(range(1, len(MIGRATIONS) + 1))
    finally:
        for db in opened:
            db.close()


def parley_db(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "parley", "db", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_db_migrate_and_status(postgres: Any, tmp_path: Path) -> None:
    url = postgres.fresh_database()
    before = parley_db("status", "--database-url", url)
    assert before.returncode == 0, before.stderr
    assert f"version 0 of {len(MIGRATIONS)} ({len(MIGRATIONS)} pending" in before.stdout
    migrated = parley_db("migrate", "--database-url", url)
    assert migrated.returncode == 0, migrated.stderr
    assert "migrations applied: 1, 2, 3" in migrated.stdout
    again = parley_db("migrate", "--database-url", url)
    assert "none: up to date" in again.stdout
    store = BatchStore(url, replica="replica-a")
    try:
        store.create("msgbatch_s", "", [(f"r{i}", "{}") for i in range(5)], expires_in=3600)
        store.claim(2)
        status = parley_db("status", "--database-url", url)
    finally:
        store.close()
    assert status.returncode == 0, status.stderr
    assert "(up to date)" in status.stdout
    assert "batches in progress: 1; requests pending: 3, running: 2" in status.stdout
    assert "lease: replica-a holds 2 (renewed, ends in" in status.stdout
    assert "postgres@127.0.0.1" in status.stdout
    missing = parley_db("status", "--data-dir", str(tmp_path / "none"))
    assert missing.returncode == 0 and "no database yet" in missing.stdout
    bad = parley_db("status", "--database-url", "mysql://x")
    assert bad.returncode == 1 and "not a database parley uses" in bad.stderr


def test_new_work_wakes_a_listening_replica(postgres: Any) -> None:
    """A batch created by one replica NOTIFYs; another's listener wakes (no poll)."""
    from parley.db.database import WORK_CHANNEL
    from parley.db.listen import Listener

    url = postgres.fresh_database()
    store = BatchStore(url)
    woken = threading.Event()
    listener = Listener(store.url, WORK_CHANNEL, woken.set)
    try:
        listener.start()
        assert listener.listening.wait(30)
        assert woken.wait(30)  # once on connecting: work may have come meanwhile
        woken.clear()
        store.create("msgbatch_w", "", [("r", "{}")], expires_in=3600)
        assert woken.wait(30)
    finally:
        listener.stop()
        store.close()


def test_the_thinking_key_is_shared_and_seeded_from_a_data_dir(
    postgres: Any, tmp_path: Path
) -> None:
    """The first replica stores its data dir's key (signatures it gave out stay
    valid); a replica with another key in its data dir signs with the stored one."""
    from parley.thinking import KEY_BYTES, Signer

    url = postgres.fresh_database()
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "thinking.key").write_bytes(b"k" * KEY_BYTES)
    (second / "thinking.key").write_bytes(b"z" * KEY_BYTES)
    stores = [BatchStore(url), BatchStore(url)]
    try:
        a = Signer.from_database(stores[0], first)
        b = Signer.from_database(stores[1], second)
        assert a.sign("t") == b.sign("t") == Signer(b"k" * KEY_BYTES).sign("t")
        assert b.unseal(a.seal("secret thoughts")) == "secret thoughts"
    finally:
        for store in stores:
            store.close()


def test_an_unusable_database_is_a_one_line_start_up_error(tmp_path: Path) -> None:
    from tests.conftest import free_port

    def serve(url: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "parley", "serve", "--engine", "scripted"]
        command += ["--port", str(free_port()), "--data-dir", str(tmp_path), "--database-url", url]
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    bad = serve("postgresql://u@h:notaport/db")
    assert bad.returncode == 2 and "database_url: not a URL parley can use" in bad.stderr
    assert "Traceback" not in bad.stderr
    down = serve(f"postgresql://postgres@127.0.0.1:{free_port()}/x")  # nobody listens there
    assert down.returncode == 1, down.stderr
    assert "cannot start" in down.stderr and "the database is unavailable" in down.stderr
    assert "Traceback" not in down.stderr
