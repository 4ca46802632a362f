"""Secrets every replica must share (the thinking key), kept in the database.

``shared_secret`` returns the value stored under a name, storing the
caller's first when there is none: the first replica to start decides, in
one ``INSERT ... ON CONFLICT DO NOTHING``, and every other one reads it.
Values are stored base64 (the column is text in every dialect).
"""

from __future__ import annotations

import base64
import binascii

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from parley.config import ConfigError
from parley.db.database import Database
from parley.db.schema import secrets_table


def shared_secret(db: Database, name: str, first: bytes) -> bytes:
    """The secret ``name``; ``first`` becomes it if the database has none yet."""
    dialect = postgresql if db.shared else sqlite
    insert = (
        dialect.insert(secrets_table)
        .values(name=name, value=base64.b64encode(first).decode("ascii"))
        .on_conflict_do_nothing(index_elements=["name"])
    )
    with db._writing() as conn:
        conn.execute(insert)
        stored = conn.execute(
            sa.select(secrets_table.c.value).where(secrets_table.c.name == name)
        ).scalar_one()
    try:
        return base64.b64decode(stored, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"the database's secret '{name}' is not base64: {exc}") from exc
