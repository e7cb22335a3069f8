"""The worker's KV event relay (DESIGN.md §4.3): engine events in, router events out.

One relay per worker (all its dp ranks). For every engine batch it

* keeps only device-medium events of the full-attention group (`group_idx` None or 0);
* recomputes each stored block's local hash from its token ids (router/hashing.py), so the router
  navigates by hashes it can trust (an in-process engine that hashed with router/hashing.py hands
  them over in `BlockStored.local_hashes`; nothing from the wire does), and drops partial blocks
  (a trailing hash whose tokens do not fill `kv_block_size`);
* reference-counts hashes per rank: a block stored twice is stored twice, but its removal is
  forwarded only when the count reaches 0; `AllBlocksCleared` resets the rank;
* numbers the router events it emits 1, 2, 3, ... and keeps the last `ring_size` (1024) of them,
  so `query(start)` can answer a router's gap with the missing range, or with a full dump when the
  ring no longer reaches back to `start`.

The relay is synchronous and owns no sockets; the worker publishes what `ingest` returns and
answers `kv_query` messages with `query(...).to_wire()`. The same relay serves the mock engine and
real engines.
"""

from __future__ import annotations

from collections import Counter, deque

from router.events import (DEVICE_MEDIA, AllBlocksCleared, BlockRemoved, BlockStored, EngineHash,
                           EngineEventBatch, RouterEvent, RouterEventKind)
from router.hashing import local_hashes, lora_seed
from router.kv_sync import DumpReply, KvReply, RangeReply

RING_SIZE = 1024


class _RankState:
    """Blocks one dp rank currently holds: engine hash -> (parent engine hash, local hash), and
    for a hash stored more than once, how many stores beyond the first are still outstanding."""

    __slots__ = ("blocks", "extra")

    def __init__(self) -> None:
        self.blocks: dict[EngineHash, tuple[EngineHash | None, int]] = {}
        self.extra: dict[EngineHash, int] = {}


class KvRelay:
    def __init__(self, worker_id: int, kv_block_size: int, ring_size: int = RING_SIZE):
        if kv_block_size <= 0:
            raise ValueError(f"kv_block_size must be positive, got {kv_block_size}")
        self.worker_id = worker_id
        self.kv_block_size = kv_block_size
        self.last_event_id = 0
        self._ring: deque[RouterEvent] = deque(maxlen=ring_size)
        self._ranks: dict[int, _RankState] = {}
        # engine events not forwarded, by reason: non_device, other_group, block_size,
        # invalid (repeated hash), empty (no full block / nothing left to remove)
        self.dropped: Counter[str] = Counter()

    # -- engine events in, router events out ---------------------------------------------------

    def ingest(self, batch: EngineEventBatch) -> list[RouterEvent]:
        rank = self._ranks.setdefault(batch.dp_rank, _RankState())
        out: list[RouterEvent] = []
        for event in batch.events:
            if isinstance(event, AllBlocksCleared):
                rank.blocks.clear()
                rank.extra.clear()
                out.append(self._emit(batch.dp_rank, "cleared", None, [], []))
                continue
            if event.medium not in DEVICE_MEDIA:
                self.dropped["non_device"] += 1
                continue
            if event.group_idx not in (None, 0):
                self.dropped["other_group"] += 1
                continue
            if isinstance(event, BlockStored):
                emitted = self._stored(rank, batch.dp_rank, event)
            else:
                emitted = self._removed(rank, batch.dp_rank, event)
            if emitted is not None:
                out.append(emitted)
        return out

    def _stored(self, rank: _RankState, dp_rank: int, event: BlockStored) -> RouterEvent | None:
        bs = self.kv_block_size
        if event.block_size != bs:
            self.dropped["block_size"] += 1
            return None
        hashes = event.block_hashes[:len(event.token_ids) // bs]  # partial tail dropped
        if not hashes:
            self.dropped["empty"] += 1
            return None
        parent = event.parent_block_hash
        if (parent in hashes if len(hashes) == 1
                else len(set(hashes)) != len(hashes) or parent in hashes):
            self.dropped["invalid"] += 1
            return None
        locals_ = event.local_hashes
        if locals_ is None:
            locals_ = local_hashes(event.token_ids[:len(hashes) * bs], bs,
                                   lora_seed(event.lora_name))
        held = rank.blocks
        if not held.keys().isdisjoint(hashes):    # stored again: count it (rare)
            extra = rank.extra
            for engine_hash in hashes:
                if engine_hash in held:
                    extra[engine_hash] = extra.get(engine_hash, 0) + 1
        held.update(zip(hashes, zip([parent, *hashes[:-1]], locals_)))
        return self._emit(dp_rank, "stored", parent, list(zip(hashes, locals_)), [])

    def _removed(self, rank: _RankState, dp_rank: int, event: BlockRemoved) -> RouterEvent | None:
        held, extra = rank.blocks, rank.extra
        if extra:
            gone = []
            for engine_hash in event.block_hashes:
                count = extra.get(engine_hash)
                if count is None:
                    if held.pop(engine_hash, None) is not None:
                        gone.append(engine_hash)
                elif count > 1:
                    extra[engine_hash] = count - 1
                else:
                    del extra[engine_hash]
        else:   # a hash never stored as a full device block here is skipped: the router never saw it
            gone = [h for h in event.block_hashes if held.pop(h, None) is not None]
        if not gone:
            self.dropped["empty"] += 1
            return None
        return self._emit(dp_rank, "removed", None, [], gone)

    def _emit(self, dp_rank: int, kind: RouterEventKind, parent_hash: EngineHash | None,
              blocks: list[tuple[EngineHash, int]], hashes: list[EngineHash]) -> RouterEvent:
        self.last_event_id += 1
        event = RouterEvent(self.worker_id, dp_rank, self.last_event_id, kind, parent_hash, blocks,
                            hashes)
        self._ring.append(event)
        return event

    # -- kv_query ------------------------------------------------------------------------------

    def query(self, start_event_id: int | None) -> KvReply:
        """Events from `start_event_id` on when the ring still holds them, else a full dump."""
        if start_event_id is not None and 1 <= start_event_id <= self.last_event_id + 1:
            oldest = self._ring[0].event_id if self._ring else self.last_event_id + 1
            if start_event_id >= oldest:
                skip = start_event_id - oldest
                return RangeReply(self.worker_id, [self._ring[i]
                                                   for i in range(skip, len(self._ring))])
        return self.dump()

    def dump(self) -> DumpReply:
        """Current state as stored events, parents first (depth-first, so each chain is one event).

        A block whose parent this rank no longer holds is left out: the router could not attach
        it (it rejects unknown parents), and no prompt can reach it through this worker anyway.
        """
        events: list[RouterEvent] = []
        for dp_rank, rank in sorted(self._ranks.items()):
            children: dict[EngineHash | None, list[EngineHash]] = {}
            for engine_hash, (parent, _) in rank.blocks.items():
                children.setdefault(parent, []).append(engine_hash)
            current: RouterEvent | None = None
            stack = list(reversed(children.get(None, ())))
            while stack:
                engine_hash = stack.pop()
                parent, local = rank.blocks[engine_hash]
                if current is None or current.blocks[-1][0] != parent:
                    current = RouterEvent(self.worker_id, dp_rank, self.last_event_id, "stored",
                                          parent_hash=parent)
                    events.append(current)
                current.blocks.append((engine_hash, local))
                stack.extend(reversed(children.get(engine_hash, ())))
        return DumpReply(self.worker_id, self.last_event_id, events)
