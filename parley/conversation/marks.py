"""Cache breakpoint tags: each ``cache_control`` block gets a tag written right
after its text, which the engine turns into a token position (then removes)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from parley.conversation.types import CacheMark


@dataclass
class Marks:
    """Hands out the tags of ``cache_control`` breakpoints (when the engine caches)."""

    enabled: bool
    nonce: str = ""  # drawn with the first tag
    found: list[CacheMark] = field(default_factory=list)

    def tag(self, control: Any) -> str:
        if control is None or not self.enabled:
            return ""
        # Private-use characters and a per-request nonce: no user text can forge one.
        self.nonce = self.nonce or secrets.token_hex(4)
        mark = CacheMark(f"\ue000{self.nonce}:{len(self.found)}\ue001", control.ttl or "5m")
        self.found.append(mark)
        return mark.tag

    def untag(self, text: str) -> str:
        """``text`` without any tag; its marks are dropped (a prefill is never cached)."""
        for mark in [m for m in self.found if m.tag in text]:
            text = text.replace(mark.tag, "")
            self.found.remove(mark)
        return text
