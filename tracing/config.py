"""Agent-trace switches (DESIGN.md §6.2), read once from an environment mapping.

Every knob is declared once below with its variable, default and unit. Dynamo's rules, exactly:

    DYN_AGENT_TRACE                        master switch; truthy = 1/true/on/yes (any case).
                                           Off (unset or anything else): nothing is traced, no sink
                                           opens, no tool endpoint is bound, whatever else is set.
    DYN_AGENT_TRACE_SINKS                  comma list of jsonl, jsonl_gz, stderr; items trimmed and
                                           lowercased, empty items dropped; set but empty -> [stderr];
                                           unset -> [jsonl_gz]
    DYN_AGENT_TRACE_OUTPUT_PATH            jsonl: the file (appended); jsonl_gz: the segment prefix.
                                           Unset or blank -> /tmp/dynamo-agent-trace
    DYN_AGENT_TRACE_CAPACITY               records queued per sink before it drops (1024)
    DYN_AGENT_TRACE_JSONL_BUFFER_BYTES     bytes buffered before a flush; for jsonl_gz the most
                                           uncompressed bytes per gzip member (1 MiB)
    DYN_AGENT_TRACE_JSONL_FLUSH_INTERVAL_MS  periodic flush, ms (1000)
    DYN_AGENT_TRACE_JSONL_GZ_ROLL_BYTES    new segment past this many uncompressed bytes (256 MiB);
                                           0 means the default
    DYN_AGENT_TRACE_JSONL_GZ_ROLL_LINES    new segment past this many lines (unset; 0 means unset)
    DYN_AGENT_TRACE_REPLAY_HASHES          on unless falsey (0/false/off/no): request.replay
    DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_ENDPOINT  PULL bind address for harness tool events; opt-in
                                           (the master switch alone binds nothing)
    DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_TOPIC  if set, frame 0 of every tool event must equal it

A numeric value that does not parse as a non-negative integer falls back to its default with a
logged warning. An unknown sink name is a configuration error (ValueError naming the variable).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

ENV_MASTER = "DYN_AGENT_TRACE"
ENV_SINKS = "DYN_AGENT_TRACE_SINKS"
ENV_OUTPUT_PATH = "DYN_AGENT_TRACE_OUTPUT_PATH"
ENV_CAPACITY = "DYN_AGENT_TRACE_CAPACITY"
ENV_BUFFER_BYTES = "DYN_AGENT_TRACE_JSONL_BUFFER_BYTES"
ENV_FLUSH_INTERVAL_MS = "DYN_AGENT_TRACE_JSONL_FLUSH_INTERVAL_MS"
ENV_GZ_ROLL_BYTES = "DYN_AGENT_TRACE_JSONL_GZ_ROLL_BYTES"
ENV_GZ_ROLL_LINES = "DYN_AGENT_TRACE_JSONL_GZ_ROLL_LINES"
ENV_REPLAY_HASHES = "DYN_AGENT_TRACE_REPLAY_HASHES"
ENV_TOOL_ENDPOINT = "DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_ENDPOINT"
ENV_TOOL_TOPIC = "DYN_AGENT_TRACE_TOOL_EVENTS_ZMQ_TOPIC"

DEFAULT_SINK = "jsonl_gz"
DEFAULT_OUTPUT_PATH = "/tmp/dynamo-agent-trace"
DEFAULT_CAPACITY = 1024                          # records per sink queue
DEFAULT_BUFFER_BYTES = 1024 * 1024               # bytes
DEFAULT_FLUSH_INTERVAL_MS = 1000                 # ms
DEFAULT_GZ_ROLL_BYTES = 256 * 1024 * 1024        # uncompressed bytes per segment

SINK_NAMES = ("jsonl", "jsonl_gz", "stderr")
TRUTHY = frozenset({"1", "true", "on", "yes"})
FALSEY = frozenset({"0", "false", "off", "no"})


def is_truthy(value: str | None) -> bool:
    return value is not None and value.strip().lower() in TRUTHY


def is_falsey(value: str | None) -> bool:
    return value is not None and value.strip().lower() in FALSEY


def parse_sink_names(value: str) -> tuple[str, ...]:
    """`" jsonl, JSONL_GZ ,"` -> ("jsonl", "jsonl_gz"); a value with no names -> ("stderr",)."""
    names = tuple(item.strip().lower() for item in value.split(",") if item.strip())
    return names or ("stderr",)


def _nonblank(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


def _uint(env: Mapping[str, str], name: str, default: int | None) -> int | None:
    """A non-negative integer variable; unset -> default; unparsable -> default with a warning."""
    raw = env.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    log.warning("%s=%r is not a non-negative integer; using the default %s", name, raw, default)
    return default


@dataclass(frozen=True, slots=True)
class TraceConfig:
    enabled: bool = False
    sinks: tuple[str, ...] = ()
    output_path: str | None = None
    capacity: int = DEFAULT_CAPACITY                  # records queued per sink
    buffer_bytes: int = DEFAULT_BUFFER_BYTES          # bytes buffered before a flush
    flush_interval_ms: int = DEFAULT_FLUSH_INTERVAL_MS
    gz_roll_bytes: int = DEFAULT_GZ_ROLL_BYTES        # uncompressed bytes per gzip segment
    gz_roll_lines: int | None = None                  # lines per gzip segment (None: no limit)
    replay_hashes: bool = True                        # write request.replay
    tool_events_endpoint: str | None = None           # PULL bind address; None: no ingress
    tool_events_topic: str | None = None              # required frame-0 topic; None: any

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "TraceConfig":
        """Read the DYN_AGENT_TRACE* variables from `env` (pass `os.environ`); see module doc."""
        enabled = is_truthy(env.get(ENV_MASTER))
        capacity = _uint(env, ENV_CAPACITY, DEFAULT_CAPACITY)
        if capacity == 0:
            log.warning("%s=0 is not a usable queue size; using the default %s",
                        ENV_CAPACITY, DEFAULT_CAPACITY)
            capacity = DEFAULT_CAPACITY
        roll_bytes = _uint(env, ENV_GZ_ROLL_BYTES, DEFAULT_GZ_ROLL_BYTES) or DEFAULT_GZ_ROLL_BYTES
        roll_lines = _uint(env, ENV_GZ_ROLL_LINES, None) or None
        config = cls(
            enabled=enabled,
            sinks=(() if not enabled else
                   parse_sink_names(env[ENV_SINKS]) if ENV_SINKS in env else (DEFAULT_SINK,)),
            output_path=(_nonblank(env, ENV_OUTPUT_PATH) or DEFAULT_OUTPUT_PATH) if enabled else None,
            capacity=capacity,
            buffer_bytes=_uint(env, ENV_BUFFER_BYTES, DEFAULT_BUFFER_BYTES),
            flush_interval_ms=_uint(env, ENV_FLUSH_INTERVAL_MS, DEFAULT_FLUSH_INTERVAL_MS),
            gz_roll_bytes=roll_bytes,
            gz_roll_lines=roll_lines,
            replay_hashes=not is_falsey(env.get(ENV_REPLAY_HASHES)),
            tool_events_endpoint=_nonblank(env, ENV_TOOL_ENDPOINT) if enabled else None,
            tool_events_topic=_nonblank(env, ENV_TOOL_TOPIC),
        )
        config.validate()
        return config

    def validate(self) -> None:
        """ValueError naming the variable when the configuration cannot work."""
        unknown = [name for name in self.sinks if name not in SINK_NAMES]
        if unknown:
            raise ValueError(f"{ENV_SINKS}: unknown sink {unknown[0]!r} "
                             f"(known: {', '.join(SINK_NAMES)})")
        if self.enabled and any(s in ("jsonl", "jsonl_gz") for s in self.sinks) \
                and not self.output_path:
            raise ValueError(f"{ENV_OUTPUT_PATH} must be set when {ENV_SINKS} includes a file sink")
        if self.capacity < 1:
            raise ValueError(f"{ENV_CAPACITY} must be at least 1, got {self.capacity}")
        if self.buffer_bytes < 0 or self.flush_interval_ms < 0 or self.gz_roll_bytes < 1:
            raise ValueError("trace buffer, flush interval and roll sizes must be non-negative")
        if self.gz_roll_lines is not None and self.gz_roll_lines < 1:
            raise ValueError(f"{ENV_GZ_ROLL_LINES} must be positive, got {self.gz_roll_lines}")
