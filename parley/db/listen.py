"""Wake-ups between replicas: PostgreSQL ``LISTEN/NOTIFY``.

A transaction that makes requests pending (a new batch, requests given back)
sends ``NOTIFY parley_work`` (``Database._notify_work``), delivered when it
commits. ``Listener`` keeps one connection of its own listening on a thread
and calls ``wake`` for each notification, so an idle replica's worker claims
new work at once instead of at its next poll. The poll stays as the
fallback: while the listening connection is down (the server restarts) the
listener reconnects with a backoff, and wakes the worker once it is back in
case something was missed meanwhile.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg
import psycopg.sql
import sqlalchemy as sa

log = logging.getLogger("parley.db")


class Listener:
    def __init__(self, url: str, channel: str, wake: Callable[[], None]) -> None:
        # psycopg's own URL: SQLAlchemy's names the driver (postgresql+psycopg://).
        self._dsn = (
            sa.engine.make_url(url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        self._channel = channel
        self._wake = wake
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()  # set while the connection listens

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="parley-db-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(
                        psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(self._channel))
                    )
                    self.listening.set()
                    backoff = 0.5
                    self._wake()  # work may have arrived while nobody listened
                    while not self._stop.is_set():
                        # Returns after the timeout, so a stop is seen within it.
                        for _ in conn.notifies(timeout=0.5, stop_after=1):
                            self._wake()
            except psycopg.Error as exc:
                log.warning(
                    "cannot listen for new batch work; polling meanwhile",
                    extra={"error": str(exc).strip().splitlines()[0] if str(exc) else ""},
                )
            finally:
                self.listening.clear()
            self._stop.wait(backoff)
            backoff = min(backoff * 2, 10.0)
