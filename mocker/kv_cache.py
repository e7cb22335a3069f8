"""The mock engine's paged KV cache with prefix caching (DESIGN.md §5).

`num_blocks` blocks of `block_size` tokens, ids 0..num_blocks-1. Every block is in one of three
states:

    empty     holds nothing reusable; allocated first, oldest-freed first (ids ascending at start)
    active    referenced by at least one request (ref > 0)
    inactive  ref == 0 but holds a full, hashed block that a later prompt may hit; evicted (and its
              BlockRemoved published) only when no empty block is left, in eviction-policy order

A full block is known by its *sequence hash* (router/hashing.py), which is also the engine block hash
published in KV events: one block per hash, so a block computed twice collapses onto the cached copy.
Partial blocks are never hashed nor published.

Events are queued here and drained by the owner (`take_events()`); the cache has no sockets.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Callable, Protocol, Sequence

from router.events import BlockRemoved, BlockStored, EngineEvent, EngineHash


class EvictionPolicy(Protocol):
    """Order in which inactive blocks are evicted."""

    def push(self, block: int, priority: int) -> None:
        """`block` just became inactive, released by a request of `priority`."""

    def remove(self, block: int) -> None:
        """`block` was hit again and is active once more."""

    def pop(self) -> int:
        """Take the next block to evict (the caller checked that there is one)."""

    def __len__(self) -> int: ...


class LruEviction:
    """Least recently released first."""

    def __init__(self) -> None:
        self._order: OrderedDict[int, None] = OrderedDict()

    def push(self, block: int, priority: int) -> None:
        self._order[block] = None

    def remove(self, block: int) -> None:
        del self._order[block]

    def pop(self) -> int:
        return self._order.popitem(last=False)[0]

    def __len__(self) -> int:
        return len(self._order)


class PriorityEviction:
    """Blocks last released by lower-priority requests first; least recently released within a level."""

    def __init__(self) -> None:
        self._levels: dict[int, OrderedDict[int, None]] = {}   # priority -> blocks, LRU first
        self._level_of: dict[int, int] = {}                      # block -> priority
        self._size = 0

    def push(self, block: int, priority: int) -> None:
        self._levels.setdefault(priority, OrderedDict())[block] = None
        self._level_of[block] = priority
        self._size += 1

    def remove(self, block: int) -> None:
        level = self._level_of.pop(block)
        blocks = self._levels[level]
        del blocks[block]
        if not blocks:
            del self._levels[level]
        self._size -= 1

    def pop(self) -> int:
        level = min(self._levels)
        blocks = self._levels[level]
        block = blocks.popitem(last=False)[0]
        if not blocks:
            del self._levels[level]
        del self._level_of[block]
        self._size -= 1
        return block

    def __len__(self) -> int:
        return self._size


EVICTION_POLICIES: dict[str, Callable[[], EvictionPolicy]] = {
    "lru": LruEviction,
    "priority": PriorityEviction,
}


class BlockPool:
    """Reference-counted blocks, prefix lookup by sequence hash, KV events queued for the owner."""

    def __init__(self, num_blocks: int, block_size: int, eviction: str = "lru",
                 prefix_caching: bool = True):
        if eviction not in EVICTION_POLICIES:
            raise ValueError(f"--eviction-policy must be one of {', '.join(EVICTION_POLICIES)}, "
                             f"got {eviction!r}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.num_active = 0                                   # blocks with ref > 0
        self._ref = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks    # sequence hash of a stored block
        self._by_hash: dict[int, int] = {}                    # sequence hash -> block
        self._empty: deque[int] = deque(range(num_blocks))
        self._inactive = EVICTION_POLICIES[eviction]()
        self._events: list[EngineEvent] = []

    @property
    def num_free(self) -> int:
        """Blocks an allocation may take: empty ones plus evictable inactive ones."""
        return len(self._empty) + len(self._inactive)

    @property
    def num_cached(self) -> int:
        """Blocks holding a published hash (active or inactive)."""
        return len(self._by_hash)

    def take_events(self) -> list[EngineEvent]:
        events, self._events = self._events, []
        return events

    # -- lookups (never change state) ------------------------------------------------------

    def match(self, hashes: Sequence[int], limit: int) -> list[int]:
        """Blocks holding the leading `hashes` (at most `limit` of them), stopping at the first miss."""
        by_hash = self._by_hash
        found: list[int] = []
        for h in hashes[:limit]:
            block = by_hash.get(h)
            if block is None:
                break
            found.append(block)
        return found

    def count_inactive(self, blocks: Sequence[int]) -> int:
        """How many of `blocks` are inactive (taking them shrinks `num_free`)."""
        ref = self._ref
        return sum(1 for b in blocks if not ref[b])

    # -- state changes ---------------------------------------------------------------------

    def acquire(self, blocks: Sequence[int]) -> None:
        """Reference cached blocks (prefix hits), reactivating inactive ones."""
        ref = self._ref
        for b in blocks:
            if not ref[b]:
                self._inactive.remove(b)
                self.num_active += 1
            ref[b] += 1

    def allocate(self, n: int) -> list[int]:
        """`n` fresh blocks: empty ones first, then evicted inactive ones (publishing BlockRemoved).
        The caller checks `num_free` first; running short is a bug."""
        if n > self.num_free:
            raise AssertionError(f"allocate({n}) with only {self.num_free} free blocks")
        empty, ref, block_hash, by_hash = self._empty, self._ref, self._hash, self._by_hash
        evict = self._inactive.pop
        blocks: list[int] = []
        removed: list[EngineHash] = []
        for _ in range(n):
            if empty:
                b = empty.popleft()
            else:
                b = evict()
                h = block_hash[b]
                assert h is not None                          # inactive blocks are hashed
                del by_hash[h]
                block_hash[b] = None
                removed.append(h)
            ref[b] = 1
            blocks.append(b)
        self.num_active += n
        if removed:
            events = self._events
            if events and type(events[-1]) is BlockRemoved:   # back-to-back evictions: one event
                events[-1].block_hashes += removed
            else:
                events.append(BlockRemoved(removed))
        return blocks

    def store(self, table: list[int], first: int, hashes: Sequence[int], parent: int | None,
              token_ids: Sequence[int], locals_: Sequence[int]) -> None:
        """Blocks `table[first:first+len(hashes)]` just became full: publish them under `hashes`.

        `parent` is the hash of the block before them (None at the start of a sequence),
        `token_ids` their tokens, flat, and `locals_` their local hashes (router/hashing.py; the
        relay reads them instead of hashing the tokens again). A hash that is already cached (the
        same block computed by two requests at once) makes the request share the cached block and
        free its own copy, with no event. Runs of new blocks become one BlockStored each, linked to
        their parent.
        """
        if not self.prefix_caching:
            return
        by_hash, block_hash = self._by_hash, self._hash
        run_start = 0
        for i, h in enumerate(hashes):
            b = table[first + i]
            cached = by_hash.get(h)
            if cached is None:
                by_hash[h] = b
                block_hash[b] = h
                continue
            self._publish(hashes, run_start, i, parent, token_ids, locals_)
            run_start = i + 1
            self.acquire((cached,))
            table[first + i] = cached
            self.release((b,), 0)
        self._publish(hashes, run_start, len(hashes), parent, token_ids, locals_)

    def _publish(self, hashes: Sequence[int], lo: int, hi: int, parent: int | None,
                 token_ids: Sequence[int], locals_: Sequence[int]) -> None:
        if lo < hi:
            bs = self.block_size
            self._events.append(BlockStored(
                list(hashes[lo:hi]), hashes[lo - 1] if lo else parent,
                token_ids[lo * bs:hi * bs], bs, local_hashes=list(locals_[lo:hi])))

    def release(self, blocks: Sequence[int], priority: int) -> None:
        """Drop one reference from each block, in the order given; blocks reaching ref 0 become
        inactive (hashed) or empty (partial). Callers pass tail blocks first so that a finished
        sequence's suffix is evicted before the prefixes other prompts share."""
        ref, block_hash, inactive = self._ref, self._hash, self._inactive
        for b in blocks:
            ref[b] -= 1
            if ref[b]:
                continue
            self.num_active -= 1
            if block_hash[b] is None:
                self._empty.append(b)
            else:
                inactive.push(b, priority)
