"""Several backends for one model (replicas of one deployment): which one takes a request.

``Pool.choose`` picks, among the backends whose circuit lets a request
through, the *affinity* backend of the request's key (rendezvous hashing:
the backend with the highest ``hash(key, backend)`` wins, so a key keeps
its backend while the others come and go, and only the keys of a backend
that left move), unless that backend runs more than ``slack`` requests
beyond the least loaded one: then the least loaded (ties: the affinity
order, or turns without a key). The key is a hash of the prompt's tokens
up to its first cache breakpoint (``affinity_key``), so requests sharing
that prefix meet the upstream prefix cache holding it.

Circuit breaker, per backend (``Backend``)::

    closed ──``failures`` failures in a row──▶ open ──``cooldown`` s──▶ half-open
      ▲                                        │ ▲                        │ one trial request
      └────── /health answers 200 (``Pool.recovered``) ┘ └── it fails ─────┤
      └──────────────────────────── it succeeds ──────────────────────────┘

A failure is what says the backend is broken: it could not be reached, it
answered 5xx (503 included: llama-server's "loading model"), went silent or
broke its stream; a 429 (busy) or a 4xx for the request (prompt too long)
is not. The engine's health task polls the
``/health`` of open backends and closes their circuit when they answer.

``Pool.stream`` runs one upstream request with failover: a request that
failed before its upstream answered, because it could not be reached or
was busy (429/503), goes to another backend; once one answered (its 200),
never again (no token reaches a client twice). The clock is injected, so
the breaker is tested without sleeping.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import time
from array import array
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

from parley.engines.llamacpp.prefix_cache import Breakpoint
from parley.errors import OverloadedError, ParleyError

Clock = Callable[[], float]
State = Literal["closed", "open", "half-open"]

# Without a breakpoint, the key is the prompt's first AFFINITY_TOKENS tokens
# (a shared system prompt, tools, the conversation's first turns), and a prompt
# shorter than that has none: it is cheap to prefill anywhere, so load decides.
AFFINITY_TOKENS = 256


def affinity_key(tokens: Sequence[int], breakpoints: Sequence[Breakpoint]) -> bytes | None:
    """The hash of ``tokens`` up to the first breakpoint (else see AFFINITY_TOKENS)."""
    if breakpoints:
        end = min(b.pos for b in breakpoints)
    elif len(tokens) >= AFFINITY_TOKENS:
        end = AFFINITY_TOKENS
    else:
        return None
    return hashlib.blake2b(array("q", tokens[:end]).tobytes(), digest_size=16).digest()


class Named(Protocol):
    @property
    def url(self) -> str: ...


C = TypeVar("C", bound=Named)
T = TypeVar("T")


@dataclass
class Attempt:
    """What one upstream request saw, filled in by ``UpstreamClient.answer``:
    ``answered`` once its 200 came, else the refusal's ``status``, or
    ``unreachable`` when it could not be sent or got no answer at all."""

    answered: bool = False
    status: int | None = None
    unreachable: bool = False

    @property
    def may_go_elsewhere(self) -> bool:
        """Nothing of it reached the client and another backend may take it."""
        return not self.answered and (self.unreachable or self.status in (429, 503))

    @property
    def backend_failed(self) -> bool:
        """Whether its error says the backend is broken (not busy, not the request's fault)."""
        return self.status is None or self.status >= 500


@dataclass(eq=False)
class Backend(Generic[C]):
    client: C
    score_salt: bytes  # the backend's part of its rendezvous score
    state: State = "closed"
    in_flight: int = 0
    failures: int = 0  # in a row
    opened_at: float = 0.0
    trial: bool = False  # a half-open backend's one request is under way
    counts: dict[str, int] = field(
        default_factory=lambda: {"requests": 0, "failures": 0, "opened": 0}
    )

    @property
    def url(self) -> str:
        return self.client.url


class Pool(Generic[C]):
    """The backends of one model (see the module docstring)."""

    def __init__(
        self,
        clients: Sequence[C],
        *,
        failures: int = 3,
        cooldown: float = 30.0,
        slack: int = 4,
        clock: Clock = time.monotonic,
    ) -> None:
        assert clients, "a pool has at least one backend"
        self.backends = [Backend(c, c.url.encode()) for c in clients]
        self._failures = failures
        self._cooldown = cooldown
        self._slack = slack
        self._clock = clock
        self._turns = itertools.count()

    # --- the breaker ----------------------------------------------------------------

    def _state(self, backend: Backend[C]) -> State:
        if backend.state == "open" and self._clock() - backend.opened_at >= self._cooldown:
            backend.state = "half-open"
        return backend.state

    def _admits(self, backend: Backend[C]) -> bool:
        state = self._state(backend)
        return state == "closed" or (state == "half-open" and not backend.trial)

    def open(self, backend: Backend[C]) -> None:
        """Take it out until its cooldown ends or its /health answers."""
        if backend.state != "open":
            backend.counts["opened"] += 1
        backend.state, backend.opened_at, backend.trial = "open", self._clock(), False

    def succeeded(self, backend: Backend[C]) -> None:
        backend.failures, backend.trial = 0, False
        backend.state = "closed"

    def failed(self, backend: Backend[C]) -> None:
        backend.failures += 1
        backend.counts["failures"] += 1
        if backend.state == "half-open" or backend.failures >= self._failures:
            self.open(backend)

    def recovered(self, backend: Backend[C]) -> None:
        """Its /health answered 200 (and the engine checked it still fits)."""
        self.succeeded(backend)

    def down(self) -> list[Backend[C]]:
        """The backends whose circuit is not closed (the health task probes these)."""
        return [b for b in self.backends if self._state(b) != "closed"]

    # --- the choice -----------------------------------------------------------------

    def choose(self, key: bytes | None, exclude: Sequence[Backend[C]] = ()) -> Backend[C] | None:
        """The backend for a request of affinity ``key``, None when none admits one."""
        if len(self.backends) == 1:  # nothing to fail over to: always tried
            only = self.backends[0]
            return None if only in exclude else only
        usable = [b for b in self.backends if b not in exclude and self._admits(b)]
        if not usable:
            return None
        least = min(b.in_flight for b in usable)
        if key is None:  # the least loaded, equals in turn
            turn = next(self._turns) % len(usable)
            ranked = usable[turn:] + usable[:turn]
            return next(b for b in ranked if b.in_flight == least)
        ranked = sorted(usable, key=lambda b: _score(key, b.score_salt), reverse=True)
        if ranked[0].in_flight - least > self._slack:
            return next(b for b in ranked if b.in_flight == least)
        return ranked[0]

    async def stream(
        self,
        key: bytes | None,
        call: Callable[[C, Attempt], AsyncGenerator[T, None]],
        *,
        attempts: int,
    ) -> AsyncGenerator[T, None]:
        """``call(client, attempt)``'s items from a chosen backend, sent to another
        (at most ``attempts`` backends, each once) while one failed before it
        answered and was unreachable or busy. Closing this closes the request."""
        tried: list[Backend[C]] = []
        error: ParleyError | None = None
        while len(tried) < attempts:
            backend = self.choose(key, tried)
            if backend is None:
                break
            tried.append(backend)
            attempt = Attempt()
            backend.in_flight += 1
            backend.counts["requests"] += 1
            if backend.state == "half-open":
                backend.trial = True
            try:
                async with contextlib.aclosing(call(backend.client, attempt)) as items:
                    async for item in items:
                        yield item
            except ParleyError as exc:
                if attempt.backend_failed:
                    self.failed(backend)
                else:
                    self.succeeded(backend)
                if not attempt.may_go_elsewhere:
                    raise
                error = exc
                continue
            except BaseException:  # parley closed it (done with it, or the client left)
                if attempt.answered:
                    self.succeeded(backend)
                backend.trial = False
                raise
            finally:
                backend.in_flight -= 1
            self.succeeded(backend)
            return
        if error is not None:
            raise error
        raise OverloadedError(
            f"no upstream backend can take the request now (circuits open: {self._names()}); "
            "retry shortly",
            headers={"retry-after": str(max(1, round(self._cooldown_left())))},
        )

    def _names(self) -> str:
        return ", ".join(b.url for b in self.backends if b.state != "closed") or "none"

    def _cooldown_left(self) -> float:
        now = self._clock()
        left = [self._cooldown - (now - b.opened_at) for b in self.backends if b.state == "open"]
        return min(left, default=1.0)

    def stats(self) -> list[dict[str, object]]:
        return [
            {
                "url": b.url,
                "state": self._state(b),
                "in_flight": b.in_flight,
                "failures_in_a_row": b.failures,
                **b.counts,
            }
            for b in self.backends
        ]


def _score(key: bytes, salt: bytes) -> bytes:
    return hashlib.blake2b(key + b"\0" + salt, digest_size=8).digest()
