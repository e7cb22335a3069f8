"""Online replay against a real stack (frontend + 2 mock workers) agrees with offline replay.

Tolerance, stated: the same requests complete; prefix reuse within 0.02 (the engines are the
same cores, so in practice it is equal); median TTFT within 30 ms + 30% and median end-to-end
within 60 ms + 20% of offline (online adds HTTP, tokenizer-free request parsing, the request
plane and the asyncio drivers: a few ms a request on a quiet machine; the slack covers a loaded
2-core CI box). Mock engines at speedup 1, so model time dominates.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from bench.online import OnlineReplay, TokenMapping
from mocker.replay import replay_trace, trace_from_rows
from mocker.workloads import agentic_rows, plain_rows
from tests.conftest import Stack

BLOCKS = 2048


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("online"))
    try:
        for _ in range(2):
            s.start_worker("--num-gpu-blocks-override", str(BLOCKS))
        s.start_frontend()
        s.wait_for_workers(2)
        warm = {"model": "rotor-mock", "prompt": [7] * 64, "max_tokens": 2, "ignore_eos": True}
        models = json.load(urllib.request.urlopen(s.url + "/v1/models", timeout=10))
        warm["model"] = models["data"][0]["id"]
        req = urllib.request.Request(s.url + "/v1/completions", json.dumps(warm).encode(),
                                     {"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).read()
        yield s
    finally:
        s.stop()


def within(online: float, offline: float, abs_ms: float, rel: float) -> bool:
    return abs(online - offline) <= abs_ms + rel * offline


def test_online_and_offline_agree(stack):
    rows = plain_rows(count=30, rate=6, isl=1200, osl=24, spread=0.3, prefix_groups=3,
                      prefix_blocks=8, trace_block_size=64, seed=3)
    trace = trace_from_rows(rows, "mooncake", 64)
    offline = replay_trace(trace, router_mode="kv", num_workers=2,
                           engine_args={"num_gpu_blocks": BLOCKS})
    online = asyncio.run(OnlineReplay(trace, stack.url, max_duration_s=60).run())
    assert online["errors"] == []
    assert online["completed_requests"] == offline["completed_requests"] == 30
    assert online["prefix_cache_reused_ratio"] == pytest.approx(
        offline["prefix_cache_reused_ratio"], abs=0.02)
    assert within(online["median_ttft_ms"], offline["median_ttft_ms"], 30, 0.3), \
        (online["median_ttft_ms"], offline["median_ttft_ms"])
    assert within(online["median_e2e_latency_ms"], offline["median_e2e_latency_ms"], 60, 0.2), \
        (online["median_e2e_latency_ms"], offline["median_e2e_latency_ms"])
    assert online["token_mapping"]["ids_beyond_capacity"] == 0


def test_online_agentic_honours_dependencies_and_bounds(stack):
    rows = agentic_rows(sessions=3, session_rate=5.0, turns=3, osl=16, subagent_prob=0.5,
                        trace_block_size=64, seed=2)
    for r in rows:   # shorten the tool waits so the test stays quick
        if "tool_wait_ms" in r:
            r["tool_wait_ms"] = min(r["tool_wait_ms"], 150.0)
    trace = trace_from_rows(rows, "agentic_mooncake", 64)
    replay = OnlineReplay(trace, stack.url, max_duration_s=60)
    report = asyncio.run(replay.run())
    assert report["errors"] == [] and report["completed_requests"] == len(rows)
    assert report["completed_trajectories"] == report["total_trajectories"]
    for r in trace.requests:
        if r.deps:
            dep_end = max(replay.samples[d].end_ms for d in r.deps)
            assert replay.samples[r.index].arrival_ms >= dep_end + r.gap_ms - 1.0

    bounded = OnlineReplay(trace, stack.url, max_requests=4, max_duration_s=60)
    report = asyncio.run(bounded.run())
    assert report["num_requests"] <= 4 and report["completed_requests"] == report["num_requests"]


def test_token_mapping_keeps_block_equality():
    m = TokenMapping(4096, 16)
    assert len({m.pair(h) for h in range(50_000)}) == 50_000
    request = trace_from_rows([{"timestamp": 0, "input_length": 100, "output_length": 1,
                                "hash_ids": [5, 4081]}], trace_block_size=64).requests[0]
    tokens = m.tokens(request, 64)
    assert len(tokens) == 100 and tokens[:4] == [21, 16, 21, 16] and tokens[64:66] == [17, 17]
