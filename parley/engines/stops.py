"""Stop-sequence matching over streamed text, shared by every engine.

Text that could be the start of a stop sequence is held back until it is
known not to be one, so a stop sequence never leaks into the output.
"""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, text: str) -> tuple[str, str | None]:
        """Add decoded text; return (text safe to emit, matched stop or None)."""
        if not self._stops:
            return text, None
        buf = self._held + text
        hit: tuple[int, str] | None = None
        for stop in self._stops:
            at = buf.find(stop)
            if at >= 0 and (hit is None or at < hit[0]):
                hit = (at, stop)
        if hit is not None:
            # What follows the match stays held: ``flush`` returns it to callers
            # that go on parsing after a marker (tool calls).
            self._held = buf[hit[0] + len(hit[1]) :]
            return buf[: hit[0]], hit[1]
        keep = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(buf)), keep, -1):
                if buf.endswith(stop[:k]):
                    keep = k
                    break
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep], None

    def flush(self) -> str:
        """Release held-back text at the end of a generation."""
        held, self._held = self._held, ""
        return held
