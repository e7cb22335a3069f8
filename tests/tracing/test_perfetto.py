"""The Perfetto converter: Dynamo's validator checks (validate_convert_to_perfetto.py) with G1
ids, plus the CLI over files, folders, globs and gzip."""

import gzip
import json
import subprocess
import sys
from pathlib import Path

from tests.tracing.trace_factories import context, request_end, tool_record, write_jsonl
from tracing.perfetto import convert, main

ROOT = Path(__file__).resolve().parents[2]
CTX = context(session="session-1", trajectory="session-1:researcher")


def request(**fields):
    base = {"request_id": "req-1", "model": "test-model", "request_received_ms": 1000,
            "prefill_wait_time_ms": 5, "prefill_time_ms": 7, "ttft_ms": 12, "total_time_ms": 50}
    base.update(fields)
    return {"schema": "dynamo.agent.trace.v1", "event_type": "request_end",
            "event_time_unix_ms": 1050, "event_source": "dynamo", "agent_context": CTX,
            "request": base}


def of(trace, cat):
    return [e for e in trace["traceEvents"] if e.get("cat") == cat]


def thread_names(trace):
    return [e["args"]["name"] for e in trace["traceEvents"] if e.get("name") == "thread_name"]


def test_request_stages_and_metadata():
    record = request(x_request_id="caller-1", input_tokens=100, output_tokens=10,
                     cached_tokens=80, avg_itl_ms=4.2, kv_hit_rate=0.8, queue_depth=2,
                     worker={"prefill_worker_id": 1, "prefill_dp_rank": 0,
                             "decode_worker_id": 2, "decode_dp_rank": 0})
    trace, converted = convert([{"timestamp": 10, "event": record}["event"]],
                               include_stages=True, include_markers=True)
    assert converted == 1
    meta = [e for e in trace["traceEvents"] if e["ph"] == "M"]
    assert meta[0] == {"name": "process_name", "ph": "M", "pid": 1,
                       "args": {"name": "session: session-1"}}
    (req,) = of(trace, "dynamo.llm")
    assert req["name"] == "LLM request: test-model"
    assert (req["ts"], req["dur"]) == (1_000_000, 50_000)
    assert req["args"]["x_request_id"] == "caller-1"
    assert req["args"]["worker.decode_worker_id"] == 2
    assert req["args"]["session_id"] == "session-1"
    stages = of(trace, "dynamo.llm.stage")
    assert {e["tid"] for e in stages} == {req["tid"]}
    assert [(e["name"], e["ts"], e["dur"]) for e in sorted(stages, key=lambda e: e["ts"])] == [
        ("prefill wait", 1_000_000, 5_000), ("prefill", 1_005_000, 7_000),
        ("decode", 1_012_000, 38_000)]
    (marker,) = of(trace, "dynamo.llm.marker")
    assert (marker["name"], marker["ts"], marker["ph"]) == ("first token", 1_012_000, "i")
    assert trace["displayTimeUnit"] == "ms"


def test_stages_on_separate_tracks():
    trace, _ = convert([request()], include_stages=True, separate_stage_tracks=True)
    (req,) = of(trace, "dynamo.llm")
    assert {e["tid"] for e in of(trace, "dynamo.llm.stage")} != {req["tid"]}
    assert thread_names(trace) == ["session-1:researcher", "session-1:researcher stages"]


def test_stage_rounding_is_clamped_so_stages_nest():
    record = request(request_received_ms=0, prefill_wait_time_ms=230.700717,
                     prefill_time_ms=2144.397696, ttft_ms=2375.098413,
                     total_time_ms=49743.776002)
    record["event_time_unix_ms"] = 49_743.776002
    trace, _ = convert([record], include_stages=True)
    stages = sorted(of(trace, "dynamo.llm.stage"), key=lambda e: e["ts"])
    assert [e["name"] for e in stages] == ["prefill wait", "prefill", "decode"]
    for current, following in zip(stages, stages[1:]):
        assert current["ts"] + current["dur"] <= following["ts"]
    assert stages[1]["ts"] + stages[1]["dur"] == stages[2]["ts"]
    (req,) = of(trace, "dynamo.llm")
    assert stages[-1]["ts"] + stages[-1]["dur"] <= req["ts"] + req["dur"]


def test_stages_longer_than_ttft_are_clamped_inside_the_request():
    record = request(prefill_wait_time_ms=30, prefill_time_ms=30, ttft_ms=40, total_time_ms=45)
    trace, _ = convert([record])
    stages = sorted(of(trace, "dynamo.llm.stage"), key=lambda e: e["ts"])
    assert [(e["name"], e["ts"], e["dur"]) for e in stages] == [
        ("prefill wait", 1_000_000, 30_000), ("prefill", 1_030_000, 10_000),
        ("decode", 1_040_000, 5_000)]
    assert stages[0]["args"]["prefill_wait_time_ms"] == 30   # raw value kept


def test_overlapping_requests_of_a_trajectory_get_lanes():
    def record(request_id, start, total):
        r = request(request_id=request_id, request_received_ms=start, total_time_ms=total,
                    ttft_ms=10)
        r["event_time_unix_ms"] = start + total
        return r

    trace, converted = convert([record("req-1", 1000, 100), record("req-2", 1050, 100)],
                               include_stages=False, include_markers=False)
    assert converted == 2
    assert not of(trace, "dynamo.llm.marker")
    assert thread_names(trace) == ["session-1:researcher [lane 1]",
                                   "session-1:researcher [lane 2]"]
    tids = {e["args"]["request_id"]: e["tid"] for e in of(trace, "dynamo.llm")}
    assert tids["req-1"] != tids["req-2"]


def test_a_tool_duration_slice():
    record = tool_record("tool_end", 1250, ctx=CTX, status="succeeded", duration_ms=250,
                         output_bytes=2048)
    trace, converted = convert([record])
    assert converted == 1
    (tool,) = of(trace, "dynamo.agent.tool")
    assert (tool["name"], tool["ts"], tool["dur"]) == ("Tool: web_search", 1_000_000, 250_000)
    assert tool["args"]["tool_call_id"] == "call-1"
    assert tool["args"]["output_bytes"] == 2048
    assert thread_names(trace) == ["session-1:researcher tools"]


def test_tool_start_and_end_pair_without_a_duration():
    start = tool_record("tool_start", 1000, ctx=CTX, status="running")
    end = tool_record("tool_end", 1250, ctx=CTX, status="succeeded")
    trace, converted = convert([end, start], include_markers=True)   # any input order
    assert converted == 1
    assert not of(trace, "dynamo.agent.tool.marker")
    (tool,) = of(trace, "dynamo.agent.tool")
    assert (tool["ts"], tool["dur"]) == (1_000_000, 250_000)


def test_a_zero_duration_tool_is_a_synthetic_span():
    start = tool_record("tool_start", 1000, ctx=CTX, tool_class="file_system", status="running")
    end = tool_record("tool_end", 1000, ctx=CTX, tool_class="file_system", status="succeeded",
                      duration_ms=0.0)
    trace, converted = convert([start, end])
    assert converted == 1
    assert not of(trace, "dynamo.agent.tool.marker")
    (tool,) = of(trace, "dynamo.agent.tool")
    assert (tool["name"], tool["ts"], tool["dur"]) == ("Tool: file_system", 1_000_000, 1_000)
    assert tool["args"]["duration_ms"] == 0.0
    assert tool["args"]["synthetic_duration"] is True
    assert tool["args"]["visual_duration_ms"] == 1.0


def test_tool_span_rules_and_error_names():
    records = [
        tool_record("tool_end", 9000, ctx=CTX, tool_call_id="a", started_at_unix_ms=2000,
                    ended_at_unix_ms=2300, duration_ms=5),               # started..ended
        tool_record("tool_error", 9000, ctx=CTX, tool_call_id="b", tool_class="bash",
                    started_at_unix_ms=3000, duration_ms=40, status="error"),  # started+duration
    ]
    trace, _ = convert(records)
    spans = {e["args"]["tool_call_id"]: e for e in of(trace, "dynamo.agent.tool")}
    assert (spans["a"]["ts"], spans["a"]["dur"]) == (2_000_000, 300_000)
    assert (spans["b"]["ts"], spans["b"]["dur"], spans["b"]["name"]) == (
        3_000_000, 40_000, "Tool error: bash")


def test_an_unended_tool_start_is_a_marker_only_with_markers():
    start = tool_record("tool_start", 1000, ctx=CTX, status="running")
    assert convert([start])[1] == 0
    trace, converted = convert([start], include_markers=True)
    (marker,) = of(trace, "dynamo.agent.tool.marker")
    assert (marker["name"], marker["ts"], marker["ph"]) == ("Tool start: web_search",
                                                            1_000_000, "i")


def test_requests_and_tools_share_lanes_and_sessions_get_processes():
    other = context(session="session-2", trajectory="session-2:main")
    records = [request(),
               tool_record("tool_end", 1040, ctx=CTX, started_at_unix_ms=1020,
                           ended_at_unix_ms=1040),            # overlaps the request
               request_end("r2", 5000, 5100, ctx=other)]
    trace, _ = convert(records)
    assert thread_names(trace) == ["session-1:researcher [lane 1]",
                                   "session-1:researcher [lane 2] tools", "session-2:main"]
    procs = [e["args"]["name"] for e in trace["traceEvents"] if e["name"] == "process_name"]
    assert procs == ["session: session-1", "session: session-2"]
    timed = [e for e in trace["traceEvents"] if e["ph"] != "M"]
    assert timed == sorted(timed, key=lambda e: (e["ts"], e["pid"], e["tid"]))


def test_finish_metadata_is_flattened_into_args_and_nulls_dropped():
    finish = {"finish_reason": "tool_calls", "backend_finish_reason": "stop",
              "tool_calls": [{"choice_index": 0, "tool_call_index": 0, "id": "c1", "name": "read"},
                             {"choice_index": 0, "tool_call_index": 1, "id": "c2",
                              "name": "bash"}],
              "choices": [{"choice_index": 0, "finish_reason": "tool_calls"}]}
    trace, _ = convert([request(finish_reason_metadata=finish)])
    args = of(trace, "dynamo.llm")[0]["args"]
    assert args["finish_reason_metadata"] == finish
    assert args["finish.finish_reason"] == "tool_calls"
    assert args["finish.tool_call_count"] == 2
    assert args["finish.tool_call_names"] == "read,bash"
    assert args["finish.choice_count"] == 1
    assert args["finish.choice_finish_reasons"] == "0:tool_calls"
    assert "finish.stop_reason" not in args and "parent_trajectory_id" not in args


def test_other_schemas_and_records_without_context_are_skipped():
    foreign = {**request(), "schema": "something.else"}
    no_context = {**request(), "agent_context": None}
    assert convert([foreign, no_context])[1] == 0


def test_cli_reads_files_folders_globs_gzip_envelopes_and_bare_records(tmp_path, capsys):
    folder = tmp_path / "shards"
    folder.mkdir()
    write_jsonl(folder / "a.jsonl", [request_end("r1", 1000, 1100)])
    gz = folder / "b.jsonl.gz"
    gz.write_bytes(gzip.compress(json.dumps({"timestamp": 1, "event": request_end(
        "r2", 2000, 2100)}).encode() + b"\n\n") + gzip.compress(
        json.dumps(request_end("r3", 3000, 3100)).encode() + b"\n"))    # two members, bare
    write_jsonl(tmp_path / "c.jsonl", [request_end("r4", 500, 600)], envelope=False)
    out = tmp_path / "out" / "trace.json"
    assert main([str(folder), str(tmp_path / "c.*"), "-o", str(out), "--no-stages"]) == 0
    trace = json.loads(out.read_text())
    ids = [e["args"]["request_id"] for e in of(trace, "dynamo.llm")]
    assert ids == ["r4", "r1", "r2", "r3"]
    assert not of(trace, "dynamo.llm.stage")
    assert "wrote 4 trace events from 3 input file(s)" in capsys.readouterr().err
    assert "\n  " not in out.read_text()                  # compact


def test_cli_pretty_missing_input_and_help(tmp_path, capsys):
    write_jsonl(tmp_path / "a.jsonl", [request_end()])
    out = tmp_path / "p.json"
    assert main([str(tmp_path / "a.jsonl"), "-o", str(out), "--pretty"]) == 0
    assert out.read_text().startswith('{\n  "displayTimeUnit"')
    assert main([str(tmp_path / "missing.jsonl"), "-o", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    assert main([str(tmp_path / "bad.jsonl"), "-o", str(out)]) == 1
    assert "bad.jsonl:1: invalid JSON" in capsys.readouterr().err
    help_text = subprocess.run([sys.executable, "-m", "tracing.perfetto", "--help"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
    for flag in ("--no-stages", "--separate-stage-tracks", "--include-markers", "--pretty", "-o"):
        assert flag in help_text
