"""One decode step's batch: which tokens of which sequences go into ``llama_decode``.

Every running sequence with a sampled token feeds it; the room left in
``n_batch`` (at most ``prefill_chunk`` while anything decodes, so prefilling a
long prompt does not stall the streams) goes to prompt chunks, in admission
order. A chunk ends at the sequence's next cache breakpoint, so a snapshot
holds just the prefix. Logits are asked for where a token is sampled next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from parley.engines.llamacpp.ops import BatchEntry
from parley.engines.llamacpp.sequence import Running


@dataclass
class Step:
    entries: list[BatchEntry] = field(default_factory=list)
    samplers: list[tuple[int, Running]] = field(default_factory=list)  # logits row -> sequence
    fed: list[tuple[Running, list[int]]] = field(default_factory=list)  # tokens each one gets

    def decoded(self) -> list[Running]:
        """Record that the batch was decoded; the sequences whose prompt advanced."""
        prefilled = []
        for run, tokens in self.fed:
            run.slot.cached.extend(tokens)
            if run.pending is not None and tokens == [run.pending]:
                run.pending = None
            else:
                del run.prompt_left[: len(tokens)]
                prefilled.append(run)
        return prefilled


def plan_step(running: Sequence[Running], *, n_batch: int, prefill_chunk: int) -> Step:
    step = Step()
    for run in running:
        if run.pending is not None:
            pos = len(run.slot.cached)
            step.entries.append(BatchEntry(run.pending, pos, run.slot.seq_id, True))
            step.samplers.append((len(step.entries) - 1, run))
            step.fed.append((run, [run.pending]))
    room = n_batch - len(step.entries)
    if step.entries:
        room = min(room, prefill_chunk)
    for run in running:
        if room <= 0:
            break
        if run.pending is not None or not run.prompt_left:
            continue
        base = len(run.slot.cached)
        stop = run.writes[0].pos - base if run.writes else room
        chunk = run.prompt_left[: min(room, stop)]
        last = len(chunk) == len(run.prompt_left)
        for i, token in enumerate(chunk):
            want = last and i == len(chunk) - 1
            step.entries.append(BatchEntry(token, base + i, run.slot.seq_id, want))
        if last:
            step.samplers.append((len(step.entries) - 1, run))
        step.fed.append((run, chunk))
        room -= len(chunk)
    return step
