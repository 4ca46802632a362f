"""The batches database: tables, numbered migrations and the connection rules.

Two tables: ``batches`` (one row a batch) and ``batch_requests`` (one row a
request: its params as given, its state and, once done, its result). Schema
changes are numbered migrations (``MIGRATIONS``), applied in order at
start-up and recorded in ``schema_version``. ``Database`` owns the SQLAlchemy
engine: one write transaction at a time (``_writing``), readers that never
wait (WAL), and the helpers the store's two sides share.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

RequestStatus = Literal["pending", "running", "succeeded", "errored", "canceled", "expired"]
ACTIVE = ("pending", "running")

metadata = sa.MetaData()

batches = sa.Table(
    "batches",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(64), nullable=False, unique=True),
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("ended_at", sa.Float),
    sa.Column("cancel_initiated_at", sa.Float),
    sa.Column("total", sa.Integer, nullable=False),
)

batch_requests = sa.Table(
    "batch_requests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "batch_seq", sa.Integer, sa.ForeignKey("batches.seq", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("idx", sa.Integer, nullable=False),
    sa.Column("custom_id", sa.String(64), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("result", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.UniqueConstraint("batch_seq", "idx"),
    sa.Index("ix_batch_requests_status", "status", "batch_seq", "idx"),
    sa.Index("ix_batch_requests_batch", "batch_seq", "status"),
)

schema_version = sa.Table(
    "schema_version", metadata, sa.Column("version", sa.Integer, nullable=False)
)


def _migration_1(conn: Connection) -> None:
    for table in (batches, batch_requests):
        table.create(conn)


MIGRATIONS: list[Callable[[Connection], None]] = [_migration_1]


class Database:
    """The engine and its transactions; ``WorkQueue`` and ``BatchStore`` build on it."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self._write_lock = threading.Lock()
        self._engine: Engine = sa.create_engine(url, connect_args=_connect_args(url))
        if url.startswith("sqlite"):
            sa.event.listen(self._engine, "connect", _sqlite_pragmas)
            sa.event.listen(self._engine, "begin", _sqlite_begin)
        self._migrate()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """One write transaction; writers of this process take turns (SQLite's own
        busy waiting sleeps in coarse steps and would throttle every writer)."""
        with (
            self._write_lock,
            self._engine.connect().execution_options(immediate=True) as conn,
            conn.begin(),
        ):
            yield conn

    def _reading(self) -> contextlib.AbstractContextManager[Connection]:
        return self._engine.connect()

    def close(self) -> None:
        self._engine.dispose()

    def _migrate(self) -> None:
        with self._writing() as conn:
            schema_version.create(conn, checkfirst=True)
            current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
            done = int(current or 0)
            for number, migration in enumerate(MIGRATIONS, start=1):
                if number > done:
                    migration(conn)
                    conn.execute(schema_version.insert().values(version=number))

    @staticmethod
    def _end_if_done(conn: Connection, seq: int, now: float) -> None:
        active = conn.execute(
            sa.select(batch_requests.c.id)
            .where(batch_requests.c.batch_seq == seq, batch_requests.c.status.in_(ACTIVE))
            .limit(1)
        ).first()
        if active is None:
            conn.execute(
                batches.update()
                .where(batches.c.seq == seq, batches.c.ended_at.is_(None))
                .values(ended_at=now)
            )

    @staticmethod
    def _delete(conn: Connection, seqs: list[int]) -> None:
        if seqs:
            conn.execute(batch_requests.delete().where(batch_requests.c.batch_seq.in_(seqs)))
            conn.execute(batches.delete().where(batches.c.seq.in_(seqs)))


def _connect_args(url: str) -> dict[str, Any]:
    return {"timeout": 30, "check_same_thread": False} if url.startswith("sqlite") else {}


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # parley issues BEGIN itself (below), not the sqlite3 module.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable across process crashes
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    """Writers take the database lock up front: two deferred transactions upgrading
    at once would fail with SQLITE_BUSY instead of waiting their turn. Readers
    begin deferred and, in WAL mode, never wait."""
    immediate = conn.get_execution_options().get("immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
