"""``parley db ...``: the database's schema and who holds what.

``migrate`` applies the migrations not yet applied (``parley serve`` does so
at start-up too, under the same lock: this is for doing it ahead of a
rolling upgrade). ``status`` shows the schema version, the batch work
pending and running, and the leases each replica holds; it changes nothing.
The database is the one ``parley serve`` would use: ``--database-url`` (or
``PARLEY_DATABASE_URL``, or the config file), else SQLite in the data dir.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from parley import datadir
from parley.config import ConfigError, Settings, load_settings
from parley.db.database import Database, redacted
from parley.db.schema import MIGRATIONS, batch_requests, batches
from parley.errors import ParleyError


def add_parser(sub: Any) -> None:
    db = sub.add_parser(
        "db",
        help="migrate the database and show its state",
        description="Migrate the database parley serve uses, or show its schema version, "
        "pending batch work and the leases replicas hold.",
    )
    verbs = db.add_subparsers(dest="verb", required=True, metavar="VERB")
    for name, text in (
        ("migrate", "apply the schema migrations not yet applied"),
        ("status", "schema version, pending and running batch requests, leases by replica"),
    ):
        verb = verbs.add_parser(name, help=text, description=text)
        verb.add_argument(
            "--database-url",
            metavar="URL",
            help="the database (default: SQLite in the data dir; env: PARLEY_DATABASE_URL)",
        )
        verb.add_argument(
            "--data-dir",
            type=Path,
            metavar="DIR",
            help="parley serve's data dir (default: ~/.local/share/parley; env: PARLEY_DATA_DIR)",
        )
        verb.add_argument("--config", type=Path, metavar="FILE", help="a TOML file of settings")


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(
            {"database_url": args.database_url, "data_dir": args.data_dir},
            config_file=args.config,
        )
        url = _url(settings, create=args.verb == "migrate")
        if url is None:
            print(f"no database yet in {settings.data_dir} (parley serve creates it)")
            return 0
        db = Database(url, migrate=False)
        try:
            if args.verb == "migrate":
                applied = db.migrate()
                done = ", ".join(str(n) for n in applied) if applied else "none: up to date"
                print(f"{redacted(db.url)}: migrations applied: {done}")
                print(f"schema version {db.schema_version()}")
            else:
                print(_status(db))
        finally:
            db.close()
    except (ConfigError, ParleyError) as exc:
        print(f"parley db: {exc}", file=sys.stderr)
        return 1
    return 0


def _url(settings: Settings, *, create: bool) -> str | None:
    if settings.database_url:
        return settings.database_url
    path = settings.data_dir.expanduser() / datadir.DATABASE
    if not path.exists():
        if not create:
            return None
        datadir.prepare(path.parent)
        datadir.private_file(path, create=True)
    return f"sqlite:///{path}"


def _status(db: Database) -> str:
    version = db.schema_version()
    lines = [f"database: {redacted(db.url)}"]
    pending = len(MIGRATIONS) - version
    state = "up to date" if pending == 0 else f"{pending} pending: run 'parley db migrate'"
    lines.append(f"schema: version {version} of {len(MIGRATIONS)} ({state})")
    if version == 0:
        return "\n".join(lines)
    with db._reading() as conn:
        counts: dict[str, int] = dict(
            conn.execute(
                sa.select(batch_requests.c.status, sa.func.count()).group_by(
                    batch_requests.c.status
                )
            ).all()
        )
        open_batches = conn.execute(
            sa.select(sa.func.count()).select_from(batches).where(batches.c.ended_at.is_(None))
        ).scalar()
        lines.append(
            f"batches in progress: {open_batches}; requests pending: {counts.get('pending', 0)}, "
            f"running: {counts.get('running', 0)}"
        )
        if version < 2:  # no leases before migration 2
            return "\n".join(lines)
        held = conn.execute(
            sa.select(
                batch_requests.c.lease_owner,
                sa.func.count(),
                sa.func.max(batch_requests.c.lease_until),
            )
            .where(batch_requests.c.status == "running")
            .group_by(batch_requests.c.lease_owner)
            .order_by(batch_requests.c.lease_owner)
        ).all()
    now = time.time()
    if not held:
        lines.append("leases: none held")
    for owner, n, until in held:
        left = (until or 0) - now
        when = f"renewed, ends in {left:.0f} s" if left >= 0 else f"lapsed {-left:.0f} s ago"
        lines.append(f"lease: {owner or '(none)'} holds {n} ({when})")
    return "\n".join(lines)
