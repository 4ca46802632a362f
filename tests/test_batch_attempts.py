"""Batch requests have a bounded number of attempts: a poison pill ends ``errored``.

A request that crashes the server (a segfault in a native engine) would
otherwise go back to ``pending`` at every restart and crash it again. The
store counts each start; the worker runs the requests that were running at
a crash one at a time, so the pill takes no other request down with it.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import anthropic
import pytest
import sqlalchemy as sa
from anthropic.types.messages import MessageBatchErroredResult, MessageBatchIndividualResponse

from parley.batches.store import BatchStore
from parley.db.schema import batch_requests
from tests.conftest import Gate, db_env, start_server, stop_server, write_rules
from tests.test_batches import request, results, wait_ended


def params(text: str) -> str:
    return json.dumps(request("x", text)["params"])


def attempts(store: BatchStore) -> dict[int, tuple[str, int]]:
    with store._reading() as conn:
        rows = conn.execute(
            sa.select(batch_requests.c.idx, batch_requests.c.status, batch_requests.c.attempts)
        )
        return {r.idx: (r.status, r.attempts) for r in rows}


@pytest.fixture
def reopen(tmp_path: Path, database_url: str | None) -> Iterator[Callable[[int], BatchStore]]:
    """A store on the same data dir (or database) each call, as each new process
    opens it, a minute later than the last: on PostgreSQL the leases of the
    process before have run out by then (it died; a live one would renew them)."""
    opened: list[BatchStore] = []
    now = [1000.0]

    def open_store(max_attempts: int = 3) -> BatchStore:
        now[0] += 60

        def clock() -> float:
            return now[0]

        store = BatchStore.open(database_url, tmp_path, max_attempts=max_attempts, clock=clock)
        opened.append(store)
        return store

    yield open_store
    for store in opened:
        store.close()


def test_the_store_ends_a_request_errored_after_max_attempts(
    reopen: Callable[[int], BatchStore],
) -> None:
    """Claim, 'crash' (nothing recorded), reopen and recover, three times over."""
    store = reopen(3)
    batch = store.create(
        "msgbatch_p", "", [("pill", params("poison")), ("fine", params("hi"))], expires_in=3600
    )
    # Given back unused (the engine was full, the owner's rate limit): no attempt spent.
    for _ in range(5):
        store.release(store.claim(10))
    assert attempts(store) == {0: ("pending", 0), 1: ("pending", 0)}
    assert {c.custom_id for c in store.claim(10)} == {"pill", "fine"}  # attempt 1 of both
    store = reopen(3)  # the next process
    recovered = store.recover()
    assert (len(recovered.resumed), recovered.exhausted) == (2, 0)
    claimed = store.claim(10)  # attempt 2 of both; "fine" finishes this time
    store.finish(
        [(c, "succeeded", '{"type":"succeeded"}') for c in claimed if c.custom_id == "fine"]
    )
    store = reopen(3)
    recovered = store.recover()
    assert (len(recovered.resumed), recovered.exhausted) == (1, 0)
    # A shutdown that stops it on the engine spends the attempt (its third: the last).
    assert store.release(store.claim(10), spent=True) == 1
    assert attempts(store) == {0: ("errored", 3), 1: ("succeeded", 2)}
    ended = store.get(batch.id, "")
    assert ended.ended_at is not None and ended.counts["errored"] == 1
    lines = [json.loads(line) for page in store.results(batch.id, "") for line in page]
    pill = MessageBatchIndividualResponse.model_validate(lines[0])
    assert pill.custom_id == "pill" and isinstance(pill.result, MessageBatchErroredResult)
    assert pill.result.error.error.type == "api_error"
    assert "failed 3 attempts" in pill.result.error.error.message
    # A lowered setting applies at the next start to requests that used as many.
    other = store.create("msgbatch_q", "", [("q", params("x"))], expires_in=3600)
    store.claim(10)
    again = reopen(1).recover()
    assert (again.resumed, again.exhausted) == ([], 1)
    assert store.get(other.id, "").counts["errored"] == 1


def test_a_request_that_crashes_the_server_ends_errored_and_takes_no_other_down(
    tmp_path: Path, database_url: str | None
) -> None:
    """The scripted engine kills its own process (SIGKILL) when it answers "poison
    pill". Each start runs it again until its attempts (3) are used; the requests
    that were running beside it at the first crash (held at a gate until then)
    rerun alone and succeed. On PostgreSQL the restarted process is a new
    replica: it takes the dead one's requests over once their leases run out,
    and runs each alone as a suspect."""
    env = db_env(database_url, PARLEY_DATA_DIR=str(tmp_path / "data"))
    gate = Gate(tmp_path / "gate")
    texts = [f"a b c d {i}" for i in range(6)]
    rules = [{"match": {"user": t}, "reply": {"text": t, "hold": str(gate.path)}} for t in texts]
    rules.append({"match": {"user": "poison pill"}, "reply": {"crash": True}})
    # A slot for each: the pill is answered however the others are scheduled.
    script = write_rules(tmp_path / "crash.yaml", rules, slots=8)
    args = ["--engine", "scripted", "--script", str(script)]
    if database_url:
        args += ["--batch-lease", "3"]  # the dead replica's leases run out soon
    server = start_server(args, tmp_path, env)
    texts.insert(2, "poison pill")
    batch = server.client().messages.batches.create(
        requests=[request(f"r{i}", text) for i, text in enumerate(texts)]  # type: ignore[misc]
    )
    crashes = 0
    while True:
        try:
            ended = wait_ended(server.client(), batch.id)
            break
        except (anthropic.APIConnectionError, anthropic.InternalServerError):
            # The process is gone (or going); restart it as a supervisor would. It
            # may crash again before it answers: the pill runs first at start-up.
            assert server.process.wait(timeout=60) == -signal.SIGKILL, server.log()
            crashes += 1
            gate.open()  # the others were in flight when the pill struck: now they may end
            assert crashes <= 3, server.log()
            server = start_server(args, tmp_path, env, may_exit=True)
    try:
        assert crashes == 3
        counts = ended.request_counts
        assert (counts.succeeded, counts.errored, counts.processing) == (6, 1, 0)
        got = results(server.client(), batch.id)  # asserts one result each
        pill = got["r2"]
        assert isinstance(pill, MessageBatchErroredResult)
        assert pill.error.error.type == "api_error"
        assert "failed 3 attempts" in pill.error.error.message
        for i, text in enumerate(texts):
            if i != 2:
                assert got[f"r{i}"].message.content[0].text == text
        assert "exhausted=1" in server.log()
        # Another client is served normally, interactively and by batch.
        client = server.client(api_key="another-key")
        hi = client.messages.create(
            model="scripted", max_tokens=8, messages=[{"role": "user", "content": "hello"}]
        )
        assert hi.content[0].text == "hello"  # type: ignore[union-attr]
        later = client.messages.batches.create(requests=[request("z", "fine")])  # type: ignore[list-item]
        assert wait_ended(client, later.id).request_counts.succeeded == 1
    finally:
        stop_server(server)
