"""Server-sent events encoding: ``event: <type>\\ndata: <json>\\n\\n``."""

from __future__ import annotations

from parley.wire.events import StreamEvent


def encode(event: StreamEvent) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event.type.encode(), event.model_dump_json().encode())
