"""KvRelay (DESIGN.md §4.3): engine events in, router events out, kv_query answered."""

from router.events import AllBlocksCleared, BlockRemoved, BlockStored, EngineEventBatch
from router.hashing import local_hashes
from router.kv_sync import DumpReply, RangeReply, kv_reply_from_wire
from worker.kv_relay import KvRelay

BS = 4


def tokens(*block_ids):
    return [b for b in block_ids for _ in range(BS)]


def batch(*events, dp_rank=0):
    return EngineEventBatch(0.0, list(events), dp_rank)


def store(hashes, parent=None, block_ids=None, extra_tokens=0, **kw):
    block_ids = block_ids or hashes
    return BlockStored(list(hashes), parent, tokens(*block_ids) + [7] * extra_tokens, BS, **kw)


def test_stored_recomputes_local_hashes_and_numbers_from_one():
    relay = KvRelay(worker_id=42, kv_block_size=BS)
    (event,) = relay.ingest(batch(store([-5, 2**64 - 1], block_ids=[1, 2])))
    assert (event.worker_id, event.dp_rank, event.event_id, event.kind) == (42, 0, 1, "stored")
    assert event.parent_hash is None
    assert event.blocks == list(zip([-5, 2**64 - 1], local_hashes(tokens(1, 2), BS)))
    (second,) = relay.ingest(batch(store([3], parent=2**64 - 1)))
    assert (second.event_id, second.parent_hash) == (2, 2**64 - 1)


def test_partial_blocks_and_other_media_are_dropped():
    relay = KvRelay(1, BS)
    # 2 hashes but only 1.5 blocks of tokens: the partial second block is not published
    (event,) = relay.ingest(batch(store([10, 11], block_ids=[1], extra_tokens=2)))
    assert [h for h, _ in event.blocks] == [10]
    assert relay.ingest(batch(store([12], block_ids=[1], medium="CPU_PINNED"),
                              store([13], block_ids=[1], group_idx=1),
                              BlockStored([14], None, [1, 1], BS))) == []
    assert relay.ingest(batch(BlockStored([15], None, tokens(1), 8))) == []  # wrong block size
    assert relay.dropped == {"non_device": 1, "other_group": 1, "empty": 1, "block_size": 1}
    assert relay.last_event_id == 1


def test_removal_is_forwarded_when_the_refcount_reaches_zero():
    relay = KvRelay(1, BS)
    relay.ingest(batch(store([10, 11])))
    relay.ingest(batch(store([10])))                # stored twice
    (event,) = relay.ingest(batch(BlockRemoved([10, 11])))
    assert event.hashes == [11]                      # 10 is still stored once
    (event,) = relay.ingest(batch(BlockRemoved([10, 99])))
    assert event.hashes == [10]
    assert relay.ingest(batch(BlockRemoved([10]))) == []


def test_refcounts_are_per_rank_and_cleared_resets_one_rank():
    relay = KvRelay(1, BS)
    relay.ingest(batch(store([10]), dp_rank=0))
    relay.ingest(batch(store([10]), dp_rank=1))
    (removed,) = relay.ingest(batch(BlockRemoved([10]), dp_rank=1))
    assert (removed.dp_rank, removed.hashes) == (1, [10])
    (cleared,) = relay.ingest(batch(AllBlocksCleared(), dp_rank=0))
    assert (cleared.kind, cleared.dp_rank) == ("cleared", 0)
    assert relay.dump().events == []


def test_query_answers_a_range_while_the_ring_holds_it_else_a_dump():
    relay = KvRelay(1, BS, ring_size=3)
    for i in range(5):
        relay.ingest(batch(store([100 + i], block_ids=[i])))
    reply = relay.query(3)
    assert isinstance(reply, RangeReply)
    assert [e.event_id for e in reply.events] == [3, 4, 5]
    assert relay.query(6).events == []                  # up to date
    assert isinstance(relay.query(2), DumpReply)        # fell out of the ring
    assert isinstance(relay.query(None), DumpReply)
    assert isinstance(relay.query(9), DumpReply)        # from the future: start over


def test_dump_lists_parents_before_children_one_event_per_chain():
    relay = KvRelay(7, BS)
    relay.ingest(batch(store([1, 2, 3])))
    relay.ingest(batch(store([4], parent=2)))
    relay.ingest(batch(store([9], block_ids=[5])))
    relay.ingest(batch(store([6], parent=404)))          # parent never seen: left out
    dump = relay.dump()
    assert dump.last_event_id == 4
    chains = [(e.parent_hash, [h for h, _ in e.blocks]) for e in dump.events]
    assert chains == [(None, [1, 2, 3]), (2, [4]), (None, [9])]
    assert all(e.event_id == 4 for e in dump.events)


def test_replies_round_trip_through_the_wire_format():
    relay = KvRelay(3, BS)
    relay.ingest(batch(store([1, 2])))
    relay.ingest(batch(BlockRemoved([2])))
    for reply in (relay.query(1), relay.query(None)):
        assert kv_reply_from_wire(reply.to_wire()) == reply
