"""Records: agent_context validation, request_end as written, timings, tool normalisation."""

import json

import pytest

from router.hashing import Prompt
from tracing.records import (AgentContext, AgentContextError, FinishReasonMetadata,
                             InvalidToolRecord, ReplayHashes, RequestClock, RequestEnd,
                             ToolCallCollector, ToolCallRef, WorkerPlacement,
                             normalize_tool_record, router_cache_hit)

CTX = {"session_type_id": "deep_research", "session_id": "run-7", "trajectory_id": "run-7:writer"}


class FakeClock:
    def __init__(self, wall: float = 1777312800.0):
        self.wall = wall
        self.mono = 100.0

    def advance_ms(self, ms: float) -> None:
        self.mono += ms / 1000.0


# --- agent_context ---

def test_agent_context_keeps_known_keys_and_ignores_unknown_ones():
    ctx = AgentContext.from_mapping({**CTX, "parent_trajectory_id": "run-7:planner",
                                     "trajectory_final": True, "phase": "reasoning"})
    assert ctx.to_dict() == {**CTX, "parent_trajectory_id": "run-7:planner",
                             "trajectory_final": True}
    assert AgentContext.from_mapping(CTX).to_dict() == CTX       # optional keys omitted


@pytest.mark.parametrize("key", ["session_type_id", "session_id", "trajectory_id"])
def test_agent_context_rejects_a_missing_required_id_naming_it(key):
    raw = {k: v for k, v in CTX.items() if k != key}
    with pytest.raises(AgentContextError) as exc:
        AgentContext.from_mapping(raw)
    assert exc.value.param == f"nvext.agent_context.{key}"


@pytest.mark.parametrize("value", ["", "   ", "\t\n"])
def test_agent_context_rejects_a_blank_required_id(value):
    with pytest.raises(AgentContextError, match="required identifiers must be non-empty") as exc:
        AgentContext.from_mapping({**CTX, "session_id": value})
    assert exc.value.param == "nvext.agent_context.session_id"


@pytest.mark.parametrize("raw,param", [
    ({**CTX, "trajectory_id": 7}, "nvext.agent_context.trajectory_id"),
    ({**CTX, "parent_trajectory_id": 3}, "nvext.agent_context.parent_trajectory_id"),
    ({**CTX, "trajectory_final": "yes"}, "nvext.agent_context.trajectory_final"),
    ("run-7", "nvext.agent_context"),
])
def test_agent_context_rejects_mistyped_fields(raw, param):
    with pytest.raises(AgentContextError) as exc:
        AgentContext.from_mapping(raw)
    assert exc.value.param == param
    assert isinstance(exc.value, ValueError)


# --- request_end ---

def full_request_end() -> RequestEnd:
    return RequestEnd(
        agent_context=AgentContext.from_mapping({**CTX, "parent_trajectory_id": "run-7:planner"}),
        request_id="5b1d0c1e-0000-4000-8000-000000000001", x_request_id="call-0003",
        model="qwen3-8b", input_tokens=300, output_tokens=40, cached_tokens=256,
        request_received_ms=1777312800000, prefill_wait_time_ms=3.5, prefill_time_ms=21,
        ttft_ms=24.5, total_time_ms=1000, avg_itl_ms=25.0, kv_hit_rate=0.8, queue_depth=0,
        worker=WorkerPlacement.aggregated(7, 0),
        finish_reason_metadata=FinishReasonMetadata(
            "tool_calls", "stop", tool_calls=(ToolCallRef(0, 0, "call-x1", "web_search"),)),
        replay=ReplayHashes(64, 300, (11, 22, 33, 44, 55)))


def test_request_end_record_is_the_documented_shape():
    record = full_request_end().to_record()
    assert record == {
        "schema": "dynamo.agent.trace.v1", "event_type": "request_end",
        "event_time_unix_ms": 1777312801000, "event_source": "dynamo",
        "agent_context": {**CTX, "parent_trajectory_id": "run-7:planner"},
        "request": {
            "request_id": "5b1d0c1e-0000-4000-8000-000000000001", "x_request_id": "call-0003",
            "model": "qwen3-8b", "input_tokens": 300, "output_tokens": 40, "cached_tokens": 256,
            "request_received_ms": 1777312800000, "prefill_wait_time_ms": 3.5,
            "prefill_time_ms": 21.0, "ttft_ms": 24.5, "total_time_ms": 1000.0,
            "avg_itl_ms": 25.0, "kv_hit_rate": 0.8, "queue_depth": 0,
            "worker": {"prefill_worker_id": 7, "prefill_dp_rank": 0, "decode_worker_id": 7,
                       "decode_dp_rank": 0},
            "finish_reason_metadata": {"finish_reason": "tool_calls",
                                       "backend_finish_reason": "stop",
                                       "tool_calls": [{"choice_index": 0, "tool_call_index": 0,
                                                       "id": "call-x1", "name": "web_search"}]},
            "replay": {"trace_block_size": 64, "input_length": 300,
                       "input_sequence_hashes": [11, 22, 33, 44, 55]}}}
    text = json.dumps(record)
    assert "null" not in text
    assert '"input_tokens": 300,' in text and '"total_time_ms": 1000.0' in text


def test_partial_request_end_omits_every_absent_field():
    end = RequestEnd(AgentContext.from_mapping(CTX), "r", "m", request_received_ms=5000)
    assert end.to_record() == {"schema": "dynamo.agent.trace.v1", "event_type": "request_end",
                               "event_time_unix_ms": 5000, "event_source": "dynamo",
                               "agent_context": CTX,
                               "request": {"request_id": "r", "model": "m",
                                           "request_received_ms": 5000}}


@pytest.mark.parametrize("total,expected", [(0.4, 1000), (0.5, 1001), (2.5, 1003), (-7.0, 1000),
                                            (float("nan"), 1000), (None, 1000)])
def test_event_time_is_received_plus_rounded_total(total, expected):
    end = RequestEnd(AgentContext.from_mapping(CTX), "r", "m", request_received_ms=1000,
                     total_time_ms=total)
    assert end.to_record()["event_time_unix_ms"] == expected
    assert "nan" not in json.dumps(end.to_record()).lower()


def test_event_time_needs_the_receipt_time():
    with pytest.raises(ValueError, match="request_received_ms"):
        RequestEnd(AgentContext.from_mapping(CTX), "r", "m").to_record()


def test_router_metrics_map_onto_the_record():
    """Dynamo's tracker test: ISL 128, cached 32, kv hit 0.5, queue 3, worker 17 rank 2."""
    cached, hit = router_cache_hit(overlap_blocks=4, input_tokens=128, block_size=16)
    assert (cached, hit) == (64, 0.5)
    end = RequestEnd(AgentContext.from_mapping(CTX), "r", "m", input_tokens=128,
                     cached_tokens=32, kv_hit_rate=hit, queue_depth=3, request_received_ms=1,
                     worker=WorkerPlacement.aggregated(17, 2))
    request = end.to_record()["request"]
    assert (request["input_tokens"], request["cached_tokens"], request["kv_hit_rate"],
            request["queue_depth"]) == (128, 32, 0.5, 3)
    assert request["worker"] == {"prefill_worker_id": 17, "prefill_dp_rank": 2,
                                 "decode_worker_id": 17, "decode_dp_rank": 2}


def test_router_cache_hit_of_a_prompt_shorter_than_a_block():
    assert router_cache_hit(0, 10, 16) == (0, 0.0)


class Durations:
    def __init__(self, queue_ms: float, prefill_ms: float):
        self.queue_ms, self.prefill_ms = queue_ms, prefill_ms


def test_timings_compose_frontend_clock_and_worker_durations():
    clock = FakeClock()
    rc = RequestClock(wall=lambda: clock.wall, monotonic=lambda: clock.mono)
    clock.advance_ms(2)
    rc.mark_dispatched()                 # 2 ms in the frontend and router
    clock.advance_ms(30)
    rc.mark_first_token()                # ttft 32 ms as the client saw it
    clock.advance_ms(40)
    rc.mark_first_token()                # later calls do not move it
    rc.mark_end()                        # total 72 ms
    end = RequestEnd.build(agent_context=AgentContext.from_mapping(CTX), request_id="r",
                           model="m", clock=rc, worker_durations=Durations(5.0, 20.0),
                           output_tokens=5)
    request = end.to_record()["request"]
    assert request["request_received_ms"] == 1777312800000
    assert request["prefill_wait_time_ms"] == pytest.approx(7.0)     # 2 + worker queue 5
    assert request["prefill_time_ms"] == 20.0
    assert request["ttft_ms"] == pytest.approx(32.0)
    assert request["total_time_ms"] == pytest.approx(72.0)
    assert request["avg_itl_ms"] == pytest.approx(10.0)              # 40 ms over 4 gaps
    assert request["output_tokens"] == 5
    assert end.to_record()["event_time_unix_ms"] == 1777312800072


def test_timings_of_a_request_cancelled_before_its_first_token():
    clock = FakeClock()
    rc = RequestClock(wall=lambda: clock.wall, monotonic=lambda: clock.mono)
    rc.mark_dispatched()
    clock.advance_ms(15)
    rc.mark_end()
    request = RequestEnd.build(agent_context=AgentContext.from_mapping(CTX), request_id="r",
                               model="m", clock=rc, output_tokens=0).to_record()["request"]
    assert request["total_time_ms"] == pytest.approx(15.0)
    for absent in ("ttft_ms", "prefill_wait_time_ms", "prefill_time_ms", "avg_itl_ms"):
        assert absent not in request


# --- finish metadata ---

def test_finish_metadata_for_chat_tool_calls_keeps_ids_and_names_only():
    collector = ToolCallCollector()
    collector.add_all([{"index": 0, "id": "call-1", "type": "function",
                        "function": {"name": "web_", "arguments": ""}},
                       {"index": 0, "function": {"name": "search", "arguments": '{"q":'}},
                       {"index": 0, "function": {"arguments": '"rotor"}'}}])
    finish = FinishReasonMetadata("tool_calls", "stop", "END", collector.refs())
    assert finish.to_dict() == {"finish_reason": "tool_calls", "backend_finish_reason": "stop",
                                "stop_reason": "END",
                                "tool_calls": [{"choice_index": 0, "tool_call_index": 0,
                                                "id": "call-1", "name": "web_search"}]}
    assert "rotor" not in json.dumps(finish.to_dict())


def test_tool_call_deltas_merge_by_choice_and_index():
    collector = ToolCallCollector()
    collector.add({"index": 1, "id": "b", "function": {"name": "bash"}})
    collector.add({"index": 0, "id": "a", "function": {"name": "read"}})
    collector.add({"index": 0, "id": "other", "function": {"name": "read"}})  # repeated name
    collector.add({"index": 0, "id": "c", "function": {"name": "edit"}}, choice_index=1)
    assert [r.to_dict() for r in collector.refs()] == [
        {"choice_index": 0, "tool_call_index": 0, "id": "a", "name": "read"},
        {"choice_index": 0, "tool_call_index": 1, "id": "b", "name": "bash"},
        {"choice_index": 1, "tool_call_index": 0, "id": "c", "name": "edit"}]


def test_finish_metadata_for_a_completion_and_when_empty():
    assert FinishReasonMetadata("length", "length").to_dict() == {
        "finish_reason": "length", "backend_finish_reason": "length"}
    end = RequestEnd(AgentContext.from_mapping(CTX), "r", "m", request_received_ms=1,
                     finish_reason_metadata=FinishReasonMetadata())
    assert "finish_reason_metadata" not in end.to_record()["request"]


# --- replay hashes (Dynamo's replay-hashing tests) ---

def test_replay_hashes_include_the_partial_tail():
    assert len(ReplayHashes.from_prompt(Prompt([1, 2, 3], 2)).input_sequence_hashes) == 2
    assert ReplayHashes.from_prompt(Prompt([], 4)).to_dict() == {
        "trace_block_size": 4, "input_length": 0, "input_sequence_hashes": []}
    big = ReplayHashes.from_prompt(Prompt(list(range(131072)), 64))
    assert len(big.input_sequence_hashes) == 2048 and big.input_length == 131072


def test_replay_hashes_share_prefixes_and_are_position_sensitive():
    a = ReplayHashes.from_prompt(Prompt([1, 2, 3, 4, 5], 2)).input_sequence_hashes
    b = ReplayHashes.from_prompt(Prompt([1, 2, 3, 4, 9, 9], 2)).input_sequence_hashes
    assert a[:2] == b[:2] and a[2] != b[2]
    c = ReplayHashes.from_prompt(Prompt([7, 7, 7, 7], 2)).input_sequence_hashes
    assert c[0] != c[1]


# --- tool records ---

PI_TOOL = {"schema": "dynamo.request.trace.v1", "event_type": "tool_end",
           "event_time_unix_ms": 1777312801400, "event_source": "harness",
           "agent_context": {**CTX, "phase": "reasoning"},
           "tool": {"tool_call_id": "call-x1", "tool_class": "bash", "status": "ok",
                    "started_at_unix_ms": 1777312801010, "ended_at_unix_ms": 1777312801400,
                    "duration_ms": 390, "output_bytes": 5120, "error_type": None,
                    "arguments": "secret"}}


def test_tool_record_is_normalised():
    assert normalize_tool_record(PI_TOOL) == {
        "schema": "dynamo.agent.trace.v1", "event_type": "tool_end",
        "event_time_unix_ms": 1777312801400, "event_source": "harness", "agent_context": CTX,
        "tool": {"tool_call_id": "call-x1", "tool_class": "bash", "status": "succeeded",
                 "started_at_unix_ms": 1777312801010, "ended_at_unix_ms": 1777312801400,
                 "duration_ms": 390.0, "output_bytes": 5120}}


@pytest.mark.parametrize("alias,canonical", [("ok", "succeeded"), ("success", "succeeded"),
                                             ("failed", "error"), ("timeout", "cancelled"),
                                             ("canceled", "cancelled"), ("running", "running"),
                                             ("error", "error")])
def test_tool_status_aliases(alias, canonical):
    raw = {**PI_TOOL, "tool": {**PI_TOOL["tool"], "status": alias}}
    assert normalize_tool_record(raw)["tool"]["status"] == canonical


def test_session_id_may_come_at_the_top_level_and_ms_agent_is_harness():
    ctx = {k: v for k, v in CTX.items() if k != "session_id"}
    record = normalize_tool_record({**PI_TOOL, "agent_context": ctx, "session_id": "run-7",
                                    "event_source": "ms_agent"})
    assert record["agent_context"] == CTX
    assert record["event_source"] == "harness"


@pytest.mark.parametrize("change,reason", [
    ({"schema": "dynamo.agent.trace.v2"}, "schema"),
    ({"event_source": "dynamo"}, "event_source"),
    ({"event_type": "request_end"}, "event_type"),
    ({"request": {"request_id": "x"}}, "request_present"),
    ({"tool": None}, "tool_missing"),
    ({"tool": "bash"}, "tool_missing"),
    ({"event_time_unix_ms": -1}, "event_time"),
    ({"event_time_unix_ms": "now"}, "event_time"),
    ({"agent_context": {**CTX, "trajectory_id": " "}}, "agent_context"),
    ({"agent_context": None}, "agent_context"),
    ({"tool": {"tool_class": "bash"}}, "tool_field"),
    ({"tool": {"tool_call_id": "c", "tool_class": "bash", "status": "exploded"}}, "tool_field"),
    ({"tool": {"tool_call_id": "c", "tool_class": "bash", "duration_ms": "5"}}, "tool_field"),
    ({"tool": {"tool_call_id": "c", "tool_class": "bash", "output_bytes": 1.5}}, "tool_field"),
])
def test_invalid_tool_records_are_rejected_with_a_reason(change, reason):
    with pytest.raises(InvalidToolRecord) as exc:
        normalize_tool_record({**PI_TOOL, **change})
    assert exc.value.reason == reason


def test_integral_floats_are_accepted_for_integer_fields():
    raw = {**PI_TOOL, "event_time_unix_ms": 1777312801400.0}
    assert normalize_tool_record(raw)["event_time_unix_ms"] == 1777312801400
    assert isinstance(normalize_tool_record(raw)["event_time_unix_ms"], int)
