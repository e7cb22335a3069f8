"""Approximate mode (`--no-router-kv-events`, DESIGN.md §4.3): no KV events from workers.

After each routing decision the chosen worker is credited with the prompt's full blocks for
`ttl_s` seconds, as if it had stored them; crediting a block again slides its expiry. The credits
live in the same `KvIndex` events would fill, with each block's sequence hash standing in for
the engine hash, so selection cannot tell the two modes apart.
"""

from __future__ import annotations

import heapq

from router.index import KvIndex, WorkerKey


class ApproxCredits:
    def __init__(self, index: KvIndex, ttl_s: float):
        self._index = index
        self.ttl_s = ttl_s
        self._expiry: dict[WorkerKey, dict[int, float]] = {}  # key -> {seq hash: expires_at}
        self._heap: list[tuple[float, WorkerKey, list[int]]] = []  # one entry per credit

    def credit(self, key: WorkerKey, local_hashes: list[int], seq_hashes: list[int],
               now: float) -> None:
        if not seq_hashes:
            return
        self._index.apply_stored(key, None, list(zip(seq_hashes, local_hashes)))
        expires_at = now + self.ttl_s
        expiry = self._expiry.setdefault(key, {})
        for h in seq_hashes:
            expiry[h] = expires_at
        heapq.heappush(self._heap, (expires_at, key, seq_hashes))

    def expire(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            expires_at, key, seq_hashes = heapq.heappop(heap)
            expiry = self._expiry.get(key)
            if expiry is None:
                continue  # the worker left
            gone = [h for h in seq_hashes if expiry.get(h) == expires_at]
            for h in gone:
                del expiry[h]
            self._index.apply_removed(key, gone)

    def drop_worker(self, key: WorkerKey) -> None:
        self._expiry.pop(key, None)
