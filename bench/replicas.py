"""Several replicas on one PostgreSQL: batch throughput against one on SQLite.

The scripted engine answers at once, so the figures are parley's own batch
path (claim, run through the Messages service, write the result) and the
database's. Three set-ups, side by side on the same machine, are each given
the same batch (``BENCH_REPLICAS_N`` requests, default 6,000) in turn,
``BENCH_REPLICAS_ROUNDS`` rounds (default 7; the machine drifts, so each
ratio is taken within a round):

1. one replica on SQLite in its data dir (the baseline);
2. one replica on PostgreSQL;
3. two replicas on the same PostgreSQL, the batch created through one.

Each batch, after a warm-up batch per set-up: requests/s from the create
call until the batch has ended, the replicas' peak RSS (sampled every 50 ms,
summed), and the database's share of the CPU time spent (PostgreSQL's
processes against them plus the replicas'). Targets: one replica on
PostgreSQL ≥ 0.8 times one on SQLite; two ≥ 1.6 times one (a replica uses
about one core; this machine has two).

PostgreSQL is started as the tests start it (``tests/pg.py``). Results go to
bench/RESULTS.md (section "replicas").
"""

from __future__ import annotations

import contextlib
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import yaml

from bench.common import Section, free_port, serve, write_section

N = int(os.environ.get("BENCH_REPLICAS_N", "6000"))
ROUNDS = int(os.environ.get("BENCH_REPLICAS_ROUNDS", "7"))
WORKERS = 16  # batch requests in flight per replica (and scripted slots)
HEADERS = {"x-api-key": "bench"}


class Sampler:
    """Peak RSS (summed) and CPU seconds of a set of processes, sampled every 50 ms."""

    def __init__(self, pids: list[int]) -> None:
        self._processes = [psutil.Process(pid) for pid in pids]
        self._cpu0 = {p.pid: _cpu(p) for p in self._processes}
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, sum(p.memory_info().rss for p in self._processes))

    def stop(self) -> float:
        """CPU seconds used since the start."""
        self._stop.set()
        self._thread.join()
        return sum(_cpu(p) - self._cpu0[p.pid] for p in self._processes)


def _cpu(process: psutil.Process) -> float:
    with contextlib.suppress(psutil.Error):
        times = process.cpu_times()
        return float(times.user + times.system)
    return 0.0


def postgres_pids(cluster: Any) -> list[int]:
    postmaster = int((cluster.folder / "data" / "postmaster.pid").read_text().split()[0])
    main = psutil.Process(postmaster)
    return [postmaster, *(child.pid for child in main.children(recursive=True))]


def run_batch(client: httpx.Client, url: str, n: int) -> dict[str, Any]:
    """A batch of ``n`` requests created through ``url``, once it has ended."""
    requests = [
        {
            "custom_id": f"r{i}",
            "params": {
                "model": "scripted",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"say {i}"}],
            },
        }
        for i in range(n)
    ]
    response = client.post(f"{url}/v1/messages/batches", json={"requests": requests})
    response.raise_for_status()
    batch: dict[str, Any] = response.json()
    while batch["processing_status"] != "ended":
        time.sleep(0.05)
        batch = client.get(f"{url}/v1/messages/batches/{batch['id']}").json()
    assert batch["request_counts"]["succeeded"] == n, batch
    return batch


def one_run(url: str, db_pids: list[int], replica_pids: list[int]) -> dict[str, float]:
    client = httpx.Client(timeout=600, headers=HEADERS)
    replicas = Sampler(replica_pids)
    database = Sampler(db_pids) if db_pids else None
    started = time.perf_counter()
    run_batch(client, url, N)
    seconds = time.perf_counter() - started
    replica_cpu = replicas.stop()
    db_cpu = database.stop() if database else 0.0
    return {
        "rate": N / seconds,
        "rss": replicas.peak / 2**20,
        "db_share": db_cpu / (db_cpu + replica_cpu) if db_cpu else 0.0,
        "cores": (db_cpu + replica_cpu) / seconds,  # of the machine's, replicas + database
    }


@contextlib.contextmanager
def replicas(count: int, env: dict[str, str], folder: Path) -> Iterator[list[tuple[str, int]]]:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "rules.yaml"
    script.write_text(yaml.safe_dump({"slots": WORKERS, "rules": []}))
    args = ["--engine", "scripted", "--script", str(script), "--batch-workers", str(WORKERS)]
    with contextlib.ExitStack() as stack:
        started = []
        for i in range(count):
            os.environ.update(env, PARLEY_DATA_DIR=str(folder / f"data{i}"))
            started.append(stack.enter_context(serve(args)))
        yield started


def main() -> Section:
    from tests import pg  # the tests' PostgreSQL starter (installed by scripts/install test)

    runs: dict[str, list[dict[str, float]]] = {"sqlite1": [], "pg1": [], "pg2": []}
    saved = dict(os.environ)
    cluster = pg.start_cluster(free_port())
    try:
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            folder = Path(tmp)
            # All three set-ups run side by side (idle ones cost a poll a second),
            # and their batches alternate, so the machine's drift falls on each alike.
            setups: dict[str, tuple[str, list[int], list[int]]] = {}
            started = stack.enter_context(replicas(1, {}, folder / "sqlite"))
            setups["sqlite1"] = (started[0][0], [], [p for _, p in started])
            for count in (1, 2):
                env = {"PARLEY_DATABASE_URL": cluster.fresh_database()}
                started = stack.enter_context(replicas(count, env, folder / f"pg{count}"))
                pids = [p for _, p in started]
                setups[f"pg{count}"] = (started[0][0], postgres_pids(cluster), pids)
            warm = httpx.Client(timeout=600, headers=HEADERS)
            for url, _, _ in setups.values():  # connections, plans, every replica
                run_batch(warm, url, 50 * WORKERS)
            names = list(setups)
            for r in range(ROUNDS):
                # Each round starts with the next set-up: what one leaves behind
                # (PostgreSQL's autovacuum after its batch) falls on each alike.
                for name in names[r % 3 :] + names[: r % 3]:
                    runs[name].append(one_run(*setups[name]))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        pg.remove_cluster(cluster)
    base, one, two = (_median(runs[k]) for k in ("sqlite1", "pg1", "pg2"))
    # The ratios of each round (same minute, same machine), their median and range.
    ratio_one = _per_round(runs["pg1"], runs["sqlite1"])
    ratio_two = _per_round(runs["pg2"], runs["pg1"])
    rows = [
        (f"1 replica, SQLite: requests/s ({N} requests)", _spread(runs["sqlite1"]), ""),
        ("1 replica, PostgreSQL: requests/s", _spread(runs["pg1"]), ""),
        ("2 replicas, PostgreSQL: requests/s", _spread(runs["pg2"]), ""),
        ("**1 on PostgreSQL ÷ 1 on SQLite**", _ratios(ratio_one), "≥ 0.8"),
        ("**2 on PostgreSQL ÷ 1 on PostgreSQL**", _ratios(ratio_two), "≥ 1.6"),
        (
            "peak RSS of the replicas (MB): SQLite 1 / PostgreSQL 1 / 2",
            f"{base['rss']:.0f} / {one['rss']:.0f} / {two['rss']:.0f}",
            "",
        ),
        (
            "PostgreSQL's share of the CPU time: 1 replica / 2 replicas",
            f"{one['db_share']:.0%} / {two['db_share']:.0%}",
            "",
        ),
        (
            "cores busy (replicas + database): SQLite 1 / PostgreSQL 1 / 2",
            f"{base['cores']:.2f} / {one['cores']:.2f} / {two['cores']:.2f}",
            f"of {psutil.cpu_count()}",
        ),
    ]
    notes = (
        "Scripted engine (answers at once), `--batch-workers 16`; wall time from the create "
        f"call until the batch has ended. The three set-ups run side by side and their "
        "batches alternate, each round starting with the next one, "
        f"{ROUNDS} rounds: medians (and ranges); each ratio is taken within a round, its "
        "median in bold. PostgreSQL 15 as the tests start it (fsync off, "
        "on the same machine as the replicas, so it competes with them for the two cores)."
    )
    verdicts = {
        "1 replica on PostgreSQL ≥ 0.8 x 1 on SQLite": statistics.median(ratio_one) >= 0.8,
        "2 replicas ≥ 1.6 x 1 on PostgreSQL": statistics.median(ratio_two) >= 1.6,
    }
    return Section("replicas", "Several replicas on one PostgreSQL", rows, verdicts, notes)


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _per_round(these: list[dict[str, float]], base: list[dict[str, float]]) -> list[float]:
    return sorted(t["rate"] / b["rate"] for t, b in zip(these, base, strict=True))


def _spread(runs: list[dict[str, float]]) -> str:
    rates = sorted(run["rate"] for run in runs)
    return f"{statistics.median(rates):.0f} ({rates[0]:.0f}-{rates[-1]:.0f})"


def _ratios(ratios: list[float]) -> str:
    return f"**{statistics.median(ratios):.2f}** ({ratios[0]:.2f}-{ratios[-1]:.2f})"


if __name__ == "__main__":
    write_section(main())
