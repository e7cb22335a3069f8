"""Trace -> Mooncake: Dynamo's converter tests (agent_trace_to_mooncake) through real files,
the issue's pinned cases, and clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tracing.trace_factories import context, request_end, tool_record, tool_span, write_jsonl
from tracing.reader import read_lines
from tracing.to_mooncake import ConversionError, agentic_rows, load, main, plain_rows

ROOT = Path(__file__).resolve().parents[2]


def req(request_id, start, end, hashes=None, trajectory="root", parent=None, **fields):
    return request_end(request_id, start, end, hashes=hashes,
                       ctx=context(trajectory=trajectory, parent=parent), **fields)


def rows_of(tmp_path, records, agentic=True):
    path = write_jsonl(tmp_path / "trace.jsonl", records)
    loaded = load(read_lines([path]))
    return (agentic_rows if agentic else plain_rows)(loaded)[1]


def by_id(rows):
    return {row["request_id"]: row for row in rows}


# --- plain rows ---

def test_plain_rows_keep_absolute_timestamps_and_share_prefix_ids(tmp_path):
    rows = rows_of(tmp_path, [req("req-b", 1500, 1600, [11, 33]), req("req-a", 1000, 1100, [11, 22])],
                   agentic=False)
    assert rows == [
        {"input_length": 4, "output_length": 5, "hash_ids": [0, 1], "timestamp": 0.0},
        {"input_length": 4, "output_length": 5, "hash_ids": [0, 2], "timestamp": 500.0}]


def test_plain_rows_keep_parallel_starts_as_independent_arrivals(tmp_path):
    rows = rows_of(tmp_path, [req("req-a", 1000, 1500, [11]), req("req-b", 1000, 1700, [22])],
                   agentic=False)
    assert [r["timestamp"] for r in rows] == [0.0, 0.0]
    assert all("session_id" not in r and "delay" not in r for r in rows)


def test_request_times_use_event_time_when_total_is_missing(tmp_path):
    record = req("req", 1000, 1250)
    del record["request"]["total_time_ms"]
    other = req("other", 1100, 1200)
    rows = rows_of(tmp_path, [record, other])
    # req ends at its event time 1250, so "other" (start 1100, same trajectory) comes second
    assert [r["request_id"] for r in rows] == ["req", "other"]
    assert by_id(rows)["other"]["delay"] == 0.0         # started before req ended: gap clipped


def test_request_start_falls_back_to_event_time_minus_total(tmp_path):
    record = req("late", 2000, 2300)
    del record["request"]["request_received_ms"]
    rows = rows_of(tmp_path, [req("first", 1000, 1100), record], agentic=False)
    assert [r["timestamp"] for r in rows] == [0.0, 1000.0]


# --- agentic rows: the pinned cases ---

def test_sequential_waits_and_tool_wait(tmp_path):
    rows = rows_of(tmp_path, [req("r1", 1000, 1100, [11]), req("r2", 1300, 1400, [11, 22]),
                              tool_span("root", "call-1", "ls", 1150, 1250)])
    r1, r2 = rows
    assert r1 == {"request_id": "r1", "session_id": "root", "input_length": 2,
                  "output_length": 5, "hash_ids": [0], "timestamp": 0.0, "prefix_reset": True}
    assert r2["wait_for"] == ["r1"] and r2["prefix_reset"] is False
    assert (r2["delay"], r2["tool_wait_ms"]) == (100.0, 100.0)
    assert r2["tool_events"] == [{"tool_call_id": "call-1", "tool_class": "ls",
                                  "started_at_unix_ms": 1150, "ended_at_unix_ms": 1250,
                                  "duration_ms": 100.0, "status": "succeeded"}]
    assert list(r2) == ["request_id", "session_id", "input_length", "output_length", "hash_ids",
                        "timestamp", "delay", "wait_for", "prefix_reset", "tool_wait_ms",
                        "tool_events"]
    assert r2["hash_ids"] == [0, 1]


def test_parallel_tools_count_as_their_union_not_their_sum(tmp_path):
    rows = rows_of(tmp_path, [req("r1", 1000, 1100, [11]), req("r2", 1400, 1500, [11, 22]),
                              tool_span("root", "call-1", "read", 1100, 1300),
                              tool_span("root", "call-2", "read", 1150, 1250),
                              tool_span("root", "call-3", "find", 1200, 1250)])
    r2 = by_id(rows)["r2"]
    assert r2["tool_wait_ms"] == 200.0
    assert r2["delay"] == 100.0
    assert [t["tool_call_id"] for t in r2["tool_events"]] == ["call-1", "call-2", "call-3"]


def test_child_spawned_after_and_joined_before_makes_the_parent_wait_for_both(tmp_path):
    rows = by_id(rows_of(tmp_path, [
        req("parent-1", 1000, 1100, [11]),
        req("child-1", 1200, 1300, [33], trajectory="child", parent="root"),
        req("parent-2", 1500, 1600, [11, 22])]))
    assert rows["child-1"]["wait_for"] == ["parent-1"]
    assert rows["child-1"]["prefix_reset"] is True
    assert rows["parent-1"]["branches"] == ["child-1"]
    assert rows["parent-2"]["wait_for"] == ["parent-1", "child-1"]
    assert rows["parent-2"]["delay"] == 200.0           # from the child's end at 1300
    assert "tool_wait_ms" not in rows["parent-2"]


def test_join_waits_for_the_last_finishing_child_request(tmp_path):
    rows = by_id(rows_of(tmp_path, [
        req("parent-1", 1000, 1100, [11]),
        req("child-slow", 1200, 1900, [33], trajectory="child", parent="root"),
        req("child-fast", 1300, 1400, [44], trajectory="child", parent="root"),
        req("parent-2", 1500, 1600, [11, 22]),
        req("parent-3", 2000, 2100, [11, 22, 55])]))
    assert "child-fast" not in rows["parent-2"]["wait_for"]
    assert "child-slow" in rows["parent-3"]["wait_for"]
    assert rows["child-fast"]["wait_for"] == ["child-slow"]     # sequence inside the child


def test_tools_clip_to_the_gap_and_belong_to_their_trajectory(tmp_path):
    rows = by_id(rows_of(tmp_path, [
        req("r1", 1000, 1100), req("r2", 1300, 1400),
        tool_span("root", "early", "bash", 900, 1150),          # clipped to [1100, 1150]
        tool_span("root", "late", "bash", 1280, 1500),          # clipped to [1280, 1300]
        tool_span("other", "elsewhere", "bash", 1100, 1300)]))  # another trajectory
    r2 = rows["r2"]
    assert r2["tool_wait_ms"] == 70.0 and r2["delay"] == 130.0
    assert [t["tool_call_id"] for t in r2["tool_events"]] == ["early", "late"]
    assert r2["tool_events"][0]["started_at_unix_ms"] == 900        # unclipped


def test_tool_times_and_status_defaults(tmp_path):
    error = tool_record("tool_error", 1290, ctx=context(trajectory="root"), tool_call_id="e",
                        tool_class="bash", duration_ms=40.4, error_type="Timeout")
    start_only = tool_record("tool_start", 1150, ctx=context(trajectory="root"))
    backwards = tool_record("tool_end", 1200, ctx=context(trajectory="root"), tool_call_id="b",
                            started_at_unix_ms=1250, ended_at_unix_ms=1200)
    rows = by_id(rows_of(tmp_path, [req("r1", 1000, 1100), req("r2", 1300, 1400), error,
                                    start_only, backwards]))
    assert rows["r2"]["tool_events"] == [{"tool_call_id": "e", "tool_class": "bash",
                                          "started_at_unix_ms": 1250, "ended_at_unix_ms": 1290,
                                          "duration_ms": 40.4, "status": "error",
                                          "error_type": "Timeout"}]
    assert rows["r2"]["tool_wait_ms"] == 40.0


def test_requests_without_context_are_their_own_session(tmp_path):
    record = req("solo", 1000, 1100)
    del record["agent_context"]
    (row,) = rows_of(tmp_path, [record])
    assert row["session_id"] == "solo" and row["prefix_reset"] is True


# --- errors ---

def test_mixed_block_sizes_name_both_places(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [req("r1", 1000, 1100, block_size=2)])
    b = write_jsonl(tmp_path / "b.jsonl", [req("r0", 900, 950, block_size=2),
                                           req("r2", 1200, 1300, block_size=4)])
    with pytest.raises(ConversionError, match=r"mixed replay trace_block_size values are not "
                                              r"supported: 2 \(first at .*a.jsonl:1\) and 4 at "
                                              r".*b.jsonl:2"):
        plain_rows(load(read_lines([a, b])))


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r["request"].pop("replay"), r"trace.jsonl:2: request r2 has no replay data"),
    (lambda r: r["request"]["replay"].update(trace_block_size=0),
     r"trace.jsonl:2: replay.trace_block_size must be greater than 0"),
    (lambda r: r["request"]["replay"].update(input_length=99),
     r"trace.jsonl:2: input_length 99 exceeds replay hash capacity 2"),
    (lambda r: r.pop("request"), r"trace.jsonl:2: request_end record is missing its request"),
    (lambda r: r.pop("event_time_unix_ms"), r"trace.jsonl:2: event_time_unix_ms is required"),
    (lambda r: r["request"].pop("output_tokens"), r"trace.jsonl:2: request r2 is missing its "
                                                  r"output length"),
])
def test_bad_request_rows_are_clear_errors(tmp_path, mutate, message):
    bad = req("r2", 1200, 1300)
    mutate(bad)
    with pytest.raises(ConversionError, match=message):
        rows_of(tmp_path, [req("r1", 1000, 1100), bad])


def test_duplicate_request_ids_are_an_error_in_both_modes(tmp_path):
    for agentic in (False, True):
        with pytest.raises(ConversionError, match=r"duplicate request_id r1 at .*:1 and .*:2"):
            rows_of(tmp_path, [req("r1", 1000, 1100), req("r1", 1200, 1300)], agentic)


def test_conflicting_parent_trajectories_are_an_error(tmp_path):
    with pytest.raises(ConversionError, match="conflicting parent_trajectory_id"):
        rows_of(tmp_path, [req("child-1", 1000, 1100, trajectory="child", parent="root-a"),
                           req("child-2", 1200, 1300, trajectory="child", parent="root-b")])


def test_a_trace_without_requests_is_an_error(tmp_path):
    with pytest.raises(ConversionError, match="no request_end records"):
        rows_of(tmp_path, [tool_span("root", "c", "ls", 1, 2)])


# --- CLI ---

def test_cli_writes_rows_and_prints_the_summary(tmp_path, capsys):
    first = write_jsonl(tmp_path / "a.jsonl", [req("r1", 1000, 1100, [11])])
    gz = write_jsonl(tmp_path / "b.jsonl.gz", [
        req("r2", 1300, 1400, [11, 22]), tool_span("root", "call-1", "ls", 1150, 1250),
        tool_record("tool_error", 1280, ctx=context(trajectory="root"), tool_call_id="x",
                    tool_class="bash", started_at_unix_ms=1260, ended_at_unix_ms=1280)])
    out = tmp_path / "out" / "mooncake.jsonl"
    assert main(["--input-path", str(first), "--input-path", str(gz), "--output-file", str(out),
                 "--agentic"]) == 0
    printed = capsys.readouterr().out
    assert printed == (f"Wrote 2 Agentic Mooncake rows to {out}\nTrace block size: 2\n\n"
                       "Tool events: 2 spans across 1 trajectories\n"
                       "  Status:    error=1 succeeded=1\n"
                       "  Class:     bash=1 ls=1\n"
                       "  Wall-time: 0.12s\n")
    lines = out.read_text().splitlines()
    assert lines[0] == ('{"request_id":"r1","session_id":"root","input_length":2,'
                        '"output_length":5,"hash_ids":[0],"timestamp":0.0,"prefix_reset":true}')
    assert json.loads(lines[1])["tool_wait_ms"] == 120.0

    plain = tmp_path / "plain.jsonl"
    assert main(["--input-path", str(first), str(gz), "--output-file", str(plain)]) == 0
    assert capsys.readouterr().out.startswith(f"Wrote 2 Mooncake rows to {plain}\n")
    assert plain.read_text().splitlines()[1] == ('{"input_length":4,"output_length":5,'
                                                 '"hash_ids":[0,1],"timestamp":300.0}')


def test_cli_errors_and_help(tmp_path, capsys):
    assert main(["--input-path", str(tmp_path / "nope.jsonl"), "--output-file",
                 str(tmp_path / "o.jsonl")]) == 1
    assert "does not exist" in capsys.readouterr().err
    bad = write_jsonl(tmp_path / "bad.jsonl", [req("r1", 1000, 1100), req("r1", 1200, 1300)])
    assert main(["--input-path", str(bad), "--output-file", str(tmp_path / "o.jsonl")]) == 1
    assert "error: duplicate request_id r1" in capsys.readouterr().err
    help_text = subprocess.run([sys.executable, "-m", "tracing.to_mooncake", "--help"], cwd=ROOT,
                               capture_output=True, text=True, check=True).stdout
    for flag in ("--input-path", "--output-file", "--agentic"):
        assert flag in help_text
