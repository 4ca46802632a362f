"""Several parley replicas on one PostgreSQL: real server processes over sockets.

Three replicas (scripted engine) share a database: a batch is shared out
across all three, survives ``kill -9`` of two of them mid-batch with exactly
one result per request, and a restarted replica leaves the others' running
work alone. Rate limits are one bucket across replicas, and a thinking
signature made on one verifies on another. Claims are checked concurrently
at the store: many claimers never take the same request twice.

Leases are 3 s here (``PARLEY_BATCH_LEASE``, renewed every second: a busy
machine may delay a beat or two without a live replica losing its work), so
a killed replica's work is taken over quickly; every wait is on a condition
with a deadline.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
import sqlalchemy as sa

from parley.batches.store import BatchStore
from parley.db.database import resolve_url
from parley.db.schema import batch_requests
from tests.conftest import (
    Gate,
    Server,
    free_port,
    start_server,
    stop_server,
    wait_for,
    write_rules,
)
from tests.test_batches import request, results, wait_ended

WORKERS = 4  # batch requests in flight per replica (and the scripted engine's slots)


@pytest.fixture
def pg_url(postgres: Any) -> str:
    url: str = postgres.fresh_database()
    return url


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str) -> Iterator[Callable[..., Server]]:
    """Starts replicas on ``pg_url`` (each with a data dir of its own); all stopped after."""
    started: list[Server] = []

    def start(name: str, script: Path, *args: str, **env: str) -> Server:
        folder = tmp_path / name
        folder.mkdir(exist_ok=True)
        full = {
            "PARLEY_DATABASE_URL": pg_url,
            "PARLEY_DATA_DIR": str(folder / "data"),
            "PARLEY_BATCH_LEASE": "3",
            "PARLEY_BATCH_WORKERS": str(WORKERS),
            **env,
        }
        server = start_server(
            ["--engine", "scripted", "--script", str(script), *args], folder, full
        )
        started.append(server)
        return server

    yield start
    for server in started:
        stop_server(server)


def holders(engine: sa.Engine) -> Counter[int]:
    """Running requests per replica, by the replica's pid (its id is host:pid:random)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(batch_requests.c.lease_owner).where(batch_requests.c.status == "running")
        )
        return Counter(int(r.lease_owner.split(":")[1]) for r in rows)


def leases(engine: sa.Engine) -> dict[int, tuple[str, int]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                batch_requests.c.id, batch_requests.c.lease_owner, batch_requests.c.attempts
            ).where(batch_requests.c.status == "running")
        )
        return {r.id: (r.lease_owner, r.attempts) for r in rows}


def kill(server: Server) -> None:
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()


def test_three_replicas_share_a_batch_and_lose_nothing_when_two_die(
    tmp_path: Path, pg_url: str, replicas: Callable[..., Server]
) -> None:
    n = 3000
    gate = Gate(tmp_path / "gate")
    rules = [
        {
            "match": {"user": r"^r\d+$", "regex": True},
            "reply": {"text": "done", "hold": str(gate.path)},
        }
    ]
    script = write_rules(tmp_path / "rules.yaml", rules, slots=WORKERS)
    a, b, c = (replicas(name, script) for name in "abc")
    engine = sa.create_engine(resolve_url(pg_url))
    try:
        client = a.client(timeout=300)
        batch = client.messages.batches.create(
            requests=[
                {
                    "custom_id": f"c{i}",
                    "params": {
                        "model": "scripted",
                        "max_tokens": 8,
                        "messages": [{"role": "user", "content": f"r{i}"}],
                    },
                }
                for i in range(n)
            ]
        )
        pids = [s.process.pid for s in (a, b, c)]
        # Each replica claims its share (its pool and half as many again, claimed
        # ahead) and holds it at the gate.
        share = WORKERS + WORKERS // 2
        wait_for(
            lambda: holders(engine) == Counter(dict.fromkeys(pids, share)),
            lambda: f"each replica to hold {share}: {holders(engine)}",
        )
        # c dies and comes back: the others' running requests are untouched.
        held = leases(engine)  # (stable: every one waits at the gate)
        held_by_c = {row for row, (owner, _) in held.items() if f":{c.process.pid}:" in owner}
        held_by_others = {row: lease for row, lease in held.items() if row not in held_by_c}
        kill(c)
        c = replicas("c", script)
        # Once it claims, its start-up recovery has run. (It holds its share, or one
        # when the dead c's leases had lapsed by then: those it found it runs
        # alone first, as after any crash, and the gate holds them.)
        wait_for(lambda: holders(engine)[c.process.pid] >= 1, "the new c to claim")
        now = leases(engine)
        assert all(now[row] == lease for row, lease in held_by_others.items())
        assert all(attempts == 1 for _, attempts in held_by_others.values())

        gate.open()

        def succeeded() -> int:
            return client.messages.batches.retrieve(batch.id).request_counts.succeeded

        wait_for(lambda: succeeded() >= n // 3, "a third of the batch")
        kill(a)  # mid-batch: its in-flight requests are taken over once their leases lapse
        client = b.client(timeout=300)
        wait_for(lambda: succeeded() >= 2 * n // 3, "two thirds of the batch")
        kill(b)
        client = c.client(timeout=300)
        ended = wait_ended(client, batch.id, timeout=120)
        assert ended.request_counts.succeeded == n
        got = results(client, batch.id)  # asserts one result each
        assert sorted(got) == sorted(f"c{i}" for i in range(n))
        assert {r.message.content[0].text for r in got.values()} == {"done"}
        with engine.connect() as conn:
            rows = {
                r.id: (r.status, r.attempts)
                for r in conn.execute(
                    sa.select(
                        batch_requests.c.id, batch_requests.c.status, batch_requests.c.attempts
                    )
                )
            }
        assert {status for status, _ in rows.values()} == {"succeeded"}
        # The dead c's requests were taken over once their leases ran out: run again,
        # recorded once (a third time if a or b held them when it died). Those a and
        # b had in flight or unwritten when they died ran again too; how many
        # depends on when the kill struck.
        assert all(rows[row][1] >= 2 for row in held_by_c)
    finally:
        engine.dispose()


def test_claims_never_overlap(pg_url: str) -> None:
    """Eight claimers (each a replica of its own) take random-sized groups at once
    from 2,000 requests until none is left: each request is claimed exactly once."""
    stores = [BatchStore(pg_url, lease=60) for _ in range(8)]
    try:
        stores[0].create(
            "msgbatch_claims", "", [(f"r{i}", "{}") for i in range(2000)], expires_in=3600
        )
        claimed: list[list[int]] = [[] for _ in stores]
        start = threading.Barrier(len(stores))

        def claimer(k: int) -> None:
            rng = random.Random(k)
            start.wait()
            while got := stores[k].claim(rng.randint(1, 25)):
                claimed[k].extend(c.row_id for c in got)
                if rng.random() < 0.5:  # some finish at once, others keep their leases
                    stores[k].finish([(c, "succeeded", "{}") for c in got])

        threads = [threading.Thread(target=claimer, args=(k,)) for k in range(len(stores))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        every = [row for rows in claimed for row in rows]
        assert len(every) == 2000 and len(set(every)) == 2000
        assert sum(1 for rows in claimed if rows) > 1  # they did run side by side
    finally:
        for store in stores:
            store.close()


@pytest.fixture(scope="module")
def trio(postgres: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    """Three replicas on one database, 4 requests a minute per key (keys: one per test)."""
    url = postgres.fresh_database()
    folder = tmp_path_factory.mktemp("trio")
    script = write_rules(folder / "rules.yaml", [])
    servers = []
    try:
        for name in "abc":
            env = {"PARLEY_DATABASE_URL": url, "PARLEY_DATA_DIR": str(folder / name / "data")}
            args = ["--engine", "scripted", "--script", str(script), "--rate-requests", "4"]
            args += ["--api-key", "limited", "--api-key", "thinker"]
            (folder / name).mkdir()
            servers.append(start_server(args, folder / name, env))
        yield servers
    finally:
        for server in servers:
            stop_server(server)


def test_rate_limits_are_one_bucket_across_replicas(trio: list[Server]) -> None:
    clients = [s.client(api_key="limited") for s in trio]
    began = time.monotonic()
    outcomes = []
    for i in range(8):
        try:
            raw = clients[i % 3].messages.with_raw_response.create(
                model="scripted", max_tokens=8, messages=[{"role": "user", "content": "hi"}]
            )
            outcomes.append(int(raw.headers["anthropic-ratelimit-requests-remaining"]))
        except anthropic.RateLimitError as refused:
            assert int(refused.response.headers["retry-after"]) >= 1
            assert refused.response.headers["anthropic-ratelimit-requests-limit"] == "4"
            outcomes.append(-1)
    # 4 a minute: one more each 15 s; per replica buckets would have allowed all eight.
    refills = int((time.monotonic() - began) / 15)
    allowed = [o for o in outcomes if o >= 0]
    assert 4 <= len(allowed) <= min(8, 4 + refills), outcomes
    assert allowed[:4] == [3, 2, 1, 0] or refills, outcomes


def test_a_signature_made_on_one_replica_verifies_on_another(trio: list[Server]) -> None:
    """Three requests of a key of its own: within its limit of four."""
    a, b, _ = trio
    thinking = {"type": "enabled", "budget_tokens": 1024}
    first = a.client(api_key="thinker").messages.create(
        model="scripted",
        max_tokens=2048,
        thinking=thinking,  # type: ignore[arg-type]
        messages=[{"role": "user", "content": "think"}],
    )
    assert first.content[0].type == "thinking"
    history: list[Any] = [
        {"role": "user", "content": "think"},
        {"role": "assistant", "content": [block.model_dump() for block in first.content]},
        {"role": "user", "content": "again"},
    ]
    second = b.client(api_key="thinker").messages.create(
        model="scripted",
        max_tokens=2048,
        thinking=thinking,
        messages=history,  # type: ignore[arg-type]
    )
    assert second.content[-1].type == "text"
    history[1]["content"][0]["signature"] = "parley1" + "A" * 40
    with pytest.raises(anthropic.BadRequestError, match="signature"):
        b.client(api_key="thinker").messages.create(
            model="scripted",
            max_tokens=2048,
            thinking=thinking,
            messages=history,  # type: ignore[arg-type]
        )


def test_the_database_going_away_stops_no_interactive_request_and_loses_no_result(
    tmp_path: Path,
) -> None:
    """PostgreSQL stops while a replica holds batch requests, and comes back:
    /v1/messages is served meanwhile (rate-limited on the replica's own
    buckets), the batch API answers 500 api_error, the results wait in the
    worker and are written once the database is back."""
    from tests import pg

    cluster = pg.start_cluster(free_port())
    server = None
    try:
        url = cluster.fresh_database()
        gate = Gate(tmp_path / "gate")
        rules = [
            {
                "match": {"user": r"^b\d+$", "regex": True},
                "reply": {"text": "b", "hold": str(gate.path)},
            }
        ]
        # A slot more than the batch takes: for the interactive request.
        script = write_rules(tmp_path / "rules.yaml", rules, slots=WORKERS + 1)
        env = {"PARLEY_DATABASE_URL": url, "PARLEY_BATCH_WORKERS": str(WORKERS)}
        args = ["--engine", "scripted", "--script", str(script), "--rate-requests", "1000"]
        server = start_server(args, tmp_path, env)
        client = server.client()
        batch = client.messages.batches.create(
            requests=[request(f"r{i}", f"b{i}") for i in range(12)]  # type: ignore[misc]
        )
        server.wait_stats("scripted", held=WORKERS)
        cluster.stop()
        # Served, and limited on the replica's own buckets meanwhile.
        hello = client.messages.with_raw_response.create(
            model="scripted", max_tokens=8, messages=[{"role": "user", "content": "hello"}]
        )
        assert hello.parse().content[0].text == "hello"  # type: ignore[union-attr]
        assert hello.headers["anthropic-ratelimit-requests-limit"] == "1000"
        fallback = "rate limits fall back to this replica's own buckets"
        wait_for(lambda: fallback in server.log(), "the fallback to be logged")
        with pytest.raises(anthropic.InternalServerError) as down:
            client.messages.batches.retrieve(batch.id)
        assert down.value.body["error"]["type"] == "api_error"  # type: ignore[index]
        assert "database is unavailable" in down.value.body["error"]["message"]  # type: ignore[index]
        gate.open()  # the held four finish; their results cannot be written yet
        server.wait_stats("scripted", running=0)
        assert "could not record batch results" in wait_for(
            lambda: server.log() if "could not record batch results" in server.log() else "",
            "the worker to fail writing",
        )
        cluster.start()
        ended = wait_ended(client, batch.id)
        assert ended.request_counts.succeeded == 12
        got = results(client, batch.id)  # asserts one result each
        assert sorted(got) == sorted(f"r{i}" for i in range(12))
    finally:
        if server is not None:
            stop_server(server)
        pg.remove_cluster(cluster)


def test_leases_are_renewed_lapse_and_fence_the_result(pg_url: str) -> None:
    """Store level, on one clock: a renewed lease holds, a lapsed one is taken over,
    and the replica that lost it writes nothing (its result is dropped)."""
    now = [1000.0]

    def clock() -> float:
        return now[0]

    a = BatchStore(pg_url, clock=clock, lease=10, replica="a")
    b = BatchStore(pg_url, clock=clock, lease=10, replica="b")
    try:
        a.create("msgbatch_l", "", [("x", "{}"), ("y", "{}")], expires_in=3600)
        x, y = a.claim(2)
        now[0] += 8
        a.renew()  # both held until 1018
        now[0] += 8
        assert b.reclaim().resumed == [] and b.claim(2) == []
        now[0] += 8  # 1024: lapsed (a stalled, or died)
        assert b.reclaim().resumed == [x.row_id, y.row_id]
        taken = b.claim(2)
        assert [(c.row_id, c.attempt) for c in taken] == [(x.row_id, 2), (y.row_id, 2)]
        assert a.finish([(x, "succeeded", '"from a"')]) == 0  # lost: dropped
        assert a.release([y]) == 0 and a.renew() == []  # nor can it give it back
        assert b.finish([(c, "succeeded", '"from b"') for c in taken]) == 2
        lines = [line for page in b.results("msgbatch_l", "") for line in page]
        assert lines == [
            b'{"custom_id":"x","result":"from b"}\n',
            b'{"custom_id":"y","result":"from b"}\n',
        ]
    finally:
        a.close()
        b.close()


def test_a_batch_whose_last_two_results_two_replicas_write_at_once_ends(pg_url: str) -> None:
    """Results commit on their own and their batch is ended after: whichever of
    two replicas finishing a batch's last two requests together commits last
    sees both done, so the batch ends (50 races, the writes released at once)."""
    a = BatchStore(pg_url, replica="a")
    b = BatchStore(pg_url, replica="b")
    try:
        for i in range(50):
            batch_id = f"msgbatch_race{i}"
            a.create(batch_id, "", [("x", "{}"), ("y", "{}")], expires_in=3600)
            (x,), (y,) = a.claim(1), b.claim(1)
            start = threading.Barrier(2)

            threads = [
                threading.Thread(target=_finish_after, args=(start, a, x)),
                threading.Thread(target=_finish_after, args=(start, b, y)),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            ended = a.get(batch_id, "")
            assert ended.ended_at is not None, i
            assert ended.counts["succeeded"] == 2
    finally:
        a.close()
        b.close()


def _finish_after(start: threading.Barrier, store: BatchStore, claimed: Any) -> None:
    start.wait()
    store.finish([(claimed, "succeeded", '"done"')])


def test_a_batch_left_unended_by_a_replica_that_died_ends_at_the_next_tick(
    pg_url: str,
) -> None:
    """A replica that dies between writing a batch's last result and ending the
    batch: any replica's next housekeeping tick ends it."""
    a = BatchStore(pg_url, replica="a")
    b = BatchStore(pg_url, replica="b")
    try:
        a.create("msgbatch_left", "", [("x", "{}")], expires_in=3600)
        (x,) = a.claim(1)
        with a._statements() as conn:  # the result alone, as if a died after it
            conn.execute(
                batch_requests.update()
                .where(batch_requests.c.id == x.row_id)
                .values(status="succeeded", result='"done"', lease_owner=None, lease_until=None)
            )
        assert a.get("msgbatch_left", "").ended_at is None
        b.reclaim()
        ended = b.get("msgbatch_left", "")
        assert ended.ended_at is not None and ended.counts["succeeded"] == 1
    finally:
        a.close()
        b.close()


def test_a_dead_replicas_requests_of_a_canceled_batch_end_canceled(pg_url: str) -> None:
    now = [1000.0]

    def clock() -> float:
        return now[0]

    a = BatchStore(pg_url, clock=clock, lease=10, replica="a")
    b = BatchStore(pg_url, clock=clock, lease=10, replica="b")
    try:
        a.create("msgbatch_c", "", [("x", "{}"), ("y", "{}"), ("z", "{}")], expires_in=3600)
        a.claim(2)  # and a dies
        assert b.cancel("msgbatch_c", "").counts == {
            "processing": 2,  # running: the cancel leaves them to their replica
            "succeeded": 0,
            "errored": 0,
            "canceled": 1,
            "expired": 0,
        }
        assert a.renew() == [1]  # (a live a would stop them: its batch is canceling)
        now[0] += 20
        assert len(b.reclaim().resumed) == 2
        ended = b.get("msgbatch_c", "")
        assert ended.ended_at is not None and ended.counts["canceled"] == 3
        assert b.claim(5) == []
    finally:
        a.close()
        b.close()


def test_a_cancel_through_one_replica_stops_the_others_requests(
    tmp_path: Path, pg_url: str, replicas: Callable[..., Server]
) -> None:
    gate = Gate(tmp_path / "gate")  # never opened: in flight until canceled
    rules = [{"match": {}, "reply": {"text": "held", "hold": str(gate.path)}}]
    script = write_rules(tmp_path / "rules.yaml", rules, slots=WORKERS)
    a, b = replicas("a", script), replicas("b", script)
    engine = sa.create_engine(resolve_url(pg_url))
    try:
        client = a.client()
        batch = client.messages.batches.create(
            requests=[request(f"r{i}", f"w{i}") for i in range(20)]  # type: ignore[misc]
        )
        pids = [a.process.pid, b.process.pid]
        share = WORKERS + WORKERS // 2  # its pool, and half as many claimed ahead
        wait_for(
            lambda: holders(engine) == Counter(dict.fromkeys(pids, share)),
            lambda: f"both replicas to hold {share}: {holders(engine)}",
        )
        b.client().messages.batches.cancel(batch.id)
        ended = wait_ended(client, batch.id)  # a learns of it at its next heartbeat
        assert ended.request_counts.canceled == 20
        # (on the engine: its pool; those claimed ahead end canceled without starting)
        assert a.wait_idle("scripted")["cancelled"] == WORKERS
        assert {r.type for r in results(client, batch.id).values()} == {"canceled"}
    finally:
        engine.dispose()
