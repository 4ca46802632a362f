"""Rate-limit buckets in the shared database, so replicas limit a key as one.

One row per (owner, kind) in ``rate_buckets`` (UNLOGGED: a crash loses at
most a minute's accounting). A check is one statement: lock the owner's
rows, refill them to the caller's clock, debit only if every wanted kind
holds enough, and return the levels (``_SETTLE``); the first check of an
owner inserts its full buckets first. Replicas' clocks must agree (NTP):
each refills to its own ``time.time()``, never backwards.

Checks are made on the event loop (the limiter is synchronous), so each
runs on a thread of its own and is waited for at most ``TIMEOUT``: a
database that stops answering (a partition, not a refused connection) must
not stall every request for the driver's connect timeout. When the database
cannot be reached or is that slow, the limiter does not fail requests: it
falls back to this replica's own buckets (``MemoryBuckets``) for a few
seconds at a time, with a warning, and goes back to the shared ones when
the database answers again.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from collections.abc import Callable, Mapping

import sqlalchemy as sa

from parley.db.database import Database
from parley.errors import StorageError
from parley.ratelimit import Bucket, MemoryBuckets

log = logging.getLogger("parley.ratelimit")

RETRY_AFTER = 5.0  # seconds on this replica's own buckets after a database failure
TIMEOUT = 1.0  # seconds a check may wait for the database

# :owner, :now, and per kind i: :k{i} (its name), :l{i} (limit per minute),
# :w{i} (wanted; NULL: not a condition), :t{i} (debited when every want fits).
_SETTLE = """
WITH k(kind, lim, want, take) AS (VALUES {values}),
cur AS (
    SELECT b.kind, k.lim, k.want, k.take,
           LEAST(k.lim, b.level + GREATEST(0, :now - b.stamp) * k.lim / 60.0) AS lvl
    FROM rate_buckets b JOIN k ON b.kind = k.kind
    WHERE b.owner = :owner
    FOR UPDATE OF b
),
verdict AS (
    SELECT COALESCE(bool_and(want IS NULL OR lvl >= LEAST(want, lim)), true) AS ok FROM cur
)
UPDATE rate_buckets AS b
SET level = cur.lvl - CASE WHEN verdict.ok THEN cur.take ELSE 0 END,
    stamp = GREATEST(b.stamp, :now)
FROM cur, verdict
WHERE b.owner = :owner AND b.kind = cur.kind
RETURNING b.kind, cur.lim, b.level, b.stamp, verdict.ok
"""

_ROW = (
    "(CAST(:k{i} AS VARCHAR), CAST(:l{i} AS FLOAT8), CAST(:w{i} AS FLOAT8), CAST(:t{i} AS FLOAT8))"
)


class SharedBuckets:
    """``Buckets`` in ``db`` (PostgreSQL), under ``scope`` (one per limiter)."""

    def __init__(self, db: Database, scope: str, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._scope = scope
        self._clock = clock
        self._fallback = MemoryBuckets(clock)
        self._down_until = 0.0
        self._statements: dict[int, sa.TextClause] = {}
        self._threads = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="parley-rl")

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)

    def settle(
        self,
        owner: str,
        limits: Mapping[str, int],
        want: Mapping[str, float],
        take: Mapping[str, float],
    ) -> tuple[bool, dict[str, Bucket]]:
        now = self._clock()
        if now < self._down_until:
            return self._fallback.settle(owner, limits, want, take)
        key = f"{self._scope}:{owner}"
        future = self._threads.submit(self._settle, key, limits, want, take, now)
        try:
            return future.result(timeout=TIMEOUT)
        except (StorageError, concurrent.futures.TimeoutError) as exc:
            why = exc.message if isinstance(exc, StorageError) else f"no answer in {TIMEOUT:g} s"
            log.warning(
                "rate limits fall back to this replica's own buckets for a while",
                extra={"error": why, "seconds": RETRY_AFTER},
            )
            self._down_until = now + RETRY_AFTER
            return self._fallback.settle(owner, limits, want, take)

    def _settle(
        self,
        key: str,
        limits: Mapping[str, int],
        want: Mapping[str, float],
        take: Mapping[str, float],
        now: float,
    ) -> tuple[bool, dict[str, Bucket]]:
        kinds = sorted(limits)
        params: dict[str, object] = {"owner": key, "now": now}
        for i, kind in enumerate(kinds):
            params.update(
                {
                    f"k{i}": kind,
                    f"l{i}": float(limits[kind]),
                    f"w{i}": want.get(kind),
                    f"t{i}": float(take.get(kind, 0.0)),
                }
            )
        statement = self._statement(len(kinds))
        with self._db._statements() as conn:  # (each statement whole on its own)
            rows = list(conn.execute(statement, params))
            if len(rows) < len(kinds):  # the owner's first check: its buckets start full
                conn.execute(
                    sa.text(
                        "INSERT INTO rate_buckets (owner, kind, level, stamp) "
                        "VALUES (:owner, :kind, :level, :now) ON CONFLICT DO NOTHING"
                    ),
                    [
                        {"owner": key, "kind": kind, "level": float(limits[kind]), "now": now}
                        for kind in kinds
                    ],
                )
                rows = list(conn.execute(statement, params))
        ok = all(r.ok for r in rows)
        return ok, {r.kind: Bucket(float(r.lim), float(r.level), float(r.stamp)) for r in rows}

    def _statement(self, n: int) -> sa.TextClause:
        if n not in self._statements:
            values = ", ".join(_ROW.format(i=i) for i in range(n))
            self._statements[n] = sa.text(_SETTLE.format(values=values))
        return self._statements[n]
