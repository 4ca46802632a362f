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
from collections.abc import Callable, Collection, Iterator, Mapping
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
            if self.shared:
                sa.event.listen(self._engine, "checkin", _checked_in)
                sa.event.listen(self._engine, "checkout", _ping_if_idle)
            else:
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
    def _statements(self) -> Iterator[Connection]:
        """Writes each of which is whole on its own: on PostgreSQL every statement
        commits by itself (a transaction costs two more round trips, BEGIN and
        COMMIT, each about half a millisecond here); on SQLite, one transaction."""
        if not self.shared:
            with self._writing() as conn:
                yield conn
            return
        with (
            DATABASE.crossing("write"),
            self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn,
        ):
            yield conn

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Connection]:
        """Reads (on PostgreSQL outside a transaction: READ COMMITTED gives each
        statement its own snapshot anyway, so a BEGIN would add only a round trip)."""
        options = {"isolation_level": "AUTOCOMMIT"} if self.shared else {}
        with DATABASE.crossing("read"), self._engine.connect().execution_options(**options) as conn:
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

    def _end_if_done(self, conn: Connection, seqs: Collection[int], now: float) -> None:
        """The batches among ``seqs`` with nothing left to run end now (inside a
        transaction that changed their requests)."""
        if not seqs:
            return
        ordered = sorted(set(seqs))  # (in order: replicas lock batch rows alike)
        if self.shared:
            # Two replicas finishing a batch's last two requests at once would each
            # see the other's still running: the batch rows make them take turns,
            # and the second one's next statement sees the first one's commit.
            conn.execute(
                sa.select(batches.c.seq)
                .where(batches.c.seq.in_(ordered))
                .order_by(batches.c.seq)
                .with_for_update()
            )
        self._end_finished(conn, ordered, now)

    @staticmethod
    def _end_finished(conn: Connection, seqs: Collection[int] | None, now: float) -> None:
        """The batches among ``seqs`` (None: all) with nothing left to run end now.
        Alone (not after ``_end_if_done``'s locks) only once the changes to their
        requests have committed: then whichever replica commits a batch's last
        result last sees all of them done."""
        active = (
            sa.select(batch_requests.c.id)
            .where(batch_requests.c.batch_seq == batches.c.seq, batch_requests.c.status.in_(ACTIVE))
            .exists()
        )
        where = [batches.c.ended_at.is_(None), ~active]
        if seqs is not None:
            where.append(batches.c.seq.in_(list(seqs)))
        conn.execute(batches.update().where(*where).values(ended_at=now))

    @staticmethod
    def _delete(conn: Connection, seqs: list[int]) -> None:
        if seqs:
            conn.execute(batch_requests.delete().where(batch_requests.c.batch_seq.in_(seqs)))
            conn.execute(batches.delete().where(batches.c.seq.in_(seqs)))


def _engine_options(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": 30, "check_same_thread": False}}
    return {
        # (no pool_pre_ping: a round trip before every transaction; _ping_if_idle)
        "pool_size": 8,
        "max_overflow": 8,
        "pool_timeout": 10,
        "connect_args": {"connect_timeout": 5, "application_name": "parley"},
    }


_IDLE_PING = 1.0  # seconds a pooled connection may rest before it is pinged


def _checked_in(_dbapi_connection: Any, record: Any) -> None:
    record.info["rested_from"] = time.monotonic()


def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """A connection that rested in the pool is pinged before it is used, so one
    the server dropped meanwhile (a restart) is replaced instead of failing the
    transaction; one back within a second is not (a round trip per transaction
    would cost a busy worker a fifth of its throughput, and a drop since is
    seen by that transaction, which fails and is retried like any outage)."""
    rested_from = record.info.get("rested_from")
    if rested_from is None or time.monotonic() - rested_from < _IDLE_PING:
        return
    try:
        dbapi_connection.autocommit = True  # (no transaction around the ping)
        try:
            dbapi_connection.execute("SELECT 1")
        finally:
            dbapi_connection.autocommit = False
    except Exception as exc:  # the pool replaces it with a new connection
        raise sa.exc.DisconnectionError(f"a pooled connection was dropped: {exc}") from exc


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
