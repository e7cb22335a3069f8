"""Offline replay: hand-worked schedules, agentic dependencies, bad input, determinism."""

from __future__ import annotations

import gc
import json
import math

import pytest

from mocker.replay import TraceError, load_trace, replay_trace, trace_from_rows
from mocker.replay.__main__ import main as replay_main
from mocker.replay.sim import AgentFeatures, Simulation
from mocker.replay.trace import PromptFactory, TraceTokens
from router.config import RouterConfig
from router.hashing import Prompt
from tests.replay.replay_factories import make_engine, row

# Trace block size 32 (each hash id = 32 tokens = 2 engine blocks of 16). Engine: budget 64
# tokens a pass, prefill 0.1 ms/token, decode 10 ms/step (tests/replay/replay_factories.py).
HAND_ROWS = [
    row(0, [1, 2], 64, 2),      # A
    row(0, [1, 3], 64, 1),      # B: shares A's first hash id (2 engine blocks)
    row(100, [1, 2], 64, 1),    # C: A's prompt again
]


def simulate(rows, tmp_path, *, workers=1, mode="round-robin", fmt="mooncake", agent=None,
             **engine):
    trace = trace_from_rows(rows, fmt, trace_block_size=32)
    sim = Simulation(trace, num_workers=workers, engine_args=make_engine(tmp_path, **engine),
                     router_config=RouterConfig(router_mode=mode), seed=0,
                     agent=agent or AgentFeatures())
    return trace, sim.run()


def ttfts(result):
    return [o.first_token_ms - o.arrival_ms for o in result.outcomes]


def test_one_worker_schedule_worked_by_hand(tmp_path):
    # pass 1 [0, 16.4]: A prefills 64 tokens (the whole budget; B waits): 6.4 + 10 ms
    # pass 2 [16.4, 29.6]: A decodes its 2nd token; B hits A's first 2 blocks (32 tokens) and
    #   prefills 32: 3.2 + 10 ms. A ends, B's first (and only) token.
    # C at 100: A's 4 blocks are cached; the engine matches at most (64-1)//16 = 3 of them
    #   (the last prompt token is always computed): 16 new tokens, 1.6 + 10 ms.
    _, result = simulate(HAND_ROWS, tmp_path)
    assert ttfts(result) == pytest.approx([16.4, 29.6, 11.6], abs=1e-9)
    a, b, c = result.outcomes
    assert (a.end_ms, b.end_ms, c.end_ms) == pytest.approx((29.6, 29.6, 111.6), abs=1e-9)
    assert [o.cached_tokens for o in result.outcomes] == [0, 32, 48]


def test_two_workers_kv_schedule_worked_by_hand(tmp_path):
    # B arrives with A booked on A's worker: cost there (64+64)/16 + (4 + 4 - 2 shared) = 14,
    # on the empty one 64/16 + 4 = 8, so B goes to the other worker and both prefill alone.
    # C: 4 blocks cached on A's worker (cost 0 + 4) vs 2 on B's (2 + 4): A's worker, 48 cached.
    _, result = simulate(HAND_ROWS, tmp_path, workers=2, mode="kv")
    a, b, c = result.outcomes
    assert a.worker != b.worker and c.worker == a.worker
    assert ttfts(result) == pytest.approx([16.4, 16.4, 11.6], abs=1e-9)
    assert [o.cached_tokens for o in result.outcomes] == [0, 0, 48]


def test_report_keys_and_reuse(tmp_path):
    trace = trace_from_rows(HAND_ROWS, trace_block_size=32)
    report = replay_trace(trace, router_mode="round-robin", num_workers=1,
                          engine_args=make_engine(tmp_path))
    for key in ("num_requests", "completed_requests", "total_input_tokens",
                "total_output_tokens", "duration_ms", "wall_time_ms", "request_throughput_rps",
                "prefix_cache_reused_ratio", "mean_ttft_ms", "median_ttft_ms", "p90_ttft_ms",
                "p99_ttft_ms", "mean_itl_ms", "p99_e2e_latency_ms"):
        assert key in report, key
    assert report["completed_requests"] == 3
    assert report["prefix_cache_reused_ratio"] == pytest.approx(80 / 192)
    assert report["duration_ms"] == pytest.approx(111.6)
    assert report["median_ttft_ms"] == pytest.approx(16.4)
    assert report["mean_itl_ms"] == pytest.approx(13.2)      # A: one gap of 13.2 ms


def test_replay_leaves_the_garbage_collector_as_it_found_it(tmp_path):
    trace = trace_from_rows(HAND_ROWS, trace_block_size=32)

    def replay():
        replay_trace(trace, router_mode="round-robin", engine_args=make_engine(tmp_path))

    assert gc.isenabled()
    replay()
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.disable()
    try:
        replay()
        assert not gc.isenabled()
    finally:
        gc.enable()
    gc.freeze()                                  # a caller's frozen objects stay frozen
    try:
        frozen = gc.get_freeze_count()
        replay()
        assert gc.isenabled() and gc.get_freeze_count() >= frozen
    finally:
        gc.unfreeze()


def test_agentic_waits_for_every_dependency_then_delay_and_tool_wait(tmp_path):
    rows = [
        {"request_id": "p1", "session_id": "main", "input_length": 64, "output_length": 3,
         "hash_ids": [1, 2], "timestamp": 0, "prefix_reset": True, "branches": ["c1"]},
        {"request_id": "c1", "session_id": "child", "input_length": 64, "output_length": 20,
         "hash_ids": [1, 5], "timestamp": 5, "wait_for": ["p1"], "delay": 0},
        {"request_id": "p2", "session_id": "main", "input_length": 96, "output_length": 2,
         "hash_ids": [1, 2, 4], "timestamp": 7, "wait_for": ["p1"], "delay": 50,
         "tool_wait_ms": 100},
        {"request_id": "p3", "session_id": "main", "input_length": 96, "output_length": 2,
         "hash_ids": [1, 2, 6], "timestamp": 9, "wait_for": ["p2", "c1"], "delay": 10},
    ]
    trace, result = simulate(rows, tmp_path, workers=2, mode="kv", fmt="agentic_mooncake")
    p1, c1, p2, p3 = result.outcomes
    assert p1.arrival_ms == 0
    assert c1.arrival_ms == pytest.approx(p1.end_ms)               # timestamp ignored
    assert p2.arrival_ms == pytest.approx(p1.end_ms + 150)         # delay + tool_wait_ms
    assert p3.arrival_ms == pytest.approx(max(p2.end_ms, c1.end_ms) + 10)
    assert c1.end_ms > p2.end_ms                                   # the join waited for c1
    assert all(o.status == "ok" for o in result.outcomes)
    report = replay_trace(trace, router_mode="kv", num_workers=2,
                          engine_args=make_engine(tmp_path))
    assert report["total_trajectories"] == 2
    assert report["completed_trajectories"] == 2
    assert report["mean_trajectory_e2e_latency_ms"] > 0


def test_closed_loop_sessions_in_plain_mooncake(tmp_path):
    rows = [row(0, [1], 32, 2, session_id="s"), row(1000, [1, 2], 64, 2, session_id="s"),
            row(10, [1, 3], 64, 1, session_id="s", delay=5)]
    _, result = simulate(rows, tmp_path)
    first, second, third = result.outcomes
    assert second.arrival_ms == pytest.approx(first.end_ms + 1000)   # the timestamp difference
    assert third.arrival_ms == pytest.approx(second.end_ms + 5)      # an explicit delay


def test_zero_gap_chains_are_exact(tmp_path):
    """Dependents due the instant their dependency ends (gap 0): the loop steps pass by pass."""
    rows = [{"request_id": f"r{i}", "session_id": "t", "input_length": 48, "output_length": 3,
             "hash_ids": [1, 10 + i], "timestamp": 0, **({"wait_for": [f"r{i-1}"]} if i else {})}
            for i in range(6)]
    rows.append({"request_id": "other", "input_length": 64, "output_length": 40,
                 "hash_ids": [7, 8], "timestamp": 0})
    _, result = simulate(rows, tmp_path, workers=2, mode="kv", fmt="agentic_mooncake")
    chain = result.outcomes[:6]
    for prev, nxt in zip(chain, chain[1:]):
        assert nxt.arrival_ms == pytest.approx(prev.end_ms)


def test_priority_reaches_router_and_engine(tmp_path):
    rows = [row(0, [1, 2], 64, 30, priority=0) for _ in range(3)]
    rows += [row(1, [9, 10], 64, 1, priority=5)]
    with_prio = simulate(rows, tmp_path, scheduling_policy="priority")[1]
    without = simulate(rows, tmp_path, scheduling_policy="priority",
                       agent=AgentFeatures(priority=False))[1]
    assert ttfts(with_prio)[3] <= ttfts(without)[3]


def test_same_seed_same_report_and_seeds_matter_for_random(tmp_path):
    rows = [row(i * 3.0, [i % 4, 100 + i], 64, 4) for i in range(40)]
    trace = trace_from_rows(rows, trace_block_size=32)
    args = make_engine(tmp_path)
    runs = [replay_trace(trace, router_mode="random", num_workers=3, engine_args=args, seed=s)
            for s in (1, 1, 2)]
    strip = [{k: v for k, v in r.items() if k != "wall_time_ms"} for r in runs]
    assert strip[0] == strip[1]
    assert strip[0] != strip[2]


def test_prompt_factory_hashes_equal_prompt_hashes():
    factory = PromptFactory(trace_block_size=512, block_size=64)
    trace = trace_from_rows([row(0, [3, 4, 5], 1200, 1), row(0, [3, 4, 9], 1100, 1)])
    for request in trace.requests:
        fast = factory.prompt(request)
        tokens = [h for h in request.hash_ids for _ in range(512)][:request.input_length]
        slow = Prompt(tokens, 64)
        assert fast.local_hashes == slow.local_hashes
        assert fast.sequence_hashes == slow.sequence_hashes
        assert list(fast.token_ids) == tokens
        assert list(fast.token_ids[500:700]) == tokens[500:700]
    odd = PromptFactory(trace_block_size=100, block_size=64)   # not a multiple: plain hashing
    request = trace_from_rows([row(0, [3, 4], 150, 1)], trace_block_size=100).requests[0]
    assert odd.prompt(request).sequence_hashes == Prompt([3] * 100 + [4] * 50, 64).sequence_hashes
    assert len(TraceTokens([1, 2], 4, 6)) == 6 and TraceTokens([1, 2], 4, 6)[5] == 2


@pytest.mark.parametrize("rows, fmt, message", [
    (["not json"], "mooncake", "t.jsonl:1: not JSON"),
    ([{"timestamp": 0, "input_length": 10, "hash_ids": [1]}], "mooncake",
     "t.jsonl:1: missing output_length"),
    ([{"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1]}],
     "mooncake", "t.jsonl:1: 1 hash_ids × trace block size 512 = 512 tokens cannot cover "
                 "input_length 600"),
    ([{"timestamp": 0, "input_length": "10", "output_length": 1, "hash_ids": [1]}],
     "mooncake", "t.jsonl:1: input_length must be int"),
    ([{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [-1]}],
     "mooncake", "t.jsonl:1: hash_ids must be integers in [0, 2^32), got -1"),
    ([{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1, "x"]}],
     "mooncake", "t.jsonl:1: hash_ids must be integers in [0, 2^32), got 'x'"),
    ([{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1, True]}],
     "mooncake", "t.jsonl:1: hash_ids must be integers in [0, 2^32), got True"),
    ([{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1, 2 ** 32]}],
     "mooncake", "t.jsonl:1: hash_ids must be integers in [0, 2^32), got 4294967296"),
    ([{"request_id": "a", "input_length": 10, "output_length": 1, "hash_ids": [1],
       "wait_for": ["b"]},
      {"request_id": "b", "input_length": 10, "output_length": 1, "hash_ids": [1],
       "wait_for": ["a"]}], "agentic_mooncake", "cycle in wait_for"),
    ([{"request_id": "a", "input_length": 10, "output_length": 1, "hash_ids": [1],
       "timestamp": 0, "wait_for": ["zz"]}], "agentic_mooncake",
     "t.jsonl:1: wait_for names 'zz', which is not in the trace"),
    ([{"request_id": "a", "input_length": 10, "output_length": 1, "hash_ids": [1],
       "timestamp": 0},
      {"request_id": "a", "input_length": 10, "output_length": 1, "hash_ids": [1],
       "timestamp": 0}], "agentic_mooncake", "t.jsonl:2: duplicate request_id 'a'"),
    ([{"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]}],
     "sharegpt", "unknown trace format 'sharegpt'"),
])
def test_bad_input_names_the_line(tmp_path, rows, fmt, message):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    with pytest.raises(TraceError) as info:
        load_trace([path], fmt)
    assert message in str(info.value).replace(str(tmp_path) + "/", "")


def test_a_request_the_engine_cannot_hold_fails_alone(tmp_path):
    rows = [row(0, [1, 2, 3, 4], 128, 1), row(5, [1], 32, 1)]
    report = replay_trace(trace_from_rows(rows, trace_block_size=32), router_mode="kv",
                          num_workers=1, engine_args=make_engine(tmp_path, num_gpu_blocks=4))
    assert report["completed_requests"] == 1
    assert report["failures"]["counts"] == {"failed": 1}
    assert "<rows>:1" in report["failures"]["examples"][0]


def test_cli_writes_report_and_table(tmp_path, capsys):
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in HAND_ROWS) + "\n")
    out = tmp_path / "report.json"
    engine = json.dumps({"block_size": 16, "num_gpu_blocks": 256, "max_num_seqs": 4,
                         "max_num_batched_tokens": 64})
    code = replay_main([str(path), "--trace-block-size", "32", "--router-mode", "round_robin",
                        "--num-workers", "2", "--extra-engine-args", engine,
                        "--router-config", '{"router_queue_threshold": null}',
                        "--report-json", str(out), "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["router_mode"] == "round-robin" and report["completed_requests"] == 3
    assert report["router_config"]["router_queue_threshold"] is None
    assert "Time to first token (ms)" in capsys.readouterr().out
    assert replay_main([str(path), "--trace-format", "agentic_mooncake", "--no-progress"]) == 2
    assert "missing request_id" in capsys.readouterr().err


def test_admission_queue_holds_and_releases_requests(tmp_path):
    """A tiny queue threshold: requests wait in the router and still all complete, in order."""
    rows = [row(0, [i, 100 + i], 64, 5) for i in range(6)]
    trace = trace_from_rows(rows, trace_block_size=32)
    report = replay_trace(trace, router_mode="kv", num_workers=2,
                          engine_args=make_engine(tmp_path),
                          router_config={"router_queue_threshold": 0.5})
    assert report["completed_requests"] == 6
    assert report["queued_requests"] > 0
    assert not math.isnan(report["p99_ttft_ms"])
