"""The engine core's behaviour, pinned exactly on pools of ten 4-token blocks.

Timing is `LinearTiming` unless said otherwise: a pass lasts (new prompt tokens) ms, plus
1 + 10 * (fraction of blocks in use) ms when some request emits a token.
"""

from __future__ import annotations

import math

import pytest

import mocker.core
from mocker.core import EngineCore, generated_ids
from mocker.config import MockEngineArgs
from router.events import BlockRemoved, BlockStored, decode_engine_batch, encode_engine_batch
from router.hashing import chain_hash, local_hashes, sequence_hashes
from tests.mocker.mock_factories import (LinearTiming, begin_pass, events_of, finished_by_id,
                                         make_core, req, step)


def seq_hashes(tokens: list[int], bs: int = 4) -> list[int]:
    return sequence_hashes(local_hashes(tokens, bs))


def test_second_request_sharing_a_3_block_prefix_hits_exactly_3_blocks():
    core = make_core(LinearTiming())
    a_tokens = list(range(1, 14))                       # 3 full blocks + 1 token
    core.add(req("a", a_tokens, max_tokens=2))
    begin_pass(core)
    assert core.block_table("a") == [0, 1, 2, 3]
    a = finished_by_id(core.advance_until(math.inf))["a"]
    # pass 0: prefill 13 + decode(4/10 in use) = 18; pass 1: decode only = 5
    assert (a.first_token_ms, a.end_ms, a.cached_tokens) == (18.0, 23.0, 0)
    h = seq_hashes(a_tokens[:12])
    assert events_of(core.take_events()) == [(0.0, BlockStored(h, None, a_tokens[:12], 4))]

    core.add(req("b", a_tokens[:12] + [50, 51], max_tokens=2))
    begin_pass(core)
    assert core.block_table("b") == [0, 1, 2, 4]        # 3 hits + the first empty block
    b = finished_by_id(core.advance_until(math.inf))["b"]
    assert b.cached_tokens == 12
    assert b.first_token_ms == 23 + 2 + 5               # only the 2 new tokens are prefilled
    assert core.take_events() == []                     # no new full block, no event


def test_full_cache_evicts_the_least_recently_used_inactive_block():
    core = make_core(LinearTiming())
    a, b, c = list(range(100, 116)), list(range(200, 216)), list(range(300, 312))
    for rid, tokens in (("a", a), ("b", b)):
        core.add(req(rid, tokens))
        core.advance_until(math.inf)
    # a held blocks 0-3, b 4-7, both released tail first: LRU order 3 2 1 0 7 6 5 4
    core.take_events()
    core.add(req("c", c))
    begin_pass(core)
    assert core.block_table("c") == [8, 9, 3]           # empty blocks first, then a's tail
    assert [e for _, e in events_of(core.take_events())] == [
        BlockRemoved([seq_hashes(a)[3]]), BlockStored(seq_hashes(c), None, c, 4)]
    core.advance_until(math.inf)
    assert core.load().kv_used_blocks == 0


def test_running_out_of_blocks_preempts_the_newest_which_still_gets_exactly_max_tokens():
    core = make_core(LinearTiming())
    core.add(req("a", range(1, 9), max_tokens=16))      # alone each needs 6 blocks; together 12
    core.add(req("b", range(11, 19), max_tokens=16))
    stored, removed, finished = {}, [], {}
    while core.next_event_time() is not None:
        finished.update(finished_by_id(step(core)))
        for _, event in events_of(core.take_events()):
            if isinstance(event, BlockStored):
                stored.update(zip(event.block_hashes, [tuple(event.token_ids[i:i + 4])
                                                       for i in range(0, len(event.token_ids), 4)]))
            else:
                removed += event.block_hashes
    a, b = finished["a"], finished["b"]
    assert (a.preemptions, b.preemptions) == (0, 1)
    assert b.output_ids.tolist() == generated_ids("b", 16).tolist()
    assert a.output_ids.tolist() == generated_ids("a", 16).tolist()
    assert a.end_ms < b.end_ms
    # At pass 13 a needed its 6th block with all 10 in use: b (newest) was preempted after 13
    # tokens, freeing its blocks tail first, and a took b's tail block (positions 16-19). When a
    # finished, b came back hitting its 4 surviving blocks; of the 2 it lacked, one was a's partial
    # block (empty again) and one evicted a's least recently released block (positions 16-19).
    block_of = {tokens: h for h, tokens in stored.items()}
    b_out, a_out = generated_ids("b", 16).tolist(), generated_ids("a", 16).tolist()
    assert removed == [block_of[tuple(b_out[8:12])], block_of[tuple(a_out[8:12])]]
    assert core.load().kv_used_blocks == 0


def test_chunked_prefill_splits_a_prompt_larger_than_the_budget():
    core = make_core(LinearTiming(), max_num_seqs=2, max_num_batched_tokens=8)
    tokens = list(range(1, 21))
    core.add(req("a", tokens))
    out = core.advance_until(math.inf)
    assert out.passes == 3
    # 8 + 8 prompt tokens, then 4 more + decode with 5 of 10 blocks in use
    assert out.finished[0].first_token_ms == 8 + 8 + 4 + (1 + 10 * 0.5)
    h = seq_hashes(tokens)
    assert events_of(core.take_events()) == [
        (0.0, BlockStored(h[0:2], None, tokens[0:8], 4)),
        (8.0, BlockStored(h[2:4], h[1], tokens[8:16], 4)),
        (16.0, BlockStored(h[4:5], h[3], tokens[16:20], 4))]


def test_without_chunked_prefill_a_prompt_waits_for_a_pass_it_fits_in():
    core = make_core(LinearTiming(), max_num_batched_tokens=12, enable_chunked_prefill=False)
    core.add(req("a", range(1, 9), max_tokens=3))
    core.add(req("b", range(21, 29), max_tokens=1))     # 8 tokens: no room beside a in pass 0
    out = finished_by_id(core.advance_until(math.inf))
    assert out["b"].start_ms == out["a"].first_token_ms
    with pytest.raises(ValueError, match="chunked prefill is off"):
        core.add(req("c", range(1, 14), max_tokens=1))


def test_a_lone_4096_token_prompt_gets_its_first_token_after_prefill_plus_one_decode_step():
    core = EngineCore(MockEngineArgs())                 # Dynamo's defaults: 16384 x 64, speedup 1
    core.add(req("a", [7] * 4096, max_tokens=1))
    first = core.advance_until(math.inf).finished[0].first_token_ms
    t, p = 4096, 64 / 16384
    expected = (4.209989e-7 * t * t + 1.518344e-2 * t + 16.50142) + (-25.74 * p * p + 54.01 * p + 5.74)
    assert abs(first - expected) < 1.0
    assert first == pytest.approx(expected, abs=1e-9)


def test_speedup_ratios_divide_prefill_and_decode():
    core = make_core(LinearTiming(), speedup_ratio=2.0, decode_speedup_ratio=5.0)
    core.add(req("a", range(1, 13), max_tokens=1))
    first = core.advance_until(math.inf).finished[0].first_token_ms
    assert first == pytest.approx(12 / 2 + (1 + 10 * 0.3) / (2 * 5))


def test_decode_publishes_the_block_it_fills_linked_to_its_parent():
    core = make_core(LinearTiming())
    prompt = [1, 2, 3, 4, 5, 6]
    core.add(req("a", prompt, max_tokens=5))
    core.advance_until(math.inf)
    out = generated_ids("a", 5).tolist()
    h0 = seq_hashes(prompt)[0]
    block1 = [5, 6, out[0], out[1]]                    # filled by computing out[1] in pass 2
    h1 = chain_hash(h0, local_hashes(block1, 4)[0])
    assert [e for _, e in events_of(core.take_events())] == [
        BlockStored([h0], None, prompt[:4], 4), BlockStored([h1], h0, block1, 4)]


def test_requests_admitted_in_one_pass_share_the_blocks_the_first_one_computes():
    core = make_core(LinearTiming())
    core.add(req("a", range(1, 14)))
    core.add(req("b", range(1, 14)))
    done = finished_by_id(core.advance_until(math.inf))
    assert (done["a"].start_ms, done["b"].start_ms) == (0.0, 0.0)        # simultaneous: one pass
    assert (done["a"].cached_tokens, done["b"].cached_tokens) == (0, 12)
    assert len(events_of(core.take_events())) == 1


def test_priority_scheduling_orders_waiting_requests_by_priority_then_arrival():
    def start_order(policy: str) -> list[str]:
        core = make_core(LinearTiming(), max_num_seqs=1, scheduling_policy=policy)
        core.add(req("first", range(1, 5)))
        core.advance_until(1)
        for rid, priority in (("b", 0), ("c", 5), ("d", 5), ("e", 1)):
            core.add(req(rid, range(10, 14), priority=priority))
        done = core.advance_until(math.inf).finished
        return [f.request_id for f in sorted(done, key=lambda f: f.start_ms)]

    assert start_order("priority") == ["first", "c", "d", "e", "b"]
    assert start_order("fcfs") == ["first", "b", "c", "d", "e"]


def test_priority_eviction_evicts_lower_priority_blocks_first_lru_within_a_level():
    def table_after_filling(policy: str) -> tuple[list[int], list]:
        core = make_core(LinearTiming(), eviction_policy=policy)
        for rid, base, priority in (("high", 100, 5), ("low", 200, 0)):
            core.add(req(rid, range(base, base + 16), priority=priority))
            core.advance_until(math.inf)
        core.take_events()
        core.add(req("c", range(300, 312)))
        begin_pass(core)
        removed = [e for _, e in events_of(core.take_events()) if isinstance(e, BlockRemoved)]
        return core.block_table("c"), removed

    low_tail = seq_hashes(list(range(200, 216)))[3]
    high_tail = seq_hashes(list(range(100, 116)))[3]
    assert table_after_filling("priority") == ([8, 9, 7], [BlockRemoved([low_tail])])
    assert table_after_filling("lru") == ([8, 9, 3], [BlockRemoved([high_tail])])


def test_priority_scheduling_preempts_the_lowest_priority_running_request():
    core = make_core(LinearTiming(), scheduling_policy="priority")
    core.add(req("low", range(1, 9), max_tokens=16, priority=0))
    core.add(req("high", range(11, 19), max_tokens=16, priority=3))
    done = finished_by_id(core.advance_until(math.inf))
    assert (done["low"].preemptions, done["high"].preemptions) == (1, 0)


def test_stop_token_ends_the_request_with_stop():
    ids = generated_ids("s", 10).tolist()
    core = make_core(LinearTiming())
    core.add(req("s", range(1, 6), max_tokens=10, stop_token_ids=[ids[3]]))
    f = core.advance_until(math.inf).finished[0]
    cut = ids.index(ids[3]) + 1
    assert (f.finish_reason, f.output_ids.tolist()) == ("stop", ids[:cut])


def test_scripted_output_ids_are_emitted_and_end_with_stop_or_length():
    core = make_core(LinearTiming())
    core.add(req("short", range(1, 6), max_tokens=10, output_ids=[7, 8, 9]))
    core.add(req("long", range(1, 6), max_tokens=2, output_ids=[7, 8, 9]))
    done = finished_by_id(core.advance_until(math.inf))
    assert (done["short"].finish_reason, done["short"].output_ids.tolist()) == ("stop", [7, 8, 9])
    assert (done["long"].finish_reason, done["long"].output_ids.tolist()) == ("length", [7, 8])


def test_output_ids_are_deterministic_per_request_and_inside_the_range():
    ids = generated_ids("x", 500)
    assert ids.tolist() == generated_ids("x", 500).tolist()
    assert ids.tolist() != generated_ids("y", 500).tolist()
    assert 1000 <= ids.min() and ids.max() <= 1999 and len(set(ids.tolist())) > 300


@pytest.mark.parametrize("max_tokens", [0, -3, None, 2.5])
def test_bad_max_tokens_is_refused(max_tokens):
    core = make_core()
    # Other types than int never come from the worker protocol (tests/worker/test_protocol.py);
    # the compiled build (setup.py) refuses them already when the request is built.
    if mocker.core.__file__.endswith(".so") and not isinstance(max_tokens, int):
        raises = pytest.raises(TypeError, match="int object expected")
    else:
        raises = pytest.raises(ValueError, match="max_tokens")
    with raises:
        core.add(req("a", range(1, 5), max_tokens=max_tokens))
    assert core.next_event_time() is None


def test_a_prompt_longer_than_the_whole_cache_is_refused_without_leaking():
    core = make_core()
    with pytest.raises(ValueError, match="more than the whole cache"):
        core.add(req("big", range(1, 41), max_tokens=2))   # 41 tokens of KV > 10 x 4
    core.add(req("fits", range(1, 40), max_tokens=2))       # 40 tokens of KV: exactly the cache
    core.advance_until(math.inf)
    assert core.load().kv_used_blocks == 0 and core.next_event_time() is None


def test_other_bad_requests_are_refused():
    core = EngineCore(MockEngineArgs(num_gpu_blocks=10, block_size=4), context_length=16)
    with pytest.raises(ValueError, match="prompt"):
        core.add(req("empty", []))
    with pytest.raises(ValueError, match="context length"):
        core.add(req("long", range(1, 15), max_tokens=3))
    core.add(req("a", range(1, 5)))
    with pytest.raises(ValueError, match="already"):
        core.add(req("a", range(1, 5)))


def test_abort_frees_blocks_and_nothing_follows():
    core = make_core(LinearTiming())
    core.add(req("a", range(1, 14), max_tokens=10))
    core.add(req("queued", range(20, 30), max_tokens=10))
    core.advance_until(30)                               # a decoding, queued in the same batch
    core.abort("a")
    core.abort("queued")
    core.abort("unknown")
    assert core.advance_until(math.inf).finished == []
    assert core.load() == type(core.load())(0, 10, 0, 0)
    core.add(req("again", range(1, 14)))                 # a's prompt blocks stayed cached
    assert core.advance_until(math.inf).finished[0].cached_tokens == 12


def test_prefix_caching_off_means_no_hits_and_no_events():
    core = make_core(LinearTiming(), enable_prefix_caching=False)
    for rid in ("a", "b"):
        core.add(req(rid, range(1, 14)))
        assert core.advance_until(math.inf).finished[0].cached_tokens == 0
    assert core.take_events() == []


def test_events_convert_to_the_engine_wire_format():
    core = make_core(LinearTiming())
    core.add(req("a", range(1, 10)))
    core.advance_until(math.inf)
    (batch,) = core.take_events()
    for tagged in (False, True):
        wire = decode_engine_batch(encode_engine_batch(batch.to_engine_batch(), tagged=tagged))
        assert (wire.timestamp, wire.events) == (0.0, batch.events)


def test_load_reports_running_waiting_and_blocks_in_use():
    core = make_core(LinearTiming(), max_num_seqs=1)
    core.add(req("a", range(1, 10), max_tokens=5))
    core.add(req("b", range(1, 10), max_tokens=5))
    begin_pass(core)
    assert core.load() == type(core.load())(3, 10, 1, 1)


def test_bulk_advance_skips_quiet_passes_with_the_same_clock():
    timings = []
    for bulk in (True, False):
        core = make_core(LinearTiming(), bulk=bulk, num_gpu_blocks=40, block_size=16)
        core.add(req("a", range(1, 3), max_tokens=200))
        out = core.advance_until(math.inf)
        timings.append((out.passes, out.finished[0].end_ms))
    assert timings[0] == timings[1] and timings[0][0] == 200
