"""An agent run through the real stack: LLM calls with agent_context and harness tool events
over ZMQ become one trace, whose Perfetto view and agentic Mooncake conversion are right."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time

import msgpack
import openai
import zmq

from tests.conftest import ROOT, free_port

SESSION = {"session_type_id": "pi_coding_agent", "session_id": "run-1"}
MAIN = {**SESSION, "trajectory_id": "run-1:main", "phase": "reasoning"}   # phase: ignored
CHILD = {**SESSION, "trajectory_id": "run-1:sub", "parent_trajectory_id": "run-1:main"}
TOOL_MS = 300


def now_ms() -> int:
    return int(time.time() * 1000)


def call(client: openai.OpenAI, context: dict, x_request_id: str, text: str) -> None:
    chunks = list(client.chat.completions.create(
        model="rotor-mock", max_tokens=8, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "system", "content": "You are an agent. " * 30},
                  {"role": "user", "content": [{"type": "text", "text": text}]}],
        extra_headers={"x-request-id": x_request_id}, extra_body={"nvext": {"agent_context": context}}))
    assert chunks[-1].usage.completion_tokens == 8


def push_tool_event(endpoint: str, started: int, ended: int) -> None:
    """One tool_end in the shape the Pi harness sends (schema dynamo.request.trace.v1)."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    push.connect(endpoint)
    record = {"schema": "dynamo.request.trace.v1", "event_type": "tool_end",
              "event_time_unix_ms": ended, "event_source": "harness",
              "agent_context": {k: v for k, v in MAIN.items() if k != "phase"},
              "tool": {"tool_call_id": "call_1", "tool_class": "bash", "status": "succeeded",
                       "started_at_unix_ms": started, "ended_at_unix_ms": ended,
                       "duration_ms": round(float(ended - started), 3), "output_bytes": 42,
                       "error_type": "pi_tool_error"}}
    push.send_multipart([b"agent-tool-events", struct.pack(">Q", 0),
                         msgpack.packb(record, use_bin_type=True)])
    push.close()
    ctx.term()


def test_agent_run_traces_to_perfetto_and_mooncake(stack_factory, tmp_path):
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    trace = tmp_path / "trace.jsonl"
    stack = stack_factory()
    stack.start_worker()
    stack.start_worker()
    frontend = stack.start_frontend(env={
        "DYN_AGENT_TRACE": "1", "DYN_AGENT_TRACE_SINKS": "jsonl",
        "DYN_AGENT_TRACE_OUTPUT_PATH": str(trace),
        "DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_ENDPOINT": endpoint})
    stack.wait_for_workers(2)
    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="x", max_retries=0, timeout=30)

    call(client, MAIN, "main-1", "plan the work")
    call(client, CHILD, "sub-1", "research a detail")           # spawned after main-1
    started = now_ms()
    time.sleep(TOOL_MS / 1000)                                   # the harness runs a tool
    push_tool_event(endpoint, started, now_ms())
    call(client, MAIN, "main-2", "finish the work")              # after the child and the tool
    client.chat.completions.create(                              # Pi's final, unary request
        model="rotor-mock", max_tokens=1, messages=[{"role": "user", "content": "bye"}],
        extra_body={"nvext": {"agent_context": {**MAIN, "trajectory_final": True}}})

    stack.kill(frontend.pid, sig=15)                             # SIGTERM flushes the trace
    frontend.wait(timeout=10)
    rows = [json.loads(line) for line in trace.read_text().splitlines()]
    events = [row["event"] for row in rows]
    requests = {e["request"].get("x_request_id"): e for e in events
                if e["event_type"] == "request_end"}
    (tool,) = [e for e in events if e["event_type"] == "tool_end"]
    assert set(requests) == {"main-1", "sub-1", "main-2", None}   # None: the final request
    assert requests[None]["agent_context"]["trajectory_final"] is True

    first = requests["main-1"]
    assert first["schema"] == "dynamo.agent.trace.v1" and first["event_source"] == "dynamo"
    assert first["agent_context"] == {k: v for k, v in MAIN.items() if k != "phase"}
    request = first["request"]
    assert request["model"] == "rotor-mock" and request["output_tokens"] == 8
    assert isinstance(request["input_tokens"], int) and request["input_tokens"] > 64
    assert 0 < request["prefill_time_ms"] <= request["ttft_ms"] <= request["total_time_ms"]
    assert request["worker"]["prefill_worker_id"] == request["worker"]["decode_worker_id"]
    assert request["replay"]["trace_block_size"] == 64
    assert len(request["replay"]["input_sequence_hashes"]) == -(-request["input_tokens"] // 64)
    assert request["finish_reason_metadata"]["finish_reason"] == "length"
    assert all(v is not None for v in request.values())
    assert tool["schema"] == "dynamo.agent.trace.v1" and tool["tool"]["status"] == "succeeded"

    # Perfetto: LLM, stage and tool slices of the main trajectory in its session's process
    perfetto = tmp_path / "perfetto.json"
    subprocess.run([sys.executable, "-m", "tracing.perfetto", str(trace), "-o", str(perfetto)],
                   check=True, cwd=ROOT, capture_output=True)
    slices = json.loads(perfetto.read_text())["traceEvents"]
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in slices
             if e.get("ph") == "M" and e["name"] == "thread_name"}
    main_thread = [k for k, v in names.items() if v.startswith("run-1:main")]
    on_main = [e for e in slices if e.get("ph") == "X" and (e["pid"], e["tid"]) in main_thread]
    categories = {e["cat"] for e in on_main}
    assert {"dynamo.llm", "dynamo.llm.stage", "dynamo.agent.tool"} <= categories, categories
    assert len({e["pid"] for e in on_main}) == 1
    assert sum(e["cat"] == "dynamo.llm" for e in on_main) == 3

    # Mooncake: main-2 waits for main-1 and the child, then the tool
    mooncake = tmp_path / "agentic.jsonl"
    out = subprocess.run([sys.executable, "-m", "tracing.to_mooncake", "--input-path", str(trace),
                          "--output-file", str(mooncake), "--agentic"], check=True, cwd=ROOT,
                         capture_output=True, text=True).stdout
    assert "Tool events: 1 spans" in out
    rows = {r["request_id"]: r for r in map(json.loads, mooncake.read_text().splitlines())}
    by_x = {e["request"]["x_request_id"]: e["request"]["request_id"]
            for e in requests.values() if e["request"].get("x_request_id")}
    second = rows[by_x["main-2"]]
    assert set(second["wait_for"]) == {by_x["main-1"], by_x["sub-1"]}
    assert TOOL_MS - 50 <= second["tool_wait_ms"] <= TOOL_MS + 50
    assert second["delay"] >= 0
    assert rows[by_x["sub-1"]]["wait_for"] == [by_x["main-1"]]
    assert rows[by_x["main-1"]]["branches"] == [by_x["sub-1"]]
    assert rows[by_x["main-2"]]["hash_ids"][:3] == rows[by_x["main-1"]]["hash_ids"][:3]
