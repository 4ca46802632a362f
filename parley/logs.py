"""Structured logs: one line per event, ``key=value`` fields from ``extra``.

Nothing logs API keys or prompt contents; handlers pass only ids, sizes,
timings and counts. Lines are plain text: values with spaces, quotes or
control characters are JSON-quoted, and uvicorn's ``color_message`` (the same
message with ANSI colours) is dropped. uvicorn's server logger, named
``uvicorn.error`` though most of its lines are not errors, logs as ``uvicorn``.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import TextIO

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's message with ANSI escapes
}
_SERVER_LOGGER = "uvicorn.error"  # uvicorn's general logger, errors or not


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = " ".join(
            f"{k}={_quote(v)}" for k, v in record.__dict__.items() if k not in _STANDARD
        )
        name = "uvicorn" if record.name == _SERVER_LOGGER else record.name
        message = record.getMessage().replace("\x1b", "\\x1b")
        line = f"{stamp}Z {record.levelname.lower():<7} {name}: {message}"
        if fields:
            line += " " + fields
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _quote(value: object) -> str:
    text = str(value)
    if not text or any(c in ' "=\\' or ord(c) < 32 or c == "\x7f" for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


def configure(level: str = "info") -> None:
    """Log lines go to a copy of standard error's descriptor, so they still reach
    it while ``stderr_muted`` silences native code; a native crash (segfault,
    abort) writes its Python stack there too (``faulthandler``)."""
    stream = log_stream()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("uvicorn.access").disabled = True  # parley.access logs requests
    faulthandler.enable(file=stream, all_threads=True)


_stream: TextIO | None = None
_mute = threading.Lock()


def log_stream() -> TextIO:
    """The log stream: standard error's descriptor, duplicated once."""
    global _stream
    if _stream is None:
        sys.stderr.flush()
        _stream = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    return _stream


@contextlib.contextmanager
def stderr_muted() -> Iterator[None]:
    """Descriptor 2 points at /dev/null inside: llama.cpp prints a grammar it
    refuses (tool names, enum values: prompt text) straight to stderr. Log lines
    are unaffected (``log_stream``); others' writes to stderr meanwhile are lost."""
    with _mute:
        sys.stderr.flush()
        saved = os.dup(2)
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(null)
