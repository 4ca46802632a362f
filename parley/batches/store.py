"""Message Batches in a database: SQLAlchemy Core over SQLite or PostgreSQL.

Every state change is one transaction; request counts are read from the
requests themselves, so they are exact at every moment. The tables and
migrations are in ``parley.db``; the worker's side (claiming, recording
results, recovery, expiry) in ``queue.py``; this module adds what the API
does with batches (create, read, page, cancel, delete, results).

Methods are synchronous; the API and the worker call them off the event loop.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from parley import datadir
from parley.batches.queue import Claimed, WorkQueue
from parley.db.schema import ACTIVE, RequestStatus, batch_requests, batches
from parley.errors import InvalidRequestError, NotFoundError
from parley.wire.batches import CANCELED, EXPIRED

__all__ = ["ACTIVE", "BatchRow", "BatchStore", "Claimed", "RequestStatus", "owner_of"]


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


class BatchStore(WorkQueue):
    @classmethod
    def in_data_dir(cls, data_dir: Path, **kwargs: Any) -> BatchStore:
        """The store in ``data_dir/parley.db``, readable by this user only: the
        file is created 0600 before SQLite opens it (SQLite gives its ``-wal``
        and ``-shm`` files the database's mode) and older files are tightened."""
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        for name in datadir.DATABASE_FILES:
            datadir.private_file(data_dir / name, create=name == datadir.DATABASE)
        return cls(f"sqlite:///{data_dir / datadir.DATABASE}", **kwargs)

    @classmethod
    def open(cls, database_url: str | None, data_dir: Path, **kwargs: Any) -> BatchStore:
        """The store at ``database_url``, or in the data dir when there is none."""
        if database_url is None:
            return cls.in_data_dir(data_dir, **kwargs)
        return cls(database_url, **kwargs)

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
            self._notify_work(conn)
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
                    .values(status="canceled", result=CANCELED)
                )
                self._end_if_done(conn, [row.seq], now)
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
                % (json.dumps(r.custom_id).encode(), (r.result or EXPIRED).encode())
                for r in rows
            ]

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
