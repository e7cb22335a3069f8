"""Selection (DESIGN.md §4.4, §4.5): the kv cost, ties, temperature, modes, priority."""

import random
from collections import Counter

import pytest

from router.core import Decision
from router.load import LoadTracker
from router.policies import (Candidate, CostInputs, KvPolicy, kv_cost, make_policy,
                             miss_scale)
from tests.router.router_factories import BS, make_info, make_request, make_router, stored


def book_load(router, worker_id, prefill_tokens, active_blocks, tag):
    """Book a running request that holds `active_blocks` unrelated blocks on the worker."""
    hashes = [hash((tag, i)) for i in range(active_blocks)]
    router.loads.book(f"load-{tag}", (worker_id, 0), prefill_tokens, hashes, 0, 0.0)


def test_worked_example_picks_the_second_worker():
    # 4-block prompt (16 tokens). Costs (prefill_blocks + decode_blocks):
    #   w1: (16 + 16 - 0)/4 = 8   + 6 + 4 = 10   -> 18
    #   w2: (8 + 16 - 4)/4  = 5   + 1 + 4 = 5    -> 10
    #   w3: (0 + 16 - 8)/4  = 2   + 5 + 4 = 9    -> 11
    router = make_router(3)
    router.apply_event(stored(2, 1, 1))
    router.apply_event(stored(3, 1, 1, 2))
    book_load(router, 1, 16, 6, "a")
    book_load(router, 2, 8, 1, "b")
    book_load(router, 3, 0, 5, "c")

    decision = router.route(make_request(1, 2, 3, 4))

    assert isinstance(decision, Decision)
    assert (decision.worker_id, decision.dp_rank) == (2, 0)
    assert decision.overlap_blocks == 1
    assert decision.cached_tokens == BS
    assert decision.kv_hit_rate == 0.25
    w2 = router.loads.workers[(2, 0)]
    assert (w2.prefill_tokens, w2.active_blocks) == (8 + 12, 1 + 4)


def candidate(key, overlap=0, tree_size=0, prefill_tokens=0):
    tracker = LoadTracker()
    tracker.add_worker(key, make_info(key[0]))
    load = tracker.workers[key]
    load.prefill_tokens = prefill_tokens
    return Candidate(key, load, overlap, tree_size)


def inputs(isl=16, priority_scale=1.0):
    return CostInputs(isl, [101, 102, 103, 104][: isl // BS], BS, 1.0, priority_scale)


def test_decode_blocks_discount_prompt_blocks_already_booked_on_the_worker():
    c = candidate((1, 0))
    c.load.block_refs.update({101: 1, 102: 1, 555: 1})   # our first two blocks run there
    assert kv_cost(c, inputs()) == 16 / BS + 3 + (4 - 2)


def test_ties_go_to_the_smaller_tree_then_at_random():
    policy = KvPolicy()
    big, small = candidate((1, 0), tree_size=9), candidate((2, 0), tree_size=3)
    assert policy.select([big, small], inputs(), random.Random(0)).key == (2, 0)
    twins = [candidate((1, 0)), candidate((2, 0))]
    picks = Counter(policy.select(twins, inputs(), random.Random(seed)).key
                    for seed in range(40))
    assert set(picks) == {(1, 0), (2, 0)}


def test_temperature_samples_but_prefers_the_cheaper_worker():
    policy = KvPolicy(temperature=0.5)
    cheap, dear = candidate((1, 0), overlap=4), candidate((2, 0))
    rng = random.Random(7)
    picks = Counter(policy.select([cheap, dear], inputs(), rng).key for _ in range(400))
    assert picks[(1, 0)] > picks[(2, 0)] > 0


@pytest.mark.parametrize("mode", ["round-robin", "round_robin"])
def test_round_robin_cycles_in_worker_order(mode):
    router = make_router(3, router_mode=mode)
    chosen = [router.route(make_request(1)).worker_id for _ in range(6)]
    assert chosen == [1, 2, 3, 1, 2, 3]


def test_least_loaded_ignores_the_cache():
    router = make_router(2, router_mode="least_loaded")
    router.apply_event(stored(1, 1, 1, 2, 3, 4))
    book_load(router, 1, 0, 1, "x")
    assert router.route(make_request(1, 2, 3, 4)).worker_id == 2


def test_random_mode_uses_the_injected_rng():
    picks = [[make_router(4, router_mode="random", seed=s).route(make_request(1)).worker_id
              for s in range(10)] for _ in range(2)]
    assert picks[0] == picks[1] and len(set(picks[0])) > 1


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="router_mode"):
        make_policy("power-of-two", 0.0)


def test_miss_scale_is_one_at_priority_zero_and_clamped():
    assert miss_scale(0, 0.25) == 1.0
    assert miss_scale(4, 0.25) == 0.5
    assert miss_scale(-4, 0.25) == 2.0
    assert miss_scale(100, 0.25) == miss_scale(8, 0.25)
    assert miss_scale(5, 0.0) == 1.0


def test_priority_changes_the_choice_when_cache_and_load_disagree():
    # w1 caches the whole 4-block prompt but has 24 tokens of prefill queued;
    # w2 caches nothing and is idle. Cost (overlap weight 1, prompt blocks 4):
    #   priority  0: w1 = 24/4 + 0 + 4 = 10    w2 = 16/4 + 4 = 8     -> w2
    #   priority -8: w2 = 4·(16/4) + 4 = 20                          -> w1 (cache)
    #   priority  8: w2 = (16/4)/4 + 4 = 5                           -> w2 (load)
    # and with 12 queued tokens on w1 (cost 7):
    #   priority  0: w2 = 8 -> w1;   priority 8: w2 = 5 -> w2
    def choose(priority, queued):
        router = make_router(2, router_priority_cache_scale=0.25)
        router.apply_event(stored(1, 1, 1, 2, 3, 4))
        router.loads.book("busy", (1, 0), queued, [], 0, 0.0)
        return router.route(make_request(1, 2, 3, 4, priority=priority)).worker_id

    assert choose(0, 24) == 2
    assert choose(-8, 24) == 1
    assert choose(0, 12) == 1
    assert choose(8, 12) == 2
