"""Server-sent events encoding: ``event: <type>\\ndata: <json>\\n\\n``.

Deltas, the events sent once per token, take a direct path (one
``json.dumps`` of the text); every other event is serialised by its model.
Both give the same bytes (tested).
"""

from __future__ import annotations

import json

from parley.wire.events import StreamEvent

_DELTA_FIELD = {
    "text_delta": b"text",
    "thinking_delta": b"thinking",
    "input_json_delta": b"partial_json",
}


def encode(event: StreamEvent) -> bytes:
    if event.type == "content_block_delta":
        delta = event.delta
        field = _DELTA_FIELD.get(delta.type)
        if field is not None:
            value = json.dumps(getattr(delta, field.decode()), ensure_ascii=False)
            return (
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
                b'"delta":{"type":"%s","%s":%s}}\n\n'
                % (event.index, delta.type.encode(), field, value.encode())
            )
    return slow_encode(event)


def slow_encode(event: StreamEvent) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (event.type.encode(), event.model_dump_json().encode())
