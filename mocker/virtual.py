"""The virtual-clock driver: engine cores on one simulated clock, no sleeping (DESIGN.md §5, §7).

    cluster = VirtualCluster([EngineCore(args), EngineCore(args)])
    cluster.advance_until(t)            # every core to t (ms), collecting results
    cluster.add(engine, request)        # arrives at cluster.now on that engine
    cluster.run_until_idle()
    cluster.results                     # one RequestResult per finished request, in finishing order

`simulate(cores, arrivals)` does the whole loop for a fixed list of arrivals. Replay puts the router
between arrivals and `add`; KV events stay queued in each core for the owner (`take_events()`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

from mocker.core import CoreRequest, EngineCore, FirstToken, StepOutput


@dataclass(slots=True, frozen=True)
class Arrival:
    time_ms: float
    engine: int
    request: CoreRequest


@dataclass(slots=True, frozen=True)
class RequestResult:
    request_id: str
    engine: int
    arrival_ms: float
    start_ms: float           # first scheduled
    first_token_ms: float
    end_ms: float
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int
    finish_reason: str
    preemptions: int


class VirtualCluster:
    def __init__(self, cores: Sequence[EngineCore]):
        self.cores = list(cores)
        self.now = 0.0
        self.results: list[RequestResult] = []
        self.first_tokens: list[tuple[int, FirstToken]] = []   # (engine, first token), in order
        self.passes = 0

    def add(self, engine: int, request: CoreRequest) -> None:
        """`request` arrives now on core `engine` (ValueError if that core refuses it)."""
        self.cores[engine].add(request)

    def advance_until(self, t: float) -> None:
        for engine, core in enumerate(self.cores):
            self._collect(engine, core.advance_until(t))
        self.now = max(self.now, t)

    def next_event_time(self) -> float | None:
        times = [t for t in (core.next_event_time() for core in self.cores) if t is not None]
        return min(times) if times else None

    def run_until_idle(self) -> None:
        for engine, core in enumerate(self.cores):
            self._collect(engine, core.advance_until(math.inf))
            self.now = max(self.now, core.now)

    def _collect(self, engine: int, step: StepOutput) -> None:
        self.passes += step.passes
        self.first_tokens += [(engine, first) for first in step.first_tokens]
        self.results += [RequestResult(f.request_id, engine, f.arrival_ms, f.start_ms,
                                       f.first_token_ms, f.end_ms, f.prompt_tokens,
                                       len(f.output_ids), f.cached_tokens, f.finish_reason,
                                       f.preemptions)
                         for f in step.finished]


def simulate(cores: Sequence[EngineCore], arrivals: Iterable[Arrival]) -> VirtualCluster:
    """Feed `arrivals` (in time order) to `cores` on one virtual clock and run until all finish."""
    cluster = VirtualCluster(cores)
    for arrival in arrivals:
        cluster.advance_until(arrival.time_ms)
        cluster.add(arrival.engine, arrival.request)
    cluster.run_until_idle()
    return cluster
