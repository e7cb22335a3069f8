"""The `Engine` protocol: what a worker needs from the engine it hosts.

The mock engine implements it now, the vLLM and SGLang subprocess engines later. The worker owns
sockets and discovery; the engine owns scheduling and KV. The worker pulls from the engine:

    worker                                engine
    ------                                ------
    add(EngineRequest)        ───────►    queue it (ValueError: the request fails cleanly)
    abort(request_id)         ───────►    drop it, free its KV
    await step()              ◄───────    EngineStep: the outputs of one engine pass (or a batch of
                                          outputs that arrived together) plus drained KV events
    load()                    ◄───────    LoadSnapshot

Every time value here is a duration measured by the worker's process from its own receipt of the
request; clocks of different processes are never compared (DESIGN.md §2.2).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from router.events import EngineEvent
from router.hashing import Prompt


@dataclass(slots=True)
class EngineRequest:
    request_id: str
    token_ids: list[int]
    max_tokens: int
    received_at: float                 # worker's time.monotonic() at receipt, seconds
    priority: int = 0                  # Rotor polarity: higher runs first
    ignore_eos: bool = False
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    x_request_id: str | None = None
    prompt: Prompt | None = None       # in-process only: the frontend's hashes, reused by the mock
    body: bytes | None = None          # the client's chat body, the JSON bytes exactly as sent,
                                       # for engines that apply chat templates themselves


@dataclass(slots=True)
class Timings:
    """Durations in ms from the worker's receipt of the request (DESIGN.md §2.2)."""

    queue_ms: float       # receipt -> engine started computing it
    prefill_ms: float     # engine started -> first token
    ttft_ms: float        # receipt -> first token
    total_ms: float       # receipt -> last token
    cached_tokens: int    # prompt tokens served from the prefix cache

    def to_wire(self) -> list[Any]:
        return [self.queue_ms, self.prefill_ms, self.ttft_ms, self.total_ms, self.cached_tokens]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> "Timings":
        return cls(float(raw[0]), float(raw[1]), float(raw[2]), float(raw[3]), int(raw[4]))


# finish reasons an engine may report; "error" carries a message in RequestOutput.error
FINISH_REASONS = ("stop", "length", "abort", "error", "tool_calls")


@dataclass(slots=True)
class RequestOutput:
    """What one request gained in one engine pass."""

    request_id: str
    first_index: int                   # index in the request's output of token_ids[0]
    token_ids: list[int]
    finish_reason: str | None = None   # set on the request's last output only
    tool_call_deltas: list[dict[str, Any]] | None = None
    timings: Timings | None = None     # set on the last output only
    error: str | None = None           # with finish_reason "error"
    # The engine's own text for these tokens, from engines that parse their output (tool calls,
    # reasoning): shown instead of detokenizing token_ids, so parsed tool-call text is not
    # streamed as content too. None: the frontend detokenizes.
    text: str | None = None


@dataclass(slots=True)
class EngineStep:
    outputs: list[RequestOutput]
    kv_events: list[EngineEvent] = field(default_factory=list)


@dataclass(slots=True)
class LoadSnapshot:
    kv_used_blocks: int
    kv_total_blocks: int
    num_running: int
    num_waiting: int


@dataclass(slots=True, frozen=True)
class EngineInfo:
    """Capacities a worker advertises in its discovery record."""

    kv_block_size: int
    total_kv_blocks: int
    max_num_seqs: int
    max_num_batched_tokens: int
    context_length: int


class Engine(Protocol):
    info: EngineInfo

    async def start(self) -> None: ...

    def add(self, request: EngineRequest) -> None:
        """Queue a request. Raises ValueError naming the field when the request cannot run."""

    def abort(self, request_id: str) -> None:
        """Stop a request and free its KV; unknown ids are ignored. No output follows."""

    async def step(self) -> EngineStep:
        """Wait for the next engine pass (or batch of outputs) and return what it produced."""

    def load(self) -> LoadSnapshot: ...

    def stats(self) -> dict[str, Any]:
        """Counters the worker publishes with its heartbeat (JSON-serialisable)."""

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class EngineContext:
    """What the worker tells an engine factory about where it runs."""

    model_path: str          # local model folder (tokenizer, config)
    model_name: str
    context_length: int      # from the model's config.json


@dataclass(frozen=True)
class EngineKind:
    """One entry of the engine registry: its CLI flags and its factory."""

    name: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    create: Callable[[argparse.Namespace, EngineContext], Engine]
