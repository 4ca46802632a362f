"""What the decode loop asks of a native engine, as a protocol: ``LlamaNative``
implements it over llama.cpp, and the tests' fake natives stand in for it, so
the scheduler and its parts import nothing of llama.cpp."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from parley.engines.llamacpp.output import Grammar


@dataclass(frozen=True)
class BatchEntry:
    token: int
    pos: int
    seq_id: int
    logits: bool


class NativeOps(Protocol):
    """What the scheduler asks of the native engine (tests/test_scheduler.py
    and test_scheduler_faults.py have fakes)."""

    n_ctx: int  # KV cells
    n_batch: int  # tokens one decode may take

    def decode(self, entries: Sequence[BatchEntry]) -> None: ...
    def sample(self, sampler: Any, index: int) -> int: ...
    def is_eog(self, token: int) -> bool: ...
    def piece(self, token: int) -> bytes: ...
    def tokenize(self, text: str, *, add_bos: bool) -> list[int]: ...
    def forget(self, seq_id: int, from_pos: int = 0) -> None: ...
    def save_seq(self, seq_id: int) -> tuple[Any, int]: ...
    def restore_seq(self, seq_id: int, state: Any, size: int) -> bool: ...
    def seq_pos_max(self, seq_id: int) -> int: ...
    def new_sampler(
        self,
        *,
        temperature: float,
        top_p: float | None,
        top_k: int | None,
        seed: int | None,
        grammar: Grammar | None = None,
    ) -> Any: ...
    def free_sampler(self, sampler: Any) -> None: ...
