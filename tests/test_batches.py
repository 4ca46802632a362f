"""Message Batches through the official SDK over a real socket, stored in SQLite
and in PostgreSQL (each test that stores batches runs on both: ``database_url``).

The scripted engine gives exact, fast answers, or holds them at a gate until
the test opens it (so "mid-run" is a state the test observes, not a guess);
one test runs a small batch on the embedded model. Crash recovery kills a
real server process with SIGKILL mid-batch and restarts it on the same data dir.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest

from tests.conftest import (
    MODEL,
    RULES,
    Gate,
    Server,
    db_env,
    start_server,
    stop_server,
    wait_for,
    write_rules,
)


def request(custom_id: str, text: str, model: str = "scripted", **extra: Any) -> dict[str, Any]:
    params = {"model": model, "max_tokens": 32, "messages": [{"role": "user", "content": text}]}
    return {"custom_id": custom_id, "params": {**params, **extra}}


def wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 60) -> Any:
    last: list[Any] = []

    def ended() -> Any:
        last[:] = [client.messages.batches.retrieve(batch_id)]
        return last[0] if last[0].processing_status == "ended" else None

    return wait_for(ended, lambda: f"the batch to end: {last}", timeout)


def held_rules(tmp: Path, texts: list[str] | None = None, **options: object) -> tuple[Path, Gate]:
    """Rules holding at a gate the answer to each of ``texts`` (echoed), or every answer."""
    gate = Gate(tmp / "gate")
    if texts is None:
        rules = [{"match": {}, "reply": {"text": "held", "hold": str(gate.path)}}]
    else:
        rules = [
            {"match": {"user": t}, "reply": {"text": t, "hold": str(gate.path)}} for t in texts
        ]
    return write_rules(tmp / "held.yaml", rules, **options), gate


def results(client: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in client.messages.batches.results(batch_id):
        assert item.custom_id not in out, f"duplicate result for {item.custom_id}"
        out[item.custom_id] = item.result
    return out


@pytest.fixture(scope="module")
def batch_server(server_factory: Callable[..., Server], module_database_url: str | None) -> Server:
    return server_factory(
        "--engine", "scripted", "--script", str(RULES), env=db_env(module_database_url)
    )


def test_lifecycle_create_poll_results(batch_server: Server) -> None:
    client = batch_server.client()
    bad_content = [{"type": "text", "text": "x", "bogus": 1}]
    batch = client.messages.batches.create(
        requests=[
            request("first", "count to ten"),
            request("second", "hello there"),
            request("bad", "ignored", messages=[{"role": "user", "content": bad_content}]),
            request("no-model", "hi", model="no-such-model"),
        ]  # type: ignore[list-item]
    )
    assert batch.id.startswith("msgbatch_") and batch.type == "message_batch"
    assert batch.processing_status == "in_progress" and batch.results_url is None
    assert batch.request_counts.processing + batch.request_counts.succeeded <= 4
    assert (batch.expires_at - batch.created_at).total_seconds() == pytest.approx(86400, abs=1)

    ended = wait_ended(client, batch.id)
    counts = ended.request_counts
    assert (counts.succeeded, counts.errored, counts.processing) == (2, 2, 0)
    assert ended.ended_at is not None and ended.results_url.endswith(f"/{batch.id}/results")

    got = results(client, batch.id)
    assert set(got) == {"first", "second", "bad", "no-model"}
    first = got["first"]
    assert first.type == "succeeded"
    assert first.message.content[0].text == "one two three four five six seven eight nine ten"
    assert first.message.usage.service_tier == "batch"
    # An invalid request errors exactly as /v1/messages would, and alone.
    with pytest.raises(anthropic.BadRequestError) as direct:
        client.messages.create(
            model="scripted",
            max_tokens=32,
            messages=[{"role": "user", "content": bad_content}],  # type: ignore[list-item]
        )
    assert got["bad"].type == "errored"
    assert got["bad"].error.error.type == "invalid_request_error"
    assert got["bad"].error.error.message == direct.value.body["error"]["message"]  # type: ignore[index]
    assert got["no-model"].error.error.type == "not_found_error"


@pytest.mark.parametrize(
    ("requests", "needle"),
    [
        ([], "requests: List should have at least 1 item"),
        ([request("a", "x"), request("a", "y")], "requests.1.custom_id: duplicate custom_id 'a'"),
        ([request("bad id!", "x")], "requests.0.custom_id: must be 1 to 64 characters"),
        ([request("x" * 65, "x")], "requests.0.custom_id"),
        ([request("s", "x", stream=True)], "requests.0.params.stream: streaming is not supported"),
        ([{"custom_id": "p"}], "requests.0.params: Field required"),
        ([{**request("e", "x"), "extra": 1}], "requests.0.extra: Extra inputs are not permitted"),
    ],
)
def test_the_envelope_is_checked_at_once(
    batch_server: Server, requests: list[dict[str, Any]], needle: str
) -> None:
    response = httpx.post(
        f"{batch_server.url}/v1/messages/batches",
        json={"requests": requests},
        headers={"x-api-key": "k"},
    )
    assert response.status_code == 400, response.text
    assert needle in response.json()["error"]["message"]


def test_at_most_100000_requests(
    server_factory: Callable[..., Server], tmp_path: Path, database_url: str | None
) -> None:
    rules, _ = held_rules(tmp_path)  # never opened: nothing can succeed before the cancel
    server = server_factory(
        "--engine", "scripted", "--script", str(rules), env=db_env(database_url)
    )
    client = server.client(timeout=300)
    line = {"model": "scripted", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    too_many = [{"custom_id": f"r{i}", "params": line} for i in range(100_001)]
    with pytest.raises(anthropic.BadRequestError) as refused:
        client.messages.batches.create(requests=too_many)  # type: ignore[arg-type]
    assert "at most 100000 requests, got 100001" in str(refused.value)
    # Exactly 100,000 is accepted, stored at once, and cancelled just as fast.
    batch = client.messages.batches.create(requests=too_many[:100_000])  # type: ignore[arg-type]
    assert sum(batch.request_counts.model_dump().values()) == 100_000
    canceled = client.messages.batches.cancel(batch.id)
    assert canceled.cancel_initiated_at is not None
    ended = wait_ended(client, batch.id)
    assert ended.request_counts.canceled == 100_000
    client.messages.batches.delete(batch.id)


def test_cancel_mid_run_and_delete_rules(
    server_factory: Callable[..., Server], tmp_path: Path, database_url: str | None
) -> None:
    rules, _ = held_rules(tmp_path, slots=2)  # never opened: in flight until cancelled
    server = server_factory(
        "--engine",
        "scripted",
        "--script",
        str(rules),
        env=db_env(database_url, PARLEY_BATCH_WORKERS="6"),
    )
    client = server.client()
    batch = client.messages.batches.create(
        requests=[request(f"r{i}", f"w{i}") for i in range(12)]  # type: ignore[misc]
    )
    with pytest.raises(anthropic.BadRequestError, match="cannot be deleted while it is processing"):
        client.messages.batches.delete(batch.id)
    # Six requests in flight: two in the engine's slots at the gate, four queued behind.
    server.wait_stats("scripted", running=2, held=2, waiting=4)
    canceled = client.messages.batches.cancel(batch.id)
    assert canceled.processing_status in ("canceling", "ended")
    ended = wait_ended(client, batch.id)
    counts = ended.request_counts
    assert counts.canceled == 12
    assert counts.succeeded == counts.processing == counts.errored == counts.expired == 0
    # The six in flight were stopped on the engine, the other six never reached it.
    assert server.wait_idle("scripted")["cancelled"] == 6
    got = results(client, batch.id)
    assert len(got) == 12 and {r.type for r in got.values()} == {"canceled"}
    deleted = client.messages.batches.delete(batch.id)
    assert deleted.id == batch.id and deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)


def test_pagination_both_ways(
    server_factory: Callable[..., Server], database_url: str | None
) -> None:
    server = server_factory(
        "--engine", "scripted", "--script", str(RULES), env=db_env(database_url)
    )
    client = server.client()
    made = [
        client.messages.batches.create(requests=[request("only", f"n{i}")]).id  # type: ignore[list-item]
        for i in range(5)
    ]
    newest_first = list(reversed(made))
    first = client.messages.batches.list(limit=2)
    assert [b.id for b in first.data] == newest_first[:2] and first.has_more
    assert first.first_id == newest_first[0] and first.last_id == newest_first[1]
    after = client.messages.batches.list(limit=2, after_id=newest_first[1])
    assert [b.id for b in after.data] == newest_first[2:4] and after.has_more
    last = client.messages.batches.list(limit=2, after_id=newest_first[3])
    assert [b.id for b in last.data] == newest_first[4:] and not last.has_more
    before = client.messages.batches.list(limit=2, before_id=newest_first[4])
    assert [b.id for b in before.data] == newest_first[2:4] and before.has_more
    assert [b.id for b in client.messages.batches.list(limit=2)] == newest_first  # auto-paging
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.list(limit=1001)


def test_expiry_and_retention(
    server_factory: Callable[..., Server], tmp_path: Path, database_url: str | None
) -> None:
    rules, _ = held_rules(tmp_path)  # never opened: no request finishes before it expires
    server = server_factory(
        "--engine",
        "scripted",
        "--script",
        str(rules),
        env=db_env(
            database_url,
            PARLEY_BATCH_EXPIRY="1.5",
            PARLEY_BATCH_RETENTION="4",
            PARLEY_BATCH_WORKERS="1",
        ),
    )
    client = server.client()
    batch = client.messages.batches.create(
        requests=[request(f"r{i}", f"w{i}") for i in range(3)]  # type: ignore[misc]
    )
    ended = wait_ended(client, batch.id)
    assert ended.request_counts.expired == 3
    assert {r.type for r in results(client, batch.id).values()} == {"expired"}

    # Past retention the batch and its results are gone.
    def gone() -> bool:
        try:
            client.messages.batches.retrieve(batch.id)
        except anthropic.NotFoundError:
            return True
        return False

    wait_for(gone, "the batch to be deleted past its retention")
    with pytest.raises(anthropic.NotFoundError):
        list(client.messages.batches.results(batch.id))


def test_batches_are_scoped_to_their_key(
    server_factory: Callable[..., Server], database_url: str | None
) -> None:
    server = server_factory(
        "--engine",
        "scripted",
        "--script",
        str(RULES),
        "--api-key",
        "key-a",
        "--api-key",
        "key-b",
        env=db_env(database_url, PARLEY_MAX_BATCH_BYTES="4000"),
    )
    alice = server.client(api_key="key-a")
    bob = server.client(api_key="key-b")
    batch = alice.messages.batches.create(requests=[request("x", "hello")])  # type: ignore[list-item]
    wait_ended(alice, batch.id)
    for call in (
        lambda: bob.messages.batches.retrieve(batch.id),
        lambda: list(bob.messages.batches.results(batch.id)),
        lambda: bob.messages.batches.cancel(batch.id),
        lambda: bob.messages.batches.delete(batch.id),
    ):
        with pytest.raises(anthropic.NotFoundError):
            call()
    assert [b.id for b in bob.messages.batches.list()] == []
    assert [b.id for b in alice.messages.batches.list()] == [batch.id]
    assert alice.messages.batches.retrieve(batch.id).request_counts.succeeded == 1
    # The batch body limit (256 MB by default, 4,000 bytes here) gives 413.
    with pytest.raises(anthropic.APIStatusError) as too_big:
        alice.messages.batches.create(
            requests=[request(f"r{i}", "x" * 100) for i in range(40)]  # type: ignore[misc]
        )
    assert too_big.value.status_code == 413
    assert too_big.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]


def test_beta_surface(batch_server: Server) -> None:
    client = batch_server.client()
    batch = client.beta.messages.batches.create(
        requests=[request("b", "hello beta")],  # type: ignore[list-item]
        betas=["message-batches-2024-09-24"],
    )
    wait_for(
        lambda: client.beta.messages.batches.retrieve(batch.id).processing_status == "ended",
        "the batch to end",
    )
    (item,) = list(client.beta.messages.batches.results(batch.id))
    assert item.custom_id == "b" and item.result.type == "succeeded"
    assert batch.id in [b.id for b in client.beta.messages.batches.list()]


def test_crash_recovery_gives_exactly_one_result_each(
    tmp_path: Path, database_url: str | None
) -> None:
    """SIGKILL mid-batch, restart on the same data dir (or database): none lost,
    none duplicated. On PostgreSQL the killed replica's leases (2 s) run out and
    the restarted one takes them over."""
    data = tmp_path / "data"
    env = db_env(database_url, PARLEY_DATA_DIR=str(data), PARLEY_BATCH_LEASE="2")
    n = 24
    texts = [f"a b c {i}" for i in range(n)]
    # The first five answer at once; the others wait at the gate until after the crash.
    rules, gate = held_rules(tmp_path, texts[5:])
    args = ["--engine", "scripted", "--script", str(rules)]
    server = start_server(args, tmp_path, env)
    try:
        client = server.client()
        batch = client.messages.batches.create(
            requests=[request(f"r{i}", text) for i, text in enumerate(texts)]  # type: ignore[misc]
        )
        wait_for(
            lambda: client.messages.batches.retrieve(batch.id).request_counts.succeeded == 5,
            "five results",
        )
        server.wait_stats("scripted", held=4)  # the engine's four slots are in use
    finally:
        server.process.send_signal(signal.SIGKILL)
        server.process.wait()
    gate.open()
    restarted = start_server(args, tmp_path, env)
    try:
        client = restarted.client()
        ended = wait_ended(client, batch.id)
        assert ended.request_counts.succeeded == n
        got = results(client, batch.id)  # asserts no duplicates
        assert sorted(got) == sorted(f"r{i}" for i in range(n))
        for i in range(n):
            assert got[f"r{i}"].message.content[0].text == f"a b c {i}"
    finally:
        stop_server(restarted)


def test_cli_submit_wait_status_results_list(batch_server: Server, tmp_path: Path) -> None:
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text("\n".join(json.dumps(request(f"c{i}", f"cli {i}")) for i in range(3)) + "\n")
    env = {**os.environ, "ANTHROPIC_BASE_URL": batch_server.url, "ANTHROPIC_API_KEY": "k"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "parley", "batch", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    submitted = cli("submit", str(jsonl), "--wait")
    assert submitted.returncode == 0, submitted.stderr
    batch = json.loads(submitted.stdout[submitted.stdout.index("{") :])
    assert batch["processing_status"] == "ended" and batch["request_counts"]["succeeded"] == 3
    status = cli("status", batch["id"])
    assert json.loads(status.stdout)["id"] == batch["id"]
    out = tmp_path / "out.jsonl"
    assert cli("results", batch["id"], "-o", str(out)).returncode == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["custom_id"] for x in lines) == ["c0", "c1", "c2"]
    assert batch["id"] in cli("list").stdout
    missing = cli("status", "msgbatch_nope")
    assert missing.returncode == 1 and "404" in missing.stderr


@pytest.mark.model
def test_a_batch_on_the_embedded_model(model_server: Server) -> None:
    client = model_server.client()
    batch = client.messages.batches.create(
        requests=[
            request(f"m{i}", f"Name a colour. ({i})", model=MODEL, temperature=0.0)
            for i in range(3)
        ]  # type: ignore[misc]
    )
    wait_ended(client, batch.id, timeout=120)
    got = results(client, batch.id)
    assert len(got) == 3
    for result in got.values():
        assert result.type == "succeeded"
        usage = result.message.usage
        assert usage.output_tokens > 0 and usage.service_tier == "batch"


def test_a_failing_database_is_retried_and_nothing_is_lost(
    tmp_path: Path, database_url: str | None
) -> None:
    """A full disk (SQLite's 'database or disk is full') while claiming and while
    writing results: the worker keeps the outcomes, retries, and every request
    still ends with exactly one result."""
    import asyncio

    from sqlalchemy.exc import OperationalError

    from parley.batches.store import BatchStore
    from parley.batches.worker import BatchWorker
    from parley.catalog import Catalog
    from parley.engines.scripted import Script, ScriptedEngine
    from parley.service import MessagesService
    from parley.thinking import Signer

    class FlakyStore(BatchStore):
        failures = {"claim": 1, "finish": 3}

        def _maybe_fail(self, what: str) -> None:
            if self.failures[what] > 0:
                self.failures[what] -= 1
                raise OperationalError("INSERT", {}, Exception("database or disk is full"))

        def claim(self, limit: int, **options: Any) -> Any:
            self._maybe_fail("claim")
            return super().claim(limit, **options)

        def finish(self, outcomes: Any) -> int:
            self._maybe_fail("finish")
            return super().finish(outcomes)

    async def scenario() -> tuple[Any, list[bytes]]:
        store = FlakyStore.open(database_url, tmp_path)
        catalog = Catalog([ScriptedEngine(Script())], {})
        service = MessagesService(
            catalog,
            ping_interval=5,
            signer=Signer.from_data_dir(tmp_path),
            redact_thinking=False,
        )
        params = [
            (f"r{i}", json.dumps(request(f"r{i}", f"hello {i}")["params"])) for i in range(10)
        ]
        batch = store.create("msgbatch_test", "", params, expires_in=3600)
        worker = BatchWorker(store, service, concurrency=4, retention=3600, tick=0.1)
        worker._retry_after = 0.1
        worker.start()
        async with asyncio.timeout(30):  # a guard against a hang
            while store.get(batch.id, "").ended_at is None:  # noqa: ASYNC110 (the database)
                await asyncio.sleep(0.05)
        await worker.stop()
        lines = [line for page in store.results(batch.id, "") for line in page]
        ended = store.get(batch.id, "")
        store.close()
        return ended, lines

    ended, lines = asyncio.run(scenario())
    assert ended.counts["succeeded"] == 10 and FlakyStore.failures == {"claim": 0, "finish": 0}
    ids = sorted(json.loads(line)["custom_id"] for line in lines)
    assert ids == sorted(f"r{i}" for i in range(10))
