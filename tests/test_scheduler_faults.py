"""The decode loop survives what one request can do to it (fake native engine, no model).

A sampler that cannot be built fails that request alone; a grammar step over
the budget fails that request alone; a failure of the loop itself fails the
requests in flight and the loop starts again, and after repeated failures the
engine reports itself broken instead of leaving every later request hanging.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from parley.config import Settings
from parley.conversation import Capabilities, Conversation, Turn
from parley.engines.base import Engine, Finished, ModelCard, Prompt, SamplingParams
from parley.engines.llamacpp.output import Grammar, LlamaPrompt
from parley.engines.llamacpp.scheduler import BatchScheduler
from parley.errors import EngineError, InvalidRequestError, ParleyError

EOS = 0


class FakeNative:
    """Decodes nothing; every sequence writes token 7 ("x") until ``max_tokens``.

    ``refuse_grammar``: building a sampler with a grammar raises, as llama.cpp
    refusing a grammar does. ``fail_forget``: the next N ``forget`` calls raise
    a foreign exception (a bug in the loop outside a step)."""

    n_ctx = 4096
    n_batch = 64

    def __init__(self) -> None:
        self.refuse_grammar = False
        self.fail_forget = 0
        self.samplers: set[int] = set()
        self._next = 0

    def decode(self, entries: Any) -> None:
        return None

    def sample(self, sampler: Any, index: int) -> int:
        return 7

    def is_eog(self, token: int) -> bool:
        return token == EOS

    def piece(self, token: int) -> bytes:
        return b"x"

    def tokenize(self, text: str, *, add_bos: bool) -> list[int]:
        return [1] * len(text)

    def forget(self, seq_id: int, from_pos: int = 0) -> None:
        if self.fail_forget:
            self.fail_forget -= 1
            raise RuntimeError("a bug outside the decode step")

    def save_seq(self, seq_id: int) -> tuple[Any, int]:
        return b"", 0

    def restore_seq(self, seq_id: int, state: Any, size: int) -> bool:
        return True

    def seq_pos_max(self, seq_id: int) -> int:
        return -1

    def new_sampler(self, *, grammar: Grammar | None = None, **_: Any) -> Any:
        if grammar is not None and self.refuse_grammar:
            raise EngineError("llama.cpp rejected the grammar built from the tool schemas")
        self._next += 1
        self.samplers.add(self._next)
        return self._next

    def free_sampler(self, sampler: Any) -> None:
        self.samplers.discard(sampler)


def prompt(grammar: Grammar | None = None) -> LlamaPrompt:
    conversation = Conversation(system=None, turns=(Turn("user", ()),))
    return LlamaPrompt(conversation, "hi", [1, 2, 3], grammar)


GRAMMAR = Grammar('root ::= "x"*')


async def outcome(scheduler: BatchScheduler, p: Prompt, max_tokens: int = 4) -> Any:
    """The request's ``Finished`` event, or the error it ended with."""
    generation = scheduler.submit(p, SamplingParams(max_tokens=max_tokens, temperature=0.0))
    try:
        async for event in generation:
            if isinstance(event, Finished):
                return event
    except ParleyError as exc:
        return exc
    raise AssertionError("no Finished event")


@pytest.fixture
def native() -> FakeNative:
    return FakeNative()


@pytest.fixture
def scheduler(native: FakeNative) -> Any:
    scheduler = BatchScheduler(native, n_parallel=2, max_queue=8, prefill_chunk=16)
    scheduler.start()
    yield scheduler
    scheduler.stop()


def together(*coroutines: Any) -> list[Any]:
    async def run() -> list[Any]:
        return list(await asyncio.gather(*coroutines))

    return asyncio.run(run())


def test_a_sampler_that_cannot_be_built_fails_that_request_alone(
    native: FakeNative, scheduler: BatchScheduler
) -> None:
    native.refuse_grammar = True
    refused, plain = together(outcome(scheduler, prompt(GRAMMAR)), outcome(scheduler, prompt()))
    assert isinstance(refused, EngineError)
    assert isinstance(plain, Finished) and plain.output_tokens == 4
    native.refuse_grammar = False
    assert isinstance(together(outcome(scheduler, prompt(GRAMMAR)))[0], Finished)
    stats = scheduler.stats()
    assert stats["running"] == 0 and not any(slot["busy"] for slot in stats["slots"])
    assert scheduler.alive and native.samplers == set()


def test_a_grammar_step_over_the_budget_fails_that_request_alone(
    native: FakeNative, scheduler: BatchScheduler, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every reading of the clock is a second later than the one before: each
    # constrained sampling step "takes" one second, over a budget of half that.
    ticks = iter(range(10**6))
    monkeypatch.setattr("parley.engines.llamacpp.scheduler.time.perf_counter", lambda: next(ticks))
    scheduler._grammar_step_budget = 0.5
    slow, plain = together(
        outcome(scheduler, prompt(GRAMMAR), 50), outcome(scheduler, prompt(), 50)
    )
    assert isinstance(slow, InvalidRequestError)
    assert slow.message.startswith("tools: decoding under the grammar")
    assert isinstance(plain, Finished) and plain.output_tokens == 50
    assert native.samplers == set()


def test_a_failing_loop_fails_its_requests_restarts_and_then_gives_up(
    native: FakeNative, scheduler: BatchScheduler
) -> None:
    native.fail_forget = 1  # the next admission raises outside a step
    assert isinstance(together(outcome(scheduler, prompt()))[0], EngineError)
    assert scheduler.alive
    assert isinstance(together(outcome(scheduler, prompt()))[0], Finished)  # restarted

    native.fail_forget = 100  # every admission fails from now on: with the first, 5 a minute
    for _ in range(3):
        assert isinstance(together(outcome(scheduler, prompt()))[0], EngineError)
        assert scheduler.alive
    assert isinstance(together(outcome(scheduler, prompt()))[0], EngineError)
    scheduler._thread.join(10)
    assert not scheduler.alive
    assert scheduler.dead is not None and "failed 5 times" in scheduler.dead
    with pytest.raises(EngineError, match="not running"):
        scheduler.submit(prompt(), SamplingParams(max_tokens=1))


class _BrokenEngine(Engine):
    def __init__(self, card: Any) -> None:
        self.card = card

    @property
    def broken(self) -> str | None:
        return "the decode loop failed 5 times in a minute"

    def prepare(self, conversation: Conversation) -> Prompt:
        raise AssertionError("not used")

    def submit(self, prompt: Prompt, params: SamplingParams) -> Any:
        raise AssertionError("not used")


def test_health_checks_say_when_an_engine_is_broken(tmp_path: Any) -> None:
    from parley.api.app import create_app

    card = ModelCard("broken", "broken", "2026-01-01T00:00:00Z", 1000, 1000, Capabilities())
    app = create_app(Settings(engine="scripted", data_dir=tmp_path), engines=[_BrokenEngine(card)])

    async def check() -> None:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://parley") as client,
        ):
            for path in ("/", "/health"):
                response = await client.get(path)
                assert response.status_code == 503
                assert response.json() == {
                    "status": "unhealthy",
                    "engines": {"broken": "the decode loop failed 5 times in a minute"},
                }

    asyncio.run(check())


def test_no_trailing_slash_redirect_and_unpredictable_ids(tmp_path: Any) -> None:
    """Item 12 of the hardening issue: no redirect built from the client's Host,
    ids from the OS's generator (consecutive ids share nothing)."""
    from parley import ids
    from parley.api.app import create_app

    card = ModelCard("m", "m", "2026-01-01T00:00:00Z", 1000, 1000, Capabilities())
    app = create_app(Settings(engine="scripted", data_dir=tmp_path), engines=[_BrokenEngine(card)])

    async def check() -> None:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://evil.example") as client,
        ):
            response = await client.post("/v1/messages/", json={})
            assert response.status_code == 404
            assert "location" not in response.headers
            assert response.json()["error"]["type"] == "not_found_error"

    asyncio.run(check())
    a, b = ids.message_id(), ids.message_id()
    assert a != b and len(a) == len(b) == 30


def test_a_native_crash_leaves_a_trace_in_the_log(server_factory: Any) -> None:
    """A segfault in native code (here: the signal itself) is written to the log
    with every thread's Python stack before the process dies."""
    import signal

    from tests.conftest import RULES

    server = server_factory("--engine", "scripted", "--script", str(RULES))
    server.process.send_signal(signal.SIGSEGV)
    assert server.process.wait(timeout=60) == -signal.SIGSEGV
    log = server.log()
    assert "Fatal Python error: Segmentation fault" in log
    assert "parley" in log.split("Fatal Python error", 1)[1]  # the stacks follow
