"""Agent traces -> Mooncake replay rows (DESIGN.md §6.4; rules: notes/dynamo-agent-facts.md §5.2).

    python -m tracing.to_mooncake --input-path TRACE... --output-file OUT.jsonl [--agentic]

Loading. Every `request_end` needs `request` with `request_id` and `replay`
{trace_block_size > 0, input_length, input_sequence_hashes} with len(hashes) × B ≥ input_length;
one B for the whole trace (the first request row's). Terminal tool rows (`tool_end`,
`tool_error`) with `agent_context` and `tool` are kept; `tool_start` rows and other types are
ignored. At least one request is needed.

Times (integer unix ms):
    request   T = round(max(total_time_ms, 0)), or event_time - received when total is missing
              start = received (or event_time - T); end = received + T (or event_time)
    tool      end = ended_at (or event_time); start = started_at (or end - round(duration), or end);
              skipped if end < start; duration defaults to end - start; status defaults to
              `error` for tool_error and `succeeded` otherwise

Rows are ordered by (start, end, request_id); `timestamp` = start - min(start) in float ms; one
first-seen counter from 0 maps sequence hashes to `hash_ids` across all rows, so shared prefixes
share leading ids.

Plain rows: {input_length, output_length, hash_ids, timestamp}; no session, so every request is an
independent arrival.

Agentic rows add the dependency DAG, in this field order:
    request_id, session_id, input_length, output_length, hash_ids, timestamp, delay, wait_for,
    branches, prefix_reset, tool_wait_ms, tool_events            (empty lists and None omitted)
    session_id = trajectory_id (request_id without a context)
    sequence   each request of a trajectory waits for the one before it; prefix_reset marks the first
    spawn      a child trajectory's first request waits for the parent request that ended last at or
               before the child's first start; that parent request lists it in `branches`
    join       the first parent request starting at or after the child's last-finishing request
               (max end, then start, then id) ends waits for that child request
    timing     dep_end = max end of wait_for; gap = max(0, start - dep_end);
               tool_wait = union of the trajectory's tool spans clipped to [dep_end, start], capped
               at gap; delay = gap - tool_wait (always present); tool_wait_ms only when > 0;
               tool_events = the contributing tools, unclipped
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracing.reader import TraceLine, TraceReadError, expand_inputs, read_lines
from tracing.records import TERMINAL_TOOL_EVENT_TYPES, round_half_away


class ConversionError(ValueError):
    """The trace cannot be converted; the message says where and why."""


@dataclass(slots=True)
class RequestEntry:
    request_id: str
    start_ms: int
    end_ms: int
    trajectory_id: str | None          # None: no agent_context
    parent_trajectory_id: str | None
    output_tokens: int | None
    block_size: int
    input_length: int
    hashes: list[int]
    where: str                         # file:line


@dataclass(slots=True)
class ToolEntry:
    trajectory_id: str
    start_ms: int
    end_ms: int
    tool_call_id: str
    tool_class: str
    status: str
    duration_ms: float
    output_bytes: int | None
    output_tokens: int | None
    error_type: str | None

    def to_event(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tool_call_id": self.tool_call_id, "tool_class": self.tool_class,
                               "started_at_unix_ms": max(self.start_ms, 0),
                               "ended_at_unix_ms": max(self.end_ms, 0),
                               "duration_ms": self.duration_ms, "status": self.status}
        if self.output_bytes is not None:
            out["output_bytes"] = self.output_bytes
        if self.output_tokens is not None:
            out["output_tokens"] = self.output_tokens
        if self.error_type is not None:
            out["error_type"] = self.error_type
        return out


@dataclass(slots=True)
class LoadedTrace:
    requests: list[RequestEntry] = field(default_factory=list)
    tools: list[ToolEntry] = field(default_factory=list)


# --- loading ---------------------------------------------------------------------------------

def _uint(value: Any, name: str, where: str, required: bool = False) -> int | None:
    if value is None:
        if required:
            raise ConversionError(f"{where}: {name} is required")
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConversionError(f"{where}: {name} must be a non-negative integer, got {value!r}")
    return value


def _float(value: Any, name: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConversionError(f"{where}: {name} must be a number, got {value!r}")
    return float(value)


def _str(value: Any, name: str, where: str, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise ConversionError(f"{where}: {name} is required")
        return None
    if not isinstance(value, str):
        raise ConversionError(f"{where}: {name} must be a string, got {value!r}")
    return value


def _request_entry(line: TraceLine, event_time: int) -> RequestEntry:
    where, event = line.where, line.event
    request = event.get("request")
    if not isinstance(request, dict):
        raise ConversionError(f"{where}: request_end record is missing its request payload")
    request_id = _str(request.get("request_id"), "request.request_id", where, required=True)
    replay = request.get("replay")
    if not isinstance(replay, dict):
        raise ConversionError(f"{where}: request {request_id} has no replay data (record it with "
                              f"DYN_AGENT_TRACE_REPLAY_HASHES on)")
    block_size = _uint(replay.get("trace_block_size"), "replay.trace_block_size", where, True)
    input_length = _uint(replay.get("input_length"), "replay.input_length", where, True)
    hashes = replay.get("input_sequence_hashes")
    if not isinstance(hashes, list) or not all(
            isinstance(h, int) and not isinstance(h, bool) and 0 <= h < 1 << 64 for h in hashes):
        raise ConversionError(f"{where}: replay.input_sequence_hashes must be a list of u64")
    assert block_size is not None and input_length is not None
    if block_size == 0:
        raise ConversionError(f"{where}: replay.trace_block_size must be greater than 0")
    if len(hashes) * block_size < input_length:
        raise ConversionError(f"{where}: input_length {input_length} exceeds replay hash capacity "
                              f"{len(hashes) * block_size}")
    received = _uint(request.get("request_received_ms"), "request.request_received_ms", where)
    total = _float(request.get("total_time_ms"), "request.total_time_ms", where)
    if total is not None:
        span = round_half_away(max(total, 0.0)) if math.isfinite(total) else 0
    else:
        span = max(event_time - (received if received is not None else event_time), 0)
    end = received + span if received is not None else event_time
    start = received if received is not None else max(event_time - span, 0)
    context = event.get("agent_context")
    trajectory = parent = None
    if context is not None:
        if not isinstance(context, dict):
            raise ConversionError(f"{where}: agent_context must be an object")
        _str(context.get("session_id"), "agent_context.session_id", where, required=True)
        trajectory = _str(context.get("trajectory_id"), "agent_context.trajectory_id", where,
                          required=True)
        parent = _str(context.get("parent_trajectory_id"), "agent_context.parent_trajectory_id",
                      where)
    return RequestEntry(request_id, start, end, trajectory, parent,
                        _uint(request.get("output_tokens"), "request.output_tokens", where),
                        block_size, input_length, list(hashes), where)


def _tool_entry(line: TraceLine, event_time: int) -> ToolEntry | None:
    where, event = line.where, line.event
    context, tool = event.get("agent_context"), event.get("tool")
    if not isinstance(context, dict) or not isinstance(tool, dict):
        return None
    trajectory = _str(context.get("trajectory_id"), "agent_context.trajectory_id", where, True)
    ended = _uint(tool.get("ended_at_unix_ms"), "tool.ended_at_unix_ms", where)
    started = _uint(tool.get("started_at_unix_ms"), "tool.started_at_unix_ms", where)
    duration = _float(tool.get("duration_ms"), "tool.duration_ms", where)
    end = ended if ended is not None else event_time
    if started is not None:
        start = started
    elif duration is not None:
        start = end - round_half_away(max(duration, 0.0))
    else:
        start = end
    if end < start:
        return None
    status = _str(tool.get("status"), "tool.status", where)
    if status is None:
        status = "error" if event.get("event_type") == "tool_error" else "succeeded"
    assert trajectory is not None
    return ToolEntry(trajectory, start, end,
                     _str(tool.get("tool_call_id"), "tool.tool_call_id", where) or "",
                     _str(tool.get("tool_class"), "tool.tool_class", where) or "",
                     status, duration if duration is not None else float(max(end - start, 0)),
                     _uint(tool.get("output_bytes"), "tool.output_bytes", where),
                     _uint(tool.get("output_tokens"), "tool.output_tokens", where),
                     _str(tool.get("error_type"), "tool.error_type", where))


def load(lines: Iterable[TraceLine]) -> LoadedTrace:
    """Request and terminal tool entries of a trace, in file order; ConversionError naming the
    file and line of the first bad record."""
    loaded = LoadedTrace()
    for line in lines:
        event_type = line.event.get("event_type")
        if not isinstance(event_type, str):
            raise ConversionError(f"{line.where}: record has no event_type")
        if event_type != "request_end" and event_type not in TERMINAL_TOOL_EVENT_TYPES:
            continue
        event_time = _uint(line.event.get("event_time_unix_ms"), "event_time_unix_ms",
                           line.where, required=True)
        assert event_time is not None
        if event_type == "request_end":
            loaded.requests.append(_request_entry(line, event_time))
        elif (tool := _tool_entry(line, event_time)) is not None:
            loaded.tools.append(tool)
    if not loaded.requests:
        raise ConversionError("no request_end records with replay fields found")
    return loaded


# --- rows ------------------------------------------------------------------------------------

class HashIdMapper:
    """Sequence hash -> compact id, first seen first, from 0; shared by every row of a trace."""

    def __init__(self) -> None:
        self._ids: dict[int, int] = {}

    def ids(self, hashes: Sequence[int]) -> list[int]:
        return [self._ids.setdefault(h, len(self._ids)) for h in hashes]


def _prepare(requests: list[RequestEntry]) -> tuple[int, list[RequestEntry]]:
    """(block size, requests in row order), checking one block size and unique ids."""
    if not requests:
        raise ConversionError("no request records to convert")
    first = requests[0]
    for entry in requests:
        if entry.block_size != first.block_size:
            raise ConversionError(
                f"mixed replay trace_block_size values are not supported: {first.block_size} "
                f"(first at {first.where}) and {entry.block_size} at {entry.where}")
    ordered = sorted(requests, key=lambda r: (r.start_ms, r.end_ms, r.request_id))
    seen: dict[str, RequestEntry] = {}
    for entry in ordered:
        if entry.request_id in seen:
            raise ConversionError(f"duplicate request_id {entry.request_id} at "
                                  f"{seen[entry.request_id].where} and {entry.where}")
        seen[entry.request_id] = entry
    return first.block_size, ordered


def _output_length(entry: RequestEntry) -> int:
    if entry.output_tokens is None:
        raise ConversionError(f"{entry.where}: request {entry.request_id} is missing its output "
                              f"length (request.output_tokens)")
    return entry.output_tokens


def plain_rows(loaded: LoadedTrace) -> tuple[int, list[dict[str, Any]]]:
    block_size, ordered = _prepare(loaded.requests)
    origin = min(r.start_ms for r in ordered)
    mapper = HashIdMapper()
    rows = [{"input_length": r.input_length, "output_length": _output_length(r),
             "hash_ids": mapper.ids(r.hashes), "timestamp": float(r.start_ms - origin)}
            for r in ordered]
    return block_size, rows


def _push_unique(values: list[str], value: str) -> None:
    if value not in values:
        values.append(value)


def tool_union_ms(tools: Iterable[ToolEntry], start: int, end: int) -> tuple[int, list[ToolEntry]]:
    """Wall time inside [start, end] covered by at least one tool (union, not sum), and the
    tools that overlap the window (unclipped)."""
    if end <= start:
        return 0, []
    contributing: list[ToolEntry] = []
    spans: list[tuple[int, int]] = []
    for tool in tools:
        lo, hi = max(tool.start_ms, start), min(tool.end_ms, end)
        if hi > lo:
            contributing.append(tool)
            spans.append((lo, hi))
    total, current = 0, None
    for lo, hi in sorted(spans):
        if current is not None and lo <= current[1]:
            current = (current[0], max(current[1], hi))
            continue
        if current is not None:
            total += current[1] - current[0]
        current = (lo, hi)
    if current is not None:
        total += current[1] - current[0]
    return total, contributing


def agentic_rows(loaded: LoadedTrace) -> tuple[int, list[dict[str, Any]]]:
    block_size, ordered = _prepare(loaded.requests)
    origin = min(r.start_ms for r in ordered)
    index = {r.request_id: i for i, r in enumerate(ordered)}
    trajectory_of = [r.trajectory_id if r.trajectory_id is not None else r.request_id
                     for r in ordered]

    by_trajectory: dict[str, list[int]] = {}       # row indices in row order
    parent_of: dict[str, str] = {}
    parent_where: dict[str, str] = {}
    for i, entry in enumerate(ordered):
        trajectory = trajectory_of[i]
        by_trajectory.setdefault(trajectory, []).append(i)
        if entry.parent_trajectory_id is None:
            continue
        known = parent_of.setdefault(trajectory, entry.parent_trajectory_id)
        parent_where.setdefault(trajectory, entry.where)
        if known != entry.parent_trajectory_id:
            raise ConversionError(
                f"trajectory {trajectory} has conflicting parent_trajectory_id values: {known} "
                f"({parent_where[trajectory]}) and {entry.parent_trajectory_id} ({entry.where})")

    wait_for: list[list[str]] = [[] for _ in ordered]
    branches: list[list[str]] = [[] for _ in ordered]
    prefix_reset = [False] * len(ordered)
    for indices in by_trajectory.values():          # sequence edges
        prefix_reset[indices[0]] = True
        for previous, current in zip(indices, indices[1:]):
            _push_unique(wait_for[current], ordered[previous].request_id)

    for child, parent in parent_of.items():         # spawn and join edges
        child_rows, parent_rows = by_trajectory[child], by_trajectory.get(parent)
        if not parent_rows:
            continue
        first_child = child_rows[0]
        last_child = max(child_rows, key=lambda i: (ordered[i].end_ms, ordered[i].start_ms,
                                                    ordered[i].request_id))
        spawn_from = [i for i in parent_rows if ordered[i].end_ms <= ordered[first_child].start_ms]
        if spawn_from:
            # the latest end; among equal ends the last in row order (as Rust's max_by_key)
            spawner = max(reversed(spawn_from), key=lambda i: ordered[i].end_ms)
            _push_unique(wait_for[first_child], ordered[spawner].request_id)
            _push_unique(branches[spawner], ordered[first_child].request_id)
        join_at = [i for i in parent_rows if ordered[i].start_ms >= ordered[last_child].end_ms]
        if join_at:
            joiner = min(join_at, key=lambda i: ordered[i].start_ms)
            _push_unique(wait_for[joiner], ordered[last_child].request_id)

    tools_of: dict[str, list[ToolEntry]] = {}
    for tool in loaded.tools:
        tools_of.setdefault(tool.trajectory_id, []).append(tool)
    for tools in tools_of.values():
        tools.sort(key=lambda t: (t.start_ms, t.end_ms))

    mapper = HashIdMapper()
    rows: list[dict[str, Any]] = []
    for i, entry in enumerate(ordered):
        row: dict[str, Any] = {"request_id": entry.request_id, "session_id": trajectory_of[i],
                               "input_length": entry.input_length,
                               "output_length": _output_length(entry),
                               "hash_ids": mapper.ids(entry.hashes),
                               "timestamp": float(entry.start_ms - origin)}
        tool_wait, tool_events = 0.0, []
        if wait_for[i]:
            dep_end = max(ordered[index[d]].end_ms for d in wait_for[i])
            gap = max(entry.start_ms - dep_end, 0)
            union, contributing = tool_union_ms(tools_of.get(trajectory_of[i], ()), dep_end,
                                                entry.start_ms)
            tool_wait = float(min(union, gap))
            row["delay"] = max(gap - tool_wait, 0.0)
            tool_events = [t.to_event() for t in contributing]
            row["wait_for"] = wait_for[i]
        if branches[i]:
            row["branches"] = branches[i]
        row["prefix_reset"] = prefix_reset[i]
        if tool_wait > 0:
            row["tool_wait_ms"] = tool_wait
        if tool_events:
            row["tool_events"] = tool_events
        rows.append(row)
    return block_size, rows


# --- summary and CLI -------------------------------------------------------------------------

def _counts(counter: Counter[str]) -> str:
    if not counter:
        return "(none)"
    return " ".join(f"{name}={count}"
                    for name, count in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def tool_summary(tools: Sequence[ToolEntry]) -> str:
    """The tool lines printed after conversion ('' without tools)."""
    if not tools:
        return ""
    statuses = Counter(t.status for t in tools)
    classes = Counter(t.tool_class or "(unlabeled)" for t in tools)
    wall_s = sum(t.duration_ms for t in tools) / 1000.0
    return (f"Tool events: {len(tools)} spans across "
            f"{len({t.trajectory_id for t in tools})} trajectories\n"
            f"  Status:    {_counts(statuses)}\n"
            f"  Class:     {_counts(classes)}\n"
            f"  Wall-time: {wall_s:.2f}s\n")


def convert_files(inputs: Sequence[str], output: Path, agentic: bool) -> str:
    """Convert and write; the summary to print. ConversionError/TraceReadError on bad input."""
    paths = expand_inputs(inputs)
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise ConversionError(f"input path does not exist: {missing[0]}")
    if not paths:
        raise ConversionError("no input files matched")
    loaded = load(read_lines(paths))
    block_size, rows = agentic_rows(loaded) if agentic else plain_rows(loaded)
    if output.parent != Path(""):
        output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, separators=(",", ":")) + "\n")
    summary = (f"Wrote {len(rows)} {'Agentic ' if agentic else ''}Mooncake rows to {output}\n"
               f"Trace block size: {block_size}\n")
    if loaded.tools:
        summary += "\n" + tool_summary(loaded.tools)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tracing.to_mooncake",
        description="Convert agent traces (request_end rows with replay hashes, and harness tool "
                    "events) to Mooncake replay JSONL.")
    parser.add_argument("--input-path", action="extend", nargs="+", required=True,
                        metavar="PATH", help="trace files (.jsonl, .jsonl.gz), folders or globs; "
                                             "may repeat")
    parser.add_argument("--output-file", required=True, type=Path, help="the JSONL file to write")
    parser.add_argument("--agentic", action="store_true",
                        help="write agentic rows: request_id, session_id, wait_for, branches, "
                             "prefix_reset, delay, tool_wait_ms, tool_events")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        summary = convert_files(args.input_path, args.output_file, args.agentic)
    except (ConversionError, TraceReadError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(summary, end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
