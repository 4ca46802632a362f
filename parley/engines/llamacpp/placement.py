"""Where the next waiting request goes, and whether its KV reservation fits.

``place`` decides without touching the context: the slot (``slots.pick_slot``),
how many of its cached tokens are reused, a prompt-cache entry to restore
instead, the cells it reserves (prompt plus output budget), which idle slots
are parked or evicted to make room, and whether it must wait for running
sequences to free cells. The scheduler then carries the placement out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from parley.engines.llamacpp.jobs import Job
from parley.engines.llamacpp.prefix_cache import Entry
from parley.engines.llamacpp.sequence import Running
from parley.engines.llamacpp.slots import Slot, pick_slot


@dataclass
class Placement:
    slot: Slot
    tokens: list[int]
    budget: int  # output tokens the reservation holds (max_tokens, or less at the context's end)
    reuse: int  # prompt tokens whose cells are kept (from the slot or the restored entry)
    restore: Entry | None  # a prompt-cache entry copied into the slot first
    idle: list[Slot] = field(default_factory=list)  # other idle slots holding cells
    evict: list[Slot] = field(default_factory=list)  # idle slots whose cells are dropped
    fits: bool = True  # False: wait until running sequences free their cells


def place(
    job: Job,
    slots: list[Slot],
    running: Sequence[Running],
    *,
    capacity: int,
    parking: bool,
) -> Placement:
    """The placement of ``job``; the slots are not changed.

    With ``parking`` the other idle slots' cells leave the context at
    admission, so only running sequences count against the room; without it,
    idle slots are evicted, the biggest first, until the reservation fits.
    A request that cannot fit even then waits while anything runs (and is
    admitted anyway when nothing does: its budget is already capped to the
    context).
    """
    tokens = list(job.prompt.tokens)
    budget = max(0, min(job.params.max_tokens, capacity - len(tokens)))
    slot, reuse = pick_slot(slots, tokens)
    plan = job.cache
    # A cache entry longer than what the slot holds is copied in instead.
    restore = plan.read if plan.read is not None and plan.read.length > reuse else None
    if restore is not None:
        reuse = min(restore.length, len(tokens) - 1)
    if plan.writes:  # cells past a snapshot point would end up in the snapshot
        reuse = min(reuse, plan.writes[0].pos)
    need = len(tokens) + budget - reuse
    in_use = sum(r.reserved for r in running)
    idle = [s for s in slots if not s.busy and s is not slot and s.resident]
    placement = Placement(slot, tokens, budget, reuse, restore, idle)
    if parking:
        room = capacity - in_use - reuse
    else:
        room = capacity - in_use - sum(len(s.cached) for s in idle) - reuse
        for victim in sorted(idle, key=lambda s: len(s.cached), reverse=True):
            if room >= need:
                break
            room += len(victim.cached)
            placement.evict.append(victim)
    placement.fits = room >= need or not running
    return placement
