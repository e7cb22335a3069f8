"""Admission queue and shedding (DESIGN.md §4.6)."""

import pytest

from router.core import Decision, Queued, Shed
from router.queue import AdmissionQueue
from tests.router.router_factories import FakeClock, make_info, make_request, make_router


def order(policy, entries):
    """entries: (id, priority, strict, arrival offset s, new prefill tokens) -> pop order."""
    queue = AdmissionQueue(policy, max_depth=10, max_wait_s=30, origin=100.0)
    for request_id, priority, strict, offset, new in entries:
        queue.push(request_id, None, priority=priority, strict_priority=strict,
                   arrival=100.0 + offset, new_prefill_tokens=new, now=100.0 + offset)
    out = []
    while (entry := queue.peek()) is not None:
        out.append(queue.remove(entry.request_id).request_id)
    return out


ENTRIES = [("a", 0, 0, 0.0, 800), ("b", 0, 0, 1.0, 100), ("c", 3, 0, 2.0, 400),
           ("d", 0, 1, 3.0, 900)]


@pytest.mark.parametrize("policy, expected", [
    # strict tier first (d); then fcfs pj - offset: a 0, b -1, c 3-2=1
    ("fcfs", ["d", "c", "a", "b"]),
    # lcfs pj + offset: a 0, b 1, c 5
    ("lcfs", ["d", "c", "b", "a"]),
    # wspt (1+pj)/new: a 1/800, b 1/100, c 4/400
    ("wspt", ["d", "b", "c", "a"]),
])
def test_queue_order_for_each_policy(policy, expected):
    assert order(policy, ENTRIES) == expected


def test_equal_keys_keep_arrival_order():
    assert order("wspt", [("x", 0, 0, 5.0, 10), ("y", 0, 0, 1.0, 10)]) == ["x", "y"]


def busy_router(**config):
    """One worker (64 batched tokens, threshold 1.0) made busy by a 100-token prefill."""
    clock = FakeClock()
    router = make_router(0, clock=clock, infos=[make_info(1)], router_queue_threshold=1.0,
                         **config)
    blocker = make_request(*range(25))                    # 100 tokens > 1.0 × 64
    assert isinstance(router.route(blocker), Decision)
    return router, clock, blocker


def test_requests_queue_while_every_worker_is_busy_and_drain_on_first_token():
    router, clock, blocker = busy_router()
    waiting = make_request(1, 2)
    assert router.route(waiting) == Queued(waiting.request_id, 1)
    clock.advance(2.0)
    router.first_token(blocker.request_id)
    (decision,) = router.take_outcomes()
    assert (decision.request_id, decision.worker_id, decision.queued_s) == \
        (waiting.request_id, 1, 2.0)
    assert decision.queue_depth == 0 and router.queue_depth == 0


def test_shed_only_past_the_depth_limit():
    router, _, _ = busy_router(max_queue_depth=2)
    results = [router.route(make_request(i)) for i in range(3)]
    assert [type(r) for r in results] == [Queued, Queued, Shed]
    assert (results[2].reason, results[2].retry_after_s) == ("queue_full", 1)
    assert router.metrics.sheds == {"queue_full": 1}


def test_shed_only_past_the_wait_limit():
    router, clock, _ = busy_router(max_queue_wait_ms=1000)
    first = make_request(1)
    router.route(first)
    clock.advance(0.5)
    second = make_request(2)
    router.route(second)
    clock.advance(0.499)
    router.tick()
    assert router.take_outcomes() == [] and router.queue_depth == 2
    clock.advance(0.001)
    router.tick()
    (shed,) = router.take_outcomes()
    assert (shed.request_id, shed.reason) == (first.request_id, "queue_timeout")
    assert router.queue_depth == 1


def test_a_cancelled_queued_request_leaves_at_once():
    router, _, blocker = busy_router()
    gone, stays = make_request(1), make_request(2)
    router.route(gone)
    router.route(stays)
    router.release(gone.request_id)
    assert router.queue_depth == 1
    router.release(blocker.request_id)
    assert [o.request_id for o in router.take_outcomes()] == [stays.request_id]


def test_kv_usage_past_the_busy_fraction_also_queues():
    router = make_router(1, busy_kv_fraction=0.5, infos=[make_info(1, total_kv_blocks=4)])
    first = make_request(1, 2, 3)                       # 3 of 4 blocks booked
    router.route(first)
    assert isinstance(router.route(make_request(5)), Queued)


def test_no_queueing_when_the_threshold_is_off():
    router = make_router(1, router_queue_threshold=None, infos=[make_info(1)])
    for _ in range(5):
        assert isinstance(router.route(make_request(*range(40))), Decision)
