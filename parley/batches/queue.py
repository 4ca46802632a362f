"""The worker's side of the batches database: claiming requests and recording outcomes.

A request's result is written in the same transaction that moves it out of
``running``, guarded by that state, so it is recorded exactly once; requests
found ``running`` at start-up (the server died mid-request) go back to
``pending`` and run again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from parley.batches.schema import Database, RequestStatus, batch_requests, batches


@dataclass(frozen=True)
class Claimed:
    """A request taken for processing."""

    row_id: int
    batch_seq: int
    batch_id: str
    custom_id: str
    params: str
    owner: str


class WorkQueue(Database):
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
