"""The worker's side of the batches database: claiming requests and recording outcomes.

A replica claims a request by taking a lease on it: ``lease_owner`` (the
replica's id) and ``lease_until``, renewed by ``renew`` while the replica
runs it. A claim takes pending requests, ``FOR UPDATE SKIP LOCKED`` on
PostgreSQL so replicas claiming at once never take the same row; every
tick ``reclaim`` makes requests whose lease ran out (their replica died)
pending again. Each claim adds one to
``attempts``, and that number is the claim's fencing token: a result is
written in the transaction that moves its request out of ``running`` only
where the owner and the attempt are still the claim's, so a replica that
lost its lease (it stalled, another took the request over) writes nothing
and every request is recorded exactly once.

At start-up (``recover``) the embedded SQLite database is this process's
alone: requests found ``running`` (the server died mid-request) go back to
``pending`` and run again. A shared database is left to the leases: only
requests whose lease has run out are reset, never those other replicas hold.

``attempts`` counts how often a request was started (claimed and not given
back unused). A request started ``max_attempts`` times without finishing
(each time the server died or was stopped under it: a request that crashes
the engine would otherwise crash it again after every restart) ends
``errored`` with an ``api_error`` saying so instead of running again.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from parley.db.database import Database
from parley.db.schema import RequestStatus, batch_requests, batches
from parley.wire.batches import CANCELED, EXPIRED, ErroredResult


@dataclass(frozen=True)
class Claimed:
    """A request taken for processing."""

    row_id: int
    batch_seq: int
    batch_id: str
    custom_id: str
    params: str
    owner: str
    attempt: int = 0  # the claim's fencing token (its ``attempts`` number)
    # Taken over from a replica that died holding it (``reclaim``): it runs alone.
    suspect: bool = False


@dataclass(frozen=True)
class Recovered:
    """What ``recover`` found at start-up."""

    resumed: list[int]  # row ids back to pending: they were running when the server stopped
    exhausted: int  # requests that ended errored: they had used all their attempts


def replica_id() -> str:
    """A name for this process among the replicas: host, pid and a random tail
    (a pid comes back after a restart; a lease of the old process must not)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


_HELD = sa.and_(
    batch_requests.c.id == sa.bindparam("b_id"),
    batch_requests.c.status == "running",
    batch_requests.c.lease_owner == sa.bindparam("b_replica"),
    batch_requests.c.attempts == sa.bindparam("b_attempt"),
)
# SQLite: one statement executed for every outcome (in process: cheap).
_RECORD = (
    batch_requests.update()
    .where(_HELD)
    .values(
        status=sa.bindparam("b_status"),
        result=sa.bindparam("b_result"),
        lease_owner=None,
        lease_until=None,
    )
)
# PostgreSQL: one statement for all of them, the outcomes as arrays (a statement
# per outcome, even pipelined, cost the writer about a millisecond each). It
# also names the batches it may have finished: those with no pending request
# left (as it found them; one whose pending requests another replica claims
# and finishes meanwhile is ended by that replica, or at the latest by the
# next tick's ``reclaim``).
_RECORD_PG = sa.text(
    """
    WITH recorded AS (
        UPDATE batch_requests AS r
        SET status = v.status, result = v.result, lease_owner = NULL, lease_until = NULL
        FROM unnest(
            CAST(:ids AS integer[]), CAST(:attempts AS integer[]),
            CAST(:statuses AS varchar[]), CAST(:results AS text[])
        ) AS v(id, attempt, status, result)
        WHERE r.id = v.id AND r.status = 'running' AND r.lease_owner = :replica
            AND r.attempts = v.attempt
        RETURNING r.batch_seq
    ), seqs AS (SELECT DISTINCT batch_seq FROM recorded)
    SELECT
        (SELECT count(*) FROM recorded) AS recorded,
        ARRAY(
            SELECT s.batch_seq FROM seqs AS s
            WHERE NOT EXISTS (
                SELECT 1 FROM batch_requests AS p
                WHERE p.batch_seq = s.batch_seq AND p.status = 'pending'
            )
        ) AS finishing
    """
)


class WorkQueue(Database):
    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        max_attempts: int = 3,
        replica: str | None = None,
        lease: float = 30.0,
        migrate: bool = True,
    ) -> None:
        self.max_attempts = max(1, max_attempts)
        self.replica = replica or replica_id()
        self.lease = lease  # seconds a claim holds without a renewal
        self._exhausted = ErroredResult.of(
            "api_error",
            f"the request failed {self.max_attempts} attempts: the server stopped or crashed "
            "each time while running it, so it is not retried again",
        ).model_dump_json()
        super().__init__(url, clock=clock, migrate=migrate)

    def _stale(self, now: float) -> sa.ColumnElement[bool]:
        """Running requests no live replica holds: on SQLite at start-up every one
        (the database is this process's), on a shared one those whose lease ran out."""
        running = batch_requests.c.status == "running"
        if not self.shared:
            return running
        lapsed = sa.or_(batch_requests.c.lease_until.is_(None), batch_requests.c.lease_until < now)
        return sa.and_(running, sa.or_(lapsed, batch_requests.c.lease_owner == self.replica))

    def recover(self) -> Recovered:
        """At start-up: requests left ``running`` by a dead process run again,
        unless that was their last attempt (then they end errored). Requests
        other live replicas hold are theirs (a shared database)."""
        now = self.clock()
        stale = self._stale(now)
        with self._writing() as conn:
            # Pending ones too: max_attempts may have been lowered since they ran.
            active = sa.or_(batch_requests.c.status == "pending", stale)
            exhausted = self._end_exhausted(conn, active, now)
            return Recovered(self._resume(conn, stale, now), exhausted)

    def reclaim(self) -> Recovered:
        """Every tick: requests whose lease ran out (their replica died or stalled)
        go back to ``pending`` for any replica to claim, unless that was their
        last attempt. This replica's own live leases are never lapsed (renewed)."""
        now = self.clock()
        lapsed = sa.and_(batch_requests.c.status == "running", batch_requests.c.lease_until < now)
        with self._writing() as conn:
            exhausted = self._end_exhausted(conn, lapsed, now)
            resumed = self._resume(conn, lapsed, now)
            if self.shared:
                # A batch whose last result was written by a replica that died before
                # it could end the batch, or while another changed its requests.
                self._end_finished(conn, None, now)
            return Recovered(resumed, exhausted)

    def _resume(self, conn: Connection, where: sa.ColumnElement[bool], now: float) -> list[int]:
        """Running requests ``where`` back to ``pending`` as suspects (whoever claims
        one next runs it alone: it may be what killed its process); their ids."""
        resumed = conn.execute(
            batch_requests.update()
            .where(where)
            .values(status="pending", lease_owner=None, lease_until=None, suspect=True)
            .returning(batch_requests.c.id)
        )
        ids = sorted(r.id for r in resumed)
        if ids:
            self._cancel_if_canceling(conn, now)
            self._notify_work(conn)
        return ids

    def claim(
        self,
        limit: int,
        *,
        skip_owners: Collection[str] = (),
        rows: Collection[int] | None = None,
        suspects: bool | None = None,
    ) -> list[Claimed]:
        """Up to ``limit`` pending requests, oldest batch first, moved to ``running``
        with one attempt more. Batches of ``skip_owners`` are passed over (their
        owners are waiting for their rate limits); ``rows`` limits the choice to
        those request ids. (Requests whose lease ran out are made pending again
        by ``reclaim``, as suspects, like those ``recover`` finds: ``suspects``
        True claims only those, False none of them.)"""
        now = self.clock()
        where = [batch_requests.c.status == "pending"]
        if suspects is not None:
            where.append(self._suspect_is(suspects))
        if skip_owners:
            # The unfinished batches of the others, so the index on (status,
            # batch_seq) is walked batch by batch instead of across skipped rows.
            others = sa.select(batches.c.seq).where(
                batches.c.ended_at.is_(None), batches.c.owner.not_in(list(skip_owners))
            )
            where.append(batch_requests.c.batch_seq.in_(others))
        if rows is not None:
            where.append(batch_requests.c.id.in_(list(rows)))
        with self._statements() as conn:  # (one statement)
            picked = (
                sa.select(batch_requests.c.id)
                .where(*where)
                .order_by(batch_requests.c.batch_seq, batch_requests.c.idx)
                .limit(limit)
                # Replicas claiming at once skip each other's rows instead of
                # taking them again once the first commits (SQLite: ignored).
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )

            # One statement: the batch's id and owner come back with each request
            # (as subqueries: SQLite's RETURNING names only the updated table).
            def of_batch(column: sa.Column[str]) -> sa.ScalarSelect[str]:
                return (
                    sa.select(column)
                    .where(batches.c.seq == batch_requests.c.batch_seq)
                    .scalar_subquery()
                )

            found = conn.execute(
                batch_requests.update()
                .where(batch_requests.c.id.in_(picked))
                .values(
                    status="running",
                    attempts=batch_requests.c.attempts + 1,
                    lease_owner=self.replica,
                    lease_until=now + self.lease,
                )
                .returning(
                    batch_requests.c.id,
                    batch_requests.c.batch_seq,
                    of_batch(batches.c.id).label("batch_id"),
                    batch_requests.c.custom_id,
                    batch_requests.c.params,
                    of_batch(batches.c.owner).label("owner"),
                    batch_requests.c.attempts,
                    batch_requests.c.suspect,
                )
            ).all()
        return [
            Claimed(
                r.id,
                r.batch_seq,
                r.batch_id,
                r.custom_id,
                r.params,
                r.owner,
                r.attempts,
                bool(r.suspect),
            )
            for r in sorted(found, key=lambda r: r.id)
        ]

    def has_suspects(self, skip_owners: Collection[str] = ()) -> bool:
        """Whether requests taken over from a dead replica wait (of owners not skipped)."""
        where = [batch_requests.c.status == "pending", self._suspect_is(True)]
        if skip_owners:
            others = sa.select(batches.c.seq).where(batches.c.owner.not_in(list(skip_owners)))
            where.append(batch_requests.c.batch_seq.in_(others))
        with self._reading() as conn:
            found = conn.execute(sa.select(batch_requests.c.id).where(*where).limit(1)).first()
            return found is not None

    @staticmethod
    def _suspect_is(value: bool) -> sa.ColumnElement[bool]:
        return batch_requests.c.suspect.is_(sa.true() if value else sa.false())

    def renew(self) -> list[int]:
        """Extend the leases this replica holds; the batches of those requests
        that are being canceled (by any replica: their running requests are
        this one's to stop)."""
        now = self.clock()
        mine = sa.and_(
            batch_requests.c.lease_owner == self.replica, batch_requests.c.status == "running"
        )
        with self._writing() as conn:
            conn.execute(batch_requests.update().where(mine).values(lease_until=now + self.lease))
            canceling = conn.execute(
                sa.select(batch_requests.c.batch_seq)
                .distinct()
                .join(batches, batches.c.seq == batch_requests.c.batch_seq)
                .where(mine, batches.c.cancel_initiated_at.is_not(None))
            )
            return sorted(r.batch_seq for r in canceling)

    def _held(self, claimed: Claimed) -> sa.ColumnElement[bool]:
        """The claim still holds its request: running, by this replica, at its attempt."""
        return sa.and_(
            batch_requests.c.id == claimed.row_id,
            batch_requests.c.status == "running",
            batch_requests.c.lease_owner == self.replica,
            batch_requests.c.attempts == claimed.attempt,
        )

    def finish(self, outcomes: Sequence[tuple[Claimed, RequestStatus, str]]) -> int:
        """Record running requests' results (each moves out of ``running`` together
        with its result, all in one statement), then end the batches they
        finished; how many were recorded. A request whose lease this replica
        lost is not (another replica runs it)."""
        if not outcomes:
            return 0
        now = self.clock()
        with self._statements() as conn:
            if self.shared:
                row = conn.execute(
                    _RECORD_PG,
                    {
                        "ids": [c.row_id for c, _, _ in outcomes],
                        "attempts": [c.attempt for c, _, _ in outcomes],
                        "statuses": [status for _, status, _ in outcomes],
                        "results": [result for _, _, result in outcomes],
                        "replica": self.replica,
                    },
                ).one()
                recorded, finishing = row.recorded, row.finishing
            else:
                params = [
                    {
                        "b_id": c.row_id,
                        "b_attempt": c.attempt,
                        "b_status": st,
                        "b_result": res,
                        "b_replica": self.replica,
                    }
                    for c, st, res in outcomes
                ]
                recorded = conn.execute(_RECORD, params).rowcount
                finishing = list({c.batch_seq for c, _, _ in outcomes})
            # On PostgreSQL after the results committed (the statement before did),
            # so the replica that commits a batch's last result last ends it.
            if finishing:
                self._end_finished(conn, finishing, now)
        return int(recorded)

    def release(self, claimed: Sequence[Claimed], *, spent: bool = False) -> int:
        """Give running requests back to ``pending``; how many ended errored instead.

        Not ``spent`` (the engine never ran them: it was full, or their owner's
        rate limit made them wait), the claim's attempt is given back too.
        ``spent`` (a shutdown stopped them on the engine), the attempt counts,
        and a request that used its last one ends errored.
        """
        now = self.clock()
        mine = sa.or_(*(self._held(c) for c in claimed)) if claimed else sa.false()
        pending = {"status": "pending", "lease_owner": None, "lease_until": None}
        with self._writing() as conn:
            if not spent:
                given = conn.execute(
                    batch_requests.update()
                    .where(mine)
                    .values(**pending, attempts=batch_requests.c.attempts - 1)
                ).rowcount
                if given:
                    self._notify_work(conn)
                return 0
            exhausted = self._end_exhausted(conn, mine, now)
            if conn.execute(batch_requests.update().where(mine).values(**pending)).rowcount:
                self._notify_work(conn)
            return exhausted

    def expire(self) -> list[int]:
        """Pending requests of batches past ``expires_at`` become expired; the
        batches whose running requests the worker must stop are returned."""
        now = self.clock()
        with self._writing() as conn:
            # Batch rows are locked before their requests, as cancel and delete
            # lock them: two replicas doing both at once would deadlock otherwise.
            due = [
                r.seq
                for r in conn.execute(
                    sa.select(batches.c.seq)
                    .where(batches.c.ended_at.is_(None), batches.c.expires_at <= now)
                    .order_by(batches.c.seq)
                    .with_for_update()
                )
            ]
            if not due:
                return []
            conn.execute(
                batch_requests.update()
                .where(batch_requests.c.batch_seq.in_(due), batch_requests.c.status == "pending")
                .values(status="expired", result=EXPIRED)
            )
            self._end_if_done(conn, due, now)
            return due

    def purge(self, retention: float) -> int:
        """Batches (and their results) created more than ``retention`` seconds ago go."""
        cutoff = self.clock() - retention
        with self._writing() as conn:
            old = [
                r.seq
                for r in conn.execute(
                    sa.select(batches.c.seq)
                    .where(batches.c.created_at <= cutoff, batches.c.ended_at.is_not(None))
                    .order_by(batches.c.seq)
                    .with_for_update()
                )
            ]
            self._delete(conn, old)
            return len(old)

    def has_pending(self) -> bool:
        with self._reading() as conn:
            query = sa.select(batch_requests.c.id).where(batch_requests.c.status == "pending")
            return conn.execute(query.limit(1)).first() is not None

    def _cancel_if_canceling(self, conn: Connection, now: float) -> None:
        """Pending requests of batches being canceled become canceled: requests
        made pending again after their runner died were running when the cancel
        came, so the cancel left them to it."""
        canceling = sa.select(batches.c.seq).where(
            batches.c.cancel_initiated_at.is_not(None), batches.c.ended_at.is_(None)
        )
        ended = conn.execute(
            batch_requests.update()
            .where(batch_requests.c.status == "pending", batch_requests.c.batch_seq.in_(canceling))
            .values(status="canceled", result=CANCELED)
            .returning(batch_requests.c.batch_seq)
        )
        self._end_if_done(conn, {r.batch_seq for r in ended}, now)

    def _end_exhausted(self, conn: Connection, where: sa.ColumnElement[bool], now: float) -> int:
        """Requests matching ``where`` that were started ``max_attempts`` times end
        errored (their batches end if nothing else is left); how many."""
        ended = conn.execute(
            batch_requests.update()
            .where(where, batch_requests.c.attempts >= self.max_attempts)
            .values(status="errored", result=self._exhausted, lease_owner=None, lease_until=None)
            .returning(batch_requests.c.batch_seq)
        )
        seqs = [r.batch_seq for r in ended]
        self._end_if_done(conn, seqs, now)
        return len(seqs)
