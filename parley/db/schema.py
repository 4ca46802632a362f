"""The tables and the numbered migrations that build them.

``batches`` (one row a batch) and ``batch_requests`` (one row a request: its
params as given, its state, its lease while a replica runs it, and once done
its result); ``rate_buckets`` (the token buckets replicas share, PostgreSQL
only); ``secrets`` (the thinking key when the database is shared).

A migration is applied once, in order, and recorded in ``schema_version``.
Each migration builds what it adds from its own frozen description (a table
as it was at that number, or DDL), never from the tables below, which
describe the newest schema for queries: migration 1 run on a new database
must create what it created on an old one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

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
    # Started this many times; the claim's number is its fencing token.
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("lease_owner", sa.String(64)),  # the replica running it (migration 2)
    sa.Column("lease_until", sa.Float),  # its lease ends then unless renewed (migration 2)
    # Taken over from a replica whose lease ran out: it may be what killed that
    # replica, so it runs alone (migration 4).
    sa.Column("suspect", sa.Boolean, nullable=False, default=False),
)

rate_buckets = sa.Table(
    "rate_buckets",
    metadata,
    sa.Column("owner", sa.String(80), primary_key=True),  # limiter label + key hash
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("level", sa.Float, nullable=False),
    sa.Column("stamp", sa.Float, nullable=False),
)

secrets_table = sa.Table(
    "secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

schema_version = sa.Table(
    "schema_version", metadata, sa.Column("version", sa.Integer, nullable=False)
)


def _migration_1(conn: Connection) -> None:
    """The batch tables as parley first made them."""
    v1 = sa.MetaData()
    sa.Table(
        "batches",
        v1,
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(64), nullable=False, unique=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float),
        sa.Column("cancel_initiated_at", sa.Float),
        sa.Column("total", sa.Integer, nullable=False),
    )
    sa.Table(
        "batch_requests",
        v1,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "batch_seq",
            sa.Integer,
            sa.ForeignKey("batches.seq", ondelete="CASCADE"),
            nullable=False,
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
    v1.create_all(conn)


def _migration_2(conn: Connection) -> None:
    """Leases: which replica runs a request, and until when unless it renews."""
    conn.exec_driver_sql("ALTER TABLE batch_requests ADD COLUMN lease_owner VARCHAR(64)")
    conn.exec_driver_sql("ALTER TABLE batch_requests ADD COLUMN lease_until FLOAT")
    conn.exec_driver_sql("CREATE INDEX ix_batch_requests_lease ON batch_requests (lease_owner)")


def _migration_3(conn: Connection) -> None:
    """Shared rate-limit buckets (lost on a crash: UNLOGGED, they refill in a
    minute anyway) and secrets."""
    unlogged = "UNLOGGED " if conn.dialect.name == "postgresql" else ""
    conn.exec_driver_sql(
        f"CREATE {unlogged}TABLE rate_buckets (owner VARCHAR(80) NOT NULL, "
        "kind VARCHAR(16) NOT NULL, level FLOAT NOT NULL, stamp FLOAT NOT NULL, "
        "PRIMARY KEY (owner, kind))"
    )
    conn.exec_driver_sql(
        "CREATE TABLE secrets (name VARCHAR(64) NOT NULL PRIMARY KEY, value TEXT NOT NULL)"
    )


def _migration_4(conn: Connection) -> None:
    """Suspects: requests whose replica died while running them."""
    conn.exec_driver_sql(
        "ALTER TABLE batch_requests ADD COLUMN suspect BOOLEAN NOT NULL DEFAULT FALSE"
    )
    # Looked for before every claim: found through an index, not a walk of the pending.
    conn.exec_driver_sql(
        "CREATE INDEX ix_batch_requests_suspect ON batch_requests (suspect, status)"
    )


MIGRATIONS: list[Callable[[Connection], None]] = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
]
