"""Message Batches on disk: SQLAlchemy Core over SQLite (PostgreSQL-ready SQL).

Two tables: ``batches`` (one row a batch) and ``batch_requests`` (one row a
request: its params as given, its state and, once done, its result). Every
state change is one transaction; request counts are read from the requests
themselves, so they are exact at every moment. A request's result is written
in the same transaction that moves it out of ``running``, guarded by that
state, so it is recorded exactly once; requests found ``running`` at start-up
(the server died mid-request) go back to ``pending`` and run again.

Schema changes are numbered migrations (``MIGRATIONS``), applied in order at
start-up and recorded in ``schema_version``.

Methods are synchronous; the API and the worker call them off the event loop.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from parley import datadir
from parley.errors import InvalidRequestError, NotFoundError

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


def owner_of(api_key: str | None) -> str:
    """The scope a key's batches live in (a hash: keys are never stored)."""
    if not api_key:
        return ""
    return hashlib.sha256(api_key.encode()).hexdigest()


@dataclass(frozen=True)
class BatchRow:
    seq: int
    id: str
    owner: str
    created_at: float
    expires_at: float
    ended_at: float | None
    cancel_initiated_at: float | None
    total: int
    counts: dict[str, int]

    @property
    def status(self) -> Literal["in_progress", "canceling", "ended"]:
        if self.ended_at is not None:
            return "ended"
        return "canceling" if self.cancel_initiated_at is not None else "in_progress"


@dataclass(frozen=True)
class Claimed:
    """A request taken for processing."""

    row_id: int
    batch_seq: int
    batch_id: str
    custom_id: str
    params: str
    owner: str


class BatchStore:
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

    @classmethod
    def in_data_dir(cls, data_dir: Path, **kwargs: Any) -> BatchStore:
        """The store in ``data_dir/parley.db``, readable by this user only: the
        file is created 0600 before SQLite opens it (SQLite gives its ``-wal``
        and ``-shm`` files the database's mode) and older files are tightened."""
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in datadir.DATABASE_FILES:
            datadir.private_file(data_dir / name, create=name == datadir.DATABASE)
        return cls(f"sqlite:///{data_dir / datadir.DATABASE}", **kwargs)

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

    # --- batches --------------------------------------------------------------------

    def create(
        self,
        batch_id: str,
        owner: str,
        requests: Sequence[tuple[str, str]],
        *,
        expires_in: float,
    ) -> BatchRow:
        """A new batch of ``(custom_id, params JSON)`` requests, in one transaction."""
        now = self.clock()
        with self._writing() as conn:
            inserted = conn.execute(
                batches.insert().values(
                    id=batch_id,
                    owner=owner,
                    created_at=now,
                    expires_at=now + expires_in,
                    total=len(requests),
                )
            ).inserted_primary_key
            assert inserted is not None
            seq = inserted[0]
            rows = [
                {
                    "batch_seq": seq,
                    "idx": i,
                    "custom_id": cid,
                    "params": params,
                    "status": "pending",
                    "attempts": 0,
                }
                for i, (cid, params) in enumerate(requests)
            ]
            for start in range(0, len(rows), 5000):
                conn.execute(batch_requests.insert(), rows[start : start + 5000])
        return self.get(batch_id, owner)

    def get(self, batch_id: str, owner: str) -> BatchRow:
        with self._reading() as conn:
            row = conn.execute(
                sa.select(batches).where(batches.c.id == batch_id, batches.c.owner == owner)
            ).first()
            if row is None:
                raise NotFoundError(f"message batch {batch_id} not found")
            return self._row(conn, row)

    def page(
        self, owner: str, *, limit: int, before_id: str | None, after_id: str | None
    ) -> tuple[list[BatchRow], bool]:
        """Newest first; ``after_id`` pages to older batches, ``before_id`` to newer ones."""
        if not 1 <= limit <= 1000:
            raise InvalidRequestError("limit: Input should be between 1 and 1000")
        if before_id is not None and after_id is not None:
            raise InvalidRequestError("before_id and after_id cannot be given together")
        mine = batches.c.owner == owner
        with self._reading() as conn:
            query = sa.select(batches).where(mine)
            if after_id is not None:
                cursor = self._seq_of(conn, after_id, owner, "after_id")
                query = query.where(batches.c.seq < cursor).order_by(batches.c.seq.desc())
            elif before_id is not None:
                cursor = self._seq_of(conn, before_id, owner, "before_id")
                query = query.where(batches.c.seq > cursor).order_by(batches.c.seq.asc())
            else:
                query = query.order_by(batches.c.seq.desc())
            found = list(conn.execute(query.limit(limit + 1)))
            has_more = len(found) > limit
            found = found[:limit]
            if before_id is not None:
                found.reverse()
            return [self._row(conn, r) for r in found], has_more

    def cancel(self, batch_id: str, owner: str) -> BatchRow:
        """Pending requests become canceled at once; running ones are the worker's."""
        now = self.clock()
        with self._writing() as conn:
            row = self._locked(conn, batch_id, owner)
            if row.ended_at is None and row.cancel_initiated_at is None:
                conn.execute(
                    batches.update().where(batches.c.seq == row.seq).values(cancel_initiated_at=now)
                )
                conn.execute(
                    batch_requests.update()
                    .where(
                        batch_requests.c.batch_seq == row.seq,
                        batch_requests.c.status == "pending",
                    )
                    .values(status="canceled", result=json.dumps({"type": "canceled"}))
                )
                self._end_if_done(conn, row.seq, now)
        return self.get(batch_id, owner)

    def delete(self, batch_id: str, owner: str) -> None:
        with self._writing() as conn:
            row = self._locked(conn, batch_id, owner)
            if row.ended_at is None:
                raise InvalidRequestError(
                    f"message batch {batch_id} cannot be deleted while it is processing; "
                    "cancel it first and delete it once it has ended"
                )
            self._delete(conn, [row.seq])

    def results(self, batch_id: str, owner: str, page: int = 1000) -> Iterator[list[bytes]]:
        """JSONL lines of an ended batch's results, a page at a time (never all at once)."""
        batch = self.get(batch_id, owner)
        if batch.ended_at is None:
            raise InvalidRequestError(
                f"message batch {batch_id} has not ended yet; results are available once "
                "processing_status is 'ended'"
            )
        return self._result_pages(batch.seq, page)

    def _result_pages(self, seq: int, page: int) -> Iterator[list[bytes]]:
        last = -1
        while True:
            with self._reading() as conn:
                rows = list(
                    conn.execute(
                        sa.select(
                            batch_requests.c.idx,
                            batch_requests.c.custom_id,
                            batch_requests.c.result,
                        )
                        .where(batch_requests.c.batch_seq == seq, batch_requests.c.idx > last)
                        .order_by(batch_requests.c.idx)
                        .limit(page)
                    )
                )
            if not rows:
                return
            last = rows[-1].idx
            yield [
                b'{"custom_id":%s,"result":%s}\n'
                % (json.dumps(r.custom_id).encode(), (r.result or '{"type":"expired"}').encode())
                for r in rows
            ]

    # --- the worker's side --------------------------------------------------------------

    def recover(self) -> int:
        """Requests left ``running`` by a previous process run again."""
        with self._writing() as conn:
            return int(
                conn.execute(
                    batch_requests.update()
                    .where(batch_requests.c.status == "running")
                    .values(status="pending")
                ).rowcount
            )

    def claim(self, limit: int) -> list[Claimed]:
        """Up to ``limit`` pending requests, oldest batch first, moved to ``running``."""
        with self._writing() as conn:
            picked = (
                sa.select(batch_requests.c.id)
                .where(batch_requests.c.status == "pending")
                .order_by(batch_requests.c.batch_seq, batch_requests.c.idx)
                .limit(limit)
                .scalar_subquery()
            )
            rows = list(
                conn.execute(
                    batch_requests.update()
                    .where(batch_requests.c.id.in_(picked))
                    .values(status="running", attempts=batch_requests.c.attempts + 1)
                    .returning(
                        batch_requests.c.id,
                        batch_requests.c.batch_seq,
                        batch_requests.c.custom_id,
                        batch_requests.c.params,
                    )
                )
            )
            if not rows:
                return []
            seqs = {r.batch_seq for r in rows}
            info = {
                b.seq: (b.id, b.owner)
                for b in conn.execute(
                    sa.select(batches.c.seq, batches.c.id, batches.c.owner).where(
                        batches.c.seq.in_(seqs)
                    )
                )
            }
        out = []
        for r in sorted(rows, key=lambda r: r.id):
            batch_id, owner = info[r.batch_seq]
            out.append(Claimed(r.id, r.batch_seq, batch_id, r.custom_id, r.params, owner))
        return out

    def finish(self, outcomes: Sequence[tuple[Claimed, RequestStatus, str]]) -> int:
        """Record running requests' results (each moves out of ``running`` together
        with its result, all in one transaction); how many were still running."""
        now = self.clock()
        recorded = 0
        with self._writing() as conn:
            touched: set[int] = set()
            for claimed, status, result in outcomes:
                recorded += conn.execute(
                    batch_requests.update()
                    .where(
                        batch_requests.c.id == claimed.row_id,
                        batch_requests.c.status == "running",
                    )
                    .values(status=status, result=result)
                ).rowcount
                touched.add(claimed.batch_seq)
            for seq in touched:
                self._end_if_done(conn, seq, now)
        return recorded

    def release(self, claimed: Claimed) -> None:
        """Give a running request back (the engine was too busy to take it)."""
        with self._writing() as conn:
            conn.execute(
                batch_requests.update()
                .where(batch_requests.c.id == claimed.row_id, batch_requests.c.status == "running")
                .values(status="pending", attempts=batch_requests.c.attempts - 1)
            )

    def expire(self) -> list[int]:
        """Pending requests of batches past ``expires_at`` become expired; the
        batches whose running requests the worker must stop are returned."""
        now = self.clock()
        with self._writing() as conn:
            due = [
                r.seq
                for r in conn.execute(
                    sa.select(batches.c.seq).where(
                        batches.c.ended_at.is_(None), batches.c.expires_at <= now
                    )
                )
            ]
            if not due:
                return []
            conn.execute(
                batch_requests.update()
                .where(batch_requests.c.batch_seq.in_(due), batch_requests.c.status == "pending")
                .values(status="expired", result=json.dumps({"type": "expired"}))
            )
            for seq in due:
                self._end_if_done(conn, seq, now)
            return due

    def purge(self, retention: float) -> int:
        """Batches (and their results) created more than ``retention`` seconds ago go."""
        cutoff = self.clock() - retention
        with self._writing() as conn:
            old = [
                r.seq
                for r in conn.execute(
                    sa.select(batches.c.seq).where(
                        batches.c.created_at <= cutoff, batches.c.ended_at.is_not(None)
                    )
                )
            ]
            self._delete(conn, old)
            return len(old)

    def has_pending(self) -> bool:
        with self._reading() as conn:
            query = sa.select(batch_requests.c.id).where(batch_requests.c.status == "pending")
            return conn.execute(query.limit(1)).first() is not None

    # --- internals ----------------------------------------------------------------------

    def _row(self, conn: Connection, row: Any) -> BatchRow:
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        for status, n in conn.execute(
            sa.select(batch_requests.c.status, sa.func.count())
            .where(batch_requests.c.batch_seq == row.seq)
            .group_by(batch_requests.c.status)
        ):
            counts["processing" if status in ACTIVE else status] += int(n)
        return BatchRow(
            seq=row.seq,
            id=row.id,
            owner=row.owner,
            created_at=row.created_at,
            expires_at=row.expires_at,
            ended_at=row.ended_at,
            cancel_initiated_at=row.cancel_initiated_at,
            total=row.total,
            counts=counts,
        )

    def _locked(self, conn: Connection, batch_id: str, owner: str) -> Any:
        row = conn.execute(
            sa.select(batches)
            .where(batches.c.id == batch_id, batches.c.owner == owner)
            .with_for_update()
        ).first()
        if row is None:
            raise NotFoundError(f"message batch {batch_id} not found")
        return row

    def _seq_of(self, conn: Connection, batch_id: str, owner: str, name: str) -> int:
        seq = conn.execute(
            sa.select(batches.c.seq).where(batches.c.id == batch_id, batches.c.owner == owner)
        ).scalar()
        if seq is None:
            raise InvalidRequestError(f"{name}: no message batch with id '{batch_id}'")
        return int(seq)

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
