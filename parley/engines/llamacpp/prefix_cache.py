"""Prompt caching: KV state of prompt prefixes kept at ``cache_control`` breakpoints.

An entry is the KV state of one token prefix (a prompt up to a breakpoint),
kept in host memory within a byte budget. Entries live for their TTL (5
minutes or 1 hour), refreshed on every hit; beyond the budget the least
recently used entry goes first. Pinned entries (a request has been told it
will read them and has not been admitted yet) are never evicted, so the usage
a request reports is the work parley really does.

``plan`` decides, for one prompt, what is read and what is written, with the
API's accounting: ``cache_read_input_tokens`` is the longest live entry that
is a prefix of the prompt and ends at or before its last breakpoint;
``cache_creation_input_tokens`` are the tokens from there to the last
breakpoint, each counted under the TTL of the breakpoint that ends its
segment; breakpoints before ``min_tokens`` write nothing (as the API does
not cache prompts below its minimum length).

Thread-safe: plans are made on the event loop, entries written by the engine thread.
"""

from __future__ import annotations

import hashlib
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from parley.engines.base import CacheUsage

Ttl = Literal["5m", "1h"]
TTL_SECONDS: dict[Ttl, float] = {"5m": 300.0, "1h": 3600.0}


@dataclass(frozen=True, order=True)
class Breakpoint:
    pos: int  # the prefix is tokens[:pos]
    ttl: Ttl = "5m"


def accounted(
    points: Sequence[Breakpoint], read: int, min_tokens: int = 1
) -> tuple[CacheUsage, list[Breakpoint]]:
    """The API's figures for a prompt whose first ``read`` tokens come from a
    cache, and the breakpoints it writes: those past ``read`` (from
    ``min_tokens`` on), each segment counted under the TTL of the breakpoint
    that ends it. ``points`` are sorted."""
    done = read
    writes = [b for b in points if b.pos > done and b.pos >= min_tokens]
    created: dict[Ttl, int] = {"5m": 0, "1h": 0}
    for point in writes:
        created[point.ttl] += point.pos - done
        done = point.pos
    return CacheUsage(read=read, created_5m=created["5m"], created_1h=created["1h"]), writes


def reused_usage(points: Sequence[Breakpoint], reused: int) -> CacheUsage:
    """The API's figures for a prompt an upstream says it took ``reused``
    tokens of from its own prefix cache: the longest breakpoint prefix within
    them is read (the API reads whole breakpoint prefixes), the rest up to the
    last breakpoint is written. No breakpoints: nothing is reported."""
    ordered = sorted(points)
    read = max((b.pos for b in ordered if b.pos <= reused), default=0)
    return accounted(ordered, read)[0]


@dataclass(eq=False)
class Entry:
    key: bytes
    length: int
    state: Any  # the engine's opaque KV state (a ctypes buffer for llama.cpp)
    nbytes: int
    ttl: Ttl
    expires_at: float
    pins: int = 0


@dataclass(eq=False)
class CachePlan:
    usage: CacheUsage = field(default_factory=CacheUsage)
    read: Entry | None = None  # pinned until released
    writes: list[Breakpoint] = field(default_factory=list)  # snapshots to take, in order


def _key(digest: Any) -> bytes:
    return bytes(digest.digest())


def prefix_keys(tokens: Sequence[int], lengths: Sequence[int]) -> dict[int, bytes]:
    """The key of ``tokens[:n]`` for each ``n`` in ``lengths``, in one pass."""
    out: dict[int, bytes] = {}
    digest = hashlib.blake2b(digest_size=16)
    done = 0
    for n in sorted(set(lengths)):
        if n > len(tokens):
            break
        digest.update(array("i", tokens[done:n]).tobytes())
        done = n
        out[n] = _key(digest.copy())
    return out


class PrefixCache:
    def __init__(
        self,
        *,
        budget_bytes: int,
        min_tokens: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget_bytes = budget_bytes
        self.min_tokens = max(1, min_tokens)
        self._clock = clock
        self._entries: OrderedDict[bytes, Entry] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()
        self._bytes = 0
        self._counters = {"hits": 0, "writes": 0, "evicted": 0, "expired": 0}

    # --- planning (event loop) ----------------------------------------------------

    def plan(self, tokens: Sequence[int], breakpoints: Sequence[Breakpoint]) -> CachePlan:
        points = sorted(b for b in breakpoints if 0 < b.pos <= len(tokens))
        if not points:
            return CachePlan()
        last = points[-1].pos
        with self._lock:
            now = self._clock()
            self._expire(now)
            read = self._longest(tokens, last)
            if read is not None:
                read.expires_at = max(read.expires_at, now + TTL_SECONDS[read.ttl])
                read.pins += 1
                self._entries.move_to_end(read.key)
                self._counters["hits"] += 1
        usage, writes = accounted(points, read.length if read is not None else 0, self.min_tokens)
        # One snapshot per position: the longer TTL wins.
        by_pos: dict[int, Breakpoint] = {}
        for point in writes:
            if point.pos not in by_pos or point.ttl == "1h":
                by_pos[point.pos] = point
        return CachePlan(usage, read, sorted(by_pos.values()))

    def release(self, plan: CachePlan) -> None:
        """The request no longer needs its read entry kept (admitted or gone)."""
        if plan.read is None:
            return
        with self._lock:
            plan.read.pins = max(0, plan.read.pins - 1)
            plan.read = None
            self._fit(0)

    def _longest(self, tokens: Sequence[int], limit: int) -> Entry | None:
        lengths = {e.length for e in self._entries.values() if e.length <= limit}
        if not lengths:
            return None
        keys = prefix_keys(tokens, sorted(lengths))
        for n in sorted(keys, reverse=True):
            entry = self._entries.get(keys[n])
            if entry is not None and entry.length == n:
                return entry
        return None

    # --- writing (engine thread) -----------------------------------------------

    def wants(self, tokens: Sequence[int]) -> bool:
        """Whether storing this prefix would add anything (not cached yet)."""
        key = prefix_keys(tokens, [len(tokens)])[len(tokens)]
        with self._lock:
            return key not in self._entries

    def put(self, tokens: Sequence[int], state: Any, nbytes: int, ttl: Ttl) -> bool:
        """Keep ``state`` as the KV of ``tokens``; False when it cannot fit the budget."""
        key = prefix_keys(tokens, [len(tokens)])[len(tokens)]
        with self._lock:
            now = self._clock()
            self._expire(now)
            old = self._entries.get(key)
            if old is not None:  # written meanwhile by another request: refresh it
                old.expires_at = max(old.expires_at, now + TTL_SECONDS[ttl])
                if TTL_SECONDS[ttl] > TTL_SECONDS[old.ttl]:
                    old.ttl = ttl
                self._entries.move_to_end(key)
                return True
            if state is None or nbytes > self.budget_bytes or not self._fit(nbytes):
                return False
            entry = Entry(key, len(tokens), state, nbytes, ttl, now + TTL_SECONDS[ttl])
            self._entries[key] = entry
            self._bytes += nbytes
            self._counters["writes"] += 1
            return True

    # --- housekeeping (under the lock) ---------------------------------------------

    def _fit(self, nbytes: int) -> bool:
        """Evict least recently used, unpinned entries until ``nbytes`` more fit
        (nothing is evicted when that cannot succeed)."""
        movable = sum(e.nbytes for e in self._entries.values() if e.pins == 0)
        if self._bytes - movable + nbytes > self.budget_bytes:
            return False
        for entry in list(self._entries.values()):
            if self._bytes + nbytes <= self.budget_bytes:
                break
            if entry.pins == 0:
                self._drop(entry)
                self._counters["evicted"] += 1
        return self._bytes + nbytes <= self.budget_bytes

    def _expire(self, now: float) -> None:
        for entry in [e for e in self._entries.values() if e.expires_at <= now and e.pins == 0]:
            self._drop(entry)
            self._counters["expired"] += 1

    def _drop(self, entry: Entry) -> None:
        del self._entries[entry.key]
        self._bytes -= entry.nbytes

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._expire(self._clock())
            return {
                "entries": len(self._entries),
                "bytes": self._bytes,
                "budget_bytes": self.budget_bytes,
                "tokens": sum(e.length for e in self._entries.values()),
                **self._counters,
            }
