"""Scheduling policies of the mock engine: the order of waiting requests and the preemption victim.

Requests are named by their slot in the core's per-request arrays. `requeue` takes back a preempted
request: it keeps its place by arrival, so under fcfs it goes to the front.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Protocol, Reversible, Sequence

from sortedcontainers import SortedList


class SchedulingPolicy(Protocol):
    def push(self, slot: int, priority: int, arrival: int) -> None:
        """A new request; `arrival` is its arrival sequence number."""

    def requeue(self, slot: int, priority: int, arrival: int) -> None:
        """A preempted request going back to the waiting queue."""

    def peek(self) -> int:
        """The next request to admit (the queue is not empty)."""

    def pop(self) -> int: ...

    def remove(self, slot: int, priority: int, arrival: int) -> None: ...

    def victim(self, running: Reversible[int], priority: Sequence[int]) -> int:
        """Which running request to preempt; `running` is in admission order, newest last."""

    def __len__(self) -> int: ...


class FcfsPolicy:
    """Arrival order; a preempted request goes to the front; the newest running one is preempted."""

    def __init__(self) -> None:
        self._queue: deque[int] = deque()

    def push(self, slot: int, priority: int, arrival: int) -> None:
        self._queue.append(slot)

    def requeue(self, slot: int, priority: int, arrival: int) -> None:
        self._queue.appendleft(slot)

    def peek(self) -> int:
        return self._queue[0]

    def pop(self) -> int:
        return self._queue.popleft()

    def remove(self, slot: int, priority: int, arrival: int) -> None:
        self._queue.remove(slot)

    def victim(self, running: Reversible[int], priority: Sequence[int]) -> int:
        return next(reversed(running))

    def __len__(self) -> int:
        return len(self._queue)


class PriorityPolicy:
    """Higher priority first, ties by arrival; the lowest-priority (then newest) running request is
    preempted. Rotor polarity: a larger number is more important."""

    def __init__(self) -> None:
        self._queue: SortedList = SortedList()   # (-priority, arrival, slot)

    def push(self, slot: int, priority: int, arrival: int) -> None:
        self._queue.add((-priority, arrival, slot))

    def requeue(self, slot: int, priority: int, arrival: int) -> None:
        self.push(slot, priority, arrival)

    def peek(self) -> int:
        return self._queue[0][2]

    def pop(self) -> int:
        return self._queue.pop(0)[2]

    def remove(self, slot: int, priority: int, arrival: int) -> None:
        self._queue.remove((-priority, arrival, slot))

    def victim(self, running: Reversible[int], priority: Sequence[int]) -> int:
        victim = -1
        for slot in running:
            if victim < 0 or priority[slot] <= priority[victim]:
                victim = slot
        return victim

    def __len__(self) -> int:
        return len(self._queue)


SCHEDULING_POLICIES: dict[str, Callable[[], SchedulingPolicy]] = {
    "fcfs": FcfsPolicy,
    "priority": PriorityPolicy,
}
