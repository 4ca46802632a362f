"""Per-key rate limits: requests, input tokens and output tokens a minute.

Each API key (or, on an open server, everyone together) has a token bucket
per limit, holding at most a minute's allowance and refilled continuously.
A request is metered in three steps: ``admit_request`` takes one request
before any work is done for it (so a key at its request limit costs the
server nothing: no rendering, no tokenizing), ``admit_input`` takes the
prompt's input tokens once ``prepare`` has counted them, and
``spend_output`` takes its output tokens when it ends (the bucket may go
below zero, and later requests wait for it). A request that does not fit
gets 429 ``rate_limit_error`` with ``retry-after``; every response of the
Messages endpoints carries the ``anthropic-ratelimit-*`` headers.

Where the buckets are kept is ``Buckets``' business: this process's memory
(``MemoryBuckets``, the default), or a database all replicas share
(``parley.db.buckets.SharedBuckets``), so a key's requests spread over
several replicas are limited as one. Every check is one ``settle``: refill,
and debit only if what the request needs is there.

Interactive requests and Message Batch requests of a key draw on the same
buckets (the batch worker calls the same methods and waits instead of
failing). Token counting has a limiter of its own (requests only), as the
API meters it apart from Messages.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from parley.errors import RateLimitError

KINDS = ("requests", "input-tokens", "output-tokens")
_START = {"requests": 1.0, "input-tokens": 1.0, "output-tokens": 1.0}  # what any request needs


@dataclass
class Bucket:
    limit: float  # per minute; also the most the bucket holds
    level: float
    stamp: float

    @property
    def rate(self) -> float:
        return self.limit / 60.0

    def refill(self, now: float) -> None:
        self.level = min(self.limit, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` is available (0 when it is)."""
        missing = min(amount, self.limit) - self.level
        return max(0.0, missing / self.rate)

    def full_in(self) -> float:
        return max(0.0, (self.limit - self.level) / self.rate)


class Buckets(Protocol):
    """Where an owner's buckets live. ``settle`` is atomic for the owner: refill
    each bucket of ``limits`` (a new one starts full), then, if every kind in
    ``want`` holds as much (or is full: a want above the limit never fits
    otherwise), debit ``take``; whether it did, and the buckets after."""

    def settle(
        self,
        owner: str,
        limits: Mapping[str, int],
        want: Mapping[str, float],
        take: Mapping[str, float],
    ) -> tuple[bool, dict[str, Bucket]]: ...


class MemoryBuckets:
    """This process's buckets."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._keys: dict[str, dict[str, Bucket]] = {}  # owner -> kind -> bucket
        self._lock = threading.Lock()

    def settle(
        self,
        owner: str,
        limits: Mapping[str, int],
        want: Mapping[str, float],
        take: Mapping[str, float],
    ) -> tuple[bool, dict[str, Bucket]]:
        with self._lock:
            now = self._clock()
            buckets = self._keys.setdefault(owner, {})
            for kind, limit in limits.items():
                if limit and kind not in buckets:
                    buckets[kind] = Bucket(float(limit), float(limit), now)
            for bucket in buckets.values():
                bucket.refill(now)
            ok = all(b.wait_for(want[k]) == 0 for k, b in buckets.items() if k in want)
            if ok:
                for kind, amount in take.items():
                    if kind in buckets:
                        buckets[kind].level -= amount
            return ok, {k: Bucket(b.limit, b.level, b.stamp) for k, b in buckets.items()}


class RateLimiter:
    def __init__(
        self,
        *,
        requests: int = 0,
        input_tokens: int = 0,
        output_tokens: int = 0,
        label: str = "",
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        buckets: Buckets | None = None,
    ) -> None:
        """``label`` names what is limited in messages ("token counting " gives
        "... 100 token counting requests per minute ..."); 0 turns a limit off.
        ``buckets``: where they live (default: in memory, on ``clock``)."""
        self._label = label
        self._limits = {
            "requests": requests,
            "input-tokens": input_tokens,
            "output-tokens": output_tokens,
        }
        self._wall = wall
        self._store: Buckets = buckets if buckets is not None else MemoryBuckets(clock)

    @property
    def enabled(self) -> bool:
        return any(self._limits.values())

    def _settle(
        self,
        owner: str,
        want: Mapping[str, float] | None = None,
        take: Mapping[str, float] | None = None,
    ) -> tuple[bool, dict[str, Bucket]]:
        limits = {k: v for k, v in self._limits.items() if v}
        return self._store.settle(owner, limits, want or {}, take or {})

    def admit_request(self, owner: str) -> None:
        """Take one request of ``owner``'s allowance, or raise 429 saying what ran out.

        Called before the request is rendered. Also refused while a token bucket
        is empty or in debt (no request could run then); those are not taken here.
        """
        self._admit(owner, _START, "requests")

    def admit_input(self, owner: str, input_tokens: int) -> None:
        """Take the prompt's ``input_tokens``, or raise 429. The request taken by
        ``admit_request`` stays spent when this refuses: its rendering was work done."""
        self._admit(owner, {"input-tokens": float(input_tokens)}, "input-tokens")

    def ready_in(self, owner: str, input_tokens: int = 1) -> float:
        """Seconds until ``owner`` may start a request of ``input_tokens`` (0: now).
        For callers that wait instead of answering 429, such as the batch worker."""
        if not self.enabled:
            return 0.0
        _, buckets = self._settle(owner)
        want = {**_START, "input-tokens": float(max(1, input_tokens))}
        return max((b.wait_for(want[k]) for k, b in buckets.items()), default=0.0)

    def _admit(self, owner: str, want: dict[str, float], take: str) -> None:
        if not self.enabled:
            return
        ok, buckets = self._settle(owner, want, {take: want[take]})
        if ok:
            return
        waits = {k: b.wait_for(want[k]) for k, b in buckets.items() if k in want}
        worst = max(waits, key=lambda k: waits[k])
        retry = max(1, math.ceil(waits[worst]))
        headers = self._headers(buckets)
        headers["retry-after"] = str(retry)
        raise RateLimitError(
            f"This request would exceed the rate limit of {int(buckets[worst].limit)} "
            f"{self._label}{worst.replace('-', ' ')} per minute for this API key; "
            f"retry in {retry} s",
            headers=headers,
        )

    def spend_output(self, owner: str, output_tokens: int) -> None:
        if not self._limits["output-tokens"] or not output_tokens:
            return
        self._settle(owner, take={"output-tokens": float(output_tokens)})

    def headers_for(self, owner: str) -> Callable[[], dict[str, str]]:
        """The headers of ``owner``, computed when called (when a response starts)."""
        return lambda: self.headers(owner)

    def headers(self, owner: str) -> dict[str, str]:
        if not self.enabled:
            return {}
        return self._headers(self._settle(owner)[1])

    def _headers(self, buckets: dict[str, Bucket]) -> dict[str, str]:
        out: dict[str, str] = {}
        wall = self._wall()
        for kind, bucket in buckets.items():
            prefix = f"anthropic-ratelimit-{kind}"
            out[f"{prefix}-limit"] = str(int(bucket.limit))
            out[f"{prefix}-remaining"] = str(max(0, int(bucket.level)))
            out[f"{prefix}-reset"] = _rfc3339(wall + bucket.full_in())
        tokens = [b for k, b in buckets.items() if k != "requests"]
        if tokens:  # the most restrictive of the token limits
            tightest = min(tokens, key=lambda b: b.level / b.limit)
            out["anthropic-ratelimit-tokens-limit"] = str(int(tightest.limit))
            out["anthropic-ratelimit-tokens-remaining"] = str(max(0, int(tightest.level)))
            out["anthropic-ratelimit-tokens-reset"] = _rfc3339(wall + tightest.full_in())
        return out


@dataclass
class Meter:
    """One request's account on its owner's buckets, in the order a request is
    metered: the request, its input tokens once counted, its output at the end
    (charged once, however the request ends)."""

    limiter: RateLimiter
    owner: str
    request_taken: bool = False  # taken already (the batch worker does so before claiming)
    input_tokens: int = 0  # what the prompt counted, once known
    _settled: bool = False

    def admit_request(self) -> None:
        if not self.request_taken:
            self.limiter.admit_request(self.owner)
            self.request_taken = True

    def admit_input(self, tokens: int) -> None:
        self.input_tokens = tokens
        self.limiter.admit_input(self.owner, tokens)

    def spend_output(self, tokens: int) -> None:
        if not self._settled:
            self._settled = True
            self.limiter.spend_output(self.owner, tokens)


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
