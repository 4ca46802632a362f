"""The errors of admission, the same from every engine: the queue is full, or a
request waited longer than the queue timeout without starting (both 529
``overloaded_error`` with ``retry-after``, as the API answers when overloaded)."""

from __future__ import annotations

from parley.errors import OverloadedError


def queue_full() -> OverloadedError:
    return OverloadedError(
        "Overloaded: the request queue is full; retry shortly", headers={"retry-after": "1"}
    )


def waited_too_long(seconds: float) -> OverloadedError:
    return OverloadedError(
        f"Overloaded: the request waited {seconds:g} s for capacity without starting; retry later",
        headers={"retry-after": "5"},
    )
