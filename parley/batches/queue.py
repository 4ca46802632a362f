"""The worker's side of the batches database: claiming requests and recording outcomes.

A request's result is written in the same transaction that moves it out of
``running``, guarded by that state, so it is recorded exactly once; requests
found ``running`` at start-up (the server died mid-request) go back to
``pending`` and run again.

``attempts`` counts how often a request was started (claimed and not given
back unused). A request started ``max_attempts`` times without finishing
(each time the server died or was stopped under it: a request that crashes
the engine would otherwise crash it again after every restart) ends
``errored`` with an ``api_error`` saying so instead of running again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from parley.batches.schema import ACTIVE, Database, RequestStatus, batch_requests, batches
from parley.wire.batches import EXPIRED, ErroredResult


@dataclass(frozen=True)
class Claimed:
    """A request taken for processing."""

    row_id: int
    batch_seq: int
    batch_id: str
    custom_id: str
    params: str
    owner: str


@dataclass(frozen=True)
class Recovered:
    """What ``recover`` found at start-up."""

    resumed: list[int]  # row ids back to pending: they were running when the server stopped
    exhausted: int  # requests that ended errored: they had used all their attempts


class WorkQueue(Database):
    def __init__(
        self, url: str, *, clock: Callable[[], float] = time.time, max_attempts: int = 3
    ) -> None:
        self.max_attempts = max(1, max_attempts)
        self._exhausted = ErroredResult.of(
            "api_error",
            f"the request failed {self.max_attempts} attempts: the server stopped or crashed "
            "each time while running it, so it is not retried again",
        ).model_dump_json()
        super().__init__(url, clock=clock)

    def recover(self) -> Recovered:
        """At start-up: requests left ``running`` by a previous process run again,
        unless that was their last attempt (then they end errored)."""
        now = self.clock()
        with self._writing() as conn:
            # Pending ones too: max_attempts may have been lowered since they ran.
            exhausted = self._end_exhausted(conn, batch_requests.c.status.in_(ACTIVE), now)
            resumed = conn.execute(
                batch_requests.update()
                .where(batch_requests.c.status == "running")
                .values(status="pending")
                .returning(batch_requests.c.id)
            )
            return Recovered(sorted(r.id for r in resumed), exhausted)

    def claim(
        self,
        limit: int,
        *,
        skip_owners: Collection[str] = (),
        rows: Collection[int] | None = None,
    ) -> list[Claimed]:
        """Up to ``limit`` pending requests, oldest batch first, moved to ``running``
        with one attempt more. Batches of ``skip_owners`` are passed over (their
        owners are waiting for their rate limits); ``rows`` limits the choice to
        those request ids."""
        where = [batch_requests.c.status == "pending"]
        if skip_owners:
            # The unfinished batches of the others, so the index on (status,
            # batch_seq) is walked batch by batch instead of across skipped rows.
            others = sa.select(batches.c.seq).where(
                batches.c.ended_at.is_(None), batches.c.owner.not_in(list(skip_owners))
            )
            where.append(batch_requests.c.batch_seq.in_(others))
        if rows is not None:
            where.append(batch_requests.c.id.in_(list(rows)))
        with self._writing() as conn:
            picked = (
                sa.select(batch_requests.c.id)
                .where(*where)
                .order_by(batch_requests.c.batch_seq, batch_requests.c.idx)
                .limit(limit)
                .scalar_subquery()
            )
            found = list(
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
            if not found:
                return []
            seqs = {r.batch_seq for r in found}
            info = {
                b.seq: (b.id, b.owner)
                for b in conn.execute(
                    sa.select(batches.c.seq, batches.c.id, batches.c.owner).where(
                        batches.c.seq.in_(seqs)
                    )
                )
            }
        out = []
        for r in sorted(found, key=lambda r: r.id):
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

    def release(self, claimed: Sequence[Claimed], *, spent: bool = False) -> int:
        """Give running requests back to ``pending``; how many ended errored instead.

        Not ``spent`` (the engine never ran them: it was full, or their owner's
        rate limit made them wait), the claim's attempt is given back too.
        ``spent`` (a shutdown stopped them on the engine), the attempt counts,
        and a request that used its last one ends errored.
        """
        now = self.clock()
        mine = sa.and_(
            batch_requests.c.id.in_([c.row_id for c in claimed]),
            batch_requests.c.status == "running",
        )
        with self._writing() as conn:
            if not spent:
                conn.execute(
                    batch_requests.update()
                    .where(mine)
                    .values(status="pending", attempts=batch_requests.c.attempts - 1)
                )
                return 0
            exhausted = self._end_exhausted(conn, mine, now)
            conn.execute(batch_requests.update().where(mine).values(status="pending"))
            return exhausted

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
                .values(status="expired", result=EXPIRED)
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

    def _end_exhausted(self, conn: Connection, where: sa.ColumnElement[bool], now: float) -> int:
        """Requests matching ``where`` that were started ``max_attempts`` times end
        errored (their batches end if nothing else is left); how many."""
        ended = conn.execute(
            batch_requests.update()
            .where(where, batch_requests.c.attempts >= self.max_attempts)
            .values(status="errored", result=self._exhausted)
            .returning(batch_requests.c.batch_seq)
        )
        seqs = [r.batch_seq for r in ended]
        for seq in set(seqs):
            self._end_if_done(conn, seq, now)
        return len(seqs)
