"""Relay → router in one process: lost, reordered and repeated events are recovered through
kv_query, and the index ends identical to one built from a fresh dump; bad input is counted and
dropped without touching other workers."""

import random

import pytest

from router.events import BlockRemoved, BlockStored, EngineEventBatch, RouterEvent
from router.kv_sync import DumpReply, KvQuery, RangeReply
from worker.kv_relay import KvRelay
from tests.router.router_factories import (BS, FakeClock, blocks, make_info, make_request, make_router,
                                          stored)


class EngineModel:
    """A toy engine cache per rank: stores chains, evicts leaves (children before parents)."""

    def __init__(self, rng):
        self.rng = rng
        self.children = {}   # (rank, hash) -> number of cached children
        self.parent = {}     # (rank, hash) -> parent hash | None
        self.next_hash = 1

    def batch(self):
        rank = self.rng.randrange(2)
        mine = [h for (r, h) in self.parent if r == rank]
        leaves = [h for h in mine if not self.children[rank, h]]
        if leaves and self.rng.random() < 0.4:
            gone = self.rng.sample(leaves, min(len(leaves), self.rng.randint(1, 2)))
            for h in gone:
                parent = self.parent.pop((rank, h))
                del self.children[rank, h]
                if parent is not None:
                    self.children[rank, parent] -= 1
            return EngineEventBatch(0.0, [BlockRemoved(gone)], rank)
        parent = self.rng.choice(mine) if mine and self.rng.random() < 0.7 else None
        hashes = []
        for _ in range(self.rng.randint(1, 3)):
            h, self.next_hash = self.next_hash, self.next_hash + 1
            self.parent[rank, h] = hashes[-1] if hashes else parent
            self.children[rank, h] = 0
            hashes.append(h)
        if parent is not None:
            self.children[rank, parent] += 1
        for a in hashes[:-1]:
            self.children[rank, a] += 1
        ids = [self.rng.randrange(6) for _ in hashes]
        return EngineEventBatch(0.0, [BlockStored(hashes, parent, blocks(*ids), BS)], rank)


def state(router, worker_id, ranks=2):
    return {rank: router.index.blocks_of((worker_id, rank)) for rank in range(ranks)}


class Link:
    """The adapter between one relay and the router, with a lossy event plane."""

    def __init__(self, router, relay, rng, loss=0.0, swap=0.0, dup=0.0):
        self.router, self.relay, self.rng = router, relay, rng
        self.loss, self.swap, self.dup = loss, swap, dup
        self.replies = []   # kv_query replies in flight: [events still to pass, reply]
        self.held = None    # an event held back to swap with the next one

    def query(self, query):
        if query is not None:
            assert query.worker_id == self.relay.worker_id
            self.replies.append([self.rng.randint(0, 2), self.relay.query(query.start_event_id)])

    def deliver(self, event, reliable=False):
        if not reliable and self.rng.random() < self.loss:
            return
        if not reliable and self.held is None and self.rng.random() < self.swap:
            self.held = event
            return
        for ev in ([event, self.held] if self.held else [event]):
            self.query(self.router.apply_event(ev))
            if not reliable and self.rng.random() < self.dup:
                self.query(self.router.apply_event(ev))
        self.held = None
        for pending in list(self.replies):
            pending[0] -= 1
            if pending[0] < 0:
                self.replies.remove(pending)
                self.query(self.router.apply_kv_reply(pending[1]))

    def flush(self):
        while self.replies:
            _, reply = self.replies.pop(0)
            self.query(self.router.apply_kv_reply(reply))


def fresh_router_from_dump(relay):
    router = make_router(0, infos=[])
    router.add_worker(make_info(relay.worker_id, dp_size=2))
    router.apply_kv_reply(relay.dump())
    return router


@pytest.mark.parametrize("seed", range(6))
def test_lossy_reordered_stream_ends_identical_to_a_fresh_dump(seed):
    rng = random.Random(seed)
    router = make_router(0, infos=[])
    relay = KvRelay(5, BS, ring_size=8)
    other = KvRelay(6, BS)
    engine, other_engine = EngineModel(rng), EngineModel(random.Random(seed + 100))

    # worker 5 already ran a while before the router discovered it
    for _ in range(30):
        relay.ingest(engine.batch())
    link = Link(router, relay, rng, loss=0.15, swap=0.15, dup=0.1)
    link.query(router.add_worker(make_info(5, dp_size=2)))
    clean = Link(router, other, rng)
    clean.query(router.add_worker(make_info(6, dp_size=2)))
    for step in range(400):
        for event in relay.ingest(engine.batch()):
            link.deliver(event, reliable=step == 399)
        for event in other.ingest(other_engine.batch()):
            clean.deliver(event)
    link.flush()
    clean.flush()

    assert state(router, 5) == state(fresh_router_from_dump(relay), 5)
    assert state(router, 6) == state(fresh_router_from_dump(other), 6)
    assert state(router, 5)[0] and state(router, 5)[1]
    assert router.metrics.kv_queries["range"] > 0
    assert router.metrics.events["stored", "parent_block_not_found"] == 0


def test_gap_asks_for_the_range_and_buffers_until_it_arrives():
    router = make_router(1)
    relay = KvRelay(1, BS)
    events = [e for i in range(4) for e in relay.ingest(
        EngineEventBatch(0.0, [BlockStored([10 + i], 10 + i - 1 if i else None, blocks(i), BS)]))]
    assert router.apply_event(events[0]) is None
    assert router.apply_event(events[2]) == KvQuery(1, 2)
    assert router.apply_event(events[3]) is None          # buffered, query outstanding
    assert router.index.blocks_of((1, 0)).keys() == {10}
    assert router.apply_kv_reply(relay.query(2)) is None
    assert router.index.blocks_of((1, 0)).keys() == {10, 11, 12, 13}
    assert router.apply_event(events[1]) is None          # late duplicate
    assert router.metrics.events["stored", "duplicate"] == 1
    assert router.metrics.events["stored", "ok"] == 4


def test_a_range_that_does_not_close_the_gap_falls_back_to_a_dump():
    router = make_router(1)
    early = RouterEvent(1, 0, 1, "stored", None, [(10, 1)])
    router.apply_event(early)
    assert router.apply_event(RouterEvent(1, 0, 5, "stored", None, [(50, 5)])) == KvQuery(1, 2)
    assert router.apply_kv_reply(RangeReply(1, [RouterEvent(1, 0, 2, "cleared")])) == \
        KvQuery(1, None)
    assert router.metrics.kv_queries["dump"] == 2        # discovery + this one


def test_unanswered_queries_are_sent_again_after_the_timeout():
    clock = FakeClock()
    router = make_router(0, clock=clock, infos=[], kv_query_timeout_secs=1.0)
    assert router.add_worker(make_info(1)) == KvQuery(1, None)
    assert router.tick() == []
    clock.advance(1.0)
    assert router.tick() == [KvQuery(1, None)]
    assert router.tick() == []


def test_events_buffered_before_the_discovery_dump_apply_after_it():
    router = make_router(0, infos=[])
    router.add_worker(make_info(1))
    router.apply_event(RouterEvent(1, 0, 3, "stored", 20, [(30, 3)]))
    router.apply_kv_reply(DumpReply(1, 2, [RouterEvent(1, 0, 2, "stored", None,
                                                       [(10, 1), (20, 2)])]))
    assert router.index.blocks_of((1, 0)) == {10: (1,), 20: (1, 2), 30: (1, 2, 3)}


def test_bad_input_is_counted_and_dropped_without_touching_other_workers():
    router = make_router(2)
    router.apply_event(RouterEvent(1, 0, 1, "stored", None, [(10, 1), (11, 2)]))
    router.apply_event(RouterEvent(2, 0, 1, "stored", None, [(20, 1)]))
    before = state(router, 2, ranks=1)

    router.apply_event(RouterEvent(1, 0, 2, "stored", 999, [(12, 3)]))        # unknown parent
    router.apply_event(RouterEvent(1, 0, 3, "stored", 11, [(13, 4), (13, 5)]))  # repeated hash
    router.apply_event(RouterEvent(1, 0, 4, "removed", hashes=[20]))          # not worker 1's
    router.apply_event(RouterEvent(1, 0, 4, "removed", hashes=[11]))          # duplicate id
    router.apply_event(RouterEvent(77, 0, 1, "cleared"))                      # unknown worker
    router.apply_event(RouterEvent(1, 3, 5, "cleared"))                       # unknown rank
    router.apply_wire_event({"worker_id": 1, "event_id": 5, "kind": "exploded"})
    router.apply_wire_event({"worker_id": 1, "event_id": 5, "kind": "stored",
                             "blocks": [[[1, 2], 3]]})                        # unhashable hash
    router.apply_wire_event({"worker_id": "x", "event_id": 5, "kind": "cleared"})
    router.apply_wire_event("not a map")
    router.apply_kv_reply(DumpReply(1, 4, [RouterEvent(2, 0, 4, "cleared")]))  # foreign event

    m = router.metrics.events
    assert m["stored", "parent_block_not_found"] == 1
    assert m["stored", "invalid_block"] == 1
    assert m["removed", "block_not_found"] == 1
    assert m["removed", "duplicate"] == 1
    assert m["cleared", "unknown_worker"] == 3
    assert m["unknown", "invalid"] == 4
    assert state(router, 2, ranks=1) == before
    assert router.index.blocks_of((1, 0)) == {}            # worker 1's own dump applied (empty)


def test_a_removed_worker_loses_its_blocks_and_is_never_chosen():
    router = make_router(2)
    router.apply_event(stored(1, 1, 1, 2, 3))
    first = make_request(1, 2, 3)
    assert router.route(first).worker_id == 1
    assert router.remove_worker(1) == [first.request_id]
    router.release(first.request_id)                      # the adapter's release: a no-op
    assert router.index.workers() == [(2, 0)]
    assert {router.route(make_request(1, 2, 3)).worker_id for _ in range(10)} == {2}
    assert router.apply_event(stored(1, 2, 4)) is None
    assert router.metrics.events["stored", "unknown_worker"] == 1
