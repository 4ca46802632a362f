"""Message Batches: throughput of the whole path, and batch vs. one-by-one on the model.

1. Scripted engine, 10,000 requests: requests/s through create + processing +
   results download (wall time from the create call to the last result line),
   and the server's RSS growth over the run (peak sampled every 50 ms).
   Targets: ≥ 1,000 requests/s, RSS growth < 200 MB.
2. Embedded model, 200 short requests: one batch vs. the same requests sent
   one by one to ``/v1/messages`` (the baseline, in the same run).

Results go to bench/RESULTS.md (section "batches").
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import httpx
import psutil

from bench.common import Section, serve, write_section

SCRIPTED_N = int(os.environ.get("BENCH_BATCH_N", "10000"))
MODEL_N = int(os.environ.get("BENCH_BATCH_MODEL_N", "200"))
MODEL = "smollm2-135m-instruct"
HEADERS = {"x-api-key": "bench"}


def params(model: str, i: int, max_tokens: int) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "messages": [{"role": "user", "content": f"Name one colour, please. ({i})"}],
    }


class PeakRss:
    def __init__(self, pid: int) -> None:
        self._process = psutil.Process(pid)
        self.start = self._process.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._process.memory_info().rss)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.peak - self.start) / 2**20


def run_batch(client: httpx.Client, url: str, requests: list[dict[str, Any]]) -> tuple[float, int]:
    """Seconds from create to the last result line, and the number of results."""
    started = time.perf_counter()
    response = client.post(f"{url}/v1/messages/batches", json={"requests": requests})
    response.raise_for_status()
    batch = response.json()
    while batch["processing_status"] != "ended":
        time.sleep(0.05)
        batch = client.get(f"{url}/v1/messages/batches/{batch['id']}").json()
    lines = 0
    with client.stream("GET", f"{url}/v1/messages/batches/{batch['id']}/results") as results:
        results.raise_for_status()
        for line in results.iter_lines():
            lines += bool(line.strip())
    return time.perf_counter() - started, lines


def scripted() -> tuple[float, float, int]:
    with serve(["--engine", "scripted"]) as (url, pid):
        client = httpx.Client(timeout=600, headers=HEADERS)
        warm = [{"custom_id": f"w{i}", "params": params("scripted", i, 16)} for i in range(200)]
        run_batch(client, url, warm)
        rss = PeakRss(pid)
        requests = [
            {"custom_id": f"r{i}", "params": params("scripted", i, 16)} for i in range(SCRIPTED_N)
        ]
        seconds, lines = run_batch(client, url, requests)
        growth = rss.stop()
    assert lines == SCRIPTED_N, lines
    return SCRIPTED_N / seconds, growth, lines


def model() -> tuple[float, float]:
    with serve([]) as (url, _):
        client = httpx.Client(timeout=600, headers=HEADERS)
        client.post(f"{url}/v1/messages", json=params(MODEL, -1, 16)).raise_for_status()
        started = time.perf_counter()
        for i in range(MODEL_N):
            client.post(f"{url}/v1/messages", json=params(MODEL, i, 16)).raise_for_status()
        one_by_one = time.perf_counter() - started
        requests = [
            {"custom_id": f"m{i}", "params": params(MODEL, i + MODEL_N, 16)} for i in range(MODEL_N)
        ]
        seconds, lines = run_batch(client, url, requests)
    assert lines == MODEL_N
    return MODEL_N / one_by_one, MODEL_N / seconds


def main() -> Section:
    rate, growth, _ = scripted()
    sequential, batched = model()
    rows = [
        (
            f"scripted engine, {SCRIPTED_N} requests: requests/s (create → results)",
            f"{rate:.0f}",
            "≥ 1000",
        ),
        ("scripted engine: peak RSS growth during the batch (MB)", f"{growth:.0f}", "< 200"),
        (f"embedded model, {MODEL_N} requests one by one: requests/s", f"{sequential:.2f}", ""),
        (f"embedded model, the same {MODEL_N} as one batch: requests/s", f"{batched:.2f}", ""),
        ("**batch ÷ one by one**", f"**{batched / sequential:.2f}**", ""),
    ]
    notes = (
        "Wall time from the create call to the last results line (processing and download "
        "included); the scripted engine answers at once, so its figure is parley's own batch "
        "overhead (SQLite in WAL mode; each result is written in the same transaction as its "
        "request's state change, the results ready at once sharing one transaction). "
        "Model requests: 16 "
        "max tokens, greedy, default `--parallel 8`; the batch runs 8 at a time."
    )
    verdicts = {
        "≥ 1,000 requests/s on the scripted engine": rate >= 1000,
        "RSS growth < 200 MB": growth < 200,
    }
    return Section("batches", "Message Batches", rows, verdicts, notes)


if __name__ == "__main__":
    write_section(main())
