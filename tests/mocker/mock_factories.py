"""Factories for mock engine tests: tiny pools, a fake timing model with round numbers."""

from __future__ import annotations

import math
from typing import Any

from mocker.config import MockEngineArgs
from mocker.core import CoreRequest, EngineCore, Finished, KvEventBatch, StepOutput


class LinearTiming:
    """prefill: 1 ms per new token; decode: 1 ms plus 10 ms per unit of KV usage."""

    def prefill_ms(self, new_tokens: int) -> float:
        return float(new_tokens)

    def decode_ms(self, kv_fraction: float) -> float:
        return 1.0 + 10.0 * kv_fraction


def make_args(**overrides: Any) -> MockEngineArgs:
    defaults: dict[str, Any] = dict(num_gpu_blocks=10, block_size=4, max_num_seqs=4,
                                    max_num_batched_tokens=32)
    return MockEngineArgs(**{**defaults, **overrides})


def make_core(timing: Any = None, bulk: bool = True, **overrides: Any) -> EngineCore:
    return EngineCore(make_args(**overrides), timing, bulk=bulk)


def req(request_id: str, tokens: list[int] | range, max_tokens: int = 1, **kw: Any) -> CoreRequest:
    return CoreRequest(request_id, list(tokens), max_tokens, **kw)


def run_all(core: EngineCore, t: float = float("inf")) -> StepOutput:
    return core.advance_until(t)


def finished_by_id(step: StepOutput) -> dict[str, Finished]:
    return {f.request_id: f for f in step.finished}


def events_of(batches: list[KvEventBatch]) -> list[tuple[float, Any]]:
    return [(b.time_ms, e) for b in batches for e in b.events]


def begin_pass(core: EngineCore) -> StepOutput:
    """Let the pass due now start (passes start once the clock moves past their start time)."""
    return core.advance_until(math.nextafter(core.now, math.inf))


def step(core: EngineCore) -> StepOutput:
    """Advance to the core's next event: one pass end (or one pass start)."""
    t = core.next_event_time()
    assert t is not None
    return core.advance_until(t) if t > core.now else begin_pass(core)
