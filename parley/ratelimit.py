"""Per-key rate limits: requests, input tokens and output tokens a minute.

Each API key (or, on an open server, everyone together) has a token bucket
per limit, holding at most a minute's allowance and refilled continuously.
A request takes one request and its prompt's input tokens before it runs;
its output tokens are taken when it ends (the bucket may go below zero, and
later requests wait for it). A request that does not fit gets 429
``rate_limit_error`` with ``retry-after``; every response of the Messages
endpoints carries the ``anthropic-ratelimit-*`` headers.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from parley.errors import RateLimitError

KINDS = ("requests", "input-tokens", "output-tokens")


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


class RateLimiter:
    def __init__(
        self,
        *,
        requests: int = 0,
        input_tokens: int = 0,
        output_tokens: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._limits = {
            "requests": requests,
            "input-tokens": input_tokens,
            "output-tokens": output_tokens,
        }
        self._clock = clock
        self._wall = wall
        self._keys: dict[str, dict[str, Bucket]] = {}  # owner -> kind -> bucket
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return any(self._limits.values())

    def _buckets(self, owner: str, now: float) -> dict[str, Bucket]:
        buckets = self._keys.setdefault(owner, {})
        for kind, limit in self._limits.items():
            if limit and kind not in buckets:
                buckets[kind] = Bucket(float(limit), float(limit), now)
        for bucket in buckets.values():
            bucket.refill(now)
        return buckets

    def admit(self, owner: str, input_tokens: int) -> None:
        """Take one request and its input tokens, or raise 429 saying what ran out."""
        if not self.enabled:
            return
        with self._lock:
            now = self._clock()
            buckets = self._buckets(owner, now)
            want = {"requests": 1.0, "input-tokens": float(input_tokens), "output-tokens": 1.0}
            waits = {k: b.wait_for(want[k]) for k, b in buckets.items()}
            worst = max(waits, key=lambda k: waits[k], default=None)
            if worst is not None and waits[worst] > 0:
                retry = max(1, math.ceil(waits[worst]))
                headers = self._headers(buckets)
                headers["retry-after"] = str(retry)
                raise RateLimitError(
                    f"This request would exceed the rate limit of {int(buckets[worst].limit)} "
                    f"{worst.replace('-', ' ')} per minute for this API key; retry in "
                    f"{retry} s",
                    headers=headers,
                )
            for kind, amount in (("requests", 1), ("input-tokens", input_tokens)):
                if kind in buckets:
                    buckets[kind].level -= amount

    def spend_output(self, owner: str, output_tokens: int) -> None:
        if not self._limits["output-tokens"] or not output_tokens:
            return
        with self._lock:
            buckets = self._buckets(owner, self._clock())
            if "output-tokens" in buckets:
                buckets["output-tokens"].level -= output_tokens

    def headers_for(self, owner: str) -> Callable[[], dict[str, str]]:
        """The headers of ``owner``, computed when called (when a response starts)."""
        return lambda: self.headers(owner)

    def headers(self, owner: str) -> dict[str, str]:
        if not self.enabled:
            return {}
        with self._lock:
            return self._headers(self._buckets(owner, self._clock()))

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


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
