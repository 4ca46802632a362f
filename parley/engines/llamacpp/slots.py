"""Slots: which sequence of the context a request decodes in, and idle ones parked.

Prefix reuse: a finished sequence leaves its KV cells in its slot. A new
request takes the idle slot sharing the longest prefix with its prompt, when
that is at least half the prompt, and prefills only the rest (llama-server's
slot reuse); otherwise an empty slot, or the least recently used one.

Parking idle slots: llama.cpp attends over every used cell of the unified
cache, masked or not, so the cells idle slots keep slow every running sequence
(measured: -7% with one idle 280-token slot beside one stream, -17% with
fifteen). When a request is admitted, the other idle slots' cells are copied
to host memory (within a byte budget, least recently used dropped first) and
cleared from the context; a later request sharing a parked slot's prefix
copies them back (llama-server's ``--cache-idle-slots``). With a budget of 0
idle cells stay in the context.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parley.engines.llamacpp.ops import NativeOps
from parley.errors import EngineError


@dataclass
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose KV state the slot keeps
    busy: bool = False
    parked: tuple[Any, int] | None = None  # (that state, its bytes) in host memory
    used_at: float = 0.0  # last admission, for dropping parked states least recently used

    @property
    def resident(self) -> int:
        """Cells this slot holds in the context."""
        return 0 if self.parked is not None else len(self.cached)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def pick_slot(slots: list[Slot], tokens: list[int]) -> tuple[Slot, int]:
    """The idle slot for ``tokens``, and how many of its cached tokens it reuses.

    The slot sharing the longest prefix, when that covers at least half the
    prompt (a conversation's next turn, the same prompt again); otherwise an
    empty slot, or else the one used least recently, so a prefix shared only
    by accident (the chat template's first tokens) does not cost another
    conversation its cache.
    """
    idle = [(common_prefix(slot.cached, tokens), slot) for slot in slots if not slot.busy]
    assert idle, "admission runs only with a free slot"
    shared, slot = max(idle, key=lambda pair: pair[0])
    if shared * 2 < len(tokens):
        empty = [pair for pair in idle if not pair[1].cached]
        shared, slot = empty[0] if empty else min(idle, key=lambda pair: pair[1].used_at)
    # The last prompt token must be decoded again to get its logits.
    return slot, min(shared, max(0, len(tokens) - 1))


def parked_bytes(slots: list[Slot]) -> int:
    return sum(s.parked[1] for s in slots if s.parked is not None)


def park(native: NativeOps, slot: Slot, slots: list[Slot], budget: int) -> bool:
    """Move an idle slot's cells out of the context into host memory, dropping
    the least recently used parked states beyond ``budget`` bytes; False when
    nothing could be kept (a later request prefills)."""
    try:
        state, nbytes = native.save_seq(slot.seq_id)
    except EngineError:
        state, nbytes = None, 0
    native.forget(slot.seq_id)
    if state is None or nbytes > budget:
        slot.cached = []
        return False
    slot.parked = (state, nbytes)
    while parked_bytes(slots) > budget:
        oldest = min((s for s in slots if s.parked is not None), key=lambda s: s.used_at)
        oldest.parked, oldest.cached = None, []
    return True


def slot_stats(slots: list[Slot], native: NativeOps | None) -> dict[str, Any]:
    """The slots' part of the engine stats; KV positions only with ``native``
    (read while nothing decodes)."""
    return {
        "kv_cached_tokens": sum(s.resident for s in slots),
        "parked_tokens": sum(len(s.cached) - s.resident for s in slots),
        "parked_bytes": parked_bytes(slots),
        "slots": [
            {
                "seq_id": s.seq_id,
                "busy": s.busy,
                "cached": s.resident,  # cells in the context
                "parked": len(s.cached) - s.resident,  # tokens held in host memory
                "kv_pos_max": native.seq_pos_max(s.seq_id) if native is not None else None,
            }
            for s in slots
        ],
    }
