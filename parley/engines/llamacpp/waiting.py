"""The requests waiting for a slot: by priority (interactive before batch work),
then arrival. Cancelled ones stay in the heap until the next ``reap``."""

from __future__ import annotations

import heapq
import itertools

from parley.engines.llamacpp.jobs import Job


class WaitQueue:
    def __init__(self) -> None:
        self._heap: list[tuple[int, int, Job]] = []
        self._order = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, job: Job) -> None:
        heapq.heappush(self._heap, (job.params.priority, next(self._order), job))

    def first(self) -> Job | None:
        return self._heap[0][2] if self._heap else None

    def pop(self) -> Job:
        return heapq.heappop(self._heap)[2]

    def live(self) -> int:
        """Waiting requests not cancelled."""
        return sum(1 for _, _, job in self._heap if not job.cancelled.is_set())

    def overdue(self, queued_before: float) -> list[Job]:
        """Live requests queued before ``queued_before`` (they are cancelled here)."""
        late = [
            job
            for _, _, job in self._heap
            if job.queued_at < queued_before and not job.cancelled.is_set()
        ]
        for job in late:
            job.cancelled.set()
        return late

    def reap(self) -> list[Job]:
        """Take the cancelled requests out (the heap is rebuilt only when there are any)."""
        gone = [job for _, _, job in self._heap if job.cancelled.is_set()]
        if gone:
            self._heap = [w for w in self._heap if not w[2].cancelled.is_set()]
            heapq.heapify(self._heap)
        return gone

    def drain(self) -> list[Job]:
        jobs = [job for _, _, job in self._heap]
        self._heap.clear()
        return jobs
