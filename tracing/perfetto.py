"""Agent traces -> Chrome trace-event JSON for ui.perfetto.dev (DESIGN.md §6.4).

    python -m tracing.perfetto TRACE... -o OUT.json [--no-stages] [--separate-stage-tracks]
                                                    [--include-markers] [--pretty]

Layout (times in µs, `ts` = round(ms × 1000), complete events have `dur` ≥ 1):

    process  "session: <session_id>"                  one per session, pids 1.. in first-seen order
      thread "<trajectory_id>"                        requests (and stages nested inside them)
      thread "<trajectory_id> stages"                 stages, with --separate-stage-tracks
      thread "<trajectory_id> tools"                  harness tool spans
      a trajectory whose items ever overlap gets lanes: "<trajectory_id> [lane 2] tools", ...

    dynamo.llm          "LLM request: <model>"  [received, received + total_time]
    dynamo.llm.stage    "prefill wait" [0, wait) | "prefill" [wait, wait + prefill) | "decode"
                        [ttft, end), clamped so that they never overlap, pass TTFT or leave the
                        request (raw values stay in args)
    dynamo.llm.marker   "first token" instant at received + ttft        (--include-markers)
    dynamo.agent.tool   "Tool: <class>" / "Tool error: <class>"
    dynamo.agent.tool.marker  "Tool start: <class>" for a start never ended (--include-markers)

Tool spans: starts and ends pair by (session, trajectory, tool_call_id), last start first, in
event-time order. The first rule that applies gives the span: started..ended (ended > started);
started + duration (duration > 0); (ended or event time) - duration; the paired start's event time
.. this event's time; else a synthetic 1 ms span (args `synthetic_duration`, `visual_duration_ms`).

Lanes: items of a (session, trajectory), requests and tools together, in (ts, kind) order, each
take the lowest lane free at their start (a lane whose item ended at or before it is free).
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tracing.reader import TraceReadError, expand_inputs, load_sorted
from tracing.records import ACCEPTED_SCHEMAS, TERMINAL_TOOL_EVENT_TYPES

CAT_REQUEST = "dynamo.llm"
CAT_STAGE = "dynamo.llm.stage"
CAT_MARKER = "dynamo.llm.marker"
CAT_TOOL = "dynamo.agent.tool"
CAT_TOOL_MARKER = "dynamo.agent.tool.marker"
SYNTHETIC_TOOL_US = 1000

_CONTEXT_KEYS = ("session_type_id", "session_id", "trajectory_id", "parent_trajectory_id",
                 "trajectory_final")
_REQUEST_KEYS = ("request_id", "x_request_id", "model", "input_tokens", "output_tokens",
                 "cached_tokens", "request_received_ms", "prefill_wait_time_ms",
                 "prefill_time_ms", "ttft_ms", "total_time_ms", "avg_itl_ms", "kv_hit_rate",
                 "kv_transfer_estimated_latency_ms", "queue_depth")
_TOOL_KEYS = ("tool_call_id", "tool_class", "status", "started_at_unix_ms", "ended_at_unix_ms",
              "duration_ms", "output_tokens", "output_bytes", "tool_name_hash", "error_type")


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _us(value: Any) -> int | None:
    """ms -> µs, rounded (None for a missing or non-numeric value)."""
    number = _number(value)
    return None if number is None else int(round(number * 1000.0))


def _label(value: Any, fallback: str) -> str:
    return fallback if value is None or str(value) == "" else str(value)


def _without_none(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if v is not None}


def _request_args(event: dict[str, Any], context: dict[str, Any],
                  request: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = {k: context.get(k) for k in _CONTEXT_KEYS}
    args["event_time_unix_ms"] = event.get("event_time_unix_ms")
    args.update({k: request[k] for k in _REQUEST_KEYS if k in request})
    worker = request.get("worker")
    if isinstance(worker, dict):
        args.update({f"worker.{k}": v for k, v in worker.items()})
    finish = request.get("finish_reason_metadata")
    if isinstance(finish, dict):
        args["finish_reason_metadata"] = finish
        for key in ("finish_reason", "backend_finish_reason", "stop_reason"):
            args[f"finish.{key}"] = finish.get(key)
        calls = [c for c in finish.get("tool_calls") or () if isinstance(c, dict)]
        if calls:
            args["finish.tool_call_count"] = len(calls)
            args["finish.tool_call_names"] = ",".join(str(c["name"]) for c in calls
                                                      if c.get("name"))
        choices = [c for c in finish.get("choices") or () if isinstance(c, dict)]
        if choices:
            args["finish.choice_count"] = len(choices)
            args["finish.choice_finish_reasons"] = ",".join(
                f"{c.get('choice_index')}:{c.get('finish_reason')}" for c in choices)
    return _without_none(args)


def _tool_args(event: dict[str, Any], context: dict[str, Any],
               tool: dict[str, Any]) -> dict[str, Any]:
    args: dict[str, Any] = {k: context.get(k) for k in _CONTEXT_KEYS}
    args.update(event_type=event.get("event_type"), event_source=event.get("event_source"),
                event_time_unix_ms=event.get("event_time_unix_ms"))
    args.update({k: tool[k] for k in _TOOL_KEYS if k in tool})
    return _without_none(args)


@dataclass
class _Item:
    kind: str                    # "request" | "tool" | "tool_instant"; also the sort tie-break
    session: str
    trajectory: str
    ts: int                      # µs
    dur: int                     # µs (1 for instants)
    name: str
    args: dict[str, Any]
    request: dict[str, Any] = field(default_factory=dict)


@dataclass
class _ToolRecord:
    event: dict[str, Any]
    tool: dict[str, Any]
    session: str
    trajectory: str
    time_us: int
    args: dict[str, Any]


class _Tracks:
    """pids per session, lanes per (session, trajectory), tids per (session, trajectory, lane,
    kind); everything numbered from 1 in order of first use."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}
        self.tids: dict[tuple[str, str, int, str], int] = {}
        self._tid_count: dict[str, int] = {}
        self._busy: dict[tuple[str, str], list[tuple[int, int]]] = {}  # heap of (end, lane)
        self.lane_count: dict[tuple[str, str], int] = {}

    def lane(self, session: str, trajectory: str, start: int, end: int) -> int:
        self.pids.setdefault(session, len(self.pids) + 1)
        busy = self._busy.setdefault((session, trajectory), [])
        while busy and busy[0][0] <= start:
            heapq.heappop(busy)
        taken = {lane for _, lane in busy}
        lane = next(i for i in range(len(taken) + 1) if i not in taken)
        heapq.heappush(busy, (end, lane))
        key = (session, trajectory)
        self.lane_count[key] = max(self.lane_count.get(key, 0), lane + 1)
        return lane

    def track(self, session: str, trajectory: str, lane: int, kind: str) -> tuple[int, int]:
        pid = self.pids.setdefault(session, len(self.pids) + 1)
        key = (session, trajectory, lane, kind)
        if key not in self.tids:
            self._tid_count[session] = self._tid_count.get(session, 0) + 1
            self.tids[key] = self._tid_count[session]
        return pid, self.tids[key]

    def metadata(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = [
            {"name": "process_name", "ph": "M", "pid": pid, "args": {"name": f"session: {s}"}}
            for s, pid in sorted(self.pids.items(), key=lambda kv: kv[1])]
        for (session, trajectory, lane, kind), tid in sorted(
                self.tids.items(), key=lambda kv: (self.pids[kv[0][0]], kv[1])):
            name = trajectory
            if self.lane_count.get((session, trajectory), 1) > 1:
                name = f"{trajectory} [lane {lane + 1}]"
            if kind != "request":
                name = f"{name} {kind}"
            events.append({"name": "thread_name", "ph": "M", "pid": self.pids[session],
                           "tid": tid, "args": {"name": name}})
        return events


def _complete(name: str, cat: str, pid: int, tid: int, ts: int, dur: int,
              args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "cat": cat, "ph": "X", "pid": pid, "tid": tid, "ts": ts,
            "dur": max(1, dur), "args": args}


def _instant(name: str, cat: str, pid: int, tid: int, ts: int,
             args: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "cat": cat, "ph": "i", "s": "t", "pid": pid, "tid": tid, "ts": ts,
            "args": args}


def _request_item(event: dict[str, Any], context: dict[str, Any], session: str,
                  trajectory: str) -> _Item | None:
    request = event.get("request")
    if not isinstance(request, dict):
        return None
    start = _number(request.get("request_received_ms"))
    if start is None:
        start = _number(event.get("event_time_unix_ms"))
    if start is None:
        return None
    duration = _number(request.get("total_time_ms"))
    if duration is None or duration < 0:
        end = _number(event.get("event_time_unix_ms"))
        duration = end - start if end is not None and end >= start else 0.001
    return _Item("request", session, trajectory, _us(start) or 0, max(1, _us(duration) or 0),
                 f"LLM request: {_label(request.get('model'), 'unknown-model')}",
                 _request_args(event, context, request), request)


def _tool_items(records: list[_ToolRecord], include_markers: bool) -> list[_Item]:
    items: list[_Item] = []
    starts: dict[tuple[str, str, str], list[_ToolRecord]] = {}
    for rec in sorted(records, key=lambda r: r.time_us):
        key = (rec.session, rec.trajectory, _label(rec.tool.get("tool_call_id"),
                                                   "unknown-tool-call"))
        if rec.event.get("event_type") == "tool_start":
            starts.setdefault(key, []).append(rec)
            continue
        stack = starts.get(key)
        matched = stack.pop() if stack else None
        started = _us(rec.tool.get("started_at_unix_ms"))
        ended = _us(rec.tool.get("ended_at_unix_ms"))
        duration = _us(rec.tool.get("duration_ms"))
        end_or_event = ended if ended is not None else rec.time_us
        args = rec.args
        if started is not None and ended is not None and ended > started:
            ts, dur = started, ended - started
        elif started is not None and duration is not None and duration > 0:
            ts, dur = started, duration
        elif duration is not None and duration > 0:
            ts = max(0, end_or_event - duration)
            dur = end_or_event - ts
        elif matched is not None and rec.time_us > matched.time_us:
            ts, dur = matched.time_us, rec.time_us - matched.time_us
        else:
            ts = started if started is not None else \
                matched.time_us if matched is not None else end_or_event
            dur = SYNTHETIC_TOOL_US
            args = {**args, "synthetic_duration": True,
                    "visual_duration_ms": SYNTHETIC_TOOL_US / 1000.0}
        prefix = "Tool error: " if rec.event.get("event_type") == "tool_error" else "Tool: "
        items.append(_Item("tool", rec.session, rec.trajectory, ts, max(1, dur),
                           prefix + _label(rec.tool.get("tool_class"), "unknown-tool"), args))
    if include_markers:
        for stack in starts.values():
            for rec in stack:
                items.append(_Item("tool_instant", rec.session, rec.trajectory, rec.time_us, 1,
                                   "Tool start: " + _label(rec.tool.get("tool_class"),
                                                           "unknown-tool"), rec.args))
    return items


def _stage_events(item: _Item, pid: int, tid: int) -> list[dict[str, Any]]:
    """prefill wait, prefill, decode: laid end to end from the request's start, each clamped to
    the time left before TTFT (decode: from TTFT to the end), so they nest and never overlap."""
    request, ts, dur = item.request, item.ts, item.dur
    ttft = _us(request.get("ttft_ms"))
    boundary = dur if ttft is None else min(max(0, ttft), dur)
    common = {"request_id": request.get("request_id"), "x_request_id": request.get("x_request_id"),
              "model": request.get("model")}
    events = []
    cursor = 0
    for name, key in (("prefill wait", "prefill_wait_time_ms"), ("prefill", "prefill_time_ms")):
        length = _us(request.get(key))
        if length is None or length <= 0 or cursor >= boundary:
            continue
        length = min(length, boundary - cursor)
        events.append(_complete(name, CAT_STAGE, pid, tid, ts + cursor, length,
                                {**common, key: request.get(key)}))
        cursor += length
    if ttft is not None and dur > boundary:
        events.append(_complete("decode", CAT_STAGE, pid, tid, ts + boundary, dur - boundary,
                                {**common, "output_tokens": request.get("output_tokens"),
                                 "avg_itl_ms": request.get("avg_itl_ms")}))
    return events


def convert(events: Iterable[dict[str, Any]], *, include_stages: bool = True,
            include_markers: bool = False,
            separate_stage_tracks: bool = False) -> tuple[dict[str, Any], int]:
    """Records -> ({"displayTimeUnit": "ms", "traceEvents": [...]}, requests and tools drawn)."""
    items: list[_Item] = []
    tool_records: list[_ToolRecord] = []
    for event in events:
        if event.get("schema") not in ACCEPTED_SCHEMAS:
            continue
        context = event.get("agent_context")
        if not isinstance(context, dict):
            continue
        session = _label(context.get("session_id"), "unknown-session")
        trajectory = _label(context.get("trajectory_id"), "unknown-trajectory")
        event_type = event.get("event_type")
        if event_type == "request_end":
            item = _request_item(event, context, session, trajectory)
            if item is not None:
                items.append(item)
        elif event_type == "tool_start" or event_type in TERMINAL_TOOL_EVENT_TYPES:
            tool = event.get("tool")
            time_us = _us(event.get("event_time_unix_ms"))
            if isinstance(tool, dict) and time_us is not None:
                tool_records.append(_ToolRecord(event, tool, session, trajectory, time_us,
                                                _tool_args(event, context, tool)))
    items.extend(_tool_items(tool_records, include_markers))

    tracks = _Tracks()
    out: list[dict[str, Any]] = []
    for item in sorted(items, key=lambda i: (i.ts, i.kind)):
        lane = tracks.lane(item.session, item.trajectory, item.ts, item.ts + item.dur)
        if item.kind == "tool":
            pid, tid = tracks.track(item.session, item.trajectory, lane, "tools")
            out.append(_complete(item.name, CAT_TOOL, pid, tid, item.ts, item.dur, item.args))
            continue
        if item.kind == "tool_instant":
            pid, tid = tracks.track(item.session, item.trajectory, lane, "tools")
            out.append(_instant(item.name, CAT_TOOL_MARKER, pid, tid, item.ts, item.args))
            continue
        pid, tid = tracks.track(item.session, item.trajectory, lane, "request")
        stage_pid, stage_tid = (tracks.track(item.session, item.trajectory, lane, "stages")
                                if include_stages and separate_stage_tracks else (pid, tid))
        out.append(_complete(item.name, CAT_REQUEST, pid, tid, item.ts, item.dur, item.args))
        ttft = _us(item.request.get("ttft_ms"))
        if include_markers and ttft is not None:
            out.append(_instant("first token", CAT_MARKER, stage_pid, stage_tid, item.ts + ttft,
                                {"ttft_ms": item.request.get("ttft_ms")}))
        if include_stages:
            out.extend(_stage_events(item, stage_pid, stage_tid))
    out.sort(key=lambda e: (e.get("ts", 0), e.get("pid", 0), e.get("tid", 0)))
    return {"displayTimeUnit": "ms", "traceEvents": tracks.metadata() + out}, len(items)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tracing.perfetto",
        description="Convert agent traces (dynamo.agent.trace.v1 JSONL or JSONL.GZ) to Chrome "
                    "trace-event JSON for ui.perfetto.dev.")
    parser.add_argument("inputs", nargs="+",
                        help="trace files (.jsonl, .jsonl.gz), folders of them, or glob patterns")
    parser.add_argument("-o", "--output", required=True, help="the JSON file to write")
    parser.add_argument("--include-stages", action="store_true", default=True,
                        help="draw prefill wait, prefill and decode stages (the default)")
    parser.add_argument("--no-stages", action="store_false", dest="include_stages",
                        help="draw only whole requests, no stages")
    parser.add_argument("--separate-stage-tracks", action="store_true",
                        help="put stages on a '<trajectory> stages' track instead of nesting them")
    parser.add_argument("--include-markers", action="store_true",
                        help="add first-token markers and markers for tool starts never ended")
    parser.add_argument("--pretty", action="store_true", help="indented output (default: compact)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paths = expand_inputs(args.inputs)
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"error: input path does not exist: {missing[0]}", file=sys.stderr)
        return 2
    if not paths:
        print("error: no input files matched", file=sys.stderr)
        return 2
    try:
        events = [line.event for line in load_sorted(paths)]
    except TraceReadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    trace, converted = convert(events, include_stages=args.include_stages,
                               include_markers=args.include_markers,
                               separate_stage_tracks=args.separate_stage_tracks)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8") as f:
        if args.pretty:
            json.dump(trace, f, indent=2, sort_keys=True)
        else:
            json.dump(trace, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {converted} trace events from {len(paths)} input file(s) to {output}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
