"""The database engine, its transactions and the rules of each dialect.

``Database`` owns the SQLAlchemy engine. SQLite (the embedded default, one
process): one write transaction at a time in this process (``_writing``),
readers that never wait (WAL). PostgreSQL (``--database-url``, shared by
replicas): transactions run side by side and rows are locked where two
replicas could race (claims ``SKIP LOCKED``, a batch row before it may end).

Migrations (``schema.MIGRATIONS``) run at start-up inside one transaction
that first takes a lock (``BEGIN IMMEDIATE`` on SQLite, an advisory
transaction lock on PostgreSQL), so replicas starting together migrate once
and the others find it done.

Driver failures (the server is down, the disk is full) cross into parley
through ``DATABASE``: a ``StorageError``; anything else the driver raises
(a constraint violated) is a bug and propagates as it is.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from parley.boundary import Boundary
from parley.config import ConfigError
from parley.db.schema import ACTIVE, MIGRATIONS, batch_requests, batches, schema_version
from parley.errors import ParleyError, StorageError

WORK_CHANNEL = "parley_work"  # NOTIFY'd when requests become pending
_MIGRATION_LOCK = 0x7061726C6579  # "parley": the advisory lock key of migrations


def _unavailable(exc: BaseException, what: str, _context: Mapping[str, Any]) -> ParleyError:
    cause = getattr(exc, "orig", None) or exc
    first = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return StorageError(f"the database is unavailable ({what}): {first}")


DATABASE = Boundary(
    "sqlalchemy",
    [((sa.exc.OperationalError, sa.exc.InterfaceError, sa.exc.TimeoutError), _unavailable)],
)


def resolve_url(url: str) -> str:
    """A user's database URL as SQLAlchemy takes it: ``postgres://`` and
    ``postgresql://`` mean the psycopg driver; only SQLite and PostgreSQL are known."""
    resolved = url
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            resolved = "postgresql+psycopg://" + url.removeprefix(prefix)
    if not resolved.startswith(("postgresql+psycopg://", "sqlite:")):
        scheme = url.split(":", 1)[0] if ":" in url else url
        raise ConfigError(
            f"database_url: '{scheme}' is not a database parley uses; "
            "give postgresql://USER@HOST/DB or sqlite:///PATH"
        )
    try:
        sa.engine.make_url(resolved)
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise ConfigError(f"database_url: not a URL parley can use: {exc}") from exc
    return resolved


def redacted(url: str) -> str:
    """``url`` without its password, for logs and status lines."""
    return sa.engine.make_url(url).render_as_string(hide_password=True)


class Database:
    """The engine and its transactions; ``WorkQueue`` and ``BatchStore`` build on it."""

    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        migrate: bool = True,
    ) -> None:
        self.clock = clock
        self.url = resolve_url(url)
        self.shared = self.url.startswith("postgresql")  # several replicas may use it
        # SQLite: writers of this process take turns (its own busy waiting sleeps in
        # coarse steps and would throttle every writer). PostgreSQL locks rows.
        self._write_lock: contextlib.AbstractContextManager[Any] = (
            contextlib.nullcontext() if self.shared else threading.Lock()
        )
        with DATABASE.crossing("open the database"):
            self._engine: Engine = sa.create_engine(self.url, **_engine_options(self.url))
            if not self.shared:
                sa.event.listen(self._engine, "connect", _sqlite_pragmas)
                sa.event.listen(self._engine, "begin", _sqlite_begin)
        if migrate:
            self.migrate()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Connection]:
        """One write transaction (driver failures become ``StorageError``)."""
        with (
            DATABASE.crossing("write"),
            self._write_lock,
            self._engine.connect().execution_options(immediate=True) as conn,
            conn.begin(),
        ):
            yield conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        with DATABASE.crossing("read"), self._engine.connect() as conn:
            yield conn

    def close(self) -> None:
        self._engine.dispose()

    # --- migrations -------------------------------------------------------------------

    def schema_version(self) -> int:
        """The newest migration applied (0: none, or no tables yet)."""
        with self._reading() as conn:
            if not sa.inspect(conn).has_table("schema_version"):
                return 0
            return int(conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar() or 0)

    def migrate(self) -> list[int]:
        """Apply the migrations not yet applied, under the lock; their numbers."""
        applied: list[int] = []
        with self._writing() as conn:
            if self.shared:  # held until this transaction ends: replicas take turns
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_MIGRATION_LOCK)))
            schema_version.create(conn, checkfirst=True)
            current = conn.execute(sa.select(sa.func.max(schema_version.c.version))).scalar()
            done = int(current or 0)
            if done > len(MIGRATIONS):
                raise ConfigError(
                    f"the database's schema is version {done}, newer than this parley's "
                    f"({len(MIGRATIONS)}): a newer parley migrated it; upgrade this one"
                )
            for number, migration in enumerate(MIGRATIONS, start=1):
                if number > done:
                    migration(conn)
                    conn.execute(schema_version.insert().values(version=number))
                    applied.append(number)
        return applied

    # --- helpers the store's two sides share ----------------------------------------

    def _notify_work(self, conn: Connection) -> None:
        """Wake the replicas' workers when this transaction commits (PostgreSQL)."""
        if self.shared:
            conn.execute(sa.select(sa.func.pg_notify(WORK_CHANNEL, "")))

    def _end_if_done(self, conn: Connection, seq: int, now: float) -> None:
        if self.shared:
            # Two replicas finishing a batch's last two requests at once would each
            # see the other's still running: the batch row makes them take turns,
            # and the second one's next statement sees the first one's commit.
            conn.execute(sa.select(batches.c.seq).where(batches.c.seq == seq).with_for_update())
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


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30, "check_same_thread": False}}
    return {
        # A connection the server dropped (a restart) is found before it is used.
        "pool_pre_ping": True,
        "pool_size": 8,
        "max_overflow": 8,
        "pool_timeout": 10,
        "connect_args": {"connect_timeout": 5, "application_name": "parley"},
    }


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
