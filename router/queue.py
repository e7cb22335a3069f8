"""The admission queue (DESIGN.md §4.6): requests wait here while every eligible worker is busy.

Order: highest `(strict_priority, score)` first, then arrival order. The score comes from the
queue policy, with pj = max(priority, 0) seconds (a priority *jump*) and `offset` the arrival
time in seconds since the router started:

    fcfs   pj − offset                          earlier first; priority p jumps p seconds ahead
    lcfs   pj + offset                          later first
    wspt   (1 + pj) / max(new prefill tokens, 1)  shortest uncached prompt first

Only past `max_depth` entries or `max_wait` seconds in the queue is a request shed. A cancelled
entry leaves at once (`remove`); the heap drops its stale slot lazily.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# policy name -> score(pj seconds, arrival offset seconds, new prefill tokens); higher goes first
QueueScore = Callable[[float, float, int], float]
QUEUE_POLICIES: dict[str, QueueScore] = {
    "fcfs": lambda pj, offset, _new: pj - offset,
    "lcfs": lambda pj, offset, _new: pj + offset,
    "wspt": lambda pj, _offset, new: (1.0 + pj) / max(new, 1),
}


@dataclass(slots=True)
class QueueEntry(Generic[T]):
    request_id: str
    item: T
    strict_priority: int
    score: float
    enqueued_at: float   # router clock, seconds


class AdmissionQueue(Generic[T]):
    def __init__(self, policy: str, max_depth: int, max_wait_s: float, origin: float):
        score = QUEUE_POLICIES.get(policy)
        if score is None:
            raise ValueError(f"router_queue_policy must be one of {sorted(QUEUE_POLICIES)}, "
                             f"got {policy!r}")
        self._score = score
        self.max_depth = max_depth
        self.max_wait_s = max_wait_s
        self._origin = origin
        self._seq = 0
        self._heap: list[tuple[int, float, int, str]] = []  # (−strict, −score, seq, id)
        self._live: dict[str, tuple[int, QueueEntry[T]]] = {}  # id -> (seq, entry)
        self._by_time: deque[tuple[float, int, str]] = deque()  # (enqueued_at, seq, id)

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._live

    def push(self, request_id: str, item: T, *, priority: int, strict_priority: int,
             arrival: float, new_prefill_tokens: int, now: float) -> QueueEntry[T] | None:
        """Enqueue; None (and nothing queued) when the queue is full."""
        if request_id in self._live:
            raise ValueError(f"request_id {request_id!r} is already queued")
        if len(self._live) >= self.max_depth:
            return None
        score = self._score(float(max(priority, 0)), arrival - self._origin, new_prefill_tokens)
        entry = QueueEntry(request_id, item, strict_priority, score, now)
        self._seq += 1
        self._live[request_id] = (self._seq, entry)
        heapq.heappush(self._heap, (-strict_priority, -score, self._seq, request_id))
        self._by_time.append((now, self._seq, request_id))
        return entry

    def peek(self) -> QueueEntry[T] | None:
        heap, live = self._heap, self._live
        while heap:
            _, _, seq, request_id = heap[0]
            found = live.get(request_id)
            if found is not None and found[0] == seq:
                return found[1]
            heapq.heappop(heap)
        return None

    def remove(self, request_id: str) -> QueueEntry[T] | None:
        found = self._live.pop(request_id, None)
        return None if found is None else found[1]

    def expired(self, now: float) -> list[QueueEntry[T]]:
        """Remove and return the entries that have waited `max_wait_s` or longer."""
        out = []
        by_time, live = self._by_time, self._live
        while by_time and now - by_time[0][0] >= self.max_wait_s:
            _, seq, request_id = by_time.popleft()
            found = live.get(request_id)
            if found is not None and found[0] == seq:
                del live[request_id]
                out.append(found[1])
        return out
