"""Agent-trace records in Dynamo's `dynamo.agent.trace.v1` format (DESIGN.md §6.1, §6.3).

    {"schema": "dynamo.agent.trace.v1", "event_type": "request_end" | "tool_start" | "tool_end"
     | "tool_error", "event_time_unix_ms": int, "event_source": "dynamo" | "harness",
     "agent_context": {...}, "request": {...} | "tool": {...}}

Absent optional fields are omitted, never null; integer fields are Python ints (never 3.0);
float fields (times in ms, rates) are floats. Values here are typed; `to_record()` makes the dict
a sink writes, and `normalize_tool_record()` turns what a harness sent into the same shape.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

SCHEMA = "dynamo.agent.trace.v1"
REQUEST_SCHEMA = "dynamo.request.trace.v1"          # what newer harnesses (Pi) send; accepted
ACCEPTED_SCHEMAS = frozenset({SCHEMA, REQUEST_SCHEMA})
REQUEST_END = "request_end"
TOOL_EVENT_TYPES = frozenset({"tool_start", "tool_end", "tool_error"})
TERMINAL_TOOL_EVENT_TYPES = frozenset({"tool_end", "tool_error"})
SOURCE_DYNAMO = "dynamo"
SOURCE_HARNESS = "harness"
HARNESS_SOURCES = frozenset({SOURCE_HARNESS, "ms_agent"})   # ms_agent: alias of harness

TOOL_STATUSES = {
    "running": "running", "succeeded": "succeeded", "error": "error", "cancelled": "cancelled",
    "ok": "succeeded", "success": "succeeded", "failed": "error",
    "timeout": "cancelled", "canceled": "cancelled",
}

_REQUIRED_IDS = ("session_type_id", "session_id", "trajectory_id")


def round_half_away(value: float) -> int:
    """Rust's f64::round: halves go away from zero (Python's round() goes to even)."""
    return int(math.floor(value + 0.5)) if value >= 0 else -int(math.floor(-value + 0.5))


# --- agent_context --------------------------------------------------------------------------

class AgentContextError(ValueError):
    """A bad `nvext.agent_context`; `param` names the field for the 400's `param`."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True, slots=True)
class AgentContext:
    session_type_id: str
    session_id: str
    trajectory_id: str
    parent_trajectory_id: str | None = None
    trajectory_final: bool | None = None

    @classmethod
    def from_mapping(cls, raw: Any, param: str = "nvext.agent_context") -> "AgentContext":
        """Validate as Dynamo G1 does: the three ids required, strings, non-blank after trimming;
        `parent_trajectory_id` an optional string, `trajectory_final` an optional bool; other keys
        ignored (Pi sends `phase`). Values are kept as sent (not trimmed). AgentContextError."""
        if not isinstance(raw, Mapping):
            raise AgentContextError(param, f"{param} must be an object")
        for key in _REQUIRED_IDS:
            if key not in raw or raw[key] is None:
                raise AgentContextError(f"{param}.{key}", f"{param}.{key} is required")
            if not isinstance(raw[key], str):
                raise AgentContextError(f"{param}.{key}", f"{param}.{key} must be a string")
            if not raw[key].strip():
                raise AgentContextError(
                    f"{param}.{key}", "agent_context required identifiers must be non-empty")
        parent = raw.get("parent_trajectory_id")
        if parent is not None and not isinstance(parent, str):
            raise AgentContextError(f"{param}.parent_trajectory_id",
                                    f"{param}.parent_trajectory_id must be a string")
        final = raw.get("trajectory_final")
        if final is not None and not isinstance(final, bool):
            raise AgentContextError(f"{param}.trajectory_final",
                                    f"{param}.trajectory_final must be a boolean")
        return cls(raw["session_type_id"], raw["session_id"], raw["trajectory_id"], parent, final)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"session_type_id": self.session_type_id,
                               "session_id": self.session_id,
                               "trajectory_id": self.trajectory_id}
        if self.parent_trajectory_id is not None:
            out["parent_trajectory_id"] = self.parent_trajectory_id
        if self.trajectory_final is not None:
            out["trajectory_final"] = self.trajectory_final
        return out


# --- request_end pieces ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WorkerPlacement:
    prefill_worker_id: int | None = None
    prefill_dp_rank: int | None = None
    decode_worker_id: int | None = None
    decode_dp_rank: int | None = None

    @classmethod
    def aggregated(cls, worker_id: int, dp_rank: int = 0) -> "WorkerPlacement":
        """An aggregated worker did both stages: Dynamo fills prefill and decode alike."""
        return cls(worker_id, dp_rank, worker_id, dp_rank)

    def to_dict(self) -> dict[str, int]:
        return _present({"prefill_worker_id": self.prefill_worker_id,
                         "prefill_dp_rank": self.prefill_dp_rank,
                         "decode_worker_id": self.decode_worker_id,
                         "decode_dp_rank": self.decode_dp_rank}, ints=True)


@dataclass(frozen=True, slots=True)
class ReplayHashes:
    trace_block_size: int               # the model's KV block size, tokens
    input_length: int                   # prompt tokens
    input_sequence_hashes: tuple[int, ...]   # ceil(input_length / block size), partial tail included

    @classmethod
    def from_prompt(cls, prompt: Any) -> "ReplayHashes":
        """From a `router.hashing.Prompt` (its `replay_hashes`, computed once per request)."""
        return cls(prompt.block_size, len(prompt), tuple(prompt.replay_hashes))

    def to_dict(self) -> dict[str, Any]:
        return {"trace_block_size": int(self.trace_block_size),
                "input_length": int(self.input_length),
                "input_sequence_hashes": [int(h) for h in self.input_sequence_hashes]}


@dataclass(frozen=True, slots=True)
class ToolCallRef:
    choice_index: int
    tool_call_index: int
    id: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"choice_index": self.choice_index,
                               "tool_call_index": self.tool_call_index}
        if self.id:
            out["id"] = self.id
        if self.name:
            out["name"] = self.name
        return out


@dataclass(frozen=True, slots=True)
class ChoiceFinish:
    choice_index: int
    finish_reason: str | None = None
    backend_finish_reason: str | None = None
    stop_reason: str | int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"choice_index": self.choice_index,
                **_present({"finish_reason": self.finish_reason,
                            "backend_finish_reason": self.backend_finish_reason,
                            "stop_reason": self.stop_reason})}


@dataclass(frozen=True, slots=True)
class FinishReasonMetadata:
    finish_reason: str | None = None          # what the client saw (after parsers)
    backend_finish_reason: str | None = None  # the engine's raw reason
    stop_reason: str | int | None = None      # the stop string or token id that fired
    tool_calls: tuple[ToolCallRef, ...] = ()  # ids and names, never arguments
    choices: tuple[ChoiceFinish, ...] = ()    # per choice, only for n > 1

    def to_dict(self) -> dict[str, Any]:
        out = _present({"finish_reason": self.finish_reason,
                        "backend_finish_reason": self.backend_finish_reason,
                        "stop_reason": self.stop_reason})
        if self.tool_calls:
            out["tool_calls"] = [c.to_dict() for c in self.tool_calls]
        if self.choices:
            out["choices"] = [c.to_dict() for c in self.choices]
        return out


class ToolCallCollector:
    """Merges streamed OpenAI tool-call deltas keyed by (choice index, tool-call index): the one
    place Rotor folds them, for response bodies (`calls()`, with arguments) and for trace records
    (`refs()`, ids and names only, never arguments).

    A delta is `{"index": i, "id"?: str, "function"?: {"name"?: str, "arguments"?: str}}`. The first
    non-empty id wins; name fragments are concatenated, except that a fragment repeating the
    whole name so far (servers that resend the name on every delta) is not appended again;
    argument fragments are concatenated.
    """

    def __init__(self) -> None:
        # (choice, index) -> [id, name, arguments]
        self._calls: dict[tuple[int, int], list[str]] = {}

    def __bool__(self) -> bool:
        return bool(self._calls)

    def add(self, delta: Mapping[str, Any], choice_index: int = 0) -> None:
        index = delta.get("index", 0)
        if not isinstance(index, int):
            index = 0
        entry = self._calls.setdefault((choice_index, index), ["", "", ""])
        call_id = delta.get("id")
        if isinstance(call_id, str) and call_id and not entry[0]:
            entry[0] = call_id
        function = delta.get("function")
        if not isinstance(function, Mapping):
            return
        name = function.get("name")
        if isinstance(name, str) and name and name != entry[1]:
            entry[1] += name
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            entry[2] += arguments

    def add_all(self, deltas: Sequence[Mapping[str, Any]] | None, choice_index: int = 0) -> None:
        for delta in deltas or ():
            self.add(delta, choice_index)

    def refs(self) -> tuple[ToolCallRef, ...]:
        return tuple(ToolCallRef(c, i, call_id or None, name or None)
                     for (c, i), (call_id, name, _) in sorted(self._calls.items()))

    def calls(self, choice_index: int = 0) -> list[dict[str, Any]]:
        """One choice's tool calls as OpenAI message `tool_calls`, in index order."""
        return [{"id": call_id, "type": "function",
                 "function": {"name": name, "arguments": arguments}}
                for (c, _), (call_id, name, arguments) in sorted(self._calls.items())
                if c == choice_index]


# --- request timings ------------------------------------------------------------------------

class WorkerDurations(Protocol):
    """What the worker's final reply carries (worker.engine.Timings), ms from the worker's receipt."""
    queue_ms: float
    prefill_ms: float


@dataclass(frozen=True, slots=True)
class StageTimings:
    prefill_wait_time_ms: float | None = None
    prefill_time_ms: float | None = None
    ttft_ms: float | None = None
    total_time_ms: float | None = None
    avg_itl_ms: float | None = None


class RequestClock:
    """The frontend's own clock for one request (DESIGN.md §6.1). Create it when the request is
    received; mark dispatch (each time it is sent to a worker: the last one counts), the first
    output token (first call counts) and the end (finished, failed or cancelled; first call counts).

        received ──(frontend+router)── dispatched ──[worker: queue_ms | prefill_ms]── first token ── end
        prefill_wait_time_ms = (dispatched - received) + queue_ms
        prefill_time_ms      = prefill_ms
        ttft_ms              = first token - received      (as the client saw it)
        total_time_ms        = end - received
        avg_itl_ms           = (end - first token) / (output_tokens - 1), when output_tokens > 1

    Durations come from one monotonic clock; only `received_unix_ms` is wall time. Clocks of two
    processes are never compared: the worker contributes durations only.
    """

    __slots__ = ("received_unix_ms", "_monotonic", "_t0", "dispatched_ms", "first_token_ms",
                 "end_ms")

    def __init__(self, *, wall: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic):
        self.received_unix_ms = int(wall() * 1000)
        self._monotonic = monotonic
        self._t0 = monotonic()
        self.dispatched_ms: float | None = None     # ms after receipt
        self.first_token_ms: float | None = None
        self.end_ms: float | None = None

    def _now_ms(self) -> float:
        return (self._monotonic() - self._t0) * 1000.0

    def mark_dispatched(self) -> None:
        self.dispatched_ms = self._now_ms()

    def mark_first_token(self) -> None:
        if self.first_token_ms is None:
            self.first_token_ms = self._now_ms()

    def mark_end(self) -> None:
        if self.end_ms is None:
            self.end_ms = self._now_ms()

    def timings(self, worker: WorkerDurations | None,
                output_tokens: int | None = None) -> StageTimings:
        """Compose the stage timings; fields without their inputs are None (omitted)."""
        wait = prefill = None
        if worker is not None:
            wait = (self.dispatched_ms or 0.0) + float(worker.queue_ms)
            prefill = float(worker.prefill_ms)
        itl = None
        if (self.first_token_ms is not None and self.end_ms is not None
                and output_tokens is not None and output_tokens > 1):
            itl = (self.end_ms - self.first_token_ms) / (output_tokens - 1)
        return StageTimings(wait, prefill, self.first_token_ms, self.end_ms, itl)


def router_cache_hit(overlap_blocks: int, input_tokens: int,
                     block_size: int) -> tuple[int, float]:
    """(cached_tokens, kv_hit_rate) from the router's decision: the chosen worker held
    `overlap_blocks` leading full blocks of a prompt of `input_tokens`. Hit rate = overlap blocks /
    the prompt's full blocks (Dynamo: 4 of 8 -> 0.5); 0.0 for a prompt shorter than one block."""
    full_blocks = input_tokens // block_size
    cached = min(overlap_blocks * block_size, input_tokens)
    return cached, (overlap_blocks / full_blocks if full_blocks else 0.0)


# --- request_end ----------------------------------------------------------------------------

@dataclass(slots=True)
class RequestEnd:
    """One `request_end` record: every `request` field of DESIGN.md §6.1, None meaning absent."""

    agent_context: AgentContext
    request_id: str                              # Rotor's id, the bare UUID
    model: str                                   # the model name the client asked for
    x_request_id: str | None = None              # the caller's x-request-id
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_tokens: int | None = None             # from the router's decision
    request_received_ms: int | None = None       # unix ms
    prefill_wait_time_ms: float | None = None
    prefill_time_ms: float | None = None
    ttft_ms: float | None = None
    total_time_ms: float | None = None
    avg_itl_ms: float | None = None
    kv_hit_rate: float | None = None
    kv_transfer_estimated_latency_ms: float | None = None   # disaggregated serving only
    queue_depth: int | None = None
    worker: WorkerPlacement | None = None
    finish_reason_metadata: FinishReasonMetadata | None = None
    replay: ReplayHashes | None = None

    @classmethod
    def build(cls, *, agent_context: AgentContext, request_id: str, model: str,
              clock: RequestClock, worker_durations: WorkerDurations | None = None,
              **fields: Any) -> "RequestEnd":
        """A record with `request_received_ms` and the stage timings composed from `clock` and
        the worker's durations (see RequestClock); `fields` are the other attributes."""
        timings = clock.timings(worker_durations, fields.get("output_tokens"))
        return cls(agent_context=agent_context, request_id=request_id, model=model,
                   request_received_ms=clock.received_unix_ms,
                   prefill_wait_time_ms=timings.prefill_wait_time_ms,
                   prefill_time_ms=timings.prefill_time_ms, ttft_ms=timings.ttft_ms,
                   total_time_ms=timings.total_time_ms, avg_itl_ms=timings.avg_itl_ms, **fields)

    def event_time_unix_ms(self) -> int:
        """request_received_ms + round(max(total_time_ms, 0)) (total absent or not finite: +0)."""
        if self.request_received_ms is None:
            raise ValueError("request_end needs request_received_ms for its event time")
        total = self.total_time_ms
        if total is None or not math.isfinite(total):
            return int(self.request_received_ms)
        return int(self.request_received_ms) + round_half_away(max(total, 0.0))

    def request_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"request_id": self.request_id}
        out.update(_present({"x_request_id": self.x_request_id}))
        out["model"] = self.model
        out.update(_present({"input_tokens": self.input_tokens,
                             "output_tokens": self.output_tokens,
                             "cached_tokens": self.cached_tokens,
                             "request_received_ms": self.request_received_ms}, ints=True))
        out.update(_present({"prefill_wait_time_ms": self.prefill_wait_time_ms,
                             "prefill_time_ms": self.prefill_time_ms,
                             "ttft_ms": self.ttft_ms,
                             "total_time_ms": self.total_time_ms,
                             "avg_itl_ms": self.avg_itl_ms,
                             "kv_hit_rate": self.kv_hit_rate,
                             "kv_transfer_estimated_latency_ms":
                                 self.kv_transfer_estimated_latency_ms}, floats=True))
        out.update(_present({"queue_depth": self.queue_depth}, ints=True))
        if self.worker is not None and (worker := self.worker.to_dict()):
            out["worker"] = worker
        if self.finish_reason_metadata is not None \
                and (finish := self.finish_reason_metadata.to_dict()):
            out["finish_reason_metadata"] = finish
        if self.replay is not None:
            out["replay"] = self.replay.to_dict()
        return out

    def to_record(self) -> dict[str, Any]:
        """The full record a sink writes (a fresh dict; the tracer owns it after emit)."""
        return {"schema": SCHEMA, "event_type": REQUEST_END,
                "event_time_unix_ms": self.event_time_unix_ms(), "event_source": SOURCE_DYNAMO,
                "agent_context": self.agent_context.to_dict(), "request": self.request_dict()}


def _present(values: Mapping[str, Any], *, ints: bool = False,
             floats: bool = False) -> dict[str, Any]:
    """Drop None (and non-finite floats); coerce to int or float as the schema types them."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        if ints:
            value = int(value)
        elif floats:
            value = float(value)
            if not math.isfinite(value):
                continue
        out[key] = value
    return out


# --- tool records from harnesses ------------------------------------------------------------

class InvalidToolRecord(ValueError):
    """A tool record that must be dropped; `reason` is a short counter label."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _uint_field(value: Any, name: str, reason: str) -> int:
    """u64: an int >= 0, or a float with an integral value (some msgpack encoders send those)."""
    if isinstance(value, bool):
        raise InvalidToolRecord(reason, f"{name} must be an integer")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or value < 0 or value >= 1 << 64:
        raise InvalidToolRecord(reason, f"{name} must be a non-negative integer")
    return value


def _float_field(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise InvalidToolRecord("tool_field", f"tool.{name} must be a number")
    return float(value)


def _str_field(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidToolRecord("tool_field", f"tool.{name} must be a string")
    return value


def normalize_tool(raw: Any) -> dict[str, Any]:
    """The `tool` object, typed and with canonical status; unknown keys dropped, nulls absent."""
    if not isinstance(raw, Mapping):
        raise InvalidToolRecord("tool_missing", "tool must be a map")
    out: dict[str, Any] = {}
    for key in ("tool_call_id", "tool_class"):
        if raw.get(key) is None:
            raise InvalidToolRecord("tool_field", f"tool.{key} is required")
        out[key] = _str_field(raw[key], key)
    status = raw.get("status")
    if status is not None:
        canonical = TOOL_STATUSES.get(_str_field(status, "status").strip().lower())
        if canonical is None:
            raise InvalidToolRecord("tool_field", f"tool.status {status!r} is not a known status")
        out["status"] = canonical
    for key in ("started_at_unix_ms", "ended_at_unix_ms"):
        if raw.get(key) is not None:
            out[key] = _uint_field(raw[key], f"tool.{key}", "tool_field")
    if raw.get("duration_ms") is not None:
        out["duration_ms"] = _float_field(raw["duration_ms"], "duration_ms")
    for key in ("output_tokens", "output_bytes"):
        if raw.get(key) is not None:
            out[key] = _uint_field(raw[key], f"tool.{key}", "tool_field")
    for key in ("tool_name_hash", "error_type"):
        if raw.get(key) is not None:
            out[key] = _str_field(raw[key], key)
    return out


def normalize_tool_record(raw: Any) -> dict[str, Any]:
    """A harness tool record as Rotor writes it, or InvalidToolRecord (facts §2.5):

    - `schema` is `dynamo.agent.trace.v1` or `dynamo.request.trace.v1` (written as the former);
    - `event_source` is `harness` or its alias `ms_agent` (written as `harness`);
    - `event_type` is tool_start, tool_end or tool_error;
    - `tool` is present and `request` absent;
    - `agent_context` is valid (§1); a `session_id` missing from it may be given at the top level;
      only the five known keys are written;
    - `event_time_unix_ms` is a non-negative integer.
    """
    if not isinstance(raw, Mapping):
        raise InvalidToolRecord("not_a_map", "a tool record must be a map")
    if raw.get("schema") not in ACCEPTED_SCHEMAS:
        raise InvalidToolRecord("schema", f"unsupported schema {raw.get('schema')!r}")
    if raw.get("event_source") not in HARNESS_SOURCES:
        raise InvalidToolRecord("event_source",
                                f"event_source {raw.get('event_source')!r} is not harness")
    event_type = raw.get("event_type")
    if event_type not in TOOL_EVENT_TYPES:
        raise InvalidToolRecord("event_type", f"event_type {event_type!r} is not a tool event")
    if raw.get("request") is not None:
        raise InvalidToolRecord("request_present", "a tool record must not carry a request")
    if raw.get("tool") is None:
        raise InvalidToolRecord("tool_missing", "a tool record must carry a tool")
    if raw.get("event_time_unix_ms") is None:
        raise InvalidToolRecord("event_time", "event_time_unix_ms is required")
    event_time = _uint_field(raw["event_time_unix_ms"], "event_time_unix_ms", "event_time")
    context_raw = raw.get("agent_context")
    if context_raw is None:
        context_raw = {}
    if isinstance(context_raw, Mapping) and context_raw.get("session_id") is None \
            and raw.get("session_id") is not None:
        context_raw = {**context_raw, "session_id": raw["session_id"]}
    try:
        context = AgentContext.from_mapping(context_raw, "agent_context")
    except AgentContextError as exc:
        raise InvalidToolRecord("agent_context", str(exc)) from None
    return {"schema": SCHEMA, "event_type": event_type, "event_time_unix_ms": event_time,
            "event_source": SOURCE_HARNESS, "agent_context": context.to_dict(),
            "tool": normalize_tool(raw["tool"])}
