"""Agent awareness (DESIGN.md §4.5): sessions, trajectory_final, priority forwarding, pins,
and approximate mode (§4.3)."""

import pytest

from router.core import SessionClosed
from router.sessions import SessionControl
from tests.router.router_factories import FakeClock, make_request, make_router, stored


def test_open_pins_the_session_and_later_turns_follow_it():
    clock = FakeClock()
    router = make_router(3, clock=clock, router_mode="round-robin")
    opened = router.route(make_request(1, session=SessionControl("s", "open", 60)))
    assert (opened.session_op, opened.session_id) == ("open", "s")
    for _ in range(4):
        clock.advance(59)                                  # each hit slides the expiry
        follow = router.route(make_request(1, session=SessionControl("s")))
        assert follow.worker_id == opened.worker_id and follow.session_op is None
    closed = router.route(make_request(1, session=SessionControl("s", "close")))
    assert (closed.worker_id, closed.session_op) == (opened.worker_id, "close")
    assert router.num_sessions == 0


def test_bind_is_router_only_and_expires_quietly():
    clock = FakeClock()
    router = make_router(2, clock=clock)
    bound = router.route(make_request(1, session=SessionControl("b", "bind", 10)))
    assert bound.session_op is None
    clock.advance(10)
    router.tick()
    assert router.take_outcomes() == [] and router.num_sessions == 0


def test_an_expired_worker_session_is_reported_for_closing():
    clock = FakeClock()
    router = make_router(2, clock=clock)
    opened = router.route(make_request(1, session=SessionControl("o", "open", 10)))
    clock.advance(10)
    router.tick()
    assert router.take_outcomes() == [SessionClosed("o", opened.worker_id, 0)]


def test_trajectory_final_frees_the_session_pin():
    router = make_router(2)
    opened = router.route(make_request(1, session=SessionControl("t", "open")))
    last = router.route(make_request(1, session=SessionControl("t"), trajectory_final=True))
    assert (last.worker_id, last.session_op) == (opened.worker_id, "close")
    assert router.num_sessions == 0


def test_session_pin_is_dropped_when_its_worker_leaves():
    router = make_router(2)
    opened = router.route(make_request(1, session=SessionControl("x", "bind")))
    router.remove_worker(opened.worker_id)
    assert router.num_sessions == 0
    assert router.route(make_request(1, session=SessionControl("x"))).worker_id != \
        opened.worker_id


def test_backend_instance_id_pins_a_worker_and_priority_is_forwarded():
    router = make_router(3)
    router.apply_event(stored(1, 1, 1, 2))
    decision = router.route(make_request(1, 2, pinned_worker_id=3, priority=5))
    assert (decision.worker_id, decision.priority) == (3, 5)
    with pytest.raises(ValueError, match="backend_instance_id"):
        router.route(make_request(1, pinned_worker_id=99))


def test_bad_session_control_is_a_value_error():
    with pytest.raises(ValueError, match="session_control.action"):
        SessionControl("s", "reopen")


def test_approximate_mode_credits_routed_prompts_for_the_ttl():
    clock = FakeClock()
    router = make_router(3, clock=clock, router_kv_events=False, router_ttl_secs=120)
    first = router.route(make_request(1, 2, 3))
    router.release(first.request_id)
    again = router.route(make_request(1, 2, 3, 4))
    assert (again.worker_id, again.overlap_blocks) == (first.worker_id, 3)
    router.release(again.request_id)
    clock.advance(120)
    router.tick()
    assert router.index.find_matches(make_request(1, 2).prompt.local_hashes).scores == {}


def test_a_prompt_longer_than_any_cache_is_still_routed():
    router = make_router(2)
    decision = router.route(make_request(*range(5000)))     # 5000 blocks > 1000 per worker
    assert decision.worker_id in (1, 2) and decision.overlap_blocks == 0
