"""Bookings (DESIGN.md §4.4, §4.5): admission, first token, release, expiry, osl decay."""

from hypothesis import given, settings
from hypothesis import strategies as st

from router.events import LoadReport
from router.hashing import sequence_hashes
from router.load import BOOKING_EXPIRY_S, LoadTracker
from tests.router.router_factories import FakeClock, make_info, make_request, make_router

W = (1, 0)


def make_tracker():
    tracker = LoadTracker()
    tracker.add_worker(W, make_info(1, total_kv_blocks=10))
    return tracker


def test_shared_prompt_blocks_count_once_and_release_by_refcount():
    tracker = make_tracker()
    tracker.book("a", W, 8, [1, 2, 3], 0, 0.0)
    tracker.book("b", W, 4, [1, 2, 9], 0, 0.0)
    load = tracker.workers[W]
    assert (load.prefill_tokens, load.active_blocks, load.num_requests) == (12, 4, 2)
    assert load.active_prefix([1, 2, 3, 7]) == 3
    assert load.active_prefix([1, 2, 9]) == 3
    assert load.active_prefix([5]) == 0

    assert tracker.first_token("a") and not tracker.first_token("a")
    assert load.prefill_tokens == 4
    tracker.release("a")
    assert load.block_refs == {1: 1, 2: 1, 9: 1}
    assert tracker.release("a") is None
    tracker.release("b")
    assert (load.prefill_tokens, load.active_blocks, load.num_requests) == (0, 0, 0)



# A booking's prompt: a path in a small tree of blocks (few distinct local hashes, so paths share
# prefixes), and a script of book / release steps over a handful of request ids.
_paths = st.lists(st.integers(0, 2), max_size=5).map(sequence_hashes)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 5), _paths), max_size=40))
def test_booked_blocks_are_the_union_of_the_running_requests_prompts(steps):
    tracker, running = make_tracker(), {}
    load = tracker.workers[W]
    for book, n, path in steps:
        rid = f"r{n}"
        if book and rid not in running:
            assert load.active_prefix(path) == next(
                (i for i, h in enumerate(path) if not any(h in p for p in running.values())),
                len(path))
            tracker.book(rid, W, 0, path, 0, 0.0)
            running[rid] = path
        elif not book and rid in running:
            tracker.release(rid)
            del running[rid]
        assert set(load.block_refs) == {h for p in running.values() for h in p}
        assert load.active_blocks == len(load.block_refs)

def test_osl_adds_expected_output_blocks_that_decay_as_tokens_arrive():
    tracker = make_tracker()                       # block size 4
    tracker.book("a", W, 0, [1, 2], 16, 0.0)       # 16 expected tokens = 4 blocks
    load = tracker.workers[W]
    assert load.active_blocks == 2 + 4
    tracker.progress("a", 8)
    assert load.active_blocks == 2 + 2
    tracker.progress("a", 40)
    assert load.active_blocks == 2
    tracker.release("a")
    assert load.active_blocks == 0


def test_bookings_expire_after_300_seconds():
    tracker = make_tracker()
    tracker.book("old", W, 5, [1], 0, 0.0)
    tracker.book("new", W, 7, [2], 0, 100.0)
    assert tracker.expire(BOOKING_EXPIRY_S - 1) == []
    assert tracker.expire(BOOKING_EXPIRY_S) == ["old"]
    assert tracker.workers[W].prefill_tokens == 7
    tracker.release("new")
    assert tracker.expire(10_000.0) == []


def test_kv_usage_takes_the_higher_of_report_and_bookings():
    tracker = make_tracker()
    tracker.book("a", W, 0, [1, 2], 0, 0.0)
    assert tracker.workers[W].kv_usage() == 0.2
    assert tracker.apply_report(LoadReport(1, 0, 9, 10, 3, 0))
    assert tracker.workers[W].kv_usage() == 0.9
    assert not tracker.apply_report(LoadReport(7, 0, 9, 10, 3, 0))


def test_router_books_at_admission_and_releases_in_two_steps():
    clock = FakeClock()
    router = make_router(1, clock=clock)
    request = make_request(1, 2, 3, osl=8)
    decision = router.route(request)
    view = router.worker_loads()[0]
    assert (view.prefill_tokens, view.active_blocks, view.num_requests) == (12, 3 + 2, 1)
    router.first_token(request.request_id)
    assert router.worker_loads()[0].prefill_tokens == 0
    router.release(request.request_id)
    view = router.worker_loads()[0]
    assert (view.prefill_tokens, view.active_blocks, view.num_requests) == (0, 0, 0)
    assert decision.timings.total_s >= 0


def test_router_tick_expires_forgotten_bookings():
    clock = FakeClock()
    router = make_router(1, clock=clock)
    router.route(make_request(1, 2))
    clock.advance(BOOKING_EXPIRY_S)
    router.tick()
    assert router.metrics.expired_bookings == 1
    assert router.worker_loads()[0].num_requests == 0
