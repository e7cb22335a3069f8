"""Tiny trace records for tests: dicts as sinks write them, built from defaults + overrides."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

SCHEMA = "dynamo.agent.trace.v1"


def context(session: str = "session-1", trajectory: str = "session-1:researcher",
            parent: str | None = None, **extra: Any) -> dict[str, Any]:
    out = {"session_type_id": "deep_research", "session_id": session, "trajectory_id": trajectory}
    if parent is not None:
        out["parent_trajectory_id"] = parent
    out.update(extra)
    return out


def request_end(request_id: str = "req-1", start: int = 1000, end: int = 1100, *,
                ctx: dict[str, Any] | None = None, hashes: list[int] | None = None,
                block_size: int = 2, output_tokens: int | None = 5,
                **request: Any) -> dict[str, Any]:
    """A request_end record received at `start` and finished at `end` (unix ms)."""
    hashes = [11] if hashes is None else hashes
    body: dict[str, Any] = {"request_id": request_id, "model": "test-model",
                            "request_received_ms": start, "total_time_ms": float(end - start),
                            "replay": {"trace_block_size": block_size,
                                       "input_length": len(hashes) * block_size,
                                       "input_sequence_hashes": hashes}}
    if output_tokens is not None:
        body["output_tokens"] = output_tokens
    body.update(request)
    return {"schema": SCHEMA, "event_type": "request_end", "event_time_unix_ms": end,
            "event_source": "dynamo", "agent_context": ctx if ctx is not None else context(),
            "request": body}


def tool_record(event_type: str = "tool_end", event_time: int = 1250, *,
                ctx: dict[str, Any] | None = None, **tool: Any) -> dict[str, Any]:
    body = {"tool_call_id": "call-1", "tool_class": "web_search"}
    body.update(tool)
    return {"schema": SCHEMA, "event_type": event_type, "event_time_unix_ms": event_time,
            "event_source": "harness", "agent_context": ctx if ctx is not None else context(),
            "tool": body}


def tool_span(trajectory: str, call_id: str, tool_class: str, start: int, end: int,
              **tool: Any) -> dict[str, Any]:
    return tool_record("tool_end", end, ctx=context(trajectory=trajectory), tool_call_id=call_id,
                       tool_class=tool_class, started_at_unix_ms=start, ended_at_unix_ms=end,
                       status="succeeded", duration_ms=float(end - start), **tool)


def write_jsonl(path: Path, records: list[dict[str, Any]], envelope: bool = True) -> Path:
    lines = [json.dumps({"timestamp": i, "event": r} if envelope else r) for i, r in
             enumerate(records)]
    data = ("\n".join(lines) + "\n").encode()
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def read_envelopes(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]
