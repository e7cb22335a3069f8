"""The block pool alone: allocation order, prefix lookup, publishing, eviction, tail-first release."""

from __future__ import annotations

import pytest

from mocker.kv_cache import BlockPool, LruEviction, PriorityEviction
from router.events import BlockRemoved, BlockStored


def stored(pool: BlockPool, table: list[int], hashes: list[int], parent=None) -> None:
    pool.store(table, 0, hashes, parent, [h for h in hashes for _ in range(pool.block_size)],
               [h + 1000 for h in hashes])


def test_allocation_takes_empty_blocks_in_order_and_freed_partial_blocks_go_last():
    pool = BlockPool(10, 2)
    assert pool.allocate(3) == [0, 1, 2]
    pool.release([1], 0)                                # never published: empty again, at the back
    assert pool.allocate(7) == [3, 4, 5, 6, 7, 8, 9]
    assert pool.allocate(1) == [1]
    assert (pool.num_active, pool.num_free) == (10, 0)


def test_store_publishes_runs_linked_to_their_parent_and_match_finds_the_prefix():
    pool = BlockPool(10, 2)
    table = pool.allocate(3)
    stored(pool, table, [11, 12, 13], parent=None)
    assert pool.take_events() == [BlockStored([11, 12, 13], None, [11, 11, 12, 12, 13, 13], 2)]
    assert pool.match([11, 12, 99, 13], limit=4) == [0, 1]
    assert pool.match([11, 12, 13], limit=2) == [0, 1]
    assert pool.take_events() == [] and pool.num_active == 3     # lookups change nothing


def test_a_block_computed_twice_collapses_onto_the_cached_copy_without_an_event():
    pool = BlockPool(10, 2)
    first = pool.allocate(2)
    stored(pool, first, [11, 12])
    pool.take_events()
    second = pool.allocate(3)                           # [2, 3, 4]: computed 11 again, then 21, 22
    pool.store(second, 0, [11, 21, 22], None, [1, 1, 2, 2, 3, 3], [101, 102, 103])
    assert second == [0, 3, 4]
    (event,) = pool.take_events()
    assert event == BlockStored([21, 22], 11, [2, 2, 3, 3], 2)
    assert event.local_hashes == [102, 103]                      # the run's own local hashes
    assert pool.num_active == 4 and pool.allocate(1) == [5]      # block 2 went back to empty...
    assert pool.allocate(5) == [6, 7, 8, 9, 2]                   # ...at the back of the queue


def test_release_tail_first_makes_suffixes_evict_before_prefixes():
    pool = BlockPool(4, 1)
    table = pool.allocate(4)
    stored(pool, table, [1, 2, 3, 4])
    pool.take_events()
    pool.release(table[::-1], 0)
    assert pool.num_free == 4 and pool.num_active == 0
    assert pool.allocate(2) == [3, 2]
    assert pool.take_events() == [BlockRemoved([4, 3])]
    assert pool.match([1, 2, 3], limit=3) == [0, 1]


def test_a_hit_reactivates_an_inactive_block():
    pool = BlockPool(3, 1)
    table = pool.allocate(2)
    stored(pool, table, [1, 2])
    pool.release(table[::-1], 0)
    pool.acquire([0])
    assert pool.count_inactive([0, 1]) == 1
    assert pool.allocate(2) == [2, 1]                   # block 0 is held: not evictable
    with pytest.raises(AssertionError):
        pool.allocate(1)


def test_priority_eviction_orders_by_level_then_recency():
    policy = PriorityEviction()
    for block, priority in ((1, 5), (2, 0), (3, 5), (4, 0), (5, -1)):
        policy.push(block, priority)
    policy.remove(4)
    assert [policy.pop() for _ in range(len(policy))] == [5, 2, 1, 3]
    lru = LruEviction()
    for block in (3, 1, 2):
        lru.push(block, 0)
    assert [lru.pop() for _ in range(3)] == [3, 1, 2]


def test_without_prefix_caching_nothing_is_published_or_kept():
    pool = BlockPool(4, 2, prefix_caching=False)
    table = pool.allocate(2)
    stored(pool, table, [1, 2])
    pool.release(table, 0)
    assert pool.take_events() == [] and pool.match([1], 1) == [] and pool.num_cached == 0


def test_an_unknown_eviction_policy_is_refused():
    with pytest.raises(ValueError, match="--eviction-policy"):
        BlockPool(4, 2, eviction="mru")
